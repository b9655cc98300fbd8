"""NanoMegas blockfile (``.blo``) writers: the reference API and a streaming writer."""

from stemcast.formats.blockfile.writer import BlockfileWriter, convert_mib, file_writer

__all__ = ["BlockfileWriter", "convert_mib", "file_writer"]
