"""Lazy Merlin frames whose sums over whole frames are read straight from the run's files.

The sum of every frame (a virtual bright-field image) is the most common reduction of 4D-STEM
data. Over the decoded blocks of a lazy array it costs a pass that decodes each block (byte
swap and row flip into a new array) and another that sums it. :class:`LazyFrames` is the dask
array the lazy reader returns; its :meth:`~LazyFrames.sum` over the two signal axes builds a
graph whose tasks sum each block's records where they lie (the stored pixels of processed
frames in place, the set bits of 1-bit RAW words), as :func:`stemcast.readers.mib.virtual_image`
does: one pass over the file. The result is numpy's, value and dtype. Any other operation,
including a sum over other axes or of a slice of the array, is dask's own.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import numpy.typing as npt
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.lib.array_utils import normalize_axis_tuple

from stemcast.formats.mib.run import MibRun

__all__ = ["LazyFrames"]


class LazyFrames(da.Array):
    """Frames ``first:first+n`` of a run, as the lazy reader returns them (squeezed).

    Built by :meth:`of`; arrays dask derives from it are plain :class:`dask.array.Array`.
    """

    _run: MibRun | None = None
    _first = 0

    @classmethod
    def of(cls, array: da.Array, run: MibRun, first: int) -> LazyFrames:
        """Return ``array`` (the run's frames from ``first`` on, in scan order) as this class.

        Parameters
        ----------
        array
            The lazy frames: navigation axes (contiguous frames in C order, squeezed or not),
            then the two signal axes.
        run
            The run they come from.
        first
            Index of the array's first frame in the run.

        Returns
        -------
        LazyFrames
            The same graph and chunks.
        """
        frames = cls(array.dask, array.name, array.chunks, meta=array._meta)
        frames._run = run
        frames._first = first
        return frames

    def sum(
        self,
        axis: Any = None,
        dtype: Any = None,
        keepdims: bool = False,
        split_every: Any = None,
        out: Any = None,
    ) -> Any:
        """Sum over the given axes, as :meth:`dask.array.Array.sum`.

        A sum over exactly the two signal axes, in numpy's dtype, is read from the records
        of each block without decoding them when every block holds consecutive frames.
        """
        totals = None
        if out is None and self._run is not None and self.ndim >= 2:
            axes = normalize_axis_tuple(axis, self.ndim) if axis is not None else None
            expected = np.sum(np.zeros(1, self.dtype)).dtype
            wanted = np.dtype(dtype) if dtype is not None else expected
            signal = axes is not None and sorted(axes) == [self.ndim - 2, self.ndim - 1]
            if signal and wanted == expected:
                totals = self._frame_totals(expected)
        if totals is None:
            return super().sum(  # type: ignore[no-untyped-call]
                axis=axis, dtype=dtype, keepdims=keepdims, split_every=split_every, out=out
            )
        if keepdims:
            return totals[..., np.newaxis, np.newaxis]
        return totals

    def _frame_totals(self, dtype: np.dtype[Any]) -> da.Array | None:
        """Build one task per block, the totals of its frames.

        ``None`` when a block is not a run of consecutive frames (chunks across scan lines).
        """
        assert self._run is not None
        nav_chunks = self.chunks[:-2]
        nav_shape = self.shape[:-2]
        if any(len(chunks) != 1 for chunks in self.chunks[-2:]) or 0 in self.shape:
            return None
        name = f"mib-frame-sums-{tokenize(self.name, self._run, self._first)}"
        tasks: dict[Any, Any] = {}
        offsets = [np.concatenate([[0], np.cumsum(chunks)]) for chunks in nav_chunks]
        for index in np.ndindex(*(len(chunks) for chunks in nav_chunks)):
            starts = [int(offsets[axis][block]) for axis, block in enumerate(index)]
            stops = [int(offsets[axis][block + 1]) for axis, block in enumerate(index)]
            span = _consecutive(starts, stops, nav_shape)
            if span is None:
                return None
            block_shape = tuple(stop - start for start, stop in zip(starts, stops, strict=True))
            lo, hi = span
            tasks[(name, *index)] = (
                _block_totals,
                self._run,
                self._first + lo,
                self._first + hi,
                block_shape,
                dtype,
            )
        graph = HighLevelGraph.from_collections(name, tasks, dependencies=())
        meta = np.empty((0,) * len(nav_shape), dtype)
        return da.Array(graph, name, nav_chunks, meta=meta)  # type: ignore[no-untyped-call]


def _consecutive(
    starts: list[int], stops: list[int], shape: tuple[int, ...]
) -> tuple[int, int] | None:
    """Flat ``(lo, hi)`` of a block of a C-ordered grid if its cells are consecutive."""
    if not shape:
        return 0, 1
    # Consecutive: whole trailing axes, any range on one axis, single cells before it.
    axis = len(shape) - 1
    while axis > 0 and starts[axis] == 0 and stops[axis] == shape[axis]:
        axis -= 1
    if any(stops[before] - starts[before] != 1 for before in range(axis)):
        return None
    lo = int(np.ravel_multi_index(starts, shape))
    last = int(np.ravel_multi_index([stop - 1 for stop in stops], shape))
    return lo, last + 1


def _block_totals(
    run: MibRun, lo: int, hi: int, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    from stemcast.formats.mib.virtual import block_totals

    totals: npt.NDArray[Any] = block_totals(run, lo, hi).astype(dtype, copy=False)
    return totals.reshape(shape)
