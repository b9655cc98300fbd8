"""Virtual detector images: per-frame sums under a mask, straight from the records of a run.

A virtual detector sums, for every frame, the pixels under a mask (all pixels for a virtual
bright-field image of the whole frame). For 1-bit RAW records the pixels are bits: a frame's
total is the population count of its payload words ANDed with the mask encoded the same way
(:meth:`MibLayout.encode` of the mask), so the frames are never unpacked and the work is that
of reading the file. Other records are summed one block at a time without decoding to a new
array where possible (processed pixels in their stored byte order, exact accumulators of
:mod:`stemcast.formats.frame_sums`), RAW ones after decoding the block. Blocks run on one
thread per core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import ParameterError
from stemcast.formats.frame_sums import FrameChunk
from stemcast.formats.mib.layout import MibLayout
from stemcast.formats.mib.lazy import block_records, in_blocks
from stemcast.formats.mib.run import MibRun

#: Bytes of records per block.
_BLOCK_BYTES = 16 * 2**20

#: Turns a block of payloads ``(n, ...)`` into the ``n`` frame totals.
Kernel = Callable[[npt.NDArray[Any]], npt.NDArray[Any]]


def frame_totals(
    run: MibRun,
    first: int,
    count: int,
    mask: npt.ArrayLike | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.uint64]:
    """Sum frames ``first:first+count`` of a run over a mask, without keeping the frames.

    Parameters
    ----------
    run
        The run to read.
    first, count
        The frames.
    mask
        Boolean array of the frame shape, in the orientation of ``file_reader`` (rows flipped
        with respect to the file); ``None`` sums every pixel.
    threads
        Most blocks summed at once (default: one per core); a live consumer that must leave
        the processor to others takes one.

    Returns
    -------
    numpy.ndarray
        ``count`` totals, ``uint64``.
    """
    layout = run.layout
    stored_mask = None if mask is None else _stored_mask(mask, layout)
    if layout.raw and layout.counter_depth == 1:
        kernel = _packed_kernel(layout, stored_mask)
    else:
        kernel = _decoded_kernel(layout, stored_mask)
    totals = np.empty(count, dtype=np.uint64)

    def block(start: int, stop: int) -> None:
        totals[start:stop] = kernel(block_records(run, first + start, first + stop)["data"])

    in_blocks(count, max(1, _BLOCK_BYTES // layout.record_size), block, threads=threads)
    return totals


def block_totals(run: MibRun, lo: int, hi: int) -> npt.NDArray[np.uint64]:
    """Sum each of frames ``lo:hi`` of a run over all its pixels, on the calling thread.

    Parameters
    ----------
    run
        The run to read.
    lo, hi
        The frames.

    Returns
    -------
    numpy.ndarray
        ``hi - lo`` totals, ``uint64``.
    """
    layout = run.layout
    if layout.raw and layout.counter_depth == 1:
        kernel = _packed_kernel(layout, None)
    else:
        kernel = _decoded_kernel(layout, None)
    totals: npt.NDArray[np.uint64] = kernel(block_records(run, lo, hi)["data"]).astype(
        np.uint64, copy=False
    )
    return totals


def _stored_mask(mask: npt.ArrayLike, layout: MibLayout) -> npt.NDArray[np.bool_]:
    """Check the mask and turn it to the stored orientation (rows as in the file)."""
    array = np.asarray(mask)
    if array.shape != layout.frame_shape:
        raise ParameterError(
            f"mask has shape {array.shape}, the frames {layout.frame_shape}", parameter="mask"
        )
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        raise ParameterError("mask must be boolean (or 0 and 1 only)", parameter="mask")
    stored: npt.NDArray[np.bool_] = np.ascontiguousarray(array[::-1].astype(bool))
    return stored


def _packed_kernel(layout: MibLayout, mask: npt.NDArray[np.bool_] | None) -> Kernel:
    """Totals of 1-bit RAW payloads: population counts of (masked) 64-bit words."""
    packed = None
    if mask is not None:
        packed = layout.encode(mask[np.newaxis].astype(layout.dtype)).view(np.uint64)

    def kernel(payload: npt.NDArray[Any]) -> npt.NDArray[Any]:
        words = payload.view(np.uint64)
        if packed is not None:
            words = words & packed
        totals: npt.NDArray[Any] = np.add.reduce(np.bitwise_count(words), axis=1, dtype=np.uint32)
        return totals

    return kernel


def _decoded_kernel(layout: MibLayout, mask: npt.NDArray[np.bool_] | None) -> Kernel:
    """Totals of any other payloads: exact sums of the (masked) pixels."""
    selected = None if mask is None else np.flatnonzero(mask)

    def kernel(payload: npt.NDArray[Any]) -> npt.NDArray[Any]:
        frames = layout.decode(payload) if layout.raw else payload
        pixels = frames.reshape(len(frames), -1)
        if selected is not None:
            pixels = pixels[:, selected]
        totals: npt.NDArray[Any] = pixels.view(FrameChunk).sum(axis=1)
        return totals

    return kernel
