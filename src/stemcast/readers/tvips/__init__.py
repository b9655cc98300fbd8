"""TVIPS ``.tvips`` series reader (API of the reference ``rsciio.tvips``)."""

from stemcast.formats.tvips.layout import TvipsLayout
from stemcast.formats.tvips.reader import file_reader, wind
from stemcast.formats.tvips.run import TvipsPart, TvipsSeries, part_path, series_base
from stemcast.formats.tvips.spec import (
    FrameHeader,
    MainHeader,
    format_main_header,
    frame_header_dtype,
    parse_frame_header,
    parse_main_header,
)

__all__ = [
    "FrameHeader",
    "MainHeader",
    "TvipsLayout",
    "TvipsPart",
    "TvipsSeries",
    "file_reader",
    "format_main_header",
    "frame_header_dtype",
    "parse_frame_header",
    "parse_main_header",
    "part_path",
    "series_base",
    "wind",
]
