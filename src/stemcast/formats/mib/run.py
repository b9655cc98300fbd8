"""A Merlin acquisition on disk: one ``.mib`` file or several (Merlin's "images per file").

:class:`MibRun` knows the files of a run, their layout and how many complete records each
holds, and reads record batches from them. It is picklable and small: dask tasks carry it and
open the files themselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.batch import FrameBatch
from stemcast.errors import FormatError, ParameterError
from stemcast.formats._mmap import MmapMode
from stemcast.formats._strided import read_strided
from stemcast.formats.mib.layout import MibLayout
from stemcast.formats.mib.spec import (
    PREFIX_SIZE,
    FrameHeader,
    HdrScan,
    parse_frame_header,
    parse_hdr_text,
    parse_header_size,
    timestamps_ns,
)
from stemcast.shape import ScanGrid, ScanShape, infer_scan_shape
from stemcast.source import Source

_TRAILING_DIGITS = re.compile(r"^(?P<stem>.*?)(?P<number>\d+)$")
#: Frames whose timestamps are read to find the scan width (ample for any scan line).
_TIMESTAMP_FRAMES = 10_000


def read_first_header(path: str | os.PathLike[str]) -> FrameHeader:
    """Parse the first frame header of a ``.mib`` file.

    Parameters
    ----------
    path
        The ``.mib`` file.

    Returns
    -------
    FrameHeader
        Its first header.
    """
    with open(path, "rb") as stream:
        size = parse_header_size(stream.read(PREFIX_SIZE), path=path)
        stream.seek(0)
        return parse_frame_header(stream.read(size), path=path)


def header_from_buffer(buffer: bytes | bytearray | memoryview) -> FrameHeader:
    """Parse the first frame header of MIB records held in memory."""
    size = parse_header_size(bytes(buffer[:PREFIX_SIZE]), path="<memory buffer>")
    return parse_frame_header(bytes(buffer[:size]), path="<memory buffer>")


def find_hdr(path: str | os.PathLike[str]) -> Path | None:
    """Return the ``.hdr`` file written next to a ``.mib`` file, if there is one.

    The Merlin software names it like the ``.mib`` file; for a run split over several files
    (``scan1.mib``, ``scan2.mib``) it may also be named after the common stem (``scan.hdr``).
    """
    mib = Path(path)
    candidates = [mib.with_suffix(".hdr"), mib.with_suffix(".HDR")]
    match = _TRAILING_DIGITS.match(mib.stem)
    if match:
        candidates.append(mib.with_name(match["stem"] + ".hdr"))
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def read_hdr(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a Merlin ``.hdr`` acquisition header file (Latin-1 text)."""
    if not os.path.isfile(path):
        raise FormatError("no such file", path=path)
    with open(path, "rb") as stream:
        text = stream.read().decode("latin-1")
    if not text.startswith("HDR"):
        raise FormatError("not a Merlin acquisition header: does not start with 'HDR'", path=path)
    return parse_hdr_text(text)


@dataclass(frozen=True, slots=True)
class MibSegment:
    """One file of a run and the complete records it holds."""

    path: str
    frames: int
    first_sequence: int


def run_scan_shape(
    frames: int,
    hdr: HdrScan,
    navigation_shape: Sequence[int] | None,
    read_timestamps: Callable[[int, int], npt.NDArray[np.int64]] | None,
) -> ScanShape:
    """Infer the scan shape of a Merlin run: the user's shape, its ``.hdr``, its timestamps.

    Parameters
    ----------
    frames
        Complete frames of the run.
    hdr
        What the run's ``.hdr`` says of the scan.
    navigation_shape
        The user's shape ``(x, y)``, if given.
    read_timestamps
        Reads the timestamps of frames ``start:stop`` (nanoseconds); ``None`` when the
        frames hold none.

    Returns
    -------
    ScanShape
        Intended shape and evidence.
    """
    if hdr.frames_expected == 0:
        return infer_scan_shape(frames, user=navigation_shape)
    evidence: dict[str, Any] = {
        "user": navigation_shape,
        "hdr_shape": hdr.scan_size,
        "frames_per_line": hdr.frames_per_trigger,
        "frames_expected": hdr.frames_expected,
    }
    needs_timestamps = (
        navigation_shape is None and hdr.scan_size is None and (hdr.frames_per_trigger or 1) <= 1
    )
    if needs_timestamps and read_timestamps is not None and frames > 2:
        evidence["timestamps_ns"] = read_timestamps(0, min(frames, _TIMESTAMP_FRAMES))
    return infer_scan_shape(frames, **evidence)


@dataclass(frozen=True, slots=True)
class MibRun(Source):
    """The files of one acquisition, in acquisition order, with their common layout.

    Attributes
    ----------
    segments
        The ``.mib`` files and the complete records of each.
    layout
        The record layout they share.
    first_header
        The first frame header of the run.
    hdr_path
        The run's ``.hdr`` file, if one was found.
    hdr
        Its parsed entries (empty without one).
    """

    segments: tuple[MibSegment, ...]
    layout: MibLayout
    first_header: FrameHeader
    hdr_path: str | None = None
    hdr: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, follow_siblings: bool = True, hdr: bool = True
    ) -> MibRun:
        """Open the run that ``path`` belongs to.

        Parameters
        ----------
        path
            A ``.mib`` file.
        follow_siblings
            Whether to look for the other files of a run split over several files
            (``NAME1.mib``, ``NAME2.mib``, ...): those whose first frame continues the
            sequence numbers of the previous one, with the same layout.
        hdr
            Whether to read the run's ``.hdr``; without it the run has none (the live
            service reads it itself, again until it parses: the camera may write it late).

        Returns
        -------
        MibRun
            The run, with the number of complete records of each file.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FormatError("no such file", path=path)
        header = read_first_header(path)
        layout = MibLayout.from_header(header, path=path)
        paths = [path]
        if follow_siblings:
            paths = _sibling_chain(path, header, layout)
        segments = []
        for member in paths:
            first = header if member == path else read_first_header(member)
            frames = os.path.getsize(member) // layout.record_size
            segments.append(MibSegment(member, frames, first.sequence_number))
        hdr_path = find_hdr(paths[0]) if hdr else None
        run = cls(
            tuple(segments),
            layout,
            read_first_header(paths[0]),
            os.fspath(hdr_path) if hdr_path is not None else None,
            read_hdr(hdr_path) if hdr_path is not None else {},
        )
        run.check_last_record()
        return run

    def refresh(self, *, siblings: bool = True) -> MibRun:
        """Look again at a run that is being written: new complete records and new files.

        Parameters
        ----------
        siblings
            When the last file has not grown, look for files that continue the run (a
            directory scan); ``False`` only looks at the size of the last file.

        Returns
        -------
        MibRun
            The run as it is now (``self`` when nothing changed), with the ``.hdr`` it had.
        """
        last = self.segments[-1]
        frames = os.path.getsize(last.path) // self.layout.record_size
        if frames > last.frames:
            grown = MibSegment(last.path, frames, last.first_sequence)
            return replace(self, segments=(*self.segments[:-1], grown))
        if frames < last.frames:
            raise FormatError(
                f"the file shrank from {last.frames} to {frames} complete records while it "
                "was read",
                path=last.path,
            )
        if not siblings or not _TRAILING_DIGITS.match(Path(self.path).stem):
            return self
        now = replace(MibRun.open(self.path, hdr=False), hdr_path=self.hdr_path, hdr=self.hdr)
        known = [segment.path for segment in self.segments]
        if now.layout != self.layout or [s.path for s in now.segments[: len(known)]] != known:
            raise FormatError(
                "the run was replaced by another acquisition while it was read", path=self.path
            )
        return now

    @property
    def path(self) -> str:
        """The first file of the run."""
        return self.segments[0].path

    @property
    def frames(self) -> int:
        """Number of complete records in all files."""
        return sum(segment.frames for segment in self.segments)

    @property
    def name(self) -> str:
        """The first file's name without ``.mib``."""
        return Path(self.path).stem

    @property
    def files(self) -> list[str]:
        """The ``.mib`` files, in acquisition order."""
        return [segment.path for segment in self.segments]

    @property
    def record_size(self) -> int:
        """Bytes of one record: frame header and pixels."""
        return self.layout.record_size

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of a decoded frame."""
        return self.layout.frame_shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native dtype of decoded frames."""
        return np.dtype(self.layout.dtype)

    @property
    def hdr_scan(self) -> HdrScan:
        """What the ``.hdr`` says of the scan."""
        return HdrScan.from_entries(self.hdr)

    def scan_shape(self, navigation_shape: Sequence[int] | None = None) -> ScanShape:
        """Return the scan shape :func:`~stemcast.readers.mib.file_reader` finds.

        Parameters
        ----------
        navigation_shape
            The user's shape ``(x, y)``, if given.

        Returns
        -------
        ScanShape
            The shape and its evidence (user, ``.hdr``, timestamps).
        """
        timed = self.first_header.utc_time is not None
        return run_scan_shape(
            self.frames, self.hdr_scan, navigation_shape, self.timestamps_ns if timed else None
        )

    def scan(self) -> ScanGrid:
        """Return the scan shape the reader finds; positions are the frames in order."""
        return ScanGrid(self.scan_shape(), None)

    def navigation(self, kept: tuple[int, ...]) -> tuple[int, ...]:
        """Drop navigation axes of length 1, as the Merlin reader does."""
        return tuple(size for size in kept if size != 1)

    def signal(self, navigation: tuple[int, ...], scan: ScanShape) -> dict[str, Any]:
        """Return axes and metadata as :func:`~stemcast.readers.mib.file_reader` gives them."""
        # The reader builds the signal dictionary; it imports this module, hence here.
        from stemcast.formats.mib.reader import MIBProperties, signal_dict

        stub = np.broadcast_to(np.int64(0), (*reversed(navigation), *self.frame_shape))
        prop = MIBProperties.from_path(self.path)
        signal = signal_dict(stub, prop, dict(self.hdr) or None, scan, Path(self.path).name)
        del signal["data"]
        return signal

    def check_last_record(self) -> None:
        """Check that the last complete record starts with a header of the same layout.

        Catches files whose record size changes mid-file without reading every header.
        """
        for segment in self.segments:
            if segment.frames < 2:
                continue
            offset = (segment.frames - 1) * self.layout.record_size
            with open(segment.path, "rb") as stream:
                stream.seek(offset)
                prefix = stream.read(PREFIX_SIZE)
            self._check_prefix(prefix, segment.path, offset)

    def _check_prefix(self, prefix: bytes, path: str, offset: int) -> None:
        size = parse_header_size(prefix, path=path, offset=offset)
        if size != self.layout.header_size:
            raise FormatError(
                f"frame header size changes mid-file: {size} bytes, the first frame has "
                f"{self.layout.header_size}",
                path=path,
                offset=offset,
            )

    def _locate(self, frame: int) -> tuple[int, int]:
        for index, segment in enumerate(self.segments):
            if frame < segment.frames:
                return index, frame
            frame -= segment.frames
        return len(self.segments), 0

    def read_records(
        self, start: int, stop: int, out: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[Any]:
        """Read complete records ``start:stop`` (global frame indices) into memory.

        Parameters
        ----------
        start, stop
            Frame range, ``0 <= start <= stop <= frames``.
        out
            Optional C-contiguous array of ``stop - start`` records
            (:attr:`MibLayout.record_dtype`) to read into, e.g. a buffer reused from batch to
            batch.

        Returns
        -------
        numpy.ndarray
            Structured records (:attr:`MibLayout.record_dtype`), checked to start with a
            header of the expected size.
        """
        if not 0 <= start <= stop <= self.frames:
            raise ParameterError(
                f"frame range {start}:{stop} outside 0:{self.frames}", parameter="frames"
            )
        dtype = self.layout.record_dtype
        if out is not None and (
            out.shape != (stop - start,) or out.dtype != dtype or not out.flags.c_contiguous
        ):
            raise ParameterError(
                f"out must be {stop - start} contiguous records of {dtype}", parameter="out"
            )
        records = np.empty(stop - start, dtype=dtype) if out is None else out
        buffer = records.view(np.uint8)
        filled = 0
        segment_index, local = self._locate(start)
        while filled < len(records):
            segment = self.segments[segment_index]
            count = min(segment.frames - local, len(records) - filled)
            offset = local * dtype.itemsize
            view = buffer[filled * dtype.itemsize : (filled + count) * dtype.itemsize].data
            with open(segment.path, "rb", buffering=0) as stream:
                stream.seek(offset)
                got = stream.readinto(view)
            if got != count * dtype.itemsize:
                raise FormatError(
                    f"file shrank while reading: {got} of {count * dtype.itemsize} bytes read",
                    path=segment.path,
                    offset=offset,
                )
            check_headers(records[filled : filled + count], self.layout, segment.path, offset)
            filled += count
            segment_index, local = segment_index + 1, 0
        return records

    def read_headers(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Read only the frame headers of records ``start:stop``, one positional read each.

        For a growing file: no memory map (a file that shrinks gives an error, not a
        crash), and none of the pixels read.

        Parameters
        ----------
        start, stop
            Frame range, ``0 <= start <= stop <= frames``.

        Returns
        -------
        numpy.ndarray
            The headers (``S{header_size}``), checked as :meth:`read_records` checks them.
        """
        if not 0 <= start <= stop <= self.frames:
            raise ParameterError(
                f"frame range {start}:{stop} outside 0:{self.frames}", parameter="frames"
            )
        size, record = self.layout.header_size, self.layout.record_size
        raw = np.empty((stop - start, size), np.uint8)
        filled = 0
        segment_index, local = self._locate(start)
        while filled < len(raw):
            segment = self.segments[segment_index]
            count = min(segment.frames - local, len(raw) - filled)
            read_strided(segment.path, local * record, record, raw[filled : filled + count])
            check_header_bytes(
                raw[filled : filled + count], self.layout, segment.path, local * record
            )
            filled += count
            segment_index, local = segment_index + 1, 0
        return raw.view(f"S{size}").ravel()

    def memmap(self, start: int, stop: int, mode: MmapMode) -> npt.NDArray[Any] | None:
        """Memory-map records ``start:stop`` when they lie in one file, else ``None``."""
        segment_index, local = self._locate(start)
        if segment_index >= len(self.segments):
            return np.empty(0, dtype=self.layout.record_dtype)
        segment = self.segments[segment_index]
        if local + (stop - start) > segment.frames:
            return None
        if stop == start:
            return np.empty(0, dtype=self.layout.record_dtype)
        mapped: npt.NDArray[Any] = np.memmap(
            segment.path,
            dtype=self.layout.record_dtype,
            mode=mode,
            offset=local * self.layout.record_size,
            shape=(stop - start,),
        )
        return mapped

    def batches(
        self, start: int = 0, stop: int | None = None, *, batch_frames: int = 64
    ) -> Iterator[FrameBatch]:
        """Yield frames ``start:stop`` decoded, ``batch_frames`` at a time (bounded memory).

        Parameters
        ----------
        start, stop
            Frame range; ``stop`` defaults to all complete records.
        batch_frames
            Frames per batch.

        Yields
        ------
        FrameBatch
            Native-endian frames, flipped vertically as the reader returns them (Merlin
            stores the bottom row first; decoding into a flipped view flips in the same
            pass), with their raw headers.
        """
        stop = self.frames if stop is None else stop
        if batch_frames < 1:
            raise ParameterError(f"{batch_frames} is below 1", parameter="batch_frames")
        # One record buffer for every batch (a fresh one would page-fault each time); the
        # frames and headers handed out are copies of it.
        buffer = np.empty(min(batch_frames, max(stop - start, 0)), dtype=self.layout.record_dtype)
        for first in range(start, stop, batch_frames):
            last = min(first + batch_frames, stop)
            records = self.read_records(first, last, out=buffer[: last - first])
            frames = self.layout.decode(records["data"], flip_rows=True)
            yield FrameBatch(first, frames, records["header"].copy())

    def value_range(self, count: int, *, batch_frames: int = 64) -> tuple[float, float]:
        """Return the minimum and maximum of the first ``count`` frames: a cheap first pass.

        Processed pixels are the stored values in another byte order, so their extremes are
        read straight from a memory map of each batch (no copy, no decoding); RAW payloads
        are decoded.

        Parameters
        ----------
        count
            Frames to look at, from the first.
        batch_frames
            Frames mapped or decoded at a time.

        Returns
        -------
        tuple of float
            ``(minimum, maximum)`` pixel value.
        """
        low, high = np.inf, -np.inf
        for start in range(0, count, batch_frames):
            stop = min(start + batch_frames, count)
            mapped = None if self.layout.raw else self.memmap(start, stop, "r")
            if mapped is None:
                (batch,) = self.batches(start, stop, batch_frames=stop - start)
                values = batch.frames
            else:
                values = mapped["data"]
            low, high = min(low, values.min()), max(high, values.max())
            del mapped, values
        return float(low), float(high)

    def timestamps_ns(self, start: int, stop: int) -> npt.NDArray[np.int64]:
        """Return the timestamps of frames ``start:stop`` (MQ1A block), ns since the epoch.

        Raises
        ------
        FormatError
            Naming the file and the offset of the first header without a valid timestamp.
        """
        return timestamps_ns(self.headers(start, stop), locate=lambda i: self.locate(start + i))

    def locate(self, frame: int) -> tuple[str, int]:
        """Return the file of frame ``frame`` of the run and the offset of its record."""
        index, local = self._locate(frame)
        segment = self.segments[min(index, len(self.segments) - 1)]
        return segment.path, local * self.record_size

    def headers(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Return the raw header bytes of frames ``start:stop``."""
        mapped = self.memmap(start, stop, "r")
        if mapped is not None:
            if len(mapped):
                index, local = self._locate(start)
                path, offset = self.segments[index].path, local * self.layout.record_size
                check_headers(mapped, self.layout, path, offset)
            return np.array(mapped["header"])
        return self.read_records(start, stop)["header"]


def check_headers(records: npt.NDArray[Any], layout: MibLayout, path: str, offset: int) -> None:
    """Check, vectorised, that every record starts with ``MQ1,`` and the expected header size.

    Parameters
    ----------
    records
        Structured records read from ``path`` starting at byte ``offset``.
    layout
        The expected layout.
    path, offset
        Where the records come from, for the error message.
    """
    if len(records) == 0:
        return
    raw = records.view(np.uint8).reshape(len(records), layout.record_size)
    check_header_bytes(raw[:, : layout.header_size], layout, path, offset)


def check_header_bytes(
    raw: npt.NDArray[np.uint8], layout: MibLayout, path: str, offset: int
) -> None:
    """Check frame headers given as rows of bytes, as :func:`check_headers` does.

    Parameters
    ----------
    raw
        ``(n, header_size)`` bytes of consecutive records' headers.
    layout
        The expected layout.
    path, offset
        The file and the byte offset of the first record, for the error message.
    """
    if len(raw) == 0:
        return
    expected = np.frombuffer(b"MQ1,", np.uint8)
    size_text = np.frombuffer(f"{layout.header_size:05d}".encode(), np.uint8)
    seven_digits = (raw[:, 10] != ord(","))[:, np.newaxis]
    size_field = np.where(seven_digits, raw[:, 12:17], raw[:, 11:16])
    good = (raw[:, :4] == expected).all(axis=1) & (size_field == size_text).all(axis=1)
    if not good.all():
        bad = int(np.argmin(good))
        raise FormatError(
            f"record {offset // layout.record_size + bad} does not start with a frame header of "
            f"{layout.header_size} bytes "
            f"(found {bytes(raw[bad, :16])!r}); header sizes change mid-file or the file is "
            "corrupt",
            path=path,
            offset=offset + bad * layout.record_size,
        )


def _sibling_chain(path: str, header: FrameHeader, layout: MibLayout) -> list[str]:
    """Files of the same run as ``path``: same stem with trailing digits, contiguous sequence."""
    mib = Path(path)
    match = _TRAILING_DIGITS.match(mib.stem)
    if not match:
        return [path]
    pattern = re.compile(re.escape(match["stem"]) + r"\d+" + re.escape(mib.suffix) + "$")
    candidates: list[_Candidate] = []
    for entry in os.scandir(mib.parent):
        if not (pattern.match(entry.name) and entry.is_file()):
            continue
        member = os.path.join(os.path.dirname(path), entry.name)
        try:
            is_self = os.path.samefile(member, path)
            first = header if is_self else read_first_header(member)
            if MibLayout.from_header(first, path=member) != layout:
                continue
        except (FormatError, OSError):
            continue
        frames = os.path.getsize(member) // layout.record_size
        candidates.append(
            (first.sequence_number, frames, path if is_self else member, _start_ns(first))
        )
    return [item[2] for item in _chain_through(candidates, path)] or [path]


def _start_ns(header: FrameHeader) -> int | None:
    """UTC time of a frame in nanoseconds, if its header has the extended block."""
    try:
        return int(np.datetime64((header.utc_time or "").removesuffix("Z"), "ns").astype(np.int64))
    except ValueError:
        return None


#: A file that may belong to a run: first sequence number, frames, path, start time (ns).
_Candidate = tuple[int, int, str, int | None]


def _chain_through(candidates: list[_Candidate], path: str) -> list[_Candidate]:
    """Follow sequence numbers from ``path`` backwards and forwards, one file per step.

    A file continues another when its first sequence number is the other's first plus its
    frame count and it started later; of several such files the closest in time wins, so a new
    acquisition restarting at sequence 1 in the same folder is never joined to this one.
    """
    this = next((item for item in candidates if item[2] == path), None)
    if this is None:
        return []
    chain = [this]

    def later(first: _Candidate, then: _Candidate) -> bool:
        return first[3] is None or then[3] is None or then[3] > first[3]

    def when(item: _Candidate) -> tuple[int, str]:
        return (item[3] or 0, item[2])

    while True:
        head = chain[0]
        before = [
            item
            for item in candidates
            if item not in chain
            and item[1] > 0
            and item[0] + item[1] == head[0]
            and later(item, head)
        ]
        if not before:
            break
        chain.insert(0, max(before, key=when))
    while chain[-1][1] > 0:
        tail = chain[-1]
        after = [
            item
            for item in candidates
            if item not in chain
            and item[1] > 0
            and item[0] == tail[0] + tail[1]
            and later(tail, item)
        ]
        if not after:
            break
        chain.append(min(after, key=when))
    return chain
