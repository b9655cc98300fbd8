"""TVIPS ``.tvips`` writer: rolling series split at a maximum file size, streamed.

:class:`TvipsWriter` appends frames to a series as the camera does (open, write frames,
close), starting a new ``_NNN`` part whenever the next record would pass the size cap; the
camera simulator and the live tests use it. :func:`file_writer` has the reference's API: it
writes a signal dictionary whose data is a numpy array, a dask array or an iterable of frames,
a few MiB at a time, and makes the files appear atomically (temporary name, fsync, rename).

Records are written with one ``writev`` call per batch, straight from the frames' memory.
Every part is flushed to disk (fsync) before :meth:`TvipsWriter.commit` returns; a background
thread flushes what has been written while the next bytes are written, so that durability
costs little more than the slower of writing and flushing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from stemcast._atomic import AtomicFile
from stemcast.batch import FrameBatch
from stemcast.errors import ParameterError
from stemcast.formats._writev import write_all
from stemcast.formats.tvips.layout import TvipsLayout
from stemcast.formats.tvips.run import EXTENSION, is_tvips, part_files, part_path, split_part
from stemcast.formats.tvips.spec import (
    BITS_PER_PIXEL,
    MAIN_HEADER_SIZE,
    V1_FRAME_HEADER_SIZE,
    V2_FRAME_HEADER_SIZE,
    VERSIONS,
    MainHeader,
    format_main_header,
)
from stemcast.sink import FrameSink

__all__ = ["TvipsWriter", "file_writer", "writer_base"]

_logger = logging.getLogger(__name__)

#: Bytes of frames :func:`file_writer` holds in memory at a time (numpy and iterable input).
_BATCH_BYTES = 8 * 2**20
#: Bytes written between two background flushes.
_FLUSH_BYTES = 32 * 2**20
_U32_MAX = 2**32 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Units -> factor to nm (lengths) or to 1/nm (reciprocal lengths).
_LENGTHS = {
    "m": 1e9,
    "cm": 1e7,
    "mm": 1e6,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "nm": 1.0,
    "A": 0.1,
    "Å": 0.1,
    "pm": 1e-3,
}
#: Units -> factor to milliseconds.
_TIMES = {
    "s": 1e3,
    "ms": 1.0,
    "us": 1e-3,
    "µs": 1e-3,
    "μs": 1e-3,
    "ns": 1e-6,
    "min": 6e4,
    "h": 3.6e6,
}
_RECIPROCAL = re.compile(r"^(?:1\s*/\s*(?P<over>\S+)|(?P<power>\S+?)\s*\^?\s*-1)$")


def writer_base(filename: str | os.PathLike[str]) -> tuple[Path, str]:
    """Split the name of a series to write into its base and extension.

    ``NAME_000.tvips`` and ``NAME.tvips`` both write ``NAME_000.tvips``, ``NAME_001.tvips``,
    ...; a name without the ``.tvips`` extension gets it appended.

    Parameters
    ----------
    filename
        The name given by the user.

    Returns
    -------
    tuple
        ``(base, extension)`` for :func:`stemcast.readers.tvips.part_path`.
    """
    path = Path(filename)
    named = path if is_tvips(path) else path.with_name(path.name + EXTENSION)
    base, index = split_part(named)
    return (base if index == 0 else named.with_name(named.stem)), named.suffix


def _positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ParameterError(f"expected an int, got {value!r}", parameter=name) from None
    if number < minimum:
        raise ParameterError(f"{number} is below {minimum}", parameter=name)
    return number


class TvipsWriter(FrameSink):
    """Write frames to a rolling TVIPS series, part after part, as the camera does.

    A :class:`~stemcast.sink.FrameSink`: :meth:`commit` flushes and closes the parts (and,
    when atomic, renames them into place); :meth:`abort` removes what the writer wrote: the
    temporary files when atomic, the parts themselves when writing in place. :attr:`path` is
    the first part, :attr:`paths` all the parts so far.

    Parameters
    ----------
    filename
        ``NAME.tvips`` or ``NAME_000.tvips``: the parts are ``NAME_000.tvips``,
        ``NAME_001.tvips``, ... Existing parts of a series of that name are replaced.
    frame_shape
        ``(rows, columns)`` of the frames.
    dtype
        Unsigned integer pixel type (8 or 16 bits for cameras; 32 and 64 are also written).
    version
        TVIPS format version: 1 (12-byte frame headers) or 2.
    frame_header_extra_bytes
        Bytes added to the 60-byte version-2 frame headers; 16 or more make room for the scan
        position fields (``scan_x``, ``scan_y``) that :func:`stemcast.shape.scan_from_rotator`
        uses for non-square scans.
    max_file_size
        Approximate maximum size of each file in bytes (``None``: one file). It is raised,
        with a warning, to the main header plus one record when smaller.
    pixel_size, offset, binning, high_tension, magnification
        Main header fields: pixel size (whole nm or 1/nm), ``(x, y)`` offsets, ``(x, y)``
        binning, high tension (kV), total magnification (or camera length).
    start_time
        Time of the first frame (naive: UTC); default now.
    frame_interval_s
        Time between frames, for the frame timestamps (millisecond resolution).
    scan_shape
        Scan shape in array order ``(..., y, x)``: the rotator index then counts positions
        1..x*y of each scan (and ``scan_x``/``scan_y`` are written when the headers have
        room), as a TVIPS scan engine does. Default: the frame number + 1.
    frame_fields
        Constant frame header fields (``mode``, ``fcurrent``, ``stagex``, ...).
    atomic
        Write the parts under temporary names and rename them on :meth:`commit` (``_000``
        last), so that readers never see a partial series. Default: write in place, so a
        reader can follow the series while it grows.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        frame_shape: tuple[int, int],
        dtype: npt.DTypeLike = np.uint16,
        *,
        version: int = 2,
        frame_header_extra_bytes: int = 0,
        max_file_size: int | None = None,
        pixel_size: int = 1,
        offset: tuple[int, int] = (0, 0),
        binning: tuple[int, int] = (1, 1),
        high_tension: int = 0,
        magnification: int = 0,
        start_time: datetime | None = None,
        frame_interval_s: float = 0.001,
        scan_shape: Sequence[int] | None = None,
        frame_fields: Mapping[str, float] | None = None,
        atomic: bool = False,
    ) -> None:
        if isinstance(version, bool) or version not in VERSIONS:
            raise ParameterError(
                f"{version!r}: only TVIPS versions {VERSIONS} exist", parameter="version"
            )
        extra = _positive_int(frame_header_extra_bytes, "frame_header_extra_bytes", minimum=0)
        if version == 1 and extra:
            raise ParameterError(
                "version-1 frame headers have a fixed size of 12 bytes",
                parameter="frame_header_extra_bytes",
            )
        pixel = np.dtype(dtype)
        if pixel.kind != "u" or pixel.itemsize * 8 not in BITS_PER_PIXEL:
            raise ParameterError(
                f"{pixel}: TVIPS stores unsigned integers of {BITS_PER_PIXEL} bits",
                parameter="dtype",
            )
        rows, columns = (_positive_int(size, "frame_shape") for size in frame_shape)
        if frame_interval_s < 0:
            raise ParameterError(f"{frame_interval_s} is negative", parameter="frame_interval_s")
        self.main_header = MainHeader(
            version=version,
            dimx=columns,
            dimy=rows,
            bitsperpixel=pixel.itemsize * 8,
            offsetx=offset[0],
            offsety=offset[1],
            binx=binning[0],
            biny=binning[1],
            pixelsize=pixel_size,
            ht=high_tension,
            magtotal=magnification,
            frameheaderbytes=V1_FRAME_HEADER_SIZE if version == 1 else V2_FRAME_HEADER_SIZE + extra,
        )
        header_bytes = format_main_header(self.main_header)
        self.layout = TvipsLayout.from_main_header(self.main_header)
        self.base, self.extension = writer_base(filename)
        self.path = part_path(self.base, self.extension, 0)
        self._capacity = self._capacities(max_file_size)
        self.scan_shape = (
            tuple(_positive_int(size, "scan_shape") for size in scan_shape) if scan_shape else None
        )
        names = self.layout.header_dtype.names or ()
        self.frame_fields = dict(frame_fields or {})
        for name in self.frame_fields:
            if name not in names:
                raise ParameterError(
                    f"{name!r} is not a field of {self.layout.header_bytes}-byte frame headers "
                    f"(fields: {', '.join(names)})",
                    parameter="frame_fields",
                )
        start = start_time or datetime.now(UTC)
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self.start_ms = round((start - _EPOCH) / timedelta(milliseconds=1))
        self.interval_ms = frame_interval_s * 1e3
        self.atomic = atomic
        self.paths: list[Path] = []
        self.frames_written = 0
        self._part_frames = 0
        self._fd: int | None = None
        self._flusher = _Flusher()
        self._outputs: list[AtomicFile] = []
        try:
            if not atomic:
                self._remove_parts(from_index=1)
            self._next_part(header_bytes)
        except BaseException:
            self.abort()
            raise

    def _capacities(self, max_file_size: int | None) -> tuple[int, int]:
        """Return the records that fit in ``_000`` and in each further part."""
        if max_file_size is None:
            return (2**62, 2**62)
        size = _positive_int(max_file_size, "max_file_size")
        record = self.layout.record_size
        minimum = MAIN_HEADER_SIZE + record
        if size < minimum:
            warnings.warn(
                f"max_file_size {size} is smaller than the main header plus one frame record; "
                f"using {minimum}",
                UserWarning,
                stacklevel=4,
            )
            size = minimum
        return ((size - MAIN_HEADER_SIZE) // record, size // record)

    def _next_part(self, main_header: bytes = b"") -> None:
        self._close_part()
        path = part_path(self.base, self.extension, len(self.paths))
        target = path
        if self.atomic:
            self._outputs.append(AtomicFile(path))
            target = self._outputs[-1].temporary
        self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self.paths.append(path)
        self._part_frames = 0
        if main_header:
            write_all(self._fd, [memoryview(main_header)])

    def _close_part(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._flusher.close_file(fd)

    def _commit(self) -> None:
        """Finish the series: flush and close the parts and, when atomic, rename them.

        Parts of an earlier series of the same name beyond the last one written are removed.
        :meth:`commit` returns ``None``.
        """
        self._close_part()
        self._flusher.wait()
        self._flusher.shutdown()
        # The first part last: a reader that finds it finds the whole series.
        for output in self._outputs[::-1]:
            output.commit()
        self._remove_parts(from_index=len(self.paths))

    def _abort(self) -> None:
        """Remove what was written: the temporary files, or the parts written in place."""
        self._close_part()
        with contextlib.suppress(OSError):
            self._flusher.wait()
        self._flusher.shutdown()
        for output in self._outputs:
            output.abort()
        if not self.atomic:
            for path in self.paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _remove_parts(self, *, from_index: int) -> None:
        """Delete parts ``from_index`` and above left by an earlier series of the same name."""
        for index, path in part_files(self.base, self.extension).items():
            if index >= from_index:
                _logger.info("removing %s, a part of an earlier series of that name", path)
                os.unlink(path)

    def _frames(self, frames: npt.ArrayLike | FrameBatch) -> npt.NDArray[Any]:
        """One frame or a batch as C-contiguous little-endian pixels of the series type."""
        batch = frames.frames if isinstance(frames, FrameBatch) else np.asarray(frames)
        if batch.ndim == 2:
            batch = batch[np.newaxis]
        if batch.ndim != 3 or batch.shape[1:] != self.layout.frame_shape:
            raise ParameterError(
                f"frames of shape {batch.shape} do not match the frame shape "
                f"{self.layout.frame_shape}",
                parameter="frames",
            )
        target = self.layout.pixel_dtype
        if batch.dtype == target or np.can_cast(batch.dtype, target, "safe"):
            return np.ascontiguousarray(batch, dtype=target)
        if batch.dtype.kind not in "ui":
            raise ParameterError(
                f"{batch.dtype} frames: TVIPS stores unsigned integers; convert them first "
                f"(e.g. data.astype({target.name!r}))",
                parameter="frames",
            )
        if batch.size and (batch.min() < 0 or batch.max() > np.iinfo(target).max):
            raise ParameterError(
                f"{batch.dtype} values outside 0..{np.iinfo(target).max} cannot be stored as "
                f"{target.name}",
                parameter="frames",
            )
        return np.ascontiguousarray(batch, dtype=target)

    def headers(self, count: int, fields: Mapping[str, npt.ArrayLike]) -> npt.NDArray[Any]:
        """Frame headers of the next ``count`` frames.

        Parameters
        ----------
        count
            Frames.
        fields
            Per-frame values overriding the defaults (frame counter, timestamps, rotator
            index, scan positions, constant fields), by header field name.

        Returns
        -------
        numpy.ndarray
            Structured headers (:attr:`TvipsLayout.header_dtype`).
        """
        headers = np.zeros(count, dtype=self.layout.header_dtype)
        names = headers.dtype.names or ()
        index = np.arange(self.frames_written, self.frames_written + count, dtype=np.int64)
        headers["num"] = index & _U32_MAX
        milliseconds = self.start_ms + np.floor(index * self.interval_ms).astype(np.int64)
        headers["timestamp"] = milliseconds // 1000
        headers["ms"] = milliseconds % 1000
        if "rotidx" in names:
            if self.scan_shape is None:
                headers["rotidx"] = (index + 1) & _U32_MAX
            else:
                width = self.scan_shape[-1]
                position = index % math.prod(self.scan_shape[-2:])
                headers["rotidx"] = position + 1
                if "scan_y" in names:
                    headers["scan_x"] = position % width
                    headers["scan_y"] = position // width
        for name, value in self.frame_fields.items():
            headers[name] = value
        for name, values in fields.items():
            if name not in names:
                raise ParameterError(
                    f"{name!r} is not a frame header field (fields: {', '.join(names)})",
                    parameter=name,
                )
            headers[name] = np.broadcast_to(np.asarray(values), (count,))
        return headers

    def write(self, batch: npt.ArrayLike | FrameBatch, **fields: npt.ArrayLike) -> None:
        """Append one frame ``(rows, columns)`` or a batch ``(n, rows, columns)``.

        Parameters
        ----------
        batch
            The frames (or a :class:`~stemcast.batch.FrameBatch`); integers that fit the
            series' pixel type.
        **fields
            Frame header values for these frames (scalars or one per frame), e.g.
            ``rotidx=...`` or ``num=...``, overriding the defaults.

        Raises
        ------
        ParameterError
            If the frames do not fit the series, or the writer was committed or aborted.
        """
        self.check_open()
        frames = self._frames(batch)
        self._append([frame.data for frame in frames], range(len(frames)), fields)

    def payloads(self, frames: npt.ArrayLike) -> npt.NDArray[Any]:
        """Frames as :meth:`write_payloads` takes them: C-contiguous pixels of the series type.

        Parameters
        ----------
        frames
            One frame ``(rows, columns)`` or a batch ``(n, rows, columns)``.

        Returns
        -------
        numpy.ndarray
            ``(n, rows, columns)`` pixels of the series type.

        Raises
        ------
        ParameterError
            If the frames do not fit the series.
        """
        return self._frames(frames)

    def write_payloads(
        self,
        payloads: npt.NDArray[Any],
        indices: Sequence[int] | npt.NDArray[np.integer[Any]],
        **fields: npt.ArrayLike,
    ) -> None:
        """Append frames that repeat payloads already encoded: frame ``k`` is ``indices[k]``.

        A camera simulator writes a small pool of patterns over and over this way: the
        records are written straight from the pool, with their own headers.

        Parameters
        ----------
        payloads
            Frames from :meth:`payloads`.
        indices
            The payload of each frame to append.
        **fields
            Frame header values, as for :meth:`write`.

        Raises
        ------
        ParameterError
            If the payloads do not fit the series, or the writer was committed or aborted.
        """
        self.check_open()
        pixel = self.layout.pixel_dtype
        if payloads.shape[1:] != self.layout.frame_shape or payloads.dtype != pixel:
            raise ParameterError(
                f"payloads of shape {payloads.shape} and type {payloads.dtype} are not frames "
                f"{self.layout.frame_shape} of {pixel}",
                parameter="payloads",
            )
        pool = [np.ascontiguousarray(frame).data for frame in payloads]
        self._append(pool, np.asarray(indices).tolist(), fields)

    def _append(
        self, payloads: list[memoryview], indices: Sequence[int], fields: Mapping[str, Any]
    ) -> None:
        """Write records of ``payloads[indices[k]]``, starting parts at the size cap."""
        total = len(indices)
        headers = self.headers(total, fields)
        rows = headers.view(np.uint8).data.cast("B")
        size = self.layout.header_bytes
        done = 0
        while done < total:
            capacity = self._capacity[0 if len(self.paths) == 1 else 1]
            if self._part_frames >= capacity:
                self._next_part()
            count = min(total - done, capacity - self._part_frames)
            buffers: list[memoryview] = []
            for record in range(done, done + count):
                buffers += (rows[record * size : (record + 1) * size], payloads[indices[record]])
            assert self._fd is not None
            write_all(self._fd, buffers)
            self._flusher.wrote(self._fd, count * self.layout.record_size)
            self._part_frames += count
            done += count
        self.frames_written += total


class _Flusher:
    """Flushes written files to disk in one background thread, in the order asked.

    File descriptors handed to :meth:`close_file` are closed by the thread after their last
    flush, so a flush never meets a closed descriptor.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvips-flush")
        self._futures: list[Future[None]] = []
        self._unflushed = 0

    def _reap(self) -> None:
        """Forget finished flushes, raising the error of a failed one."""
        done = [future for future in self._futures if future.done()]
        self._futures = [future for future in self._futures if not future.done()]
        for future in done:
            future.result()

    def wrote(self, fd: int, count: int) -> None:
        """Note ``count`` bytes written to ``fd``; start a flush when enough are pending."""
        self._unflushed += count
        self._reap()
        if self._unflushed >= _FLUSH_BYTES and not self._futures:
            self._futures.append(self._executor.submit(_data_sync, fd))
            self._unflushed = 0

    def close_file(self, fd: int) -> None:
        """Flush ``fd`` completely, then close it (in the background)."""
        self._futures.append(self._executor.submit(_sync_and_close, fd))
        self._unflushed = 0

    def wait(self) -> None:
        """Wait for every flush; raise the error of the first that failed."""
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()

    def shutdown(self) -> None:
        """Stop the thread (after the flushes asked for)."""
        self._executor.shutdown(wait=True)


def _data_sync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# file_writer: signal dictionary -> writer settings
# --------------------------------------------------------------------------------------------


def _unit_factor(units: Any, table: Mapping[str, float]) -> float | None:
    return table.get(units.strip()) if isinstance(units, str) else None


def _length_kind(units: Any) -> tuple[int, float] | None:
    """``(mode, factor)``: 1 and the factor to nm for lengths, 2 and to 1/nm for reciprocal."""
    direct = _unit_factor(units, _LENGTHS)
    if direct is not None:
        return 1, direct
    if not isinstance(units, str):
        return None
    match = _RECIPROCAL.match(units.strip())
    if match is None:
        return None
    inverse = _unit_factor(match["over"] or match["power"], _LENGTHS)
    return None if inverse is None else (2, 1 / inverse)


def _stored_int(value: float, name: str) -> int:
    """Return a calibration as the whole number TVIPS stores, warning when it is inexact."""
    stored = round(value)
    if stored < 0:
        warnings.warn(
            f"{name} {value} is negative and cannot be stored in a TVIPS file; 0 is written",
            UserWarning,
            stacklevel=4,
        )
        return 0
    if stored > _U32_MAX:
        raise ParameterError(f"{name} {value} does not fit in 32 bits", parameter="signal")
    if not math.isclose(stored, value, rel_tol=1e-6, abs_tol=1e-9):
        warnings.warn(
            f"{name} {value} is stored as {stored}: TVIPS stores whole numbers of nm or 1/nm",
            UserWarning,
            stacklevel=4,
        )
    return stored


def _zone(name: Any) -> tzinfo:
    if not isinstance(name, str) or name.strip().upper() in ("", "UTC", "GMT", "Z"):
        return UTC
    text = name.strip()
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(f"2000-01-01T00:00:00{text}").tzinfo or UTC
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        warnings.warn(
            f"unknown time zone {text!r} in metadata General.time_zone; the time is taken as UTC",
            UserWarning,
            stacklevel=5,
        )
        return UTC


def _start_time(general: Mapping[str, Any]) -> datetime:
    """Time of the first frame from ``General.date``, ``time`` and ``time_zone``."""
    date = general.get("date", "1970-01-01")
    time = general.get("time", "00:00:00")
    try:
        moment = datetime.fromisoformat(f"{date}T{time}")
    except (TypeError, ValueError):
        raise ParameterError(
            f"metadata General.date {date!r} and time {time!r} are not ISO 8601",
            parameter="signal",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(general.get("time_zone")))
    return moment


def _signal_axes(
    axes: Sequence[Mapping[str, Any]], ndim: int | None
) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """Return the ``(y, x)`` signal axes of a signal dictionary, or ``None`` without axes."""
    if not axes:
        return None
    if all("navigate" not in axis for axis in axes):
        signal = list(axes[-2:])
    else:
        signal = [axis for axis in axes if axis.get("navigate") is False]
    if len(signal) != 2 or len(axes) < 2:
        raise ParameterError(
            f"TVIPS frames are images: the signal has {len(signal)} signal axes, not 2",
            parameter="signal",
        )
    signal.sort(key=lambda axis: axis.get("index_in_array", 0))
    last = (ndim or len(axes)) - 2
    if [axis.get("index_in_array", index) for index, axis in enumerate(signal, last)] != [
        last,
        last + 1,
    ]:
        raise ParameterError(
            "the signal axes must be the last two axes of the data", parameter="signal"
        )
    return signal[0], signal[1]


def _frame_interval_s(axes: Sequence[Mapping[str, Any]], ndim: int) -> float:
    """Seconds between frames: the scale of the axis before the signal axes if it is a time."""
    # HyperSpy's axis dictionaries have no index_in_array: they come in array order.
    for position, axis in enumerate(axes):
        if axis.get("index_in_array", position) == ndim - 3 and axis.get("navigate", True):
            factor = _unit_factor(axis.get("units"), _TIMES)
            if factor is not None:
                return float(axis.get("scale", 1.0)) * factor / 1e3
    return 0.001


def _settings(
    signal: Mapping[str, Any],
    frame_shape: tuple[int, int],
    ndim: int | None,
    mode: int | None,
    version: int,
) -> dict[str, Any]:
    """:class:`TvipsWriter` keywords from the axes and metadata of a signal dictionary."""
    axes = list(signal.get("axes") or [])
    metadata = signal.get("metadata") or {}
    signal_axes = _signal_axes(axes, ndim)
    if mode is not None and (isinstance(mode, bool) or mode not in (1, 2)):
        raise ParameterError(
            f"{mode!r}: use 1 (imaging), 2 (diffraction) or None", parameter="mode"
        )
    pixel_size, offsets = 1.0, [0.0, 0.0]
    if signal_axes is not None:
        y_axis, x_axis = signal_axes
        sizes = (int(y_axis.get("size", frame_shape[0])), int(x_axis.get("size", frame_shape[1])))
        if sizes != frame_shape:
            raise ParameterError(
                f"signal axes of sizes {sizes} but frames of shape {frame_shape}",
                parameter="signal",
            )
        kind = _length_kind(y_axis.get("units"))
        factor = 1.0
        if kind is None:
            warnings.warn(
                f"Image scale units could not be converted ({y_axis.get('units')!r}); the "
                "scale and offsets are written unconverted",
                UserWarning,
                stacklevel=3,
            )
        else:
            factor = kind[1]
            mode = kind[0] if mode is None else mode
        pixel_size = float(y_axis.get("scale", 1.0)) * factor
        offsets = [float(axis.get("offset", 0.0)) * factor for axis in (x_axis, y_axis)]
    signal_type = str(metadata.get("Signal", {}).get("signal_type", ""))
    if mode is None:
        mode = 1 if signal_type and "diffraction" not in signal_type else 2
    tem = metadata.get("Acquisition_instrument", {}).get("TEM", {})
    magnification, camera_length = tem.get("magnification"), tem.get("camera_length")
    if magnification is not None and camera_length is not None:
        magtotal = camera_length if mode == 2 else magnification
    else:
        magtotal = magnification if magnification is not None else camera_length
    stage = tem.get("Stage", {})
    fields = {
        "mode": mode,
        "fcurrent": tem.get("beam_current"),
        "stagex": stage.get("x"),
        "stagey": stage.get("y"),
        "stagez": stage.get("z"),
        "stagea": stage.get("tilt_alpha", tem.get("tilt_alpha")),
        "stageb": stage.get("tilt_beta", tem.get("tilt_beta")),
    }
    return {
        "pixel_size": _stored_int(pixel_size, "pixel size"),
        "offset": (_stored_int(offsets[0], "x offset"), _stored_int(offsets[1], "y offset")),
        "high_tension": int(tem.get("beam_energy") or 0),
        "magnification": _stored_int(float(magtotal or 0), "magnification"),
        "start_time": _start_time(metadata.get("General", {})),
        "frame_interval_s": _frame_interval_s(axes, ndim) if ndim else 0.001,
        # Version-1 frame headers hold only the counter and the time.
        "frame_fields": {
            name: value for name, value in fields.items() if value is not None and version != 1
        },
    }


def _array_batches(data: Any, frame_shape: tuple[int, int]) -> Iterator[npt.NDArray[Any]]:
    """Frames of a numpy or dask array in scan order, a few MiB (or one dask chunk) at a time."""
    rows, columns = frame_shape
    nav = tuple(data.shape[:-2])
    count = math.prod(nav)
    if isinstance(data, np.ndarray):
        step = max(1, _BATCH_BYTES // max(1, rows * columns * data.itemsize))
        if data.flags.c_contiguous or not nav:
            flat = data.reshape(count, rows, columns)
            for start in range(0, count, step):
                yield flat[start : start + step]
        else:
            for start in range(0, count, step):
                where = np.unravel_index(np.arange(start, min(start + step, count)), nav)
                yield data[where]
        return
    whole_inner = data.rechunk({axis: -1 for axis in range(1, data.ndim)}) if nav else data
    for block in whole_inner.blocks if nav else [whole_inner]:
        yield np.asarray(block.compute()).reshape(-1, rows, columns)


def _iterable_batches(frames: Iterable[Any], frame_shape: tuple[int, int]) -> Iterator[Any]:
    for item in frames:
        array = np.asarray(item)
        yield array.reshape(-1, *frame_shape) if array.ndim > 2 else array


def file_writer(
    filename: str | os.PathLike[str],
    signal: Mapping[str, Any],
    max_file_size: int | None = None,
    version: int = 2,
    frame_header_extra_bytes: int = 0,
    mode: int | None = None,
    show_progressbar: bool = True,
) -> None:
    """Write signal to TVIPS file.

    Parameters
    ----------
    filename : str, pathlib.Path
        Filename of the file to write to or corresponding pathlib.Path. A ``_000`` suffix is
        added (``NAME.tvips`` writes ``NAME_000.tvips``, ...); parts of an earlier series of
        the same name are replaced.
    signal : dict
        Dictionary containing the signal object. Should contain the following fields:

        - 'data': multidimensional numpy array (or a dask array, or an iterable of frames
          or batches of frames: the frame shape then comes from the signal axes)
        - 'axes': list of dictionaries describing the axes containing the fields 'name',
          'units', 'index_in_array', and either 'size', 'offset', and 'scale' or a numpy array
          'axis' containing the full axes vector
        - 'metadata': dictionary containing the metadata tree
    max_file_size : int or None, default=None
        Approximate maximum size of individual files in bytes. In this way a dataset can be
        split into multiple files. A file needs to be at least the size of the main header in
        the first file plus one frame and its frame header. Sequential files are denoted by a
        suffix _xxx starting from _000. By default (``None``) there is no maximum and the
        entire dataset is stored in a single file.
    version : int, default=2
        TVIPS file format version (only version ``1`` or ``2`` supported).
    frame_header_extra_bytes : int, default=0
        Number of bytes to pad the frame headers with.
    mode : int or None, default=None
        ``1`` for imaging, ``2`` for diffraction. By default, the mode is guessed from signal
        type and signal units.
    show_progressbar : bool, default=True
        Whether to show the progressbar or not.

    Notes
    -----
    The pixel size and offsets come from the signal axes (in nm or 1/nm, whole numbers),
    the frame timestamps from ``General.date``/``time``/``time_zone`` and the scale of a time
    navigation axis (else 1 ms per frame). The rotator index counts the scan positions of the
    last two navigation axes. Tilts are read from ``TEM.Stage.tilt_alpha``/``tilt_beta``.
    """
    from tqdm import tqdm

    data = signal["data"]
    axes = list(signal.get("axes") or [])
    if hasattr(data, "shape") and hasattr(data, "ndim"):
        if data.ndim < 2:
            raise ParameterError(
                f"data of shape {tuple(data.shape)}: TVIPS frames are images",
                parameter="signal",
            )
        frame_shape = (int(data.shape[-2]), int(data.shape[-1]))
        nav = tuple(int(size) for size in data.shape[:-2])
        settings = _settings(signal, frame_shape, data.ndim, mode, version)
        total: int | None = math.prod(nav)
        batches: Iterator[Any] = _array_batches(data, frame_shape)
        dtype = np.dtype(data.dtype)
    else:
        signal_axes = _signal_axes(axes, None)
        if signal_axes is None:
            raise ParameterError(
                "an iterable of frames needs the signal axes to give the frame shape",
                parameter="signal",
            )
        frame_shape = (int(signal_axes[0]["size"]), int(signal_axes[1]["size"]))
        nav = tuple(int(axis["size"]) for axis in axes if axis not in signal_axes)
        settings = _settings(signal, frame_shape, len(axes), mode, version)
        total = math.prod(nav) if nav else None
        batches = _iterable_batches(data, frame_shape)
        first = next(batches, None)
        dtype = np.dtype(np.uint16) if first is None else np.asarray(first).dtype
        if first is not None:
            batches = _chain(first, batches)
    if dtype.kind not in "uib":
        raise ParameterError(
            f"{dtype} data: TVIPS stores unsigned integers; convert them first "
            "(e.g. data.astype('uint16'))",
            parameter="signal",
        )
    if dtype.kind in "bi":
        dtype = np.dtype(f"u{dtype.itemsize}")
    with (
        TvipsWriter(
            filename,
            frame_shape,
            dtype,
            version=version,
            frame_header_extra_bytes=frame_header_extra_bytes,
            max_file_size=max_file_size,
            scan_shape=nav if len(nav) >= 2 else None,
            atomic=True,
            **settings,
        ) as writer,
        tqdm(total=total, unit="frames", disable=not show_progressbar) as progress,
    ):
        for batch in batches:
            writer.write(batch)
            progress.update(len(batch) if np.ndim(batch) > 2 else 1)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
