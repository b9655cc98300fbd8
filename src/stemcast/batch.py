"""A batch of decoded frames, the unit that readers hand to the live service and converters."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """Consecutive frames of one run, decoded to native-endian arrays.

    Attributes
    ----------
    start
        Index of the first frame in the run.
    frames
        ``(n, rows, cols)`` native-endian frames, oriented as the format's ``file_reader``
        returns them (Merlin frames flipped vertically, as the reference reader does).
    headers
        The ``n`` raw frame headers, for timestamps and exposures.
    """

    start: int
    frames: npt.NDArray[Any]
    headers: npt.NDArray[Any]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def stop(self) -> int:
        """Index after the last frame."""
        return self.start + len(self.frames)


def read_ahead(batches: Iterator[FrameBatch]) -> Iterator[FrameBatch]:
    """Yield the batches, reading and decoding the next one in a thread meanwhile.

    File reads and numpy release the GIL, so on two cores reading overlaps converting.

    Parameters
    ----------
    batches
        Batches to read, e.g. :meth:`stemcast.readers.mib.MibRun.batches`.

    Yields
    ------
    FrameBatch
        The same batches, in order.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch


def _references_when_free() -> int:
    """Count the references to a free buffer as :meth:`BufferPool.take`'s loop sees them."""
    buffers = [np.empty(1, np.uint8)]
    for buffer in buffers:
        return sys.getrefcount(buffer)
    raise AssertionError("unreachable")


_FREE = _references_when_free()


class BufferPool:
    """Byte buffers to read batches into, each reused once nothing refers to it any more.

    A batch read into a fresh array costs a page fault per 4 KiB of it; a buffer reused
    while its frames are still referenced (queued in ZeroMQ for a zero-copy send, kept as
    the catalog's recent batch) would change them under their readers. A buffer is handed
    out again only when no array, memoryview or message holds it, which its reference
    count tells: every view of it (numpy views keep the array that owns the memory) and
    every message sent from it without a copy counts.

    Parameters
    ----------
    keep
        Buffers kept for reuse; more are made while that many are in use, and dropped
        once free.
    """

    #: Buffers grow in steps of this many bytes, so that one serves batches of close sizes.
    STEP_BYTES = 2**20

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._buffers: list[npt.NDArray[np.uint8]] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> npt.NDArray[np.uint8]:
        """Return ``nbytes`` bytes of a buffer that nothing else refers to.

        Parameters
        ----------
        nbytes
            Size wanted.

        Returns
        -------
        numpy.ndarray
            A ``uint8`` view of ``nbytes`` bytes (uninitialised), C-contiguous.
        """
        with self._lock:
            for buffer in self._buffers:
                if buffer.nbytes >= nbytes and sys.getrefcount(buffer) <= _FREE:
                    return buffer[:nbytes]
            size = -(-max(nbytes, 1) // self.STEP_BYTES) * self.STEP_BYTES
            fresh = np.empty(size, np.uint8)
            self._buffers.append(fresh)
            if len(self._buffers) > self.keep:
                self._drop_free()
            return fresh[:nbytes]

    def _drop_free(self) -> None:
        """Forget free buffers, oldest first, down to :attr:`keep` (the newest is in use)."""
        kept: list[npt.NDArray[np.uint8]] = []
        surplus = len(self._buffers) - self.keep
        for buffer in self._buffers:
            if surplus > 0 and sys.getrefcount(buffer) <= _FREE:
                surplus -= 1
                continue
            kept.append(buffer)
        self._buffers = kept
