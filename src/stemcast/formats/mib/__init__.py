"""Quantum Detectors Merlin ``.mib``: header spec, record layout, runs, reader and writer."""
