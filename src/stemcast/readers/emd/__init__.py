"""EMD (HDF5) reader: NCEM/Berkeley (prismatic, emdfile/py4DSTEM, DE5) and ThermoFisher Velox.

API of the reference ``rsciio.emd``: :func:`file_reader`. :func:`decode_spectrum_stream`
decodes a Velox EDS spectrum stream held in memory.
"""

from stemcast.formats.emd.reader import file_reader
from stemcast.formats.emd.velox_spectrum import SpectrumStreamSource, decode_spectrum_stream

__all__ = ["SpectrumStreamSource", "decode_spectrum_stream", "file_reader"]
