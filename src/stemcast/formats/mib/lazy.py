"""Dask arrays over Merlin runs whose tasks carry slice descriptors, not data.

The graph holds one small :class:`FrameSource` (paths, layout, shape); each task asks it for a
block, and the source reads just the records of that block from the file and decodes them into
native-endian frames. Pickling the array therefore costs a few hundred bytes whatever the file
size, and tasks run on any worker that sees the files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.formats.frame_sums import FrameChunk
from stemcast.formats.mib.run import MibRun, check_headers


@dataclass(frozen=True, slots=True)
class FrameSource:
    """Array-like view of frames ``first:first+prod(nav_shape)`` of a run, decoded on access.

    Parameters
    ----------
    run
        The run to read.
    first
        Index of the first frame.
    nav_shape
        Navigation shape in array order.
    flip_rows
        Whether to flip each frame vertically (the orientation of ``file_reader``).
    """

    run: MibRun
    first: int
    nav_shape: tuple[int, ...]
    flip_rows: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape: navigation then ``(rows, cols)``."""
        return (*self.nav_shape, *self.run.layout.frame_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native dtype of the decoded frames."""
        return self.run.layout.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> npt.NDArray[Any]:
        """Read and decode the block ``key`` (a tuple of step-1 slices, one per axis).

        The block is a :class:`~stemcast.formats.frame_sums.FrameChunk`: its sums over whole
        frames (what dask asks of each block for a virtual image) take the fast exact path.
        """
        nav_ndim = len(self.nav_shape)
        ranges = [key[axis].indices(self.shape[axis]) for axis in range(nav_ndim)]
        block_nav = tuple(max(stop - start, 0) for start, stop, _ in ranges)
        if 0 in block_nav:  # an empty block (a run without frames): nothing to read
            signal_shape = np.empty(self.run.layout.frame_shape)[key[nav_ndim:]].shape
            empty: npt.NDArray[Any] = np.empty((*block_nav, *signal_shape), self.dtype)
            return empty.view(FrameChunk)
        if nav_ndim == 0:
            lo, hi = self.first, self.first + 1
        else:
            starts = [start for start, _, _ in ranges]
            lasts = [max(stop - 1, start) for start, stop, _ in ranges]
            lo = self.first + int(np.ravel_multi_index(starts, self.nav_shape))
            hi = self.first + int(np.ravel_multi_index(lasts, self.nav_shape)) + 1
        records = block_records(self.run, lo, hi)
        # Decoded straight into the flipped orientation: one pass, and a C-ordered result.
        frames = self.run.layout.decode(records["data"], flip_rows=self.flip_rows)
        if nav_ndim == 0:
            frame: npt.NDArray[Any] = frames[0][key]
            return frame
        if nav_ndim > 1:
            span = [stop - start for start, stop, _ in ranges]
            if int(np.prod(span)) != hi - lo:
                frames = _select_block(frames, ranges, self.nav_shape, lo - self.first)
        frames = frames.reshape(*block_nav, *frames.shape[1:])
        signal: tuple[Any, ...] = (Ellipsis, *key[nav_ndim:])
        if any(part != slice(None) for part in signal[1:]):
            frames = frames[signal]
        chunk: npt.NDArray[Any] = np.ascontiguousarray(frames).view(FrameChunk)
        return chunk


def read_frames(
    run: MibRun, first: int, nav_shape: tuple[int, ...], *, flip_rows: bool = False
) -> npt.NDArray[Any]:
    """Decode frames ``first:first+prod(nav_shape)`` into one array, in parallel blocks.

    Each block is decoded straight into its slice of the result (no per-block arrays to
    concatenate), on as many threads as there are cores; numpy releases the GIL while it
    copies and unpacks.

    Parameters
    ----------
    run
        The run to read.
    first
        Index of the first frame.
    nav_shape
        Navigation shape in array order.
    flip_rows
        Whether to flip each frame vertically (the orientation of ``file_reader``).

    Returns
    -------
    numpy.ndarray
        ``nav_shape + frame_shape``, native-endian.
    """
    layout = run.layout
    count = int(np.prod(nav_shape, dtype=np.int64))
    out = np.empty((count, *layout.frame_shape), dtype=layout.dtype)
    step = max(1, _AUTO_CHUNK_BYTES // max(layout.bytes_per_frame_decoded, 1))

    def decode(start: int, stop: int) -> None:
        records = block_records(run, first + start, first + stop)
        layout.decode(records["data"], out=out[start:stop], flip_rows=flip_rows)

    in_blocks(count, step, decode)
    return out.reshape(*nav_shape, *layout.frame_shape)


def in_blocks(
    count: int, per_block: int, work: Callable[[int, int], None], *, threads: int | None = None
) -> None:
    """Call ``work(start, stop)`` for consecutive blocks of ``range(count)``, one thread per core.

    Parameters
    ----------
    count
        Number of items.
    per_block
        Items per block (the last block may be shorter).
    work
        Called once per block, from a pool thread; it should release the GIL (numpy does).
    threads
        Most blocks worked on at once (default: one per core).
    """

    def run_block(start: int) -> None:
        work(start, min(start + per_block, count))

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        list(pool.map(run_block, range(0, count, max(per_block, 1))))


def block_records(run: MibRun, lo: int, hi: int) -> npt.NDArray[Any]:
    """Return records ``lo:hi``, header-checked, without copying them when possible.

    When they lie in one file they are a read-only map of the page cache (decoding then copies
    the pixels once); otherwise they are read into memory.
    """
    try:
        mapped = run.memmap(lo, hi, "r")
    except (OSError, ValueError):  # the file shrank: let read_records report it
        mapped = None
    if mapped is None:
        return run.read_records(lo, hi)
    if len(mapped):
        index, local = run._locate(lo)
        check_headers(mapped, run.layout, run.segments[index].path, local * run.layout.record_size)
    return mapped


def _select_block(
    frames: npt.NDArray[Any],
    ranges: list[tuple[int, int, int]],
    nav_shape: tuple[int, ...],
    base: int,
) -> npt.NDArray[Any]:
    """Pick the frames of a block that does not span whole lines from a contiguous read."""
    grids = np.meshgrid(*[np.arange(start, stop) for start, stop, _ in ranges], indexing="ij")
    flat = np.ravel_multi_index([grid.ravel() for grid in grids], nav_shape) - base
    return frames[flat]


def lazy_frames(source: FrameSource, chunks: Any) -> Any:
    """Wrap a :class:`FrameSource` in a dask array with the given chunks.

    Parameters
    ----------
    source
        The frames.
    chunks
        Anything :func:`dask.array.from_array` accepts; ``"auto"`` keeps each frame whole and
        splits the navigation axes only, into contiguous runs of frames (whole scan lines when
        they fit) of about :data:`_AUTO_CHUNK_BYTES`.

    Returns
    -------
    dask.array.Array
        Native-endian frames.
    """
    import dask.array as da
    from dask.array.core import normalize_chunks

    if isinstance(chunks, str) and chunks == "auto":
        chunks = normalize_chunks(  # type: ignore[no-untyped-call]
            _auto_chunks(source.nav_shape, source.run.layout.bytes_per_frame_decoded),
            source.shape,
            dtype=source.dtype,
        )
    return da.from_array(  # type: ignore[no-untyped-call]
        source,
        chunks=chunks,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * source.ndim, dtype=source.dtype),
        name=f"mib-{_token(source)}",
    )


def _auto_chunks(nav_shape: tuple[int, ...], frame_bytes: int) -> tuple[int, ...]:
    """Chunks of about :data:`_AUTO_CHUNK_BYTES` that are contiguous runs of frames.

    Whole frames; whole trailing navigation axes (complete scan lines) as long as they fit,
    so that each block is one contiguous read. Blocks of a square chunking (dask's ``"auto"``)
    would span many scan lines of which only a few frames are kept.
    """
    budget = max(_AUTO_CHUNK_BYTES // max(frame_bytes, 1), 1)
    chunks: list[int] = []
    for size in reversed(nav_shape):
        if size <= budget:
            chunks.append(size)
            budget //= max(size, 1)
        else:
            blocks = -(-size // budget)
            chunks.append(-(-size // blocks))
            budget = 1
    return (*reversed(chunks), -1, -1)


#: Chunk size for ``chunks="auto"``: small enough to stay in the allocator's free lists (no
#: page faults on every chunk), large enough to keep the task count low.
_AUTO_CHUNK_BYTES = 16 * 2**20


def _token(source: FrameSource) -> str:
    from dask.base import tokenize

    return str(tokenize(source.run, source.first, source.nav_shape, source.flip_rows))
