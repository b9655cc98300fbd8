"""Frame arrays whose ``sum`` and ``mean`` are exact, and faster than numpy's.

The most common reductions of 4D-STEM data are sums over whole frames (a virtual bright-field
image) or over the scan (a mean diffraction pattern). numpy computes them on one core, in its
default 64-bit accumulator (half the speed of a 32-bit one), and over a vertically flipped view
(the orientation the Merlin reader returns) with inner loops one row long. The readers
therefore return their frames as

* :class:`FrameMemmap`: still a copy-on-write :class:`numpy.memmap` of the file (eager
  processed Merlin data, eager blockfiles);
* :class:`FrameArray`: an in-memory :class:`numpy.ndarray` (eager RAW or multi-file Merlin
  data, eager TVIPS series);
* :class:`FrameChunk`: the blocks of the lazy (dask) arrays of these three readers;

whose ``sum`` and ``mean`` of unsigned integers

* accumulate in the narrowest unsigned type that cannot overflow for the dtype's largest value
  (16 or 32 bits), first along the last axis alone when that is narrower, then widen the
  result to numpy's own result dtype;
* read axes stored backwards forwards when they are summed away (and flip the result back
  along the ones that are kept);
* for :class:`FrameArray` and :class:`FrameMemmap` of at least :data:`MIN_PARALLEL_BYTES`,
  split the array into blocks summed on a thread pool (numpy releases the GIL). Lazy chunks
  stay on the thread that dask runs them on.

Integer sums without overflow do not depend on the order of the additions, so results are bit
for bit numpy's, dtype included. Everything else (signed or floating-point data, ``out``,
``where``, ``initial``, an explicit floating-point ``dtype``) is numpy's own reduction. The
outcome of any other operation is a plain :class:`numpy.ndarray` or numpy scalar, as for
:class:`numpy.memmap`.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numpy.lib.array_utils import normalize_axis_tuple

#: Arrays smaller than this are summed on the calling thread (a thread pool costs ~0.1 ms).
MIN_PARALLEL_BYTES = 32 * 2**20

#: Bytes per block of a parallel sum: several blocks per core keep the cores busy to the end.
BLOCK_BYTES = 16 * 2**20

#: Integers below this are exact in float64: when no total can reach it, the exact integer sum
#: divided by the count is numpy's floating-point mean, bit for bit.
_EXACT_FLOAT_LIMIT = 2**53

#: Accumulators tried, narrowest first.
_NARROW = (np.dtype(np.uint16), np.dtype(np.uint32))


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _FrameSums(np.ndarray[Any, np.dtype[Any]]):
    """The ``sum`` and ``mean`` of the frame arrays; see the module docstring."""

    #: Whether large arrays are summed on a thread pool.
    _parallel: ClassVar[bool] = True

    def sum(  # type: ignore[override]
        self,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Sum of the elements over the given axes, as :meth:`numpy.ndarray.sum`."""
        if out is None and not kwargs:
            axes = _axes(self, axis)
            result = _fast_sum(self, axes, dtype, self._parallel)
            if result is not None:
                return _finish(result, axes, keepdims)
        return np.ndarray.sum(
            self.view(np.ndarray), axis=axis, dtype=dtype, out=out, keepdims=keepdims, **kwargs
        )

    def mean(  # type: ignore[override]
        self,
        axis: Any = None,
        dtype: Any = None,
        out: Any = None,
        keepdims: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Mean of the elements over the given axes, as :meth:`numpy.ndarray.mean`."""
        axes = _axes(self, axis)
        count = int(np.prod([self.shape[index] for index in axes], dtype=np.int64))
        exact = self.dtype.kind in "bu" and 0 < _largest(self.dtype) * count < _EXACT_FLOAT_LIMIT
        if out is None and dtype is None and not kwargs and exact:
            total = _fast_sum(self, axes, None, self._parallel)
            if total is not None:
                mean = np.true_divide(total, count, dtype=np.float64)
                return _finish(mean, axes, keepdims)
        return np.ndarray.mean(
            self.view(np.ndarray), axis=axis, dtype=dtype, out=out, keepdims=keepdims, **kwargs
        )

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        """Results of ufuncs are plain arrays (or scalars), as for :class:`numpy.memmap`."""
        if isinstance(array, _FrameSums):  # an ``out=`` argument, returned as given
            return array
        plain = array.view(np.ndarray) if isinstance(array, np.ndarray) else array
        return plain[()] if return_scalar else plain


class FrameArray(_FrameSums):
    """An in-memory :class:`numpy.ndarray` of frames with fast exact ``sum`` and ``mean``."""


class FrameChunk(_FrameSums):
    """A block of a lazy array: fast exact ``sum`` and ``mean`` on the calling thread only."""

    _parallel = False


class FrameMemmap(_FrameSums, np.memmap):
    """A :class:`numpy.memmap` of frames with fast exact ``sum`` and ``mean``."""

    def __getitem__(self, index: Any) -> Any:
        """Index as a memory map: views stay maps, copies become :class:`FrameArray` objects."""
        result = super().__getitem__(index)
        if isinstance(result, FrameMemmap) and getattr(result, "_mmap", None) is None:
            return result.view(FrameArray)
        return result


def as_frames(data: Any) -> Any:
    """Return ``data`` as a :class:`FrameMemmap` or :class:`FrameArray` view (no copy).

    Parameters
    ----------
    data
        A :class:`numpy.memmap` (its file mapping is kept) or any other numpy array; anything
        else (a dask array) is returned unchanged.

    Returns
    -------
    FrameMemmap or FrameArray or object
        A view of the same memory.
    """
    if isinstance(data, np.memmap):
        return data.view(FrameMemmap)
    if isinstance(data, np.ndarray):
        return data.view(FrameArray)
    return data


def _axes(array: npt.NDArray[Any], axis: Any) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(array.ndim))
    return tuple(normalize_axis_tuple(axis, array.ndim))


def _largest(dtype: np.dtype[Any]) -> int:
    return 1 if dtype.kind == "b" else int(np.iinfo(dtype).max)


def _fast_sum(
    array: npt.NDArray[Any], axes: tuple[int, ...], dtype: Any, parallel: bool
) -> npt.NDArray[Any] | None:
    """Exact sum over ``axes`` with the reduced axes kept; ``None`` when numpy should do it."""
    if array.dtype.kind not in "bu" or array.ndim == 0 or array.size == 0:
        return None
    accumulator = np.add.reduce(np.zeros(1, dtype=array.dtype), dtype=dtype).dtype
    if accumulator.kind not in "bui":
        return None
    plain = array.view(np.ndarray)
    backwards = tuple(index for index in range(plain.ndim) if plain.strides[index] < 0)
    forwards = np.flip(plain, axis=backwards) if backwards else plain
    largest = _largest(array.dtype)
    split = _split_axis(forwards) if parallel and array.nbytes >= MIN_PARALLEL_BYTES else None
    if split is None:
        total = _exact_sum(forwards, axes, accumulator, largest)
    else:
        total = _threaded_sum(forwards, axes, accumulator, largest, split)
    kept_backwards = tuple(index for index in backwards if index not in axes)
    if kept_backwards:
        total = np.ascontiguousarray(np.flip(total, axis=kept_backwards))
    return total


def _split_axis(array: npt.NDArray[Any]) -> int | None:
    """First axis long enough to give every core a block; ``None`` on one core."""
    workers = _cores()
    if workers < 2:
        return None
    return next((index for index, size in enumerate(array.shape) if size >= workers), None)


def _threaded_sum(
    array: npt.NDArray[Any],
    axes: tuple[int, ...],
    accumulator: np.dtype[Any],
    largest: int,
    split: int,
) -> npt.NDArray[Any]:
    """:func:`_exact_sum` of blocks along ``split`` on a thread pool, then combined."""
    workers = _cores()
    blocks = min(array.shape[split], max(2 * workers, -(-array.nbytes // BLOCK_BYTES)))
    edges = np.linspace(0, array.shape[split], blocks + 1).astype(int)

    def block_sum(bounds: tuple[int, int]) -> npt.NDArray[Any]:
        index = [slice(None)] * array.ndim
        index[split] = slice(*bounds)
        return _exact_sum(array[tuple(index)], axes, accumulator, largest)

    with ThreadPoolExecutor(max_workers=min(workers, blocks)) as pool:
        parts = list(pool.map(block_sum, itertools.pairwise(edges)))
    joined = np.concatenate(parts, axis=split)
    if split in axes:
        joined = np.add.reduce(joined, axis=split, dtype=accumulator, keepdims=True)
    return joined


def _exact_sum(
    array: npt.NDArray[Any], axes: tuple[int, ...], accumulator: np.dtype[Any], largest: int
) -> npt.NDArray[Any]:
    """Sum over ``axes`` (kept, length 1) in the narrowest accumulator that cannot overflow.

    ``largest`` bounds every element; when even the narrowest accumulator would overflow over
    all of ``axes`` but not along the last axis alone, that axis is summed first.
    """
    count = int(np.prod([array.shape[index] for index in axes], dtype=np.int64))
    for narrow in _NARROW:
        if narrow.itemsize < accumulator.itemsize and largest * count <= _largest(narrow):
            total = np.add.reduce(array, axis=axes, dtype=narrow, keepdims=True)
            return total.astype(accumulator)
    last = array.ndim - 1
    if len(axes) > 1 and last in axes and array.shape[last] > 1:
        for narrow in _NARROW:
            bound = largest * array.shape[last]
            if narrow.itemsize < accumulator.itemsize and bound <= _largest(narrow):
                rows = np.add.reduce(array, axis=last, dtype=narrow, keepdims=True)
                return _exact_sum(rows, axes, accumulator, bound)
    return np.add.reduce(array, axis=axes, dtype=accumulator, keepdims=True)


def _finish(result: npt.NDArray[Any], axes: tuple[int, ...], keepdims: bool) -> Any:
    """Drop the summed axes (kept so far) unless ``keepdims``; 0-d results become scalars."""
    if not keepdims:
        result = result.squeeze(axis=axes)
    return result[()] if result.ndim == 0 else result
