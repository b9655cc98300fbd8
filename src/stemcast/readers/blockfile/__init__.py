"""NanoMegas ASTAR blockfile (``.blo``) reader (API of the reference ``rsciio.blockfile``)."""

from stemcast.formats.blockfile.reader import file_reader, read_header, read_navigator
from stemcast.formats.blockfile.spec import (
    HEADER_DTYPE,
    BlockfileHeader,
    format_header,
    header_dtype,
    parse_header,
)

__all__ = [
    "HEADER_DTYPE",
    "BlockfileHeader",
    "file_reader",
    "format_header",
    "header_dtype",
    "parse_header",
    "read_header",
    "read_navigator",
]
