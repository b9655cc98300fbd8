"""A batch of decoded frames, the unit that readers hand to the live service and converters."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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
