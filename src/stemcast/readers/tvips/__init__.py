"""TVIPS ``.tvips`` series reader (API of the reference ``rsciio.tvips``)."""

from stemcast.readers.tvips._api import file_reader, wind
from stemcast.readers.tvips._header import (
    FrameHeader,
    MainHeader,
    format_main_header,
    frame_header_dtype,
    parse_frame_header,
    parse_main_header,
)
from stemcast.readers.tvips._layout import TvipsLayout
from stemcast.readers.tvips._series import TvipsPart, TvipsSeries, part_path, series_base

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
