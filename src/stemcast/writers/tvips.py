"""TVIPS ``.tvips`` writers: the reference API (``rsciio.tvips``) and a streaming writer."""

from stemcast.formats.tvips.writer import TvipsWriter, file_writer, writer_base

__all__ = ["TvipsWriter", "file_writer", "writer_base"]
