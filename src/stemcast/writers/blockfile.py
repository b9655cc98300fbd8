"""NanoMegas blockfile (``.blo``) writers: the reference API and a streaming writer.

:func:`convert_mib` converts a Merlin run with the one converter of :mod:`stemcast.convert`.
"""

from stemcast.convert.run import convert_mib
from stemcast.formats.blockfile.writer import BlockfileWriter, file_writer

__all__ = ["BlockfileWriter", "convert_mib", "file_writer"]
