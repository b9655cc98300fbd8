"""EMD (NCEM flavour) writer: whole signals (:func:`file_writer`) or frame by frame.

:class:`EmdWriter` writes frames as they come (the converters use it).

The layout is the one HyperSpy and the reference library write and read, which ncempy reads
too: root attributes ``version_major``/``version_minor`` (EMD 0.2), the metadata groups
``microscope``, ``sample``, ``user``, ``comments``, and ``/signals/<title>`` holding ``data``
and ``dim1 ... dimN``. ``data`` is the array *transposed* (HDF5 axis ``k`` is described by
``dim{k+1}`` and is the array's axis ``N-1-k``), so a 4D-STEM signal ``(y, x, ky, kx)`` is
stored ``(kx, ky, x, y)``.

Chunks hold whole diffraction patterns (the reference splits patterns into tiles, which
makes reading one pattern slow). When every chunk is one pattern, :class:`EmdWriter` writes
each frame as a ready-made chunk (``H5Dwrite_chunk``), compressing in threads if asked: no
HDF5 hyperslab machinery, memory bounded by one batch of frames. Other chunk shapes are
written by slabs of whole chunk rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from stemcast._atomic import AtomicFile
from stemcast.batch import FrameBatch
from stemcast.errors import ParameterError
from stemcast.shape import complete_lines
from stemcast.sink import FrameSink

__all__ = ["EmdWriter", "default_chunks", "file_writer"]

_logger = logging.getLogger(__name__)

#: ``file_writer`` keywords that are options of the HDF5 dataset, not root attributes.
_DATASET_OPTIONS = frozenset(
    {"compression", "compression_opts", "shuffle", "fletcher32", "scaleoffset"}
)
#: Patterns at least this large get a chunk each; smaller ones are grouped.
_WHOLE_PATTERN_BYTES = 1 << 16
#: Aimed size of a chunk of grouped small patterns.
_TARGET_CHUNK_BYTES = 1 << 20
#: Frames per step when ``file_writer`` streams an array through :class:`EmdWriter`.
_BATCH_BYTES = 1 << 26
_METADATA_GROUPS = ("microscope", "sample", "user", "comments")
_GZIP_DEFAULT_LEVEL = 4
#: Bytes written between two background flushes of the output to disk.
_FLUSH_BYTES = 1 << 26
_LONG_STACK = 1 << 30
#: Side of the square tiles frames are transposed by: a tile of the source and of the
#: transposed frame both stay in the CPU cache, where a whole-frame transpose strides
#: through memory (about twice as slow for 256 x 256 frames).
_TILE = 64


def default_chunks(shape: Sequence[int], itemsize: int, signal_dims: int) -> tuple[int, ...]:
    """Chunk shape (array order) that keeps every pattern whole.

    A pattern of at least 64 KiB is a chunk of its own (one read per pattern, and the
    streaming writer can write it directly); smaller patterns are grouped up to about 1 MiB,
    along the fastest navigation axis first.

    Parameters
    ----------
    shape
        Array shape, navigation axes first.
    itemsize
        Bytes per element.
    signal_dims
        Number of trailing signal axes.

    Returns
    -------
    tuple of int
        The chunk shape, in array order.
    """
    shape = tuple(int(size) for size in shape)
    signal_dims = min(max(signal_dims, 0), len(shape))
    split = len(shape) - signal_dims
    navigation, signal = shape[:split], shape[split:]
    pattern = max(math.prod(signal) * itemsize, 1)
    room = 1 if pattern >= _WHOLE_PATTERN_BYTES else max(_TARGET_CHUNK_BYTES // pattern, 1)
    chunks = []
    for size in reversed(navigation):
        take = max(min(size, room), 1)
        chunks.append(take)
        room = max(room // take, 1)
    return (*reversed(chunks), *(max(size, 1) for size in signal))


def _units_attribute(units: Any) -> str:
    """NCEM spelling of a unit: ``"nm"`` -> ``"[n_m]"``; no unit -> ``""``."""
    if units is None or str(units) in ("", "<undefined>"):
        return ""
    return "[" + "_".join(str(units)) + "]"


def _set_attributes(node: h5py.Group, items: Mapping[str, Any], where: str) -> None:
    for key, value in items.items():
        try:
            node.attrs[key] = value
        except (TypeError, ValueError):
            _logger.warning("The %s item %r (%r) can't be written to EMD.", where, key, value)


class _BackgroundFlush:
    """Flush a growing file to disk in a thread while more is written to it.

    The output is made durable (fsync) before it is renamed into place; flushing as it grows
    overlaps that disk work with the writing, so the final fsync has little left to do.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._wanted = threading.Event()
        self._stopping = False
        self._written = 0
        self._thread = threading.Thread(target=self._run, name="emd-flush", daemon=True)
        self._thread.start()

    def wrote(self, size: int) -> None:
        """Count ``size`` more bytes; ask for a flush every :data:`_FLUSH_BYTES`."""
        self._written += size
        if self._written >= _FLUSH_BYTES:
            self._written = 0
            self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            os.fsync(self._fd)

    def stop(self) -> None:
        """Stop the thread and close the file descriptor."""
        self._stopping = True
        self._wanted.set()
        self._thread.join()
        os.close(self._fd)


class EmdWriter(FrameSink):
    """Write one signal to an NCEM EMD file frame by frame, atomically.

    A :class:`~stemcast.sink.FrameSink`. Frames are written in acquisition (raster) order; the
    file appears under its final name only when :meth:`commit` succeeds, and :meth:`abort`
    removes the temporary file (an existing file of that name is left untouched). When the run
    ends early, :meth:`commit` keeps the complete scan lines (or, if not one line is complete,
    the frames as a stack).

    Parameters
    ----------
    path
        The ``.emd`` file to write (replaced if it exists).
    signal_shape
        Shape of one frame (pattern), e.g. ``(rows, cols)``.
    dtype
        Stored dtype; frames must cast to it safely.
    scan_shape
        Navigation shape in HyperSpy order, ``(x, y)`` for a 2-D scan (``()`` for a single
        frame); ``None`` for a stack of unknown length that grows as frames arrive.
    axes
        Axis dictionaries (``name``, ``units``, ``scale``, ``offset`` or a full ``axis``
        vector) of the whole array, navigation axes first, in array order.
    title
        The signal's name (its group under ``/signals``); defaults to
        ``metadata["General"]["title"]``, else ``"__unnamed__"``.
    metadata
        HyperSpy-style metadata; its ``Signal`` items become attributes of the signal group.
    original_metadata
        Its ``microscope``, ``sample``, ``user`` and ``comments`` items become the attributes
        of the groups of the same names.
    chunks
        Chunk shape in array order, ``True`` for HDF5's guess, or ``None`` (or ``False``:
        a resizable dataset is always chunked) for :func:`default_chunks`.
    compression, compression_opts, shuffle, fletcher32, scaleoffset
        HDF5 dataset filters, as ``h5py.Group.create_dataset`` takes them.
    attributes
        Extra attributes of the root group.
    threads
        Threads that compress chunks (gzip); defaults to the number of CPUs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        signal_shape: Sequence[int],
        dtype: npt.DTypeLike,
        *,
        scan_shape: Sequence[int] | None = None,
        axes: Sequence[Mapping[str, Any]] | None = None,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        original_metadata: Mapping[str, Any] | None = None,
        chunks: Sequence[int] | bool | None = None,
        compression: str | int | None = None,
        compression_opts: Any = None,
        shuffle: bool = False,
        fletcher32: bool = False,
        scaleoffset: int | None = None,
        attributes: Mapping[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.signal_shape = tuple(int(size) for size in signal_shape)
        self.dtype = np.dtype(dtype)
        self.scan_shape = None if scan_shape is None else tuple(int(size) for size in scan_shape)
        nav = () if self.scan_shape is None else tuple(reversed(self.scan_shape))
        if any(size < 1 for size in (*nav, *self.signal_shape)):
            raise ParameterError(
                f"empty shape: scan {self.scan_shape}, signal {self.signal_shape}",
                parameter="scan_shape",
            )
        self._nav = nav
        self._frames_total = math.prod(nav) if self.scan_shape is not None else None
        # A stack of unknown length is chunked as if it were long.
        array_shape = (
            (*nav, *self.signal_shape)
            if self.scan_shape is not None
            else (_LONG_STACK, *self.signal_shape)
        )
        self._axes = [dict(axis) for axis in axes] if axes is not None else None
        metadata = metadata or {}
        general = metadata.get("General") or {}
        self.title = title or str(general.get("title") or "") or "__unnamed__"
        self.frames_written = 0
        nav_dims = len(array_shape) - len(self.signal_shape)
        stored_chunks: tuple[int, ...] | bool
        if chunks is True:
            self._nav_chunks: tuple[int, ...] | None = None
            stored_chunks = True
        else:
            array_chunks = (
                default_chunks(array_shape, self.dtype.itemsize, len(self.signal_shape))
                if chunks is None or chunks is False
                else tuple(int(size) for size in chunks)
            )
            if len(array_chunks) != len(array_shape):
                raise ParameterError(
                    f"{array_chunks} has {len(array_chunks)} axes, the data has {len(array_shape)}",
                    parameter="chunks",
                )
            self._nav_chunks = array_chunks[:nav_dims]
            stored_chunks = tuple(reversed(array_chunks))
        if isinstance(compression, int) and not isinstance(compression, bool):
            # h5py's shorthand: an integer is a gzip level.
            compression, compression_opts = "gzip", compression
        self._level: int | None = None
        if compression == "gzip":
            self._level = _GZIP_DEFAULT_LEVEL if compression_opts is None else int(compression_opts)
            compression_opts = self._level
        self._direct = (
            self._nav_chunks is not None
            and all(size == 1 for size in self._nav_chunks)
            and self.dtype.kind in "biufc"
            and not fletcher32
            and scaleoffset is None
            and (self._level is not None or (compression is None and not shuffle))
        )
        self._shuffle = bool(shuffle)
        self._executor: ThreadPoolExecutor | None = None
        if self._direct and self._level is not None:
            self._executor = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)
        # Two staging buffers, reused between batches (a fresh buffer would page-fault on
        # every batch): without compression, one batch is transposed in a thread into one
        # buffer while the chunks of the previous batch are written from the other.
        self._staging = [np.empty((0, *reversed(self.signal_shape)), self.dtype)] * 2
        self._staged: tuple[int, npt.NDArray[Any]] | None = None
        self._next_staging = 0
        self._transposer: ThreadPoolExecutor | None = None
        if self._direct and self._level is None:
            self._transposer = ThreadPoolExecutor(max_workers=1)
        self._pending: list[npt.NDArray[Any]] = []
        self._pending_frames = 0
        self._slab_start = 0

        if not self.path.parent.is_dir():
            raise ParameterError(
                "the folder of the output does not exist", path=self.path, parameter="path"
            )
        self._output = AtomicFile(self.path)
        # The open HDF5 file and the flushing thread, closed before the rename or removal.
        self._resources = contextlib.ExitStack()
        try:
            self._file = self._resources.enter_context(h5py.File(self._output.temporary, "w"))
            self._flush = _BackgroundFlush(self._output.temporary)
            self._resources.callback(self._flush.stop)
            self._group = self._prepare(metadata, original_metadata or {}, attributes or {})
            stored = tuple(reversed(array_shape))
            if self.scan_shape is None:
                stored = (*stored[:-1], 0)
            dataset_options: dict[str, Any] = {
                "compression": compression,
                "compression_opts": compression_opts,
                "shuffle": shuffle or None,
                "fletcher32": fletcher32 or None,
                "scaleoffset": scaleoffset,
            }
            self._data = self._group.create_dataset(
                "data",
                shape=stored,
                dtype=self.dtype,
                chunks=stored_chunks,
                maxshape=(None,) * len(stored),
                **{key: value for key, value in dataset_options.items() if value is not None},
            )
        except BaseException:
            self.abort()
            raise

    def _prepare(
        self,
        metadata: Mapping[str, Any],
        original: Mapping[str, Any],
        attributes: Mapping[str, Any],
    ) -> h5py.Group:
        file = self._file
        file.attrs["version_major"] = "0"
        file.attrs["version_minor"] = "2"
        _set_attributes(file, attributes, "root attribute")
        for name in _METADATA_GROUPS:
            group = file.create_group(name)
            items = original.get(name)
            if isinstance(items, Mapping):
                _set_attributes(group, items, f"original_metadata.{name}")
        signals = file.create_group("signals")
        signals.attrs["emd_group_type"] = 1
        group = signals.create_group(self.title)
        group.attrs["emd_group_type"] = 1
        _set_attributes(group, metadata.get("Signal") or {}, "metadata.Signal")
        return group

    # Writing ----------------------------------------------------------------------------

    def write(self, batch: npt.ArrayLike | FrameBatch) -> None:
        """Append frames in acquisition order.

        Parameters
        ----------
        batch
            ``(n, *signal_shape)`` frames (any strides, e.g. a flipped view), one frame of
            ``signal_shape``, or a :class:`~stemcast.batch.FrameBatch`.

        Raises
        ------
        ParameterError
            If the frames do not fit the file or the scan, or the writer was committed or
            aborted. A failure to write aborts the writer.
        """
        self.check_open()
        array = batch.frames if isinstance(batch, FrameBatch) else np.asarray(batch)
        if array.shape == self.signal_shape:
            array = array[np.newaxis]
        if array.shape[1:] != self.signal_shape:
            raise ParameterError(
                f"frames of shape {array.shape[1:]}, the writer takes {self.signal_shape}",
                path=self.path,
                parameter="frames",
            )
        if not np.can_cast(array.dtype, self.dtype, "safe"):
            raise ParameterError(
                f"{array.dtype} frames do not fit the file's {self.dtype}",
                path=self.path,
                parameter="frames",
            )
        count = array.shape[0]
        if self._frames_total is not None and self.frames_written + count > self._frames_total:
            raise ParameterError(
                f"the scan {self.scan_shape} holds {self._frames_total} frames; "
                f"{self.frames_written + count} were given",
                path=self.path,
                parameter="frames",
            )
        if count == 0:
            return
        try:
            if self._direct:
                self._write_chunks(array)
            else:
                self._pending.append(np.array(array, dtype=self.dtype, copy=True))
                self._pending_frames += count
                self._write_slabs(final=False)
        except BaseException:
            self.abort()
            raise
        self.frames_written += count

    def _stored_offsets(self, start: int, count: int) -> Iterator[tuple[int, ...]]:
        zeros = (0,) * len(self.signal_shape)
        if self.scan_shape is None:
            for index in range(start, start + count):
                yield (*zeros, index)
            return
        if not self._nav:
            yield zeros
            return
        indices = np.unravel_index(np.arange(start, start + count), self._nav)
        for position in zip(*(index.tolist() for index in reversed(indices)), strict=True):
            yield (*zeros, *position)

    def _write_chunks(self, array: npt.NDArray[Any]) -> None:
        """Write each frame as one chunk: transposed to the stored order, filtered here.

        Without compression the chunks of a batch are written during the next call (or at
        :meth:`commit`), while that call's batch is transposed in a thread; ``array`` is no
        longer read once this returns.
        """
        if self.scan_shape is None:
            self._data.resize(self.frames_written + len(array), axis=self._data.ndim - 1)
        buffer = self._staging_buffer(len(array))
        if self._transposer is None:
            _transpose_frames(buffer, array)
            self._write_staged(self.frames_written, buffer)
            return
        transposing = self._transposer.submit(_transpose_frames, buffer, array)
        try:
            self._write_previous()
        finally:
            transposing.result()
        self._staged = (self.frames_written, buffer)

    def _staging_buffer(self, count: int) -> npt.NDArray[Any]:
        """Return the staging buffer not holding the previous batch, for ``count`` frames."""
        index = self._next_staging
        self._next_staging ^= 1
        if self._staging[index].shape[0] < count:
            self._staging[index] = np.empty((count, *reversed(self.signal_shape)), self.dtype)
        return self._staging[index][:count]

    def _write_previous(self) -> None:
        """Write the chunks of the batch staged by the previous call, if any."""
        if self._staged is not None:
            start, staged = self._staged
            self._staged = None
            self._write_staged(start, staged)

    def _write_staged(self, start: int, staged: npt.NDArray[Any]) -> None:
        payloads: Any = staged
        if self._executor is not None:
            payloads = self._executor.map(self._filter, staged)
        for offset, payload in zip(self._stored_offsets(start, len(staged)), payloads, strict=True):
            self._data.id.write_direct_chunk(offset, payload)
            self._flush.wrote(len(payload) if isinstance(payload, bytes) else payload.nbytes)

    def _filter(self, chunk: npt.NDArray[Any]) -> bytes:
        """Apply HDF5's shuffle and deflate filters to one chunk, as the library would."""
        raw = chunk.reshape(-1).view(np.uint8)
        if self._shuffle and self.dtype.itemsize > 1:
            raw = np.ascontiguousarray(raw.reshape(-1, self.dtype.itemsize).T).reshape(-1)
        return zlib.compress(raw.data, self._level if self._level is not None else -1)

    def _slab_frames(self) -> int:
        """Frames per slab: whole chunk rows along the outermost navigation axis."""
        if self._nav_chunks is None:
            return self._inner()
        if not self._nav_chunks:
            return 1
        return self._nav_chunks[0] * self._inner()

    def _inner(self) -> int:
        """Frames per index of the outermost navigation axis."""
        return math.prod(self._nav[1:]) if self._nav else 1

    def _write_slabs(self, *, final: bool) -> None:
        """Write the pending frames by slabs (the last, partial one only when ``final``)."""
        size = self._slab_frames()
        while self._pending_frames >= size or (final and self._pending_frames):
            frames = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            take = min(size, len(frames))
            self._write_slab(frames[:take])
            rest = frames[take:]
            self._pending = [rest] if len(rest) else []
            self._pending_frames = len(rest)

    def _write_slab(self, frames: npt.NDArray[Any]) -> None:
        """Write whole rows of the outermost navigation axis, starting at a slab boundary."""
        if self.scan_shape is not None and not self._nav:
            self._data[...] = frames[0].T
            self._slab_start += 1
            return
        inner = self._inner()
        first = self._slab_start // inner
        rows = -(-len(frames) // inner)
        if len(frames) < rows * inner:
            # Only the last slab of an interrupted scan: the rest of its line is cut at commit.
            padded = np.zeros((rows * inner, *self.signal_shape), dtype=self.dtype)
            padded[: len(frames)] = frames
            frames = padded
        if self.scan_shape is None:
            self._data.resize(first + rows, axis=self._data.ndim - 1)
        block = frames.reshape(rows, *self._nav[1:], *self.signal_shape)
        self._data[..., first : first + rows] = block.T
        self._flush.wrote(block.nbytes)
        self._slab_start += len(frames)

    # Finishing --------------------------------------------------------------------------

    def _commit(self) -> tuple[int, ...]:
        """Finish the file and give it its final name.

        A scan that ended early keeps its complete lines; if no line is complete, the frames
        are kept as a stack. :meth:`commit` returns the shape of the written array (array
        order, navigation axes first): the kept scan shape followed by the signal shape. It
        raises :class:`ParameterError` (and aborts) if a single-frame signal never got its
        frame.
        """
        self._write_previous()
        self._write_slabs(final=True)
        shape, axes = self._finish_shape()
        self._write_dims(shape, axes)
        self._shutdown_executor()
        self._resources.close()
        self._output.commit()
        return shape

    def _finish_shape(self) -> tuple[tuple[int, ...], list[dict[str, Any]]]:
        axes = self._axes
        written = self.frames_written
        if self.scan_shape is None:
            return (written, *self.signal_shape), self._fit_axes(axes, 1)
        if written == self._frames_total:
            return (*self._nav, *self.signal_shape), self._fit_axes(axes, len(self._nav))
        if not self._nav:
            raise ParameterError(
                "the frame of a single-frame signal was never written", path=self.path
            )
        kept = complete_lines(self.scan_shape, written)
        if kept[-1] > 0 or len(kept) == 1:
            _logger.warning(
                "%s: the scan %s ended after %d of %d frames; keeping %s",
                self.path,
                self.scan_shape,
                written,
                self._frames_total,
                f"{kept[-1]} complete lines" if len(kept) > 1 else "them",
            )
            self._data.resize(kept[-1], axis=self._data.ndim - 1)
            nav = tuple(reversed(kept))
            return (*nav, *self.signal_shape), self._fit_axes(axes, len(nav))
        _logger.warning(
            "%s: the scan %s ended after %d of %d frames, before one line was complete; "
            "keeping the frames as a stack",
            self.path,
            self.scan_shape,
            written,
            self._frames_total,
        )
        self._restack(written)
        stack_axes = None
        if axes is not None:
            # The frames lie along the fastest scan axis.
            stack_axes = [axes[len(self._nav) - 1], *axes[len(self._nav) :]]
        return (written, *self.signal_shape), self._fit_axes(stack_axes, 1)

    def _restack(self, frames: int) -> None:
        """Replace the scan-shaped dataset by a stack of its first ``frames`` frames."""
        old = self._data
        stored = (*reversed(self.signal_shape), frames)
        chunks = (*old.chunks[: len(self.signal_shape)], 1) if old.chunks else None
        new = self._group.create_dataset(
            "data_stack",
            shape=stored,
            dtype=self.dtype,
            chunks=chunks,
            maxshape=(None,) * len(stored),
            compression=old.compression,
            compression_opts=old.compression_opts,
            shuffle=old.shuffle,
        )
        zeros = (0,) * (len(self._nav) - 1)
        for index in range(frames):
            new[..., index] = old[(Ellipsis, index, *zeros)]
        del self._group["data"]
        self._group.move("data_stack", "data")
        self._data = self._group["data"]

    def _fit_axes(
        self, axes: Sequence[Mapping[str, Any]] | None, nav_dims: int
    ) -> list[dict[str, Any]]:
        ndim = nav_dims + len(self.signal_shape)
        if axes is None or len(axes) != ndim:
            if axes is not None:
                _logger.warning(
                    "%s: %d axes given for %d dimensions; writing uncalibrated axes",
                    self.path,
                    len(axes),
                    ndim,
                )
            return [{} for _ in range(ndim)]
        return [dict(axis) for axis in axes]

    def _write_dims(self, shape: tuple[int, ...], axes: list[dict[str, Any]]) -> None:
        ndim = len(shape)
        for stored_index in range(ndim):
            axis = axes[ndim - 1 - stored_index]
            if axis.get("axis") is not None:
                values = np.asarray(axis["axis"], dtype=np.float64)
            else:
                # Only a missing scale defaults: 0.0 is a real one (a time axis of frames
                # without timestamps, as in TVIPS files).
                offset = axis.get("offset")
                offset = 0.0 if offset is None else float(offset)
                scale = axis.get("scale")
                scale = 1.0 if scale is None else float(scale)
                values = np.array([offset, offset + scale], dtype=np.float64)
            dim = self._group.create_dataset(f"dim{stored_index + 1}", data=values)
            name = axis.get("name")
            dim.attrs["name"] = "" if name is None or str(name) == "<undefined>" else str(name)
            dim.attrs["units"] = _units_attribute(axis.get("units"))

    def _shutdown_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._transposer is not None:
            self._transposer.shutdown(wait=True)
            self._transposer = None

    def _abort(self) -> None:
        """Discard the file; an existing file of that name is left untouched."""
        try:
            self._shutdown_executor()
            self._resources.close()
        finally:
            self._output.abort()


def _transpose_frames(out: npt.NDArray[Any], frames: npt.NDArray[Any]) -> None:
    """Write each frame of ``frames`` transposed (axes reversed) into ``out``.

    Any byte order and strides (a flipped view, say) are taken: a byte swap, a flip and the
    transpose happen in the one copy. Two-dimensional frames are copied tile by tile (see
    :data:`_TILE`), every frame of the batch at once per tile.
    """
    order = (0, *range(frames.ndim - 1, 0, -1))
    if frames.ndim != 3:
        np.copyto(out, frames.transpose(order), casting="safe")
        return
    rows, cols = frames.shape[1:]
    for row in range(0, rows, _TILE):
        for col in range(0, cols, _TILE):
            np.copyto(
                out[:, col : col + _TILE, row : row + _TILE],
                frames[:, row : row + _TILE, col : col + _TILE].transpose(order),
                casting="safe",
            )


def _signal_dims(axes: Sequence[Mapping[str, Any]], ndim: int) -> int:
    """Count the trailing signal axes: those not navigated, at most 2 for a 3-D+ array."""
    flags = [axis.get("navigate") for axis in axes]
    if len(flags) == ndim and all(flag is not None for flag in flags):
        dims = sum(not flag for flag in flags)
        if dims == ndim and ndim > 2:
            dims = 2
        return max(dims, 1) if ndim else 0
    return min(ndim, 2)


def file_writer(
    filename: str | os.PathLike[str],
    signal: Mapping[str, Any],
    chunks: Sequence[int] | bool | None = None,
    **kwds: Any,
) -> None:
    """Write signal to EMD file.

    Only the specifications by the National Center for Electron Microscopy (NCEM) are
    supported.

    Parameters
    ----------
    filename : str, pathlib.Path
        Filename of the file to write to or corresponding pathlib.Path.
    signal : dict
        Dictionary containing the signal object. Should contain the following fields:

        - 'data' - multidimensional numpy array
        - 'axes' - list of dictionaries describing the axes containing the fields 'name',
          'units', 'index_in_array', and either 'size', 'offset', and 'scale' or a numpy
          array 'axis' containing the full axes vector
        - 'metadata' - dictionary containing the metadata tree
    chunks : tuple of int or None, default=None
        Define the chunking used for saving the dataset. If None, calculates chunks for the
        signal, with preferably at least one chunk per signal space (here: every
        diffraction pattern whole, see :func:`default_chunks`). ``True`` lets HDF5 choose.
    **kwds : dict, optional
        Dictionary containing metadata, which will be written as attribute of the root
        group. The HDF5 dataset options ``compression``, ``compression_opts``, ``shuffle``,
        ``fletcher32`` and ``scaleoffset`` (e.g. ``compression="gzip"``) set the filters of
        the data instead, as in the reference library.
    """
    data = signal["data"]
    if getattr(data, "dtype", None) is not None and data.dtype.kind == "U":
        data = np.char.encode(np.asarray(data), "utf-8")
    elif not hasattr(data, "compute"):
        data = np.asarray(data)
    if data.dtype.kind == "O":
        raise ParameterError(
            "object arrays can't be written to EMD; convert them to strings or numbers",
            path=filename,
            parameter="signal",
        )
    axes = sorted(signal.get("axes") or [], key=lambda axis: axis.get("index_in_array", 0))
    signal_dims = _signal_dims(axes, data.ndim)
    split = data.ndim - signal_dims
    options = {key: value for key, value in kwds.items() if key in _DATASET_OPTIONS}
    attributes = {key: value for key, value in kwds.items() if key not in _DATASET_OPTIONS}
    writer = EmdWriter(
        filename,
        data.shape[split:],
        data.dtype,
        scan_shape=tuple(reversed(data.shape[:split])),
        axes=axes if len(axes) == data.ndim else None,
        metadata=signal.get("metadata") or {},
        original_metadata=signal.get("original_metadata") or {},
        chunks=chunks,
        attributes=attributes,
        **options,
    )
    with writer:
        for batch in _batches(data, split):
            writer.write(batch)


def _batches(data: Any, split: int) -> Iterator[npt.NDArray[Any]]:
    """Frames of ``data`` (navigation axes flattened) in slices of about 64 MiB."""
    signal = data.shape[split:]
    if split == 0:
        yield np.asarray(data.compute() if hasattr(data, "compute") else data)[np.newaxis]
        return
    inner = math.prod(data.shape[1:split])
    frame_bytes = max(math.prod(signal) * data.dtype.itemsize, 1)
    rows = max(_BATCH_BYTES // (frame_bytes * max(inner, 1)), 1)
    for start in range(0, data.shape[0], rows):
        block = data[start : start + rows]
        block = np.asarray(block.compute() if hasattr(block, "compute") else block)
        yield block.reshape(-1, *signal)
