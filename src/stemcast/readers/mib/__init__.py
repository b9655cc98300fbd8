"""Quantum Detectors Merlin ``.mib`` reader (API of the reference ``rsciio.quantumdetector``)."""

from stemcast.readers.mib._api import (
    MIBProperties,
    file_reader,
    load_mib_data,
    parse_exposures,
    parse_hdr_file,
    parse_timestamps,
    scan_shape_of,
    timestamps_ns,
    virtual_image,
)
from stemcast.readers.mib._header import FrameHeader, parse_frame_header, parse_hdr_text
from stemcast.readers.mib._layout import MibLayout
from stemcast.readers.mib._run import MibRun

__all__ = [
    "FrameHeader",
    "MIBProperties",
    "MibLayout",
    "MibRun",
    "file_reader",
    "load_mib_data",
    "parse_exposures",
    "parse_frame_header",
    "parse_hdr_file",
    "parse_hdr_text",
    "parse_timestamps",
    "scan_shape_of",
    "timestamps_ns",
    "virtual_image",
]
