"""Frames of a TVIPS series arranged on a navigation grid, as numpy or dask arrays.

A grid holds, for every navigation position, the index of the frame to show there: a plain
range for stacks and flyback scans, a permuted one for winding scans, and the frames the
rotator index picked for ``scan_shape="auto"``. Chunks whose frames are consecutive in one
file are views of a read-only memory map (no copy); the others are gathered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.formats.frame_sums import FrameArray, FrameChunk
from stemcast.formats.tvips.run import TvipsSeries


@dataclass(frozen=True, slots=True)
class GridSource:
    """Array-like (for :func:`dask.array.from_array`) of ``grid.shape + frame_shape``."""

    series: TvipsSeries
    grid: npt.NDArray[np.int64]

    @property
    def shape(self) -> tuple[int, ...]:
        """Navigation shape then frame shape."""
        return (*self.grid.shape, *self.series.layout.frame_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native dtype of the frames."""
        return self.series.layout.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> npt.NDArray[Any]:
        """Frames of the block ``key``, as a :class:`~stemcast.formats.frame_sums.FrameChunk`."""
        nav = self.grid.ndim
        cells = self.grid[key[:nav]]
        flat = cells.ravel()
        if flat.size and (np.diff(flat) == 1).all():
            frames = self.series.frames_view(int(flat[0]), int(flat[-1]) + 1)
        else:
            frames = self.series.read_frames(flat)
        frames = frames.reshape(*cells.shape, *frames.shape[1:])
        signal = key[nav:]
        if any(part != slice(None) for part in signal):
            frames = frames[(*(slice(None),) * nav, *signal)]
        chunk: npt.NDArray[Any] = frames.view(FrameChunk)
        return chunk

    def read(self) -> npt.NDArray[Any]:
        """Read all frames into memory (one copy), as a :class:`FrameArray`."""
        out = np.empty(self.shape, dtype=self.dtype)
        self.series.read_frames(self.grid, out=out.reshape(-1, *self.series.layout.frame_shape))
        frames: npt.NDArray[Any] = out.view(FrameArray)
        return frames


def lazy_frames(source: GridSource, rechunking: Any) -> Any:
    """Wrap a :class:`GridSource` in a dask array chunked as ``rechunking`` asks.

    Parameters
    ----------
    source
        The frames.
    rechunking
        ``False``: one chunk per file (along the outermost navigation axis for scans);
        ``"auto"`` or ``True``: navigation axes chunked by dask's ``"auto"`` rule (whole scan
        lines when a line fits dask's ``array.chunk-size``), signal axes whole; anything
        else is passed to :meth:`dask.array.Array.rechunk`.

    Returns
    -------
    dask.array.Array
        Native-endian frames.
    """
    import dask.array as da
    from dask import config
    from dask.array.core import normalize_chunks
    from dask.base import tokenize
    from dask.utils import parse_bytes

    nav = source.grid.ndim
    if rechunking is False:
        chunks = _file_chunks(source)
    else:
        # Whole scan lines when one fits a chunk: their frames are consecutive in the file,
        # so a chunk is a view of the memory map.
        line_bytes = math.prod(source.shape[1:]) * source.dtype.itemsize
        limit = parse_bytes(config.get("array.chunk-size"))
        inner = -1 if line_bytes <= limit else "auto"
        chunks = normalize_chunks(  # type: ignore[no-untyped-call]
            ("auto",) + (inner,) * (nav - 1) + (-1, -1), source.shape, dtype=source.dtype
        )
        if inner == -1:
            chunks = (_cut_at_files(source, chunks[0]), *chunks[1:])
    data = da.from_array(  # type: ignore[no-untyped-call]
        source,
        chunks=chunks,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * source.ndim, dtype=source.dtype),
        name=f"tvips-{tokenize(source.series, source.grid)}",
    )
    if rechunking is False or rechunking is True or rechunking == "auto":
        return data
    return data.rechunk(rechunking)


def _cut_at_files(source: GridSource, outer: tuple[int, ...]) -> tuple[int, ...]:
    """Also cut the outermost axis where a file ends, so that few chunks span two files.

    A chunk within one file is a view of its memory map; a chunk across two is a copy. When a
    file ends inside a scan line, that line becomes a chunk of its own.
    """
    flat = source.grid.ravel()
    if flat.size == 0 or not (np.diff(flat) == 1).all():
        return outer
    inner = math.prod(source.grid.shape[1:])
    size = source.grid.shape[0]
    cuts = set(np.cumsum(outer)[:-1].tolist())
    for boundary in source.series.bounds()[1:-1] - int(flat[0]):
        if 0 < boundary < flat.size:
            line, rest = divmod(int(boundary), inner)
            cuts.update((line, line + 1) if rest else (line,))
    points = [0, *sorted(cut for cut in cuts if 0 < cut < size), size]
    return tuple(int(step) for step in np.diff(points))


def _file_chunks(source: GridSource) -> tuple[tuple[int, ...], ...]:
    """Chunks holding about one file each, cut along the outermost navigation axis."""
    frames = [part.frames for part in source.series.parts if part.frames]
    shape = source.shape
    inner = math.prod(source.grid.shape[1:])
    step = max(1, math.ceil(max(frames) / inner))
    if source.grid.ndim == 1 and sum(frames) == shape[0]:
        outer = tuple(frames)
    else:
        outer = tuple(min(step, shape[0] - start) for start in range(0, shape[0], step))
    return (outer, *((size,) for size in shape[1:]))
