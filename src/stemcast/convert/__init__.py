"""Conversions: one pass from a run to its targets, offline, in jobs and live."""
