"""Follow one run on disk: look at its file sizes and read only its complete records.

A followed run wraps the format's run model (:class:`~stemcast.formats.mib.run.MibRun`,
:class:`~stemcast.formats.tvips.run.TvipsSeries`, each a :class:`~stemcast.source.Source`):
they count complete records from file sizes, read them with positional reads and decode them
with the format's record layout, so the live path shares every byte of decoding with the
offline reader. The methods here block (they do file I/O); the service calls them through
:func:`asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.batch import BufferPool, FrameBatch
from stemcast.errors import FormatError, StemcastError
from stemcast.formats.mib.run import MibRun, find_hdr, read_hdr
from stemcast.formats.mib.spec import (
    HDR_FRAMES_EXPECTED,
    HDR_FRAMES_PER_TRIGGER,
    PREFIX_SIZE,
    HdrScan,
    parse_header_size,
    timestamps_ns,
)
from stemcast.formats.runs import run_kind
from stemcast.formats.tvips.run import TvipsSeries, part_path, series_base
from stemcast.formats.tvips.spec import MAIN_HEADER_SIZE
from stemcast.protocol import wire_dtype
from stemcast.service.live.reasons import describe
from stemcast.source import Source

__all__ = ["FollowedRun", "MibSource", "NotReady", "TvipsSource", "open_source"]

_logger = logging.getLogger(__name__)


class NotReady(Exception):
    """The file of a new run does not yet hold enough bytes to tell its layout.

    Its message says what the file holds and what it waits for.
    """


class FollowedRun(ABC):
    """A run being followed: its files, complete records and what the headers announce."""

    detector: str
    #: Whether frame timestamps are fine enough to show line fly-backs (Merlin: ns; TVIPS
    #: stores whole milliseconds, whose rounding alone makes periodic gaps).
    timestamps_show_lines: bool

    #: The format's run model, as far as its complete records went at the last look.
    run: Source

    @property
    def path(self) -> str:
        """The first file of the run: the key the service knows it by."""
        return self.run.path

    @property
    def files(self) -> list[str]:
        """All files of the run found so far, in order."""
        return self.run.files

    @property
    def frames(self) -> int:
        """Complete records found at the last look."""
        return self.run.frames

    @property
    def record_size(self) -> int:
        """Bytes of one record in the files (frame header and payload)."""
        return self.run.record_size

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of a decoded frame."""
        return self.run.frame_shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native dtype of decoded frames."""
        return self.run.dtype

    def read(self, start: int, stop: int, buffers: BufferPool | None = None) -> FrameBatch:
        """Read and decode complete records ``start:stop``, oriented as the reader does.

        Parameters
        ----------
        start, stop
            Frame range, within :attr:`frames`.
        buffers
            Where to read and decode: the batch's frames and headers are then views of
            buffers from this pool (reused once nothing refers to them), each frame
            C-contiguous, so that it can be sent without a copy. Without a pool, new arrays.

        Returns
        -------
        FrameBatch
            The frames and their headers.
        """
        if buffers is None:
            return next(self.run.batches(start, stop, batch_frames=max(1, stop - start)))
        return self._read_into(start, stop, buffers)

    @abstractmethod
    def read_headers(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Read only the frame headers of records ``start:stop``, none of the pixels.

        They are what :meth:`times_ns`, :meth:`exposure_ms` and :meth:`header_fields` take.
        """

    @abstractmethod
    def _read_into(self, start: int, stop: int, buffers: BufferPool) -> FrameBatch:
        """Read records ``start:stop`` into buffers of ``buffers`` (see :meth:`read`)."""

    @property
    @abstractmethod
    def counter_depth(self) -> int:
        """Bits per pixel as counted (Merlin counter depth, TVIPS pixel size)."""

    @property
    def frames_expected(self) -> int | None:
        """Frames the acquisition announced, if it did."""
        return None

    @property
    def hdr_shape(self) -> tuple[int, int] | None:
        """Scan shape ``(x, y)`` written by the acquisition software, if any."""
        return None

    @property
    def frames_per_line(self) -> int | None:
        """Frames per scan line announced by the acquisition software, if any."""
        return None

    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """Acquisition metadata for the series header (JSON-serialisable)."""

    #: Size of the last file when the run was last looked at (``-1``: not yet).
    _looked_size: int = -1

    def refresh(self, *, rescan: bool) -> None:
        """Look at the files again; ``rescan`` also looks for new files of the run."""
        self._looked_size = os.path.getsize(self.files[-1])
        self._refresh(rescan=rescan)

    def grew(self) -> bool:
        """Whether the last file's size changed since the last look: one ``stat``, cheap.

        A run whose last file did not change has no new record in it (new files of the run
        are what :meth:`refresh` with ``rescan`` looks for).
        """
        return os.path.getsize(self.files[-1]) != self._looked_size

    @abstractmethod
    def _refresh(self, *, rescan: bool) -> None:
        """Look at the files again (see :meth:`refresh`)."""

    @abstractmethod
    def times_ns(self, headers: npt.NDArray[Any], start: int) -> npt.NDArray[np.int64] | None:
        """Timestamps in ns since the epoch of frames ``start:`` from their headers, if any."""

    @abstractmethod
    def exposure_ms(self, headers: npt.NDArray[Any]) -> float | None:
        """Exposure of frames in milliseconds, if known."""

    def header_fields(self, headers: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """Per-frame header fields that scan-shape inference uses (TVIPS rotator index)."""
        return {}

    @abstractmethod
    def trailing_bytes(self) -> int:
        """Bytes after the last complete record: a record the camera has not finished."""


class MibSource(FollowedRun):
    """A Merlin run: one growing ``.mib`` file or several, with its ``.hdr``."""

    detector = "merlin"
    timestamps_show_lines = True

    run: MibRun

    def __init__(self, run: MibRun) -> None:
        self.run = run
        #: Size and modification time of the ``.hdr`` when it last failed to parse.
        self._hdr_looked: tuple[int, int] | None = None
        self._hdr_told = False
        self._scan = HdrScan()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> MibSource:
        """Open a Merlin run at its first file.

        Parameters
        ----------
        path
            The ``.mib`` file.

        Returns
        -------
        MibSource
            The run.

        Raises
        ------
        NotReady
            When the file is too short to hold its first frame header yet.
        """
        size = os.path.getsize(path)
        if size < PREFIX_SIZE:
            raise NotReady(f"{size} bytes, fewer than the start of a frame header")
        with open(path, "rb") as stream:
            prefix = stream.read(PREFIX_SIZE)
        header_size = parse_header_size(prefix, path=path)
        if size < header_size:
            raise NotReady(
                f"its first frame header announces {header_size} bytes, the file holds {size}"
            )
        source = cls(MibRun.open(path, hdr=False))
        source.read_hdr()
        return source

    def read_hdr(self) -> bool:
        """Read the run's ``.hdr`` if it has not been read yet, or changed since it failed.

        The camera may write the ``.hdr`` a moment after the ``.mib`` appears: one that is
        missing, empty or not a Merlin acquisition header is left out, and read again when
        it changes, until it parses or the run ends. A non-empty one that does not parse is
        told once (a warning), as is a count in it that is not a count (``Frames in
        Acquisition: -5``), which is left out.

        Returns
        -------
        bool
            Whether the ``.hdr`` parsed now: what it announces has changed.
        """
        if self.run.hdr_path is not None:
            return False
        path = find_hdr(self.run.path)
        if path is None:
            return False
        try:
            status = os.stat(path)
        except OSError:
            return False
        looked = (status.st_size, status.st_mtime_ns)
        if looked == self._hdr_looked:
            return False
        self._hdr_looked = looked
        try:
            entries = read_hdr(path)
        except (StemcastError, OSError) as error:
            if status.st_size and not self._hdr_told:
                self._hdr_told = True
                _logger.warning(
                    "%s; the run is followed without it (read again if it changes)",
                    describe(error, path),
                )
            return False
        self.run = replace(self.run, hdr_path=os.fspath(path), hdr=entries)
        self._scan = self._checked(self.run.hdr_scan, os.fspath(path))
        return True

    @staticmethod
    def _checked(scan: HdrScan, path: str) -> HdrScan:
        """Leave out the counts of a ``.hdr`` that are not counts, telling each once."""
        expected, per_trigger = scan.frames_expected, scan.frames_per_trigger
        for key, value in ((HDR_FRAMES_EXPECTED, expected), (HDR_FRAMES_PER_TRIGGER, per_trigger)):
            if value is not None and value < 0:
                _logger.warning("%s: %s is %d, not a count: ignored", path, key, value)
        return replace(
            scan,
            frames_expected=expected if expected is not None and expected > 0 else None,
            frames_per_trigger=per_trigger if per_trigger is not None and per_trigger > 0 else None,
        )

    @property
    def first_sequence(self) -> int:
        """Sequence number of the run's first frame (1 unless a later file of a run)."""
        return self.run.first_header.sequence_number

    @property
    def counter_depth(self) -> int:
        """Merlin counter depth: 1, 6, 12 or 24 bits."""
        return self.run.layout.counter_depth

    @property
    def frames_expected(self) -> int | None:
        """``Frames in Acquisition`` of the ``.hdr`` (``None`` when absent, 0 or negative)."""
        return self._scan.frames_expected

    @property
    def hdr_shape(self) -> tuple[int, int] | None:
        """``ScanX``/``ScanY`` of the ``.hdr`` (Merlin software 1.5 and later)."""
        return self._scan.scan_size

    @property
    def frames_per_line(self) -> int | None:
        """``Frames per Trigger`` of the ``.hdr``: the scan width for line-triggered scans."""
        return self._scan.frames_per_trigger

    def metadata(self) -> dict[str, Any]:
        """Layout and acquisition details from the first frame header and the ``.hdr``."""
        layout, first = self.run.layout, self.run.first_header
        return {
            "hdr": self.run.hdr_path,
            "raw": layout.raw,
            "geometry": layout.geometry,
            "header_size": layout.header_size,
            "exposure_ms": first.exposure_ms,
            "start_time": first.utc_time or first.local_time,
            "first_sequence": first.sequence_number,
        }

    def _refresh(self, *, rescan: bool) -> None:
        """Count the complete records again; ``rescan`` also looks for the run's next file.

        ``rescan`` also reads a ``.hdr`` that has not parsed yet.
        """
        self.run = self.run.refresh(siblings=rescan)
        if rescan:
            self.read_hdr()

    def read_headers(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Read the ``S{header_size}`` headers of records ``start:stop``."""
        return self.run.read_headers(start, stop)

    def _read_into(self, start: int, stop: int, buffers: BufferPool) -> FrameBatch:
        """One read of the records, one pass that decodes them upside down (byte swap, RAW)."""
        layout = self.run.layout
        count = stop - start
        records = buffers.take(count * layout.record_size).view(layout.record_dtype)
        self.run.read_records(start, stop, out=records)
        rows, cols = layout.frame_shape
        pixels = buffers.take(count * layout.bytes_per_frame_decoded).view(layout.dtype)
        frames = layout.decode(
            records["data"], out=pixels.reshape(count, rows, cols), flip_rows=True
        )
        return FrameBatch(start, frames, records["header"])

    def times_ns(self, headers: npt.NDArray[Any], start: int) -> npt.NDArray[np.int64] | None:
        """Frame timestamps from the extended (``MQ1A``) header block."""
        if self.run.first_header.utc_time is None:
            return None
        return timestamps_ns(headers, locate=lambda i: self.run.locate(start + i))

    def exposure_ms(self, headers: npt.NDArray[Any]) -> float | None:
        """Return the run's exposure (Merlin keeps it for the whole acquisition)."""
        return self.run.first_header.exposure_ms

    def trailing_bytes(self) -> int:
        """Bytes of the last file after its complete records (looks at its size now)."""
        last = self.run.segments[-1]
        return os.path.getsize(last.path) - last.frames * self.run.record_size


class TvipsSource(FollowedRun):
    """A rolling TVIPS series: ``NAME_000.tvips``, ``NAME_001.tvips``, ..."""

    detector = "tvips"
    timestamps_show_lines = False

    run: TvipsSeries

    def __init__(self, series: TvipsSeries) -> None:
        self.run = series
        self._base, self._extension = series_base(series.path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TvipsSource:
        """Open a series at its ``_000`` part.

        Parameters
        ----------
        path
            The ``_000.tvips`` file.

        Returns
        -------
        TvipsSource
            The series.

        Raises
        ------
        NotReady
            When the main header is not complete yet.
        """
        size = os.path.getsize(path)
        if size < MAIN_HEADER_SIZE:
            raise NotReady(f"{size} bytes, fewer than the main header's {MAIN_HEADER_SIZE}")
        return cls(TvipsSeries.open(path))

    @property
    def counter_depth(self) -> int:
        """Bits per pixel: 8 or 16 from cameras."""
        return self.run.layout.bits_per_pixel

    def metadata(self) -> dict[str, Any]:
        """Main-header fields."""
        main = self.run.main_header
        return {
            "version": main.version,
            "frame_header_bytes": self.run.layout.header_bytes,
            "pixel_size": main.pixelsize,
            "high_tension_kv": main.ht,
            "magnification": main.magtotal,
            "binning": [main.binx, main.biny],
            "start_ms": self.run.start_ms,
        }

    def read_headers(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Read the frame headers (``TvipsLayout.header_dtype``) of records ``start:stop``."""
        return self.run.read_headers(start, stop)

    def _read_into(self, start: int, stop: int, buffers: BufferPool) -> FrameBatch:
        """One read of the records: their pixels are the frames (stored little-endian)."""
        layout = self.run.layout
        records = buffers.take((stop - start) * layout.record_size).view(layout.record_dtype)
        self.run.read_records(start, stop, out=records)
        frames = records["data"]
        if frames.dtype != layout.dtype:
            # Stored in the other byte order than this machine's: one pass to decode.
            pixels = buffers.take(frames.size * frames.itemsize).view(layout.dtype)
            frames = layout.decode(frames, out=pixels.reshape(frames.shape))
        return FrameBatch(start, frames, records["header"])

    def _refresh(self, *, rescan: bool) -> None:
        """Re-read the series when its last part grew or (``rescan``) a new part appeared."""
        last = self.run.parts[-1]
        size = os.path.getsize(last.path)
        grown = size - last.offset - self.run.partial_bytes > last.frames * (
            self.run.layout.record_size
        )
        if size < last.offset + last.frames * self.run.layout.record_size:
            raise FormatError("the file shrank while it was read", path=last.path)
        following = part_path(self._base, self._extension, len(self.run.parts))
        if grown or (rescan and following.exists()):
            self.run = self.run.refresh()

    def times_ns(self, headers: npt.NDArray[Any], start: int) -> npt.NDArray[np.int64] | None:
        """Frame times (millisecond resolution) in nanoseconds."""
        ms = headers["timestamp"].astype(np.int64) * 1000 + headers["ms"].astype(np.int64)
        times: npt.NDArray[np.int64] = ms * 1_000_000
        return times

    def exposure_ms(self, headers: npt.NDArray[Any]) -> float | None:
        """TVIPS frame headers do not record the exposure."""
        return None

    def trailing_bytes(self) -> int:
        """Bytes of an incomplete record at the end of the last part, at the last look."""
        return self.run.partial_bytes

    def header_fields(self, headers: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """Rotator index, frame counter and scan positions, where the headers hold them."""
        names = headers.dtype.names or ()
        wanted = {"rotidx": "rotator", "num": "counters", "scan_x": "scan_x", "scan_y": "scan_y"}
        return {
            key: np.asarray(headers[name], dtype=np.int64)
            for name, key in wanted.items()
            if name in names
        }


def open_source(path: str | os.PathLike[str], *, max_frame_bytes: int | None = None) -> FollowedRun:
    """Open the run whose first file is ``path``.

    Parameters
    ----------
    path
        A ``.mib`` file or the ``_000`` part of a TVIPS series.
    max_frame_bytes
        Refuse frames larger than this, as stored or decoded: a header claiming absurd
        frames is not followed (memory follows the frame size).

    Returns
    -------
    FollowedRun
        The run, counted as far as its complete records go.

    Raises
    ------
    NotReady
        When the file does not yet hold its first header.
    FormatError
        When the file is not of its format, is inconsistent, or its frames are larger than
        ``max_frame_bytes``.
    """
    kind = run_kind(path)
    source: FollowedRun
    if kind == "mib":
        source = MibSource.open(path)
    elif kind == "tvips":
        source = TvipsSource.open(path)
    else:
        raise FormatError("not the first file of a Merlin or TVIPS run", path=path)
    rows, cols = source.frame_shape
    size = max(source.record_size, rows * cols * source.dtype.itemsize)
    if max_frame_bytes is not None and size > max_frame_bytes:
        raise FormatError(
            f"its header claims frames of {rows} x {cols} pixels ({size:,} bytes each), more "
            f"than max_frame_bytes ({max_frame_bytes:,})",
            path=path,
        )
    return source


def series_fields(source: FollowedRun) -> dict[str, Any]:
    """Return the run-describing fields of a series header."""
    return {
        "sources": source.files,
        "detector": source.detector,
        "shape": list(source.frame_shape),
        "dtype": wire_dtype(source.dtype),
        "counter_depth": source.counter_depth,
        "frames_expected": source.frames_expected,
        "metadata": source.metadata(),
    }


def stem_of(path: str | os.PathLike[str]) -> Path:
    """Directory and name without trailing digits: what the files of a split run share."""
    name = Path(path)
    return name.with_name(re.sub(r"\d+$", "", name.stem))
