"""EMD (HDF5) writers: the reference API (``rsciio.emd``) and a streaming writer."""

from stemcast.formats.emd.writer import EmdWriter, default_chunks, file_writer

__all__ = ["EmdWriter", "default_chunks", "file_writer"]
