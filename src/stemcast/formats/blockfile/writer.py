"""NanoMegas ASTAR blockfile (``.blo``) writers: the reference ``file_writer``, a streaming writer.

:class:`BlockfileWriter` writes a file batch by batch with bounded memory (open, write frames,
commit); :func:`file_writer` (the reference library's API) and the converters
(:mod:`stemcast.convert`) feed it. Files are written as ASTAR writes them
(shared/specs/blockfile.md): signature 0x0102, navigator at byte 4096, frames at the next
multiple of 16 bytes after it, ``UNKNOWN1`` = 131135. Outputs appear atomically (temporary
file, fsync, rename) or not at all.

Intensity scaling
-----------------
Every ``intensity_scaling`` option maps the data to uint8 exactly as
``skimage.exposure.rescale_intensity(data, in_range=(imin, imax), out_range=np.uint8)``, which
the reference uses. For integer data of at most 16 bits scikit-image computes the mapping
once for every possible value, and the frames go through that lookup table (or through an
integer division checked against it), which gives identical bytes several times faster than
float64 arithmetic on every pixel; other data go through scikit-image batch by batch.

``"minmax"`` needs the minimum and maximum of the whole data set before the first frame can
be converted. Two ways of getting them without holding the data are used:

* a source that can be read twice (numpy array, dask array, a Merlin run on disk) gets a
  cheap first pass that only computes the minimum and maximum; the frames are then converted
  and written in one second pass. Re-reading a file from the page cache costs less than
  writing the raw values out and reading them back, and needs no extra disk space.
* a one-shot stream of batches given to :class:`BlockfileWriter` cannot be read twice: its
  raw frames are spooled into the output's own temporary file (behind the space of the final
  records), the statistics gathered as they arrive, and :meth:`BlockfileWriter.commit`
  rescales them in place. The uint8 record of a frame never overwrites raw frames not yet
  converted, because the raw area starts ``6 * frames`` bytes after the first record.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from stemcast._atomic import AtomicFile
from stemcast.batch import FrameBatch
from stemcast.errors import ParameterError
from stemcast.formats.blockfile.spec import (
    ASTAR_UNKNOWN1,
    DEFAULT_ACQUISITION_TIME,
    FIELD_NAMES,
    FRAME_MARKER,
    GEOMETRY_FIELDS,
    HEADER_SIZE,
    ID_TEXT,
    INTENSITY_SCALINGS,
    MAX_SIZE,
    RECORD_HEADER_SIZE,
    SIGNATURE_8BIT,
    VBF_OFFSET,
    byte_order,
    data_offset,
    datetime_to_serial,
    format_header,
    record_dtype,
    without_bit_depth,
)
from stemcast.sink import FrameSink

__all__ = ["BlockfileWriter", "file_writer"]

IntensityScaling = str | tuple[float, float] | None

#: Source bytes converted per batch: large enough for few system calls and little Python
#: overhead, small enough to keep memory bounded.
_BATCH_BYTES = 16 * 2**20
#: Source bytes converted at a time inside a batch, so that temporaries stay in the L2 cache.
_CACHE_BYTES = 256 * 2**10
_NM_PER_UNIT = {
    "m": 1e9,
    "meter": 1e9,
    "cm": 1e7,
    "centimeter": 1e7,
    "mm": 1e6,
    "millimeter": 1e6,
    "µm": 1e3,
    "μm": 1e3,
    "um": 1e3,
    "micrometer": 1e3,
    "micron": 1e3,
    "nm": 1.0,
    "nanometer": 1.0,
    "Å": 0.1,
    "angstrom": 0.1,
    "pm": 1e-3,
    "picometer": 1e-3,
}


def _check_scaling(intensity_scaling: Any) -> IntensityScaling:
    """Return the option as ``None``, a named scaling or ``(imin, imax)`` floats."""
    if intensity_scaling is None or (
        isinstance(intensity_scaling, str) and intensity_scaling in INTENSITY_SCALINGS
    ):
        return intensity_scaling
    if isinstance(intensity_scaling, str) or not isinstance(
        intensity_scaling, (Sequence, np.ndarray)
    ):
        raise ParameterError(
            f"{intensity_scaling!r} is not None, 'dtype', 'minmax', 'crop' or a 2-tuple",
            parameter="intensity_scaling",
        )
    try:
        low, high = (float(value) for value in intensity_scaling)
    except (TypeError, ValueError):
        raise ParameterError(
            f"{intensity_scaling!r} is not a 2-tuple of numbers", parameter="intensity_scaling"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ParameterError(
            f"{intensity_scaling!r} is not a finite range (low <= high)",
            parameter="intensity_scaling",
        )
    return (low, high)


def _check_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.kind not in "uif":
        raise ParameterError(
            f"cannot write {dtype} data to a blockfile: integers or floats only",
            parameter="data",
        )
    return dtype.newbyteorder("=")


def _input_range(
    scaling: IntensityScaling, dtype: np.dtype[Any], data_range: tuple[float, float] | None
) -> tuple[float, float] | None:
    """``(imin, imax)`` of the linear map to 0..255, or ``None`` for a plain cast."""
    if scaling is None:
        return None
    if scaling == "dtype":
        if dtype.kind == "f":
            raise ParameterError(
                f"{dtype} data cannot use 'dtype' scaling (the limits of float data are -1..1); "
                "use 'minmax', 'crop' or a range",
                parameter="intensity_scaling",
            )
        from skimage.util import dtype_limits

        low, high = dtype_limits(np.empty(0, dtype), clip_negative=False)  # type: ignore[no-untyped-call]
        return float(low), float(high)
    if scaling == "crop":
        return 0.0, 255.0
    if scaling == "minmax":
        if data_range is None:
            raise ParameterError("'minmax' needs the data range", parameter="intensity_scaling")
        return data_range
    assert isinstance(scaling, tuple)
    return scaling


def _rescale(values: npt.NDArray[Any], in_range: tuple[float, float]) -> npt.NDArray[np.uint8]:
    from skimage.exposure import rescale_intensity

    scaled: npt.NDArray[np.uint8] = rescale_intensity(  # type: ignore[no-untyped-call]
        values, in_range=in_range, out_range=np.uint8
    )
    return scaled


class _Scaler:
    """Maps source values to uint8, as the reference does for a given input range.

    Integer data of at most 16 bits use a lookup table that scikit-image computes for every
    possible value. When the range is ``(0, 255 * d)`` (``"dtype"`` for unsigned data,
    ``"crop"``), the same mapping is usually ``min(v, 255 * d) // d`` in integer arithmetic,
    which numpy runs about four times faster; it is used only if it reproduces the table for
    every value. Frames are converted a few at a time so that temporaries stay in the CPU
    cache.
    """

    def __init__(self, dtype: np.dtype[Any], in_range: tuple[float, float] | None) -> None:
        self.in_range = in_range
        self.lut: npt.NDArray[np.uint8] | None = None
        self.divisor: int | None = None
        if in_range is not None and dtype.kind in "ui" and dtype.itemsize <= 2:
            self.index_dtype = np.dtype(f"u{dtype.itemsize}")
            domain = np.arange(2 ** (8 * dtype.itemsize), dtype=self.index_dtype).view(dtype)
            self.lut = _rescale(domain, in_range)
            low, high = in_range
            if dtype.kind == "u" and low == 0 and high == int(high) and int(high) % 255 == 0:
                self.divisor = int(high) // 255
                candidate = np.empty_like(self.lut)
                self._divide(domain, candidate)
                if not np.array_equal(candidate, self.lut):
                    self.divisor = None

    def _divide(self, raw: npt.NDArray[Any], out: npt.NDArray[np.uint8]) -> None:
        assert self.divisor is not None
        high = 255 * self.divisor
        values = raw
        if high < np.iinfo(raw.dtype).max:
            values = np.minimum(raw, raw.dtype.type(high))
        if self.divisor > 1:
            values = np.floor_divide(values, raw.dtype.type(self.divisor))
        np.copyto(out, values, casting="unsafe")

    def __call__(self, raw: npt.NDArray[Any], out: npt.NDArray[np.uint8]) -> None:
        """Write the uint8 form of ``raw`` (frames) into ``out`` (same shape)."""
        if self.in_range is None:
            np.copyto(out, raw, casting="unsafe")
            return
        if self.lut is None:
            out[...] = _rescale(raw, self.in_range)
            return
        if not raw.dtype.isnative:
            raw = raw.astype(raw.dtype.newbyteorder("="))
        step = max(1, _CACHE_BYTES // max(raw[:1].nbytes, 1))
        for start in range(0, len(raw), step):
            part, target = raw[start : start + step], out[start : start + step]
            if self.divisor is not None:
                self._divide(part, target)
            else:
                np.take(self.lut, part.view(self.index_dtype), out=target, mode="wrap")


def _frame_means(batch: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Return the mean of each frame, equal to ``batch.mean(axis=(1, 2))``.

    For integers of at most 16 bits the float64 sum numpy's mean takes is exact, so an
    integer sum divided by the pixel count gives the same value; summing in 32 bits when the
    frame cannot overflow them is over twice as fast as in 64.
    """
    means: npt.NDArray[Any]
    if batch.dtype.kind in "ui" and batch.dtype.itemsize <= 2:
        pixels = batch.shape[1] * batch.shape[2]
        info = np.iinfo(batch.dtype)
        narrow = np.uint32 if batch.dtype.kind == "u" else np.int32
        total = narrow if pixels * max(info.max, -info.min) <= np.iinfo(narrow).max else np.int64
        means = np.add.reduce(batch, axis=(1, 2), dtype=total) / pixels
    else:
        means = batch.mean(axis=(1, 2))
    return means


def _navigator_bytes(
    navigator: npt.NDArray[Any], in_range: tuple[float, float] | None
) -> npt.NDArray[np.uint8]:
    """Convert the navigator image as the frames: same input range, then cast to uint8."""
    if in_range is None:
        return navigator.astype(np.uint8)
    return _rescale(navigator, in_range)


def _pwrite(fd: int, data: npt.NDArray[Any], offset: int) -> None:
    view = data.data.cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _pread(fd: int, out: npt.NDArray[Any], offset: int) -> None:
    view = out.data.cast("B")
    while view:
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise OSError(f"unexpected end of the temporary file at byte {offset}")
        view, offset = view[got:], offset + got


def _navigation(navigation_shape: Sequence[int]) -> tuple[int, int]:
    """``(NX, NY)`` of a HyperSpy-order navigation shape ``()``, ``(x,)`` or ``(x, y)``."""
    try:
        sizes = [int(size) for size in navigation_shape]
    except (TypeError, ValueError):
        raise ParameterError(
            f"{navigation_shape!r} is not a tuple of int", parameter="navigation_shape"
        ) from None
    if len(sizes) > 2:
        raise ParameterError(
            f"{tuple(sizes)}: blockfiles hold at most 2 navigation dimensions",
            parameter="navigation_shape",
        )
    nx, ny = (*sizes, 1, 1)[:2]
    if not (1 <= nx <= MAX_SIZE and 1 <= ny <= MAX_SIZE):
        raise ParameterError(
            f"{tuple(sizes)}: scan sizes must lie in 1..{MAX_SIZE}", parameter="navigation_shape"
        )
    return nx, ny


class BlockfileWriter(FrameSink):
    """Write a blockfile frame batch by batch, with bounded memory.

    A :class:`~stemcast.sink.FrameSink`. The frames are converted to uint8 and written as they
    arrive, and the virtual bright-field navigator (the mean of each frame) is accumulated on
    the fly. :meth:`commit` writes the navigator and the header and renames the temporary file
    to ``filename``; on an exception inside a ``with`` block, or after :meth:`abort`, nothing
    appears and an existing ``filename`` is left untouched.

    Parameters
    ----------
    filename : str, pathlib.Path
        The ``.blo`` file to write (an existing file is replaced on success).
    navigation_shape : tuple of int
        Scan shape in HyperSpy order: ``(x, y)``, ``(x,)`` or ``()`` for one frame.
    frame_size : int
        Side of the square frames in pixels.
    intensity_scaling : str, 2-tuple of float, 2-tuple of int
        As :func:`file_writer`. With ``"minmax"`` the raw frames are spooled in the temporary
        file and rescaled at :meth:`commit` (see the module documentation).
    navigator : str or array_like
        ``"navigator"`` (default): the mean of each frame, computed while writing. An array of
        the navigation shape in array order (``(y, x)``) is stored instead; ``None`` stores
        zeros. Like the frames, the navigator is scaled with the input range of the data.
    header : dict, optional
        Header fields to write, named as in ``original_metadata["blockfile_header"]``
        (``"SX"``, ``"SY"``, ``"SDP"``, ``"Beam_energy"``, ``"Acquisition_time"``, ...,
        ``"Note"``). The geometry fields (``NX``, ``NY``, ``DP_SZ``, offsets, signature) are
        always computed; missing fields take ASTAR's defaults.
    show_progressbar : bool, default=False
        Whether to show the progressbar or not.
    endianess : str, default="<"
        "<" or ">", depending on how the bits are written to the file.
    endianness : str, optional
        The same, spelled as the reference library spells it since its 0.13; see
        :func:`file_writer`.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        navigation_shape: Sequence[int],
        frame_size: int,
        *,
        intensity_scaling: IntensityScaling = None,
        navigator: str | npt.ArrayLike | None = "navigator",
        header: Mapping[str, Any] | None = None,
        show_progressbar: bool = False,
        endianess: str | None = None,
        endianness: str | None = None,
    ) -> None:
        endianess = byte_order(endianess, endianness)
        self.path = Path(filename)
        self.nx, self.ny = _navigation(navigation_shape)
        self.navigation_shape = tuple(int(size) for size in navigation_shape)
        if not 1 <= int(frame_size) <= MAX_SIZE:
            raise ParameterError(f"{frame_size} is not in 1..{MAX_SIZE}", parameter="frame_size")
        self.frame_size = int(frame_size)
        self.frames = self.nx * self.ny
        self.endianess = endianess
        self.intensity_scaling = _check_scaling(intensity_scaling)
        self._navigator = self._check_navigator(navigator)
        self._record = record_dtype(self.frame_size, np.dtype(np.uint8), endianess)
        self._data_offset = data_offset(self.frames)
        self._size = self._data_offset + self.frames * self._record.itemsize
        self._fields, self._note = self._header_fields(header or {})
        format_header(self._fields, self._note, endianess=endianess)
        self._lock = threading.Lock()
        self._dtype: np.dtype[Any] | None = None
        self._scale: _Scaler | None = None
        self._means: npt.NDArray[Any] | None = None
        self._spool: int | None = None
        self._range: tuple[Any, Any] | None = None
        self._next = 0
        self.frames_written = 0
        from tqdm import tqdm

        self._progress = tqdm(
            total=self.frames, unit="frame", desc="Writing blockfile", disable=not show_progressbar
        )
        self._fd = -1
        self._output = AtomicFile(self.path)
        try:
            self._fd = os.open(self._output.temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(self._fd, self._size)
        except BaseException:
            self.abort()
            raise

    def _check_navigator(self, navigator: Any) -> npt.NDArray[Any] | str | None:
        if navigator is None or (isinstance(navigator, str) and navigator == "navigator"):
            return navigator
        if isinstance(navigator, str):
            raise ParameterError(
                f"{navigator!r} is not 'navigator', an array or None", parameter="navigator"
            )
        image = np.asarray(navigator)
        expected = tuple(reversed(self.navigation_shape))
        if [size for size in image.shape if size > 1] != [size for size in expected if size > 1]:
            raise ParameterError(
                f"shape {image.shape} does not match the navigation shape {expected} (array order)",
                parameter="navigator",
            )
        if image.dtype.kind not in "buif":
            raise ParameterError(f"{image.dtype} is not a numeric dtype", parameter="navigator")
        return image.reshape(self.frames)

    def _header_fields(self, header: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        fields: dict[str, Any] = dict.fromkeys(FIELD_NAMES, 0)
        fields.update(
            UNKNOWN1=ASTAR_UNKNOWN1,
            SX=1.0,
            SY=1.0,
            SDP=100,
            Acquisition_time=DEFAULT_ACQUISITION_TIME,
        )
        fields.update(
            (name, value)
            for name, value in header.items()
            if name in FIELD_NAMES and name not in GEOMETRY_FIELDS
        )
        fields.update(
            ID=ID_TEXT,
            MAGIC=SIGNATURE_8BIT,
            Data_offset_1=VBF_OFFSET,
            Data_offset_2=self._data_offset,
            DP_SZ=self.frame_size,
            NX=self.nx,
            NY=self.ny,
        )
        note = without_bit_depth(str(header.get("Note") or ""))
        room = VBF_OFFSET - HEADER_SIZE
        if len(note.encode("latin-1", errors="replace")) > room:
            warnings.warn(
                f"{self.path}: the note is cut to the {room} bytes a blockfile has for it",
                UserWarning,
                stacklevel=4,
            )
        return fields, note

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _abort(self) -> None:
        """Abandon the file: remove the temporary file, leave ``filename`` untouched."""
        self._progress.close()
        try:
            self._close_fd()
        finally:
            self._output.abort()

    def write(self, batch: npt.ArrayLike | FrameBatch) -> None:
        """Append one frame ``(n, n)`` or a batch ``(k, n, n)`` of frames, in scan order.

        Parameters
        ----------
        batch
            Integer or float frames, any byte order, or a :class:`~stemcast.batch.FrameBatch`;
            converted with the writer's ``intensity_scaling``.

        Raises
        ------
        ParameterError
            If the frames do not fit the file, or the writer was committed or aborted.
        """
        frames = batch.frames if isinstance(batch, FrameBatch) else np.asarray(batch)
        if frames.ndim == 2:
            frames = frames[np.newaxis]
        start = self._next
        self._put(start, frames)
        self._next = start + len(frames)

    def _prepare(self, dtype: np.dtype[Any]) -> None:
        """Set up the conversion when the first batch shows the data type (under the lock)."""
        native = _check_dtype(dtype)
        if self._dtype is not None:
            if native != self._dtype:
                raise ParameterError(
                    f"{dtype} frames after {self._dtype} frames: one dtype per file",
                    parameter="frames",
                )
            return
        if self.intensity_scaling is None and native != np.uint8:
            warnings.warn(
                f"{self.path}: data does not have uint8 dtype: values outside the range 0-255 "
                "may result in overflow. To avoid this use the 'intensity_scaling' keyword "
                "argument.",
                UserWarning,
                stacklevel=5,
            )
        if self.intensity_scaling == "minmax":
            # Raw frames go behind the records' space (see the module documentation).
            self._spool = self._data_offset + self.frames * RECORD_HEADER_SIZE
            pixels = self.frame_size**2 * native.itemsize
            os.ftruncate(self._fd, self._spool + self.frames * pixels)
        else:
            self._scale = _Scaler(native, _input_range(self.intensity_scaling, native, None))
        self._dtype = native

    def _put(self, start: int, batch: npt.NDArray[Any]) -> None:
        """Convert and write frames ``start:start+len(batch)``; thread-safe."""
        self.check_open()
        if batch.ndim != 3 or batch.shape[1:] != (self.frame_size, self.frame_size):
            raise ParameterError(
                f"frames of shape {batch.shape} are not {self.frame_size} x {self.frame_size}",
                parameter="frames",
            )
        stop = start + len(batch)
        if not len(batch):
            return
        if stop > self.frames:
            raise ParameterError(
                f"frames {start}:{stop} beyond the {self.frames} of the navigation shape "
                f"{self.navigation_shape}",
                parameter="frames",
            )
        with self._lock:
            self._prepare(batch.dtype)
        means = _frame_means(batch) if isinstance(self._navigator, str) else None
        if self._spool is None:
            self._write_records(start, batch)
        else:
            low, high = batch.min(), batch.max()
            native = np.ascontiguousarray(batch, dtype=self._dtype)
            _pwrite(self._fd, native, self._spool + start * native[0].nbytes)
        with self._lock:
            if self._spool is not None:
                self._range = (
                    (low, high)
                    if self._range is None
                    else (
                        np.minimum(self._range[0], low),
                        np.maximum(self._range[1], high),
                    )
                )
            if means is not None:
                if self._means is None:
                    self._means = np.zeros(self.frames, dtype=means.dtype)
                self._means[start:stop] = means
            self.frames_written += len(batch)
            self._progress.update(len(batch))

    def _write_records(self, start: int, batch: npt.NDArray[Any]) -> None:
        assert self._scale is not None
        records = np.empty(len(batch), dtype=self._record)
        records["marker"] = FRAME_MARKER
        records["serial"] = np.arange(start, start + len(batch))
        self._scale(batch, records["data"])
        _pwrite(self._fd, records, self._data_offset + start * self._record.itemsize)

    def _rescale_spool(self) -> tuple[float, float]:
        """Convert the spooled raw frames in place; return the input range used."""
        assert self._dtype is not None
        assert self._range is not None
        assert self._spool is not None
        in_range = (float(self._range[0]), float(self._range[1]))
        self._scale = _Scaler(self._dtype, in_range)
        frame_bytes = self.frame_size**2 * self._dtype.itemsize
        step = max(1, _BATCH_BYTES // frame_bytes)
        buffer = np.empty((step, self.frame_size, self.frame_size), dtype=self._dtype)
        for start in range(0, self.frames, step):
            batch = buffer[: min(step, self.frames - start)]
            _pread(self._fd, batch, self._spool + start * frame_bytes)
            self._write_records(start, batch)
        os.ftruncate(self._fd, self._size)
        return in_range

    def _commit(self) -> Path:
        """Write the navigator and the header, then move the file to ``filename``.

        :meth:`commit` returns the written file's path. It raises :class:`ParameterError`
        (and aborts) if fewer frames were written than the navigation shape holds.
        """
        self._progress.close()
        if self.frames_written != self.frames:
            raise ParameterError(
                f"{self.frames_written} frames written, the navigation shape "
                f"{self.navigation_shape} needs {self.frames}",
                path=self.path,
                parameter="frames",
            )
        in_range: tuple[float, float] | None
        if self._spool is not None:
            in_range = self._rescale_spool()
        else:
            assert self._scale is not None
            in_range = self._scale.in_range
        if self._navigator is None:
            navigator = np.zeros(self.frames, np.uint8)
        elif isinstance(self._navigator, str):
            assert self._means is not None
            navigator = self._means
        else:
            navigator = self._navigator
        _pwrite(self._fd, _navigator_bytes(navigator, in_range), VBF_OFFSET)
        header = format_header(self._fields, self._note, endianess=self.endianess)
        _pwrite(self._fd, np.frombuffer(header, np.uint8), 0)
        self._close_fd()
        self._output.commit()
        return self.path


class _StoreTarget:
    """``dask.array.store`` target: each block of frames goes through :meth:`BlockfileWriter._put`.

    Blocks may arrive in any order and from several threads; a block that does not span whole
    scan lines is written one line segment at a time.
    """

    def __init__(self, writer: BlockfileWriter, nav_ndim: int) -> None:
        self.writer = writer
        self.nav_ndim = nav_ndim

    def __setitem__(self, key: tuple[slice, ...], block: npt.NDArray[Any]) -> None:
        size = self.writer.frame_size
        if self.nav_ndim < 2:
            start = key[0].indices(self.writer.frames)[0] if self.nav_ndim else 0
            self.writer._put(start, block.reshape(-1, size, size))
            return
        rows, cols = key[0].indices(self.writer.ny), key[1].indices(self.writer.nx)
        if cols[0] == 0 and cols[1] == self.writer.nx:
            self.writer._put(rows[0] * self.writer.nx, block.reshape(-1, size, size))
            return
        for row, line in zip(range(rows[0], rows[1]), block, strict=True):
            self.writer._put(row * self.writer.nx + cols[0], line)


def _slabs(data: npt.NDArray[Any], batch_frames: int) -> Iterator[tuple[int, npt.NDArray[Any]]]:
    """``(first frame, frames)`` of an in-memory array in scan order, a few frames at a time."""
    size = data.shape[-1]
    if data.ndim < 4:
        flat = data.reshape(-1, size, size)
        for start in range(0, len(flat), batch_frames):
            yield start, flat[start : start + batch_frames]
        return
    ny, nx = data.shape[:2]
    if nx <= batch_frames:
        rows = batch_frames // nx
        for row in range(0, ny, rows):
            yield row * nx, data[row : row + rows].reshape(-1, size, size)
        return
    for row in range(ny):
        for col in range(0, nx, batch_frames):
            yield row * nx + col, data[row, col : col + batch_frames]


def _is_dask(data: Any) -> bool:
    return getattr(data, "__dask_graph__", None) is not None


def _batch_frames(frame_size: int, dtype: np.dtype[Any]) -> int:
    return max(1, _BATCH_BYTES // (frame_size * frame_size * dtype.itemsize))


def _data_range(data: Any) -> tuple[float, float]:
    """Minimum and maximum of a numpy or dask array (one pass for dask)."""
    if _is_dask(data):
        from dask.base import compute

        low, high = compute(data.min(), data.max())  # type: ignore[no-untyped-call]
    else:
        low, high = data.min(), data.max()
    return float(low), float(high)


def _convert_units(value: float, units: Any, target: str, kind: str) -> float:
    """``value`` in ``units`` converted to ``target`` (nm or cm); warns when it cannot."""
    factor = _NM_PER_UNIT.get(units.strip()) if isinstance(units, str) else None
    if factor is None:
        warnings.warn(
            f"BLO file expects {target} units in {kind} dimensions. Existing units, {units!r}, "
            "could not be converted; saving axes scales as is. Beware that scales will likely "
            "be incorrect in the file.",
            UserWarning,
            stacklevel=4,
        )
        return value
    return value * factor / _NM_PER_UNIT[target]


def _axis_scale(axis: Mapping[str, Any]) -> float:
    if "axis" in axis and axis.get("scale") is None:
        values = np.asarray(axis["axis"], dtype=float)
        return float(values[1] - values[0]) if values.size > 1 else 1.0
    return float(axis.get("scale", 1.0))


def _zone(name: str) -> tzinfo | None:
    """Find the time zone called ``name``: IANA name, UTC, or the local zone's abbreviation."""
    if name.upper() in ("UTC", "Z", "GMT"):
        return UTC
    with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(name)
    if name in time.tzname:
        return None  # naive: taken as local time below
    warnings.warn(f"unknown time zone {name!r}: taking the time as UTC", UserWarning, stacklevel=5)
    return UTC


def _metadata_time(general: Mapping[str, Any]) -> float | None:
    """``Acquisition_time`` from HyperSpy's ``General.date/time/time_zone``, if present."""
    date = general.get("date")
    if not date:
        return None
    try:
        moment = datetime.fromisoformat(f"{date}T{general.get('time') or '00:00:00'}")
    except (TypeError, ValueError):
        warnings.warn(
            f"metadata date {date!r} time {general.get('time')!r} is not ISO 8601: not written",
            UserWarning,
            stacklevel=4,
        )
        return None
    if moment.tzinfo is None:
        zone = _zone(str(general.get("time_zone") or "UTC"))
        moment = moment.astimezone() if zone is None else moment.replace(tzinfo=zone)
    return datetime_to_serial(moment)


def signal_header(
    signal: Mapping[str, Any], nav_axes: list[Mapping[str, Any]], sig_axes: list[Mapping[str, Any]]
) -> dict[str, Any]:
    """Header fields of a signal: its blockfile header if any, metadata, then its axes."""
    original = signal.get("original_metadata") or {}
    header = dict(original.get("blockfile_header") or {})
    metadata = signal.get("metadata") or {}
    general = metadata.get("General") or {}
    tem = (metadata.get("Acquisition_instrument") or {}).get("TEM") or {}
    # The inverse of the reader's mapping (kV, camera length, degrees).
    energy, length, rotation = (
        tem.get(key) for key in ("beam_energy", "camera_length", "rotation")
    )
    fallback: dict[str, Any] = {
        "Acquisition_time": _metadata_time(general),
        "Note": general.get("notes"),
        "Beam_energy": None if energy is None else round(float(energy) * 1e3),
        "Camera_length": None if length is None else round(float(length) * 1e4),
        "Scan_rotation": None if rotation is None else round(float(rotation) * 1e2) % 36000,
    }
    for name, value in fallback.items():
        if name not in header and value is not None:
            header[name] = value
    scales = [
        _convert_units(_axis_scale(axis), axis.get("units"), "nm", "navigation")
        for axis in nav_axes
    ]
    header["SX"] = scales[-1] if scales else 1.0
    header["SY"] = scales[0] if scales else 1.0
    for axis in sig_axes[:-1]:
        _convert_units(_axis_scale(axis), axis.get("units"), "cm", "signal")
    scale_cm = _convert_units(_axis_scale(sig_axes[-1]), sig_axes[-1].get("units"), "cm", "signal")
    sdp = round(100 / scale_cm) if math.isfinite(scale_cm) and scale_cm > 0 else 0
    if not 1 <= sdp <= MAX_SIZE:
        raise ParameterError(
            f"signal axis scale {scale_cm} cm gives SDP = 100 / scale = {sdp}, outside "
            f"1..{MAX_SIZE}",
            parameter="signal",
        )
    header["SDP"] = sdp
    return header


def _hyperspy_navigator(metadata: Mapping[str, Any]) -> Any:
    cached = (metadata.get("_HyperSpy") or {}).get("_sig_navigator")
    if isinstance(cached, Mapping) and cached.get("data") is not None:
        return cached["data"]
    return "navigator"


def file_writer(
    filename: str | os.PathLike[str],
    signal: Mapping[str, Any],
    intensity_scaling: IntensityScaling = None,
    navigator: str | npt.ArrayLike | None = "navigator",
    show_progressbar: bool = True,
    endianess: str | None = None,
    *,
    endianness: str | None = None,
) -> None:
    """Write signal to blockfile.

    Parameters
    ----------
    filename : str, pathlib.Path
        Filename of the file to write to or corresponding pathlib.Path.
    signal : dict
        Dictionary containing the signal object. Should contain the following fields:

        - 'data' - multidimensional numpy array (or dask array, written chunk by chunk)
        - 'axes' - list of dictionaries describing the axes containing the fields 'name',
          'units', 'index_in_array', and either 'size', 'offset', and 'scale' or a numpy
          array 'axis' containing the full axes vector
        - 'metadata' - dictionary containing the metadata tree
    intensity_scaling : str, 2-tuple of float, 2-tuple of int
        If the signal datatype is not :class:`numpy.ubyte`, casting to this datatype without
        intensity rescaling results in overflow errors (default behavior) This argument
        provides intensity scaling strategies and the options are:

        - ``'dtype'``: the limits of the datatype of the dataset, e.g. 0-65535 for
          :class:`numpy.ushort`, are mapped onto 0-255, respectively. Does not work for
          ``float`` data types.
        - ``'minmax'``: the minimum and maximum in the dataset are mapped to 0-255.
        - ``'crop'``: everything below 0 and above 255 is set to 0 and 255, respectively
        - 2-tuple of `floats` or `ints`: the intensities between these values are scaled
          between 0-255, everything below is 0 and everything above is 255.
    navigator : str or array_like
        A ``.blo`` file also saves a virtual bright field image for navigation. This option
        determines what kind of data is stored for this image. By default this is set to
        ``'navigator'``, which results in using the
        :attr:`hyperspy.api.signals.BaseSignal.navigator` attribute if used with HyperSpy.
        Otherwise, it is calculated during saving (while the frames are written, in the same
        pass). Alternatively, an array-like of the right shape may also be provided. If set to
        None, a zero array is stored in the file.
    show_progressbar : bool, default=True
        Whether to show the progressbar or not.
    endianess : str, default="<"
        ``"<"`` or ``">"``, depending on how the bits are written to the file.
    endianness : str, optional
        The same, spelled as the reference library spells it since its 0.13. Either spelling
        may be given, or both with the same value; different values raise
        :class:`~stemcast.errors.ParameterError`. Neither spelling warns.

    Notes
    -----
    The header is built from ``original_metadata["blockfile_header"]`` when present (the
    geometry, signature and offsets are always recomputed), then from ``metadata``
    (``General.date/time/time_zone/notes``, ``Acquisition_instrument.TEM.beam_energy``,
    ``camera_length``, ``rotation``) for the fields it lacks. ``SDP`` is rounded (the reference
    truncates, which drifts the calibration at every save).
    """
    endianess = byte_order(endianess, endianness)
    scaling = _check_scaling(intensity_scaling)
    data = signal["data"]
    if data.ndim < 2 or data.ndim > 4:
        raise ParameterError(
            f"data of shape {data.shape}: blockfiles hold 2 signal and at most 2 navigation "
            "dimensions",
            parameter="signal",
        )
    if data.shape[-1] != data.shape[-2]:
        raise ParameterError(
            f"Blockfiles require signal shape to be square! (data shape {data.shape})",
            parameter="signal",
        )
    dtype = _check_dtype(np.dtype(data.dtype))
    if scaling == "dtype":
        _input_range(scaling, dtype, None)  # refuses float data before anything is written
    nav_ndim = data.ndim - 2
    axes = signal.get("axes") or [
        {"size": size, "scale": 1.0, "units": "nm" if index < nav_ndim else "cm"}
        for index, size in enumerate(data.shape)
    ]
    axes = sorted(axes, key=lambda axis: axis.get("index_in_array", 0))
    header = signal_header(signal, axes[:nav_ndim], axes[nav_ndim:])
    if navigator is not None and isinstance(navigator, str) and navigator == "navigator":
        navigator = _hyperspy_navigator(signal.get("metadata") or {})
    if scaling == "minmax":
        scaling = _data_range(data)
    with BlockfileWriter(
        filename,
        tuple(reversed(data.shape[:nav_ndim])),
        data.shape[-1],
        intensity_scaling=scaling,
        navigator=navigator,
        header=header,
        show_progressbar=show_progressbar,
        endianess=endianess,
    ) as writer:
        if _is_dask(data):
            import dask.array as da

            if any(len(chunks) > 1 for chunks in data.chunks[-2:]):
                data = data.rechunk({nav_ndim: -1, nav_ndim + 1: -1})
            da.store(data, _StoreTarget(writer, nav_ndim), lock=False)  # type: ignore[arg-type]
        else:
            for start, frames in _slabs(data, _batch_frames(data.shape[-1], dtype)):
                writer._put(start, np.asarray(frames))
