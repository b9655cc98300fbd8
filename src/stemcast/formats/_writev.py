"""Gathered writes: many buffers (frame headers, frames) to a file in as few calls as possible."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["write_all"]

#: Buffers per ``writev`` call (POSIX guarantees at least 16; Linux allows 1024).
IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def write_all(fd: int, buffers: Sequence[memoryview]) -> None:
    """Write all ``buffers`` to ``fd`` in order, ``writev`` calls resumed after short writes.

    Parameters
    ----------
    fd
        An open file descriptor.
    buffers
        Byte buffers (``memoryview`` of any format: each is written whole).
    """
    if not hasattr(os, "writev"):
        for buffer in buffers:
            view = buffer.cast("B")
            while view:
                view = view[os.write(fd, view) :]
        return
    pending = [
        buffer if buffer.ndim == 1 and buffer.format == "B" else buffer.cast("B")
        for buffer in buffers
    ]
    first = 0
    while first < len(pending):
        written = os.writev(fd, pending[first : first + IOV_MAX])
        while written and first < len(pending):
            size = len(pending[first])
            if written >= size:
                written -= size
                first += 1
            else:
                pending[first] = pending[first][written:]
                written = 0
