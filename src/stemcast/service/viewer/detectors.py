"""Virtual detectors of the viewer, and the per-frame sums that make their images.

A person draws a detector on a frame: a disk (bright field), an annulus (annular dark
field), or picks a centre-of-mass map. Coordinates are frame pixels in the orientation the
frames are published (the orientation of the readers' ``file_reader``): column ``cx``, row
``cy``. Pixel ``(row, col)`` lies in a disk of radius ``r`` when
``(col - cx)**2 + (row - cy)**2 <= r**2``, and in an annulus when that squared distance lies
between ``inner**2`` and ``outer**2`` (both included).

What is summed for each frame is a :class:`Measure`: the pixels under a ring (a disk is a
ring whose inner radius is 0), or the frame's total and first moments (centre of mass). A
measure is computed once per run whatever the number of pages that show it, either from
frames in memory (:func:`batch_sums`, the batch the follower has just read) or from the
run's files (:func:`file_sums`: for Merlin rings the readers' virtual-image kernels, which
never unpack 1-bit frames; otherwise decoded block by block with the exact frame sums of
:mod:`stemcast.formats.frame_sums`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import ParameterError
from stemcast.formats.frame_sums import FrameChunk
from stemcast.formats.mib.run import MibRun
from stemcast.formats.mib.virtual import frame_totals
from stemcast.service.live.tail import FollowedRun

__all__ = ["Detector", "Measure", "batch_sums", "file_sums"]

#: The kinds of detector a page may ask for.
KINDS = ("disk", "annulus", "com_x", "com_y")
#: Detector coordinates are kept to this many decimals (drags send many close values).
_DECIMALS = 2
#: Bytes of decoded frames summed at a time when a run's files are read.
_BLOCK_BYTES = 16 * 2**20

#: Per-frame sums of a measure: ``total`` for a ring; ``total``, ``x`` and ``y`` (first
#: moments along the columns and the rows) for the centre of mass.
Sums = dict[str, npt.NDArray[np.float64]]


@dataclass(frozen=True)
class Measure:
    """What is summed per frame: the pixels of a ring, or the centre of mass of the frame.

    Attributes
    ----------
    kind
        ``"ring"`` or ``"com"``.
    cx, cy, inner, outer
        The ring's centre (column, row) and radii (a disk has ``inner == 0``).
    """

    kind: str
    cx: float = 0.0
    cy: float = 0.0
    inner: float = 0.0
    outer: float = 0.0

    @property
    def columns(self) -> tuple[str, ...]:
        """The names of its per-frame sums."""
        return ("total",) if self.kind == "ring" else ("total", "x", "y")

    def mask(self, frame_shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
        """Return the ring's pixels in a frame of ``frame_shape`` (``(rows, cols)``)."""
        rows, cols = frame_shape
        row = np.arange(rows, dtype=np.float64)[:, np.newaxis] - self.cy
        col = np.arange(cols, dtype=np.float64)[np.newaxis, :] - self.cx
        distance = row * row + col * col
        inside: npt.NDArray[np.bool_] = (distance >= self.inner**2) & (distance <= self.outer**2)
        return inside


@dataclass(frozen=True)
class Detector:
    """A detector as a page asks for it.

    Attributes
    ----------
    kind
        ``disk``, ``annulus``, ``com_x`` or ``com_y``.
    cx, cy
        Centre: column and row (disk, annulus).
    inner, outer
        Radii (a disk's radius is ``outer``, its ``inner`` is 0).
    """

    kind: str
    cx: float = 0.0
    cy: float = 0.0
    inner: float = 0.0
    outer: float = 0.0

    @classmethod
    def default(cls, frame_shape: tuple[int, int]) -> Detector:
        """Return the bright-field disk shown first: centred, an eighth of the frame wide."""
        rows, cols = frame_shape
        return cls("disk", (cols - 1) / 2, (rows - 1) / 2, 0.0, min(rows, cols) / 8)

    @classmethod
    def bright_field(cls, frames: npt.NDArray[Any]) -> Detector | None:
        """Find the bright-field disk in frames: the bright pixels around their centre.

        Parameters
        ----------
        frames
            ``(n, rows, cols)`` frames (their sum is looked at).

        Returns
        -------
        Detector or None
            A disk with the centre and the area of the pixels above half the brightest
            (those far from the centre, Bragg spots, left out); ``None`` when the frames
            show no disk.
        """
        total = np.asarray(frames, dtype=np.float64).sum(axis=0)
        rows, cols = total.shape
        top = float(np.percentile(total, 99.5))
        if top <= 0:
            return None
        row, col = np.nonzero(total >= top / 2)
        cy, cx = row.mean(), col.mean()
        radius = math.sqrt(len(row) / math.pi)
        near = (row - cy) ** 2 + (col - cx) ** 2 <= (1.5 * radius) ** 2
        if near.sum() < 4:
            return None
        cy, cx = row[near].mean(), col[near].mean()
        radius = math.sqrt(near.sum() / math.pi)
        if radius > min(rows, cols) / 2:
            return None
        return cls("disk", round(cx * 2) / 2, round(cy * 2) / 2, 0.0, round(radius + 0.5, 1))

    @classmethod
    def parse(cls, spec: Any, frame_shape: tuple[int, int]) -> Detector:
        """Check a detector sent by a page.

        Parameters
        ----------
        spec
            ``{"kind": "disk", "cx", "cy", "r"}``,
            ``{"kind": "annulus", "cx", "cy", "inner", "outer"}``, ``{"kind": "com_x"}`` or
            ``{"kind": "com_y"}``.
        frame_shape
            ``(rows, cols)`` of the run's frames: centres lie within a frame's width of it,
            radii are at most twice its larger side.

        Returns
        -------
        Detector
            The detector, coordinates rounded to hundredths of a pixel.

        Raises
        ------
        ParameterError
            When the kind is unknown, a number is missing or out of range.
        """
        if not isinstance(spec, dict):
            raise ParameterError("a detector is an object with a 'kind'", parameter="detector")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ParameterError(
                f"kind {kind!r} is not one of {', '.join(KINDS)}", parameter="detector"
            )
        if kind in ("com_x", "com_y"):
            return cls(kind)
        rows, cols = frame_shape
        limit = 2.0 * max(rows, cols)
        cx = _number(spec, "cx", -cols, 2.0 * cols)
        cy = _number(spec, "cy", -rows, 2.0 * rows)
        if kind == "disk":
            return cls(kind, cx, cy, 0.0, _number(spec, "r", 0.0, limit, positive=True))
        inner = _number(spec, "inner", 0.0, limit)
        outer = _number(spec, "outer", 0.0, limit, positive=True)
        if inner >= outer:
            raise ParameterError(
                f"inner radius {inner:g} is not below outer radius {outer:g}",
                parameter="detector",
            )
        return cls(kind, cx, cy, inner, outer)

    def describe(self) -> dict[str, Any]:
        """Return the detector as a page gives it (its JSON form)."""
        if self.kind == "disk":
            return {"kind": "disk", "cx": self.cx, "cy": self.cy, "r": self.outer}
        if self.kind == "annulus":
            return {
                "kind": "annulus",
                "cx": self.cx,
                "cy": self.cy,
                "inner": self.inner,
                "outer": self.outer,
            }
        return {"kind": self.kind}

    @property
    def measure(self) -> Measure:
        """What is summed per frame for this detector (a disk and an annulus from 0 agree)."""
        if self.kind in ("com_x", "com_y"):
            return Measure("com")
        return Measure("ring", self.cx, self.cy, self.inner, self.outer)

    def values(
        self, sums: Sums, start: int, stop: int, frame_shape: tuple[int, int]
    ) -> npt.NDArray[np.float64]:
        """Return the image values of frames ``start:stop`` from the sums of its measure.

        Rings give their totals; centre-of-mass maps the shift of the centre of mass from
        the middle of the frame, in pixels along the columns (``com_x``) or rows (``com_y``),
        NaN for an empty frame.
        """
        total = sums["total"][start:stop]
        if self.kind not in ("com_x", "com_y"):
            return total
        rows, cols = frame_shape
        if self.kind == "com_x":
            moment, middle = sums["x"], (cols - 1) / 2
        else:
            moment, middle = sums["y"], (rows - 1) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            shift: npt.NDArray[np.float64] = moment[start:stop] / total - middle
        shift[total == 0] = np.nan
        return shift


def _number(
    spec: dict[str, Any], name: str, low: float, high: float, *, positive: bool = False
) -> float:
    value = spec.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParameterError(f"{name} must be a number, not {value!r}", parameter="detector")
    if not low <= value <= high or (positive and value <= 0):
        bound = f"above 0 and at most {high:g}" if positive else f"from {low:g} to {high:g}"
        raise ParameterError(f"{name} = {value:g} is not {bound}", parameter="detector")
    return round(float(value), _DECIMALS)


@functools.lru_cache(maxsize=64)
def _pixels(
    measure: Measure, frame_shape: tuple[int, int]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows and columns of the pixels of a ring (kept: pages ask for the same rings)."""
    rows, cols = np.nonzero(measure.mask(frame_shape))
    return rows, cols


def batch_sums(frames: npt.NDArray[Any], measures: list[Measure]) -> dict[Measure, Sums]:
    """Sum decoded frames for each measure.

    Parameters
    ----------
    frames
        ``(n, rows, cols)`` frames, as published.
    measures
        What to sum.

    Returns
    -------
    dict
        The per-frame sums of each measure, ``float64`` (exact: integer sums far below
        ``2**53``).
    """
    chunk = frames.view(FrameChunk) if frames.dtype.kind in "bu" else frames
    results: dict[Measure, Sums] = {}
    com: Sums | None = None
    for measure in measures:
        if measure.kind == "ring":
            rows, cols = _pixels(measure, (frames.shape[1], frames.shape[2]))
            selected = np.asarray(frames[:, rows, cols])
            picked = selected.view(FrameChunk) if selected.dtype.kind in "bu" else selected
            results[measure] = {"total": np.asarray(picked.sum(axis=1), dtype=np.float64)}
            continue
        if com is None:
            along_cols = np.asarray(chunk.sum(axis=1), dtype=np.float64)
            along_rows = np.asarray(chunk.sum(axis=2), dtype=np.float64)
            com = {
                "total": along_cols.sum(axis=1),
                "x": along_cols @ np.arange(frames.shape[2], dtype=np.float64),
                "y": along_rows @ np.arange(frames.shape[1], dtype=np.float64),
            }
        results[measure] = com
    return results


def file_sums(
    source: FollowedRun,
    start: int,
    stop: int,
    measures: list[Measure],
    *,
    threads: int | None = None,
) -> dict[Measure, Sums]:
    """Sum frames ``start:stop`` of a run read back from its files, for each measure.

    Merlin rings use the readers' virtual-image kernels (1-bit RAW frames are never
    unpacked); everything else is decoded block by block and summed as :func:`batch_sums`.

    Parameters
    ----------
    source
        The run (its files as far as its complete records go).
    start, stop
        The frames, within those the run holds.
    measures
        What to sum.
    threads
        Most blocks of a Merlin run summed at once (default: one per core).

    Returns
    -------
    dict
        The per-frame sums of each measure.
    """
    run = source.run
    results: dict[Measure, Sums] = {}
    decoded = []
    for measure in measures:
        if measure.kind == "ring" and isinstance(run, MibRun):
            mask = measure.mask(source.frame_shape)
            totals = frame_totals(run, start, stop - start, mask, threads=threads)
            results[measure] = {"total": totals.astype(np.float64)}
        else:
            decoded.append(measure)
    if not decoded:
        return results
    rows, cols = source.frame_shape
    block = max(1, _BLOCK_BYTES // max(1, rows * cols * source.dtype.itemsize))
    parts: list[dict[Measure, Sums]] = []
    for first in range(start, stop, block):
        batch = source.read(first, min(stop, first + block))
        parts.append(batch_sums(batch.frames, decoded))
    for measure in decoded:
        results[measure] = {
            column: np.concatenate([part[measure][column] for part in parts])
            for column in measure.columns
        }
    return results
