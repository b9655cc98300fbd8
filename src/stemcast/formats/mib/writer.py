"""Merlin ``.mib`` + ``.hdr`` writer: any counter depth and geometry, processed or RAW.

:class:`MibWriter` appends frames to a growing file, as the camera does (the simulator and the
live tests use it); :func:`write_mib` writes a whole acquisition at once, atomically.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast._atomic import atomic_path
from stemcast.batch import FrameBatch
from stemcast.errors import ParameterError, UnsupportedError
from stemcast.formats._writev import write_all
from stemcast.formats.mib.layout import MibLayout
from stemcast.formats.mib.spec import (
    COUNTER_DEPTHS,
    HDR_FRAMES_EXPECTED,
    HDR_FRAMES_PER_TRIGGER,
    HDR_SCAN_X,
    HDR_SCAN_Y,
    FrameHeader,
    format_frame_header,
    format_hdr_text,
    merlin_float,
)
from stemcast.sink import FrameSink

__all__ = ["MibWriter", "write_mib"]

#: DAC values of one Medipix3RX chip as the Merlin software writes them (27 values).
_DACS = [
    "011",
    "511",
    "000",
    "000",
    "000",
    "000",
    "000",
    "000",
    "175",
    "010",
    "200",
    "125",
    "100",
    "100",
    "093",
    "100",
    "099",
    "030",
    "128",
    "004",
    "255",
    "140",
    "128",
    "191",
    "179",
    "511",
    "511",
]
_THRESHOLDS = (2.0, 511.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
_PROCESSED_TYPES = {1: "U08", 6: "U08", 12: "U16", 24: "U32"}
_CHIP = 256


def _layout_for(
    frame_shape: tuple[int, int], counter_depth: int, quad: bool, raw: bool, gap: bool
) -> MibLayout:
    rows, cols = frame_shape
    if quad and raw and counter_depth == 24:
        raise UnsupportedError("24-bit RAW quad frames cannot be written (nor decoded)")
    if quad:
        expected_cols = 2 * _CHIP + (2 if gap else 0)
        if cols != expected_cols or rows % 2:
            raise ParameterError(
                f"quad frames are {expected_cols} columns wide with an even number of rows, "
                f"not {frame_shape}",
                parameter="frame_shape",
            )
        geometry, chips, header_size = ("2x2G" if gap else "2x2"), 4, 768
        stored = ((rows - (2 if gap else 0)) // 2, 4 * _CHIP) if raw else (rows, cols)
    else:
        if gap:
            raise ParameterError("gap pixels exist only for quad detectors", parameter="gap")
        geometry, chips, header_size = "1x1", 1, 384
        stored = (rows, 2 * cols if raw and counter_depth == 24 else cols)
    return MibLayout(
        header_size=header_size,
        stored_height=stored[0],
        stored_width=stored[1],
        pixel_type="R64" if raw else _PROCESSED_TYPES[counter_depth],
        counter_depth=counter_depth,
        geometry=geometry,
        chip_count=chips,
    )


class MibWriter(FrameSink):
    """Append frames to a Merlin ``.mib`` file, writing its ``.hdr`` first.

    A :class:`~stemcast.sink.FrameSink` that writes in place, as the camera does: the file
    grows visibly with every :meth:`write` (readers follow it), so it is not atomic.
    :meth:`commit` flushes it to disk and closes it; :meth:`abort` closes it and removes the
    ``.mib`` and the ``.hdr`` this writer created (an ``.hdr`` left alone would announce an
    acquisition that has no frames). A camera that stops keeps its frames: to leave a partial
    acquisition, commit.

    Parameters
    ----------
    path
        The ``.mib`` file to create (an existing file is replaced).
    frame_shape
        ``(rows, cols)`` of the frames given to :meth:`write`: ``(256, 256)`` for a single
        chip (fewer rows for a row ROI), ``(512, 512)`` for a quad, ``(514, 514)`` with gaps.
    counter_depth
        Merlin counter depth: 1, 6, 12 or 24 bits.
    quad
        Write a 2x2 chip assembly (768-byte headers).
    raw
        Write RAW (``R64``) payloads instead of processed pixels.
    gap
        Quad with two gap pixels between chips (``2x2G``).
    exposure_s
        Shutter time of each frame in seconds.
    frame_interval_s
        Time between the starts of two frames; defaults to the exposure.
    scan_shape
        ``(x, y)`` of the scan, used for the ``.hdr`` frame count and the fly-back delay.
    flyback_s
        Extra time after each scan line (visible in the timestamps), needs ``scan_shape``.
    frames_per_trigger
        Written to the ``.hdr``: the scan width for line-triggered scans, else 1.
    frames_expected
        ``Frames in Acquisition`` of the ``.hdr``; defaults to the scan size, else 0.
    hdr_scan_size
        Also write ``ScanX``/``ScanY`` to the ``.hdr`` (Merlin software 1.5 and later).
    start_time
        Timestamp of the first frame; defaults to now.
    write_hdr
        Whether to write the ``.hdr`` file.
    first_sequence
        Sequence number of the first frame (continues across the files of a split run).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        frame_shape: tuple[int, int] = (256, 256),
        counter_depth: int = 12,
        quad: bool = False,
        raw: bool = False,
        gap: bool = False,
        exposure_s: float = 0.001,
        frame_interval_s: float | None = None,
        scan_shape: Sequence[int] | None = None,
        flyback_s: float = 0.0,
        frames_per_trigger: int = 1,
        frames_expected: int | None = None,
        hdr_scan_size: bool = False,
        start_time: datetime | None = None,
        write_hdr: bool = True,
        first_sequence: int = 1,
    ) -> None:
        if counter_depth not in COUNTER_DEPTHS:
            raise ParameterError(
                f"{counter_depth} is not one of {COUNTER_DEPTHS}", parameter="counter_depth"
            )
        if exposure_s <= 0:
            raise ParameterError(f"{exposure_s} is not positive", parameter="exposure_s")
        if flyback_s and scan_shape is None:
            raise ParameterError("a fly-back needs a scan_shape", parameter="flyback_s")
        self.path = Path(path)
        self.layout = _layout_for(tuple(frame_shape), counter_depth, quad, raw, gap)  # type: ignore[arg-type]
        self.frame_shape = tuple(frame_shape)
        self.exposure_s = exposure_s
        self.interval_ns = round((frame_interval_s or exposure_s) * 1e9)
        self.flyback_ns = round(flyback_s * 1e9)
        self.scan_shape = tuple(int(size) for size in scan_shape) if scan_shape else None
        start = start_time or datetime.now(UTC)
        self.start_ns = np.datetime64(start.astimezone(UTC).replace(tzinfo=None), "ns")
        self.first_sequence = first_sequence
        self.frames_written = 0
        self.frames_per_trigger = frames_per_trigger
        self.hdr_scan_size = hdr_scan_size
        self._max_value = (1 << counter_depth) - 1
        self._hdr: Path | None = None
        if write_hdr:
            if frames_expected is None:
                frames_expected = int(np.prod(self.scan_shape)) if self.scan_shape else 0
            self._hdr = self.path.with_suffix(".hdr")
            with atomic_path(self._hdr) as temporary:
                temporary.write_bytes(self.hdr_bytes(frames_expected))
        try:
            self._stream = open(self.path, "wb", buffering=0)  # noqa: SIM115
        except BaseException:
            self._remove(self._hdr)
            raise

    def _commit(self) -> None:
        """Flush the file to disk and close it (:meth:`commit` returns ``None``)."""
        try:
            os.fsync(self._stream.fileno())
        finally:
            self._stream.close()

    def _abort(self) -> None:
        """Close the file and remove the ``.mib`` and the ``.hdr`` this writer created."""
        self._stream.close()
        self._remove(self.path)
        self._remove(self._hdr)

    @staticmethod
    def _remove(path: Path | None) -> None:
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _timestamps(self, start: int, count: int) -> npt.NDArray[Any]:
        index = np.arange(start, start + count, dtype=np.int64)
        offsets = index * self.interval_ns
        if self.scan_shape and self.flyback_ns:
            offsets += (index // self.scan_shape[0]) * self.flyback_ns
        return self.start_ns + offsets.astype("timedelta64[ns]")

    def _headers(self, start: int, count: int) -> npt.NDArray[Any]:
        """Headers of frames ``start:start+count``, from one template.

        Only the sequence number and the two timestamps change from frame to frame, and they
        have fixed widths (while the sequence number has six digits), so the headers are the
        first one with those bytes replaced, vectorised.
        """
        if count == 0:
            return np.empty(0, dtype=f"S{self.layout.header_size}")
        stamps = self._timestamps(start, count)
        last_sequence = self.first_sequence + start + count - 1
        if last_sequence > 999_999:
            return np.array(
                [self._header(start + i, stamp) for i, stamp in enumerate(stamps)],
                dtype=f"S{self.layout.header_size}",
            )
        headers = np.tile(self._template, (count, 1))
        sequence = self.first_sequence + start + np.arange(count)
        powers = 10 ** np.arange(5, -1, -1)
        headers[:, 4:10] = ord("0") + (sequence[:, np.newaxis] // powers) % 10
        iso = np.datetime_as_string(stamps, unit="ns").astype("S29")
        iso_bytes = iso.view(np.uint8).reshape(count, 29)
        local, utc = self._stamp_offsets
        headers[:, local : local + 26] = iso_bytes[:, :26]
        headers[:, local + 10] = ord(" ")
        headers[:, utc : utc + 29] = iso_bytes
        return headers.view(f"S{self.layout.header_size}").ravel()

    @functools.cached_property
    def _template(self) -> npt.NDArray[np.uint8]:
        """The first frame's header: :meth:`_headers` replaces its number and timestamps."""
        return np.frombuffer(self._header(0, self.start_ns), dtype=np.uint8)

    @functools.cached_property
    def _stamp_offsets(self) -> tuple[int, int]:
        """Byte offsets of the local and UTC timestamps in a header (fields 9 and MQ1A + 1)."""
        text = self._header(0, self.start_ns).decode("latin-1")
        fields = text.split(",")
        local = sum(len(field) + 1 for field in fields[:9])
        extended = fields.index("MQ1A")
        utc = sum(len(field) + 1 for field in fields[: extended + 1])
        return local, utc

    def _header(self, index: int, stamp: np.datetime64) -> bytes:
        iso = str(stamp)
        layout = self.layout
        return format_frame_header(
            FrameHeader(
                sequence_number=self.first_sequence + index,
                header_size=layout.header_size,
                chip_count=layout.chip_count,
                width=layout.stored_width,
                height=layout.stored_height,
                pixel_type=layout.pixel_type,
                layout=layout.geometry,
                chip_select=(1 << layout.chip_count) - 1,
                local_time=iso.replace("T", " ")[:26],
                shutter_s=self.exposure_s,
                counter=0,
                colour_mode=0,
                gain_mode=0,
                thresholds_kev=_THRESHOLDS,
                dacs=tuple(["3RX", *_DACS] * layout.chip_count),
                utc_time=iso + "Z",
                shutter_ns=round(self.exposure_s * 1e9),
                counter_depth=layout.counter_depth,
            )
        )

    def records(self, frames: npt.ArrayLike) -> npt.NDArray[Any]:
        """Encode the next frames into records, without writing them.

        Parameters
        ----------
        frames
            One frame ``(rows, cols)`` or a batch ``(n, rows, cols)``.

        Returns
        -------
        numpy.ndarray
            Structured records (``MibLayout.record_dtype``) numbered after those written.
        """
        batch = np.asarray(frames)
        if batch.ndim == 2:
            batch = batch[np.newaxis]
        if batch.ndim != 3 or batch.shape[1:] != self.frame_shape:
            raise ParameterError(
                f"frames of shape {batch.shape} do not match frame_shape {self.frame_shape}",
                parameter="frames",
            )
        if batch.size and not _fits(batch, self._max_value):
            raise ParameterError(
                f"values must lie in 0..{self._max_value} for a counter depth of "
                f"{self.layout.counter_depth} bits",
                parameter="frames",
            )
        count = len(batch)
        records = np.empty(count, dtype=self.layout.record_dtype)
        records["header"] = self._headers(self.frames_written, count)
        # Processed pixels are byte-swapped by the assignment itself: one pass.
        records["data"] = self.layout.encode(batch) if self.layout.raw else batch
        return records

    def write(self, batch: npt.ArrayLike | FrameBatch) -> None:
        """Append the next frames.

        Parameters
        ----------
        batch
            One frame ``(rows, cols)``, a batch ``(n, rows, cols)`` of frames, or a
            :class:`~stemcast.batch.FrameBatch`.

        Raises
        ------
        ParameterError
            If the frames do not fit the writer, or it was committed or aborted.
        """
        self.check_open()
        records = self.records(batch.frames if isinstance(batch, FrameBatch) else batch)
        self._stream.write(records.view(np.uint8).data)
        self.frames_written += len(records)

    def payloads(self, frames: npt.ArrayLike) -> npt.NDArray[Any]:
        """Encode frames into record payloads, as :meth:`write_payloads` takes them.

        Parameters
        ----------
        frames
            One frame ``(rows, cols)`` or a batch ``(n, rows, cols)``.

        Returns
        -------
        numpy.ndarray
            ``(n,) + MibLayout.payload_shape`` payloads of ``MibLayout.stored_dtype``.
        """
        return np.ascontiguousarray(self.records(frames)["data"])

    def write_payloads(
        self, payloads: npt.NDArray[Any], indices: Sequence[int] | npt.NDArray[np.integer[Any]]
    ) -> None:
        """Append frames that repeat payloads already encoded: frame ``k`` is ``indices[k]``.

        A camera simulator writes a small pool of patterns over and over this way: the
        records go to the file straight from the pool (one ``writev`` call per batch), with
        their own headers (sequence numbers, timestamps).

        Parameters
        ----------
        payloads
            Payloads from :meth:`payloads`.
        indices
            The payload of each frame to append.

        Raises
        ------
        ParameterError
            If the payloads do not fit the writer, or it was committed or aborted.
        """
        self.check_open()
        layout = self.layout
        if payloads.shape[1:] != layout.payload_shape or payloads.dtype != layout.stored_dtype:
            raise ParameterError(
                f"payloads of shape {payloads.shape} and type {payloads.dtype} are not "
                f"{layout.payload_shape} of {layout.stored_dtype}",
                parameter="payloads",
            )
        count = len(indices)
        headers = self._headers(self.frames_written, count).view(np.uint8).data.cast("B")
        size = layout.header_size
        pool = [np.ascontiguousarray(payload).data.cast("B") for payload in payloads]
        buffers: list[memoryview] = []
        for record, index in enumerate(np.asarray(indices).tolist()):
            buffers += (headers[record * size : (record + 1) * size], pool[index])
        write_all(self._stream.fileno(), buffers)
        self.frames_written += count

    def write_partial(self, frame: npt.ArrayLike, nbytes: int) -> None:
        """Append only the first ``nbytes`` bytes of the next frame's record.

        This is what a file holds when the camera stops mid-frame; the record is not counted
        as written.
        """
        self.check_open()
        record = self.records(frame).view(np.uint8)
        self._stream.write(record[: max(0, min(nbytes, record.size - 1))].data)

    def hdr_bytes(self, frames_expected: int) -> bytes:
        """Render the ``.hdr`` acquisition header of this acquisition.

        Parameters
        ----------
        frames_expected
            ``Frames in Acquisition (Number)``; 0 for an open-ended acquisition.

        Returns
        -------
        bytes
            The file content, space-padded to 2048 bytes.
        """
        layout = self.layout
        chips = layout.chip_count
        stamp = self.start_ns.astype("datetime64[us]").astype(datetime)
        entries = {
            "Time and Date Stamp (day, mnth, yr, hr, min, s)": stamp.strftime("%d/%m/%Y %H:%M:%S"),
            "Chip ID": ",".join([f"W556_C{chip}" for chip in range(chips)] + [" - "] * (4 - chips)),
            "Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX)": "Medipix 3RX",
            "Assembly Size (NX1, 2X2)": f"{'2x2' if layout.quad else '1x1':>6}",
            "Chip Mode  (SPM, CSM, CM, CSCM)": "SPM",
            "Counter Depth (number)": str(layout.counter_depth),
            "Gain": "SLGM",
            "Active Counters": "Alternating",
            "Thresholds (keV)": ",".join(merlin_float(value) for value in _THRESHOLDS),
            "DACs": "; ".join([",".join(_DACS)] * chips),
            "Gap Fill Mode": "None",
            "Flat Field File": "None",
            "Dead Time File": "Dummy (C:\\<NUL>\\)",
            "Acquisition Type (Normal, Th_scan, Config)": "Normal",
            HDR_FRAMES_EXPECTED: str(frames_expected),
            HDR_FRAMES_PER_TRIGGER: str(self.frames_per_trigger),
            "Trigger Start (Positive, Negative, Internal)": "Internal",
            "Trigger Stop (Positive, Negative, Internal)": "Internal",
            "Sensor Bias (V)": "120 V",
            "Sensor Polarity (Positive, Negative)": "Positive",
            "Temperature (C)": "Board Temp 46.651402 Deg C",
            "Humidity (%)": "Board Humidity 12.585205 ",
            "Medipix Clock (MHz)": "120MHz",
            "Readout System": "Merlin Quad" if layout.quad else "Merlin",
            "Software Version": "1.5.0.197" if self.hdr_scan_size else "0.77",
        }
        if self.hdr_scan_size and self.scan_shape:
            entries[HDR_SCAN_X] = str(self.scan_shape[0])
            entries[HDR_SCAN_Y] = str(self.scan_shape[-1])
        return format_hdr_text(entries)


def _fits(frames: npt.NDArray[Any], maximum: int) -> bool:
    """Whether every value of ``frames`` lies in ``0..maximum`` (skipping needless passes)."""
    info = np.iinfo(frames.dtype) if frames.dtype.kind in "ui" else None
    if info is not None and info.min >= 0 and info.max <= maximum:
        return True
    low = 0 if info is not None and info.min >= 0 else frames.min()
    return bool(low >= 0 and frames.max() <= maximum)


#: Counter depth whose processed pixels have a given item size (unsigned integers).
_DEPTH_OF_ITEMSIZE = {1: 6, 2: 12, 4: 24}


def _depth_for(dtype: np.dtype[Any]) -> int:
    """Return the counter depth whose frames read back with ``dtype`` (6, 12, 24; else 12)."""
    if dtype.kind == "u":
        return _DEPTH_OF_ITEMSIZE.get(dtype.itemsize, 12)
    return 12


def _flipped(batch: npt.ArrayLike) -> npt.NDArray[Any]:
    """Frames in the orientation stored in the file: the reader flips them vertically."""
    return np.asarray(batch)[..., ::-1, :]


def _render_hdr(folder: Path, name: str, frames_expected: int, options: dict[str, Any]) -> Path:
    """Have :class:`MibWriter` render the ``.hdr`` of ``frames_expected`` frames in ``folder``.

    The frame count of an iterable is known only once it has been written, and the writer
    renders its ``.hdr`` when it is created, so a second writer (of no frames) renders it.
    """
    with MibWriter(folder / name, frames_expected=frames_expected, **options):
        pass
    return (folder / name).with_suffix(".hdr")


def write_mib(
    path: str | os.PathLike[str],
    frames: npt.ArrayLike | Iterable[npt.ArrayLike],
    *,
    batch_frames: int = 64,
    **options: Any,
) -> Path:
    """Write a whole acquisition to ``path`` (``.mib``) and its ``.hdr``, atomically.

    ``write_mib`` is the inverse of :func:`stemcast.readers.mib.file_reader`: it takes frames
    as the reader returns them (flipped vertically from the stored rows, which it writes back
    in stored order) and writes the scan shape to the ``.hdr`` so that the reader (and the
    reference reader) find it again.

    Parameters
    ----------
    path
        The ``.mib`` file to write.
    frames
        Frames in :func:`~stemcast.readers.mib.file_reader`'s orientation: an array
        ``(y, x, rows, cols)`` (a scan), ``(n, rows, cols)`` (a stack) or ``(rows, cols)`` (one
        frame), or an iterable of frames or frame batches (a stack, unless ``scan_shape`` is
        given). More navigation axes are flattened into a stack.
    batch_frames
        Frames encoded per write.
    **options
        Passed to :class:`MibWriter` (``counter_depth``, ``quad``, ``raw``, ...).
        ``frame_shape`` defaults to the frames' shape, ``scan_shape`` to ``(x, y)`` of a 4-D
        array, ``counter_depth`` to the depth whose pixels have the data's dtype (6 for
        ``uint8``, 12 for ``uint16``, 24 for ``uint32``, else 12). With a scan shape,
        ``hdr_scan_size`` defaults to True (``ScanX``/``ScanY`` in the ``.hdr``) and
        ``frames_per_trigger`` to the scan width (what the reference reader uses).
        ``frames_expected`` (``Frames in Acquisition``) defaults to the frames written.

    Returns
    -------
    pathlib.Path
        The written ``.mib`` file.
    """
    final = Path(path)
    batches: Iterable[Any]
    if hasattr(frames, "shape"):
        array: Any = frames
        options.setdefault("frame_shape", tuple(array.shape[-2:]))
        options.setdefault("counter_depth", _depth_for(np.dtype(array.dtype)))
        if array.ndim == 4:
            options.setdefault("scan_shape", (array.shape[1], array.shape[0]))
        flat = array.reshape(-1, *array.shape[-2:])
        batches = (
            _flipped(flat[start : start + batch_frames])
            for start in range(0, len(flat), batch_frames)
        )
    else:
        batches = (_flipped(batch) for batch in frames)  # type: ignore[union-attr]
    if options.get("scan_shape"):
        options.setdefault("hdr_scan_size", True)
        options.setdefault("frames_per_trigger", int(options["scan_shape"][0]))
    # The frames and the .hdr carry the same start time.
    options.setdefault("start_time", datetime.now(UTC))
    write_hdr = options.pop("write_hdr", True)
    frames_expected = options.pop("frames_expected", None)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.") as scratch:
        staged = Path(scratch) / final.name
        written = 0
        with MibWriter(staged, write_hdr=False, **options) as writer:
            for batch in batches:
                writer.write(batch)
                written += 1 if batch.ndim == 2 else len(batch)
        hdr = None
        if write_hdr:
            expected = written if frames_expected is None else frames_expected
            folder = Path(scratch) / "hdr"
            folder.mkdir()
            hdr = _render_hdr(folder, final.name, expected, options)
        with atomic_path(final) as temporary:
            os.replace(staged, temporary)
        if hdr is not None:
            with atomic_path(final.with_suffix(".hdr")) as temporary:
                os.replace(hdr, temporary)
    return final
