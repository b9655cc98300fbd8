"""Follow one run on disk: look at its file sizes and read only its complete records.

A followed run wraps the format's run model (:class:`~stemcast.formats.mib.run.MibRun`,
:class:`~stemcast.formats.tvips.run.TvipsSeries`, each a :class:`~stemcast.source.Source`):
they count complete records from file sizes, read them with positional reads and decode them
with the format's record layout, so the live path shares every byte of decoding with the
offline reader. The methods here block (they do file I/O); the service calls them through
:func:`asyncio.to_thread`.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.batch import BufferPool, FrameBatch
from stemcast.errors import FormatError
from stemcast.formats.mib.run import MibRun
from stemcast.formats.mib.spec import PREFIX_SIZE, parse_header_size, timestamps_ns
from stemcast.formats.runs import run_kind
from stemcast.formats.tvips.run import TvipsSeries, part_path, series_base
from stemcast.formats.tvips.spec import MAIN_HEADER_SIZE
from stemcast.protocol import wire_dtype
from stemcast.source import Source

__all__ = ["FollowedRun", "MibSource", "NotReady", "TvipsSource", "open_source"]


class NotReady(Exception):
    """The file of a new run does not yet hold enough bytes to tell its layout."""


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
    def times_ns(self, headers: npt.NDArray[Any]) -> npt.NDArray[np.int64] | None:
        """Timestamps of frames in ns since the epoch from their headers, if they have them."""

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
            raise NotReady(os.fspath(path))
        with open(path, "rb") as stream:
            prefix = stream.read(PREFIX_SIZE)
        if size < parse_header_size(prefix, path=path):
            raise NotReady(os.fspath(path))
        return cls(MibRun.open(path))

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
        """``Frames in Acquisition`` of the ``.hdr`` (``None`` when absent or 0)."""
        return self.run.hdr_scan.frames_expected or None

    @property
    def hdr_shape(self) -> tuple[int, int] | None:
        """``ScanX``/``ScanY`` of the ``.hdr`` (Merlin software 1.5 and later)."""
        return self.run.hdr_scan.scan_size

    @property
    def frames_per_line(self) -> int | None:
        """``Frames per Trigger`` of the ``.hdr``: the scan width for line-triggered scans."""
        return self.run.hdr_scan.frames_per_trigger

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
        """Count the complete records again; ``rescan`` also looks for the run's next file."""
        self.run = self.run.refresh(siblings=rescan)

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

    def times_ns(self, headers: npt.NDArray[Any]) -> npt.NDArray[np.int64] | None:
        """Frame timestamps from the extended (``MQ1A``) header block."""
        if self.run.first_header.utc_time is None:
            return None
        return timestamps_ns(headers)

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
        if os.path.getsize(path) < MAIN_HEADER_SIZE:
            raise NotReady(os.fspath(path))
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

    def times_ns(self, headers: npt.NDArray[Any]) -> npt.NDArray[np.int64] | None:
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


def open_source(path: str | os.PathLike[str]) -> FollowedRun:
    """Open the run whose first file is ``path``.

    Parameters
    ----------
    path
        A ``.mib`` file or the ``_000`` part of a TVIPS series.

    Returns
    -------
    FollowedRun
        The run, counted as far as its complete records go.

    Raises
    ------
    NotReady
        When the file does not yet hold its first header.
    FormatError
        When the file is not of its format or is inconsistent.
    """
    kind = run_kind(path)
    if kind == "mib":
        return MibSource.open(path)
    if kind == "tvips":
        return TvipsSource.open(path)
    raise FormatError("not the first file of a Merlin or TVIPS run", path=path)


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
