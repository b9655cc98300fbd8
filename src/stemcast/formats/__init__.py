"""The file formats, one folder each: ``spec`` (bytes), ``run`` (files), ``reader``, ``writer``.

The public names that the reference API documents live in :mod:`stemcast.readers` and
:mod:`stemcast.writers`; this package holds the implementations and the format detection.
"""

from stemcast.formats.detect import detect_format, load, reader_for

__all__ = ["detect_format", "load", "reader_for"]
