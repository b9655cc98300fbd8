"""Scan-shape (navigation-shape) inference, shared by the offline readers and the live service.

Shapes are given in HyperSpy order, ``(x, y)``: the scan width (frames per line) first. The
array shape of the frames is the reverse, ``(y, x, rows, cols)``. Every result names the
evidence it came from, so that a user can tell a measured shape from a guess.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import ParameterError

__all__ = [
    "Evidence",
    "ScanGrid",
    "ScanShape",
    "check_navigation_shape",
    "complete_lines",
    "infer_scan_shape",
    "line_width_from_timestamps",
    "rotator_grid",
    "scan_from_rotator",
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


def check_navigation_shape(
    value: Any, *, parameter: str = "navigation_shape", ndim: int | None = None
) -> tuple[int, ...]:
    """Return a navigation shape given by a user as a tuple of positive ints, or refuse it.

    Parameters
    ----------
    value
        The shape as given: a sequence of integers (``(x, y)`` in HyperSpy order).
    parameter
        The parameter's name, for the error.
    ndim
        The number of axes required, if any.

    Returns
    -------
    tuple of int
        The shape.

    Raises
    ------
    ParameterError
        When ``value`` is not a sequence of integers (a string, floats, booleans), is empty,
        has a size below 1, or does not have ``ndim`` axes.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ParameterError(f"expected a tuple of int, got {value!r}", parameter=parameter)
    try:
        shape = tuple(
            operator.index(size) for size in value if not isinstance(size, (bool, np.bool_))
        )
    except TypeError:
        raise ParameterError(
            f"expected a tuple of int, got {value!r}", parameter=parameter
        ) from None
    if len(shape) != len(value):
        raise ParameterError(f"expected a tuple of int, got {value!r}", parameter=parameter)
    if not shape or any(size < 1 for size in shape):
        raise ParameterError(f"{shape} has a size below 1", parameter=parameter)
    if ndim is not None and len(shape) != ndim:
        raise ParameterError(
            f"{shape} has {len(shape)} axes; a scan shape has {ndim}", parameter=parameter
        )
    return shape


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


@dataclass(frozen=True, slots=True)
class ScanGrid:
    """A scan shape with the frame that stands for each scan position.

    Attributes
    ----------
    scan
        The shape, ``(x, y)`` or ``(x, y, scans)``, and its evidence.
    frames
        Frame index of every scan position in array order, ``(y, x)`` or ``(scans, y, x)``;
        ``None`` when no scan was found (``scan`` is then a plain stack).
    filled
        Scan positions that no frame was recorded at; they repeat a neighbouring frame.
    """

    scan: ScanShape
    frames: npt.NDArray[np.int64] | None
    filled: int = 0


def rotator_grid(rotator: npt.ArrayLike, positions: int) -> npt.NDArray[np.int64]:
    """Assign a frame to each scan position from the rotator index of one scan.

    The rotator index is the 1-based scan position the TVIPS scan engine reports in each frame
    header. Within one scan it never decreases, but a position can appear in several frames
    (camera faster than the scan) or in none (camera slower, or frames dropped). A run of
    frames with the same index covers the positions up to the next index: its frames go to
    those positions in order, and positions left over repeat the run's last frame. Extra
    frames of a run are dropped. Positions before the first index get the first frame.

    Parameters
    ----------
    rotator
        Rotator index of consecutive frames of one scan, non-decreasing, values >= 1.
    positions
        Scan positions (the index of the last position).

    Returns
    -------
    numpy.ndarray
        ``positions`` frame indices into ``rotator``.
    """
    values_all = np.asarray(rotator, dtype=np.int64)
    firsts = np.flatnonzero(np.r_[True, values_all[1:] != values_all[:-1]])
    values = values_all[firsts]
    counts = np.diff(np.r_[firsts, values_all.size])
    position = np.arange(1, positions + 1, dtype=np.int64)
    run = np.maximum(np.searchsorted(values, position, side="right") - 1, 0)
    grid: npt.NDArray[np.int64] = firsts[run] + np.clip(position - values[run], 0, counts[run] - 1)
    return grid


def scan_from_rotator(
    rotator: npt.ArrayLike,
    *,
    counters: npt.ArrayLike | None = None,
    scan_x: npt.ArrayLike | None = None,
    scan_y: npt.ArrayLike | None = None,
) -> ScanGrid:
    """Find the scan of a TVIPS recording from the rotator index of its frames.

    Unlike the reference reader's rule, this one works on signed values (so a drop back to 0
    after the scan ends the scan instead of wrapping to 2**32), finds every scan of a
    recording that repeats the scan, ignores interrupted scans and single-frame glitches of
    the index, takes the scan width from the scan positions in long frame headers when present
    (non-square scans), and returns a plain stack, saying why, rather than a guessed shape.

    A frame whose index leaves the run of its neighbours for that one frame (a dip or a spike
    between two frames that are in order) is a glitch: it counts as a repeat of the frame
    before it. A scan is then a run of frames whose rotator index is positive and never
    decreases, starting within the first line (index at most the square root of its last
    index). The number of positions ``N`` is the largest last index of such runs; the runs
    that reach it are complete scans. The width is ``max(scan_x) + 1`` when the headers hold
    scan positions (and ``width * height == N``), else ``sqrt(N)`` when ``N`` is a square.
    A scan that leaves more than half of its positions without a frame is not trusted.

    Parameters
    ----------
    rotator
        Rotator index of every frame (0 when not scanning).
    counters
        Frame counter of every frame; gaps are reported as dropped frames.
    scan_x, scan_y
        Scan position of every frame (0-based), from frame headers long enough to hold them.

    Returns
    -------
    ScanGrid
        The shape, evidence ``ROTATOR``, and the frame of each position; or a stack of all
        frames with evidence ``NONE`` and the reason in ``detail``.
    """
    index = np.asarray(rotator).astype(np.int64)
    total = int(index.size)

    def stack(reason: str) -> ScanGrid:
        return ScanGrid(ScanShape((total,), Evidence.NONE, reason), None)

    if not (index > 0).any():
        return stack("the rotator index is 0 in every frame: no scan was recorded")
    previous, following = np.r_[0, index[:-1]], np.r_[index[1:], 0]
    in_order = (following >= previous) & (previous > 0)
    glitch = in_order & ((index < previous) | ((index > following) & (following > 0)))
    index = np.where(glitch, previous, index)
    previous = np.r_[0, index[:-1]]
    breaks = np.flatnonzero((index <= 0) | (index < previous))
    starts = np.flatnonzero((index > 0) & ((previous <= 0) | (index < previous)))
    ends = np.r_[breaks, total][np.searchsorted(breaks, starts, side="right")]
    first, last = index[starts], index[ends - 1]
    whole = first <= np.maximum(np.floor(np.sqrt(last)), 1)
    if not whole.any():
        return stack("no run of rising rotator indices starts near position 1")
    positions = int(last[whole].max())
    complete = np.flatnonzero(whole & (last == positions))
    if positions < 2:
        return stack("the rotator index never goes beyond position 1")
    frames = np.concatenate([np.arange(starts[k], ends[k]) for k in complete])
    width = height = 0
    how = ""
    if scan_x is not None and scan_y is not None:
        xs = np.asarray(scan_x, dtype=np.float64)[frames]
        ys = np.asarray(scan_y, dtype=np.float64)[frames]
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            return stack("the scan positions in the frame headers are not all finite numbers")
        if xs.any() or ys.any():
            width, height = round(float(xs.max())) + 1, round(float(ys.max())) + 1
            if width * height != positions:
                return stack(
                    f"the scan positions in the frame headers give a {width} x {height} scan "
                    f"but the rotator index counts {positions} positions"
                )
            how = "width from the scan positions in the frame headers"
    if not how:
        side = int(np.sqrt(positions))
        side += (side + 1) ** 2 <= positions
        if side * side != positions:
            return stack(
                f"the rotator index counts {positions} scan positions, not a square number, "
                "and the frame headers hold no scan positions"
            )
        width = height = side
        how = "square scan assumed"
    grids = [rotator_grid(index[starts[k] : ends[k]], positions) + starts[k] for k in complete]
    filled = sum(positions - np.unique(index[starts[k] : ends[k]]).size for k in complete)
    if 2 * filled > positions * len(complete):
        return stack(
            f"the rotator index skips {filled} of the {positions * len(complete)} scan "
            "positions: too few frames were recorded in the scan"
        )
    scans = len(grids)
    shape: tuple[int, ...] = (width, height) if scans == 1 else (width, height, scans)
    detail = (
        f"rotator index 1..{positions} in frames {int(starts[complete[0]])}.."
        f"{int(ends[complete[-1]]) - 1}: {scans} scan{'s' if scans > 1 else ''} of "
        f"{width} x {height} ({how})"
    )
    ignored = int(whole.sum()) - scans
    if ignored:
        detail += f"; {ignored} interrupted scan{'s' if ignored > 1 else ''} ignored"
    glitches = int(glitch.sum())
    if glitches:
        detail += f"; {glitches} single-frame glitch{'es' if glitches > 1 else ''} ignored"
    if filled:
        detail += f"; {filled} positions without a frame of their own repeat a neighbour"
    if counters is not None:
        counts = np.asarray(counters).astype(np.int64)
        dropped = sum(
            int(np.clip(np.diff(counts[starts[k] : ends[k]]) - 1, 0, None).sum()) for k in complete
        )
        if dropped:
            detail += f"; the frame counter shows {dropped} dropped frames"
    grid = np.stack(grids).reshape(tuple(reversed(shape)))
    return ScanGrid(ScanShape(shape, Evidence.ROTATOR, detail), grid, filled)
