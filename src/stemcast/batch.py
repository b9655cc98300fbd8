"""A batch of decoded frames, the unit that readers hand to the live service and converters."""

from __future__ import annotations

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
        ``(n, rows, cols)`` native-endian frames, as stored (not flipped).
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
