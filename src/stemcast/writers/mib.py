"""Quantum Detectors Merlin ``.mib`` writers: whole signals and a streaming writer."""

from stemcast.formats.mib.writer import MibWriter, write_mib

__all__ = ["MibWriter", "write_mib"]
