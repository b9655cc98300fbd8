"""Quantum Detectors Merlin ``.mib`` reader (API of the reference ``rsciio.quantumdetector``)."""

from stemcast.formats.mib.layout import MibLayout
from stemcast.formats.mib.reader import (
    MIBProperties,
    file_reader,
    load_mib_data,
    parse_hdr_file,
    scan_shape_of,
    virtual_image,
)
from stemcast.formats.mib.run import MibRun
from stemcast.formats.mib.spec import (
    FrameHeader,
    parse_exposures,
    parse_frame_header,
    parse_hdr_text,
    parse_timestamps,
    timestamps_ns,
)

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
