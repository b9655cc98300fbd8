"""The viewer's binary WebSocket messages: a JSON header, then typed arrays.

A message is the header's length (4 bytes, little-endian), the header (UTF-8 JSON, padded
with spaces so that what follows starts at a multiple of 8 bytes), then each array's bytes,
little-endian, each padded to a multiple of 8 bytes. The header's ``arrays`` lists their
``name``, ``dtype`` (numpy type string, e.g. ``<u2``) and ``length``: a page makes each a
JavaScript typed array over the message without copying it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["pack"]

_ALIGN = 8


def _padding(size: int) -> bytes:
    return b" " * (-size % _ALIGN)


def pack(header: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    """Build one binary message.

    Parameters
    ----------
    header
        JSON-serialisable fields; ``arrays`` is added.
    arrays
        Named arrays, sent flattened and little-endian in this order.

    Returns
    -------
    bytes
        The message.
    """
    little = {
        name: np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).ravel()
        for name, array in arrays.items()
    }
    described = [
        {"name": name, "dtype": array.dtype.str, "length": int(array.size)}
        for name, array in little.items()
    ]
    text = json.dumps({**header, "arrays": described}, separators=(",", ":")).encode()
    text += _padding(4 + len(text))
    parts = [struct.pack("<I", len(text)), text]
    for array in little.values():
        data = array.tobytes()
        parts += [data, _padding(len(data)).replace(b" ", b"\0")]
    return b"".join(parts)
