"""Scan-shape (navigation-shape) inference, shared by the offline readers and the live service.

Shapes are given in HyperSpy order, ``(x, y)``: the scan width (frames per line) first. The
array shape of the frames is the reverse, ``(y, x, rows, cols)``. Every result names the
evidence it came from, so that a user can tell a measured shape from a guess.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stemcast.errors import ParameterError

__all__ = [
    "Evidence",
    "ScanShape",
    "complete_lines",
    "infer_scan_shape",
    "line_width_from_timestamps",
]

#: The smallest extra time (ns) between two frames that counts as a line fly-back. Merlin
#: timestamps jitter by about 10 ns; a real fly-back is microseconds at least.
MIN_FLYBACK_NS = 100.0


class Evidence(enum.StrEnum):
    """Where a scan shape came from."""

    USER = "user"
    HDR = "hdr"
    TIMESTAMPS = "timestamps"
    ROTATOR = "rotator"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ScanShape:
    """A navigation shape and the evidence for it.

    Attributes
    ----------
    shape
        ``(x, y)`` for a 2-D scan, ``(n,)`` for a plain stack of frames.
    evidence
        Which source gave the shape.
    detail
        One sentence saying how, for logs and metadata.
    """

    shape: tuple[int, ...]
    evidence: Evidence
    detail: str

    @property
    def array_shape(self) -> tuple[int, ...]:
        """The shape in array order, ``(y, x)``."""
        return tuple(reversed(self.shape))

    @property
    def frames(self) -> int:
        """Frames the shape holds."""
        return int(np.prod(self.shape, dtype=np.int64))


def line_width_from_timestamps(
    times_ns: npt.ArrayLike, *, min_flyback_ns: float = MIN_FLYBACK_NS
) -> int | None:
    """Infer the scan width from frame timestamps, or ``None`` if they show no line structure.

    At the end of each scan line the beam flies back, so the time between the last frame of a
    line and the first frame of the next is longer than between frames within a line. A width
    ``w`` is accepted only if such a longer gap follows every ``w``-th frame and no other frame:
    a single late frame (timing jitter) gives no width, unlike the reference reader's "first
    gap above the mean" rule.

    Parameters
    ----------
    times_ns
        Frame timestamps in nanoseconds, in acquisition order.
    min_flyback_ns
        The least extra time over the median frame interval that counts as a fly-back.

    Returns
    -------
    int or None
        Frames per scan line, or ``None``.
    """
    times = np.asarray(times_ns)
    if times.size < 3:
        return None
    # Differences first: epoch nanoseconds do not fit a float64 mantissa exactly.
    gaps = np.diff(times).astype(np.float64)
    median = float(np.median(gaps))
    spread = 1.4826 * float(np.median(np.abs(gaps - median)))
    threshold = median + max(5.0 * spread, min_flyback_ns)
    flybacks = np.flatnonzero(gaps > threshold)
    if flybacks.size == 0:
        return None
    width = int(flybacks[0]) + 1
    expected = np.arange(width - 1, gaps.size, width)
    if width < 2 or not np.array_equal(flybacks, expected):
        return None
    return width


def complete_lines(shape: Sequence[int], frames: int) -> tuple[int, ...]:
    """Shrink a scan shape to the lines that ``frames`` frames fill completely.

    Parameters
    ----------
    shape
        ``(x, y)`` (or ``(x, y, z)``) scan shape as intended.
    frames
        Frames actually available.

    Returns
    -------
    tuple of int
        The shape with the outermost size reduced to the complete lines, or ``(frames,)`` for
        a 1-D shape.
    """
    shape = tuple(int(size) for size in shape)
    if len(shape) < 2:
        return (min(frames, shape[0]) if shape else frames,)
    inner = int(np.prod(shape[:-1], dtype=np.int64))
    return (*shape[:-1], min(frames // inner, shape[-1]))


def infer_scan_shape(
    frames: int,
    *,
    user: Sequence[int] | None = None,
    hdr_shape: Sequence[int] | None = None,
    frames_per_line: int | None = None,
    frames_expected: int | None = None,
    timestamps_ns: npt.ArrayLike | None = None,
) -> ScanShape:
    """Choose the scan shape of an acquisition from the best evidence available.

    The order is: the user's shape; a shape written by the acquisition software (``.hdr``
    ``ScanX``/``ScanY``, or frames per trigger = frames per line); the fly-back gaps in the
    frame timestamps; else a plain stack of ``frames`` frames.

    Parameters
    ----------
    frames
        Frames available (complete records).
    user
        Shape given by the user, ``(x, y)``; used as is.
    hdr_shape
        ``(x, y)`` written by the acquisition software.
    frames_per_line
        Frames per line (Merlin "Frames per Trigger" when line-triggered).
    frames_expected
        Frames the acquisition was meant to have; the number of lines is derived from it
        when only the width is known.
    timestamps_ns
        Frame timestamps in nanoseconds.

    Returns
    -------
    ScanShape
        The shape (intended size, not shrunk to complete lines) and its evidence.
    """
    if user is not None:
        shape = tuple(int(size) for size in user)
        if not shape or any(size < 1 for size in shape):
            raise ParameterError(
                f"navigation shape {tuple(user)} has a size below 1", parameter="navigation_shape"
            )
        return ScanShape(shape, Evidence.USER, f"navigation shape {shape} given by the user")
    total = frames_expected or frames
    if hdr_shape is not None and all(int(size) > 0 for size in hdr_shape):
        shape = tuple(int(size) for size in hdr_shape)
        return ScanShape(shape, Evidence.HDR, f"scan size {shape} from the acquisition header")
    if frames_per_line is not None and frames_per_line > 1 and total >= frames_per_line:
        shape = (frames_per_line, total // frames_per_line)
        return ScanShape(
            shape, Evidence.HDR, f"{frames_per_line} frames per trigger (line) in the header"
        )
    if timestamps_ns is not None:
        width = line_width_from_timestamps(timestamps_ns)
        if width is not None and total >= width:
            shape = (width, total // width)
            return ScanShape(shape, Evidence.TIMESTAMPS, f"fly-back gap after every {width} frames")
    return ScanShape((frames,), Evidence.NONE, "no scan shape found: a stack of frames")
