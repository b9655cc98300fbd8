"""Positional reads of the same few bytes of every record: frame headers without pixels."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError

__all__ = ["read_strided"]


def read_strided(path: str, offset: int, stride: int, out: npt.NDArray[np.uint8]) -> None:
    """Fill each row of ``out`` with the bytes of ``path`` at ``offset + row * stride``.

    Parameters
    ----------
    path
        The file.
    offset
        Byte of the first row.
    stride
        Bytes from one row's start to the next (a record).
    out
        ``(rows, size)`` C-contiguous bytes to fill.

    Raises
    ------
    FormatError
        When the file ends before the last row (it shrank since its size was looked at).
    """
    size = out.shape[1]
    fd = os.open(path, os.O_RDONLY)
    try:
        for row in range(len(out)):
            position = offset + row * stride
            got = os.preadv(fd, [out[row].data], position)
            if got != size:
                raise FormatError(
                    f"file shrank while it was read: {got} of {size} bytes",
                    path=path,
                    offset=position,
                )
    finally:
        os.close(fd)
