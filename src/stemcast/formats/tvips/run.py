"""A TVIPS series on disk: ``NAME_000.tvips``, ``NAME_001.tvips``, ... capped in size.

:class:`TvipsSeries` knows the files of a series, their common layout and how many complete
records each holds, and reads frames and frame headers from them. It is a small frozen value
(picklable: dask tasks carry it and map the files themselves). A series that is still being
written is read as far as its complete records go; :meth:`TvipsSeries.refresh` looks again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.batch import FrameBatch
from stemcast.errors import FormatError, ParameterError
from stemcast.formats._strided import read_strided
from stemcast.formats.tvips.layout import TvipsLayout
from stemcast.formats.tvips.spec import (
    MAIN_HEADER_SIZE,
    MainHeader,
    frame_header_from_record,
    parse_main_header,
)
from stemcast.shape import Evidence, ScanGrid, ScanShape
from stemcast.source import Source

EXTENSION = ".tvips"
_PART = re.compile(r"^(?P<base>.+)_(?P<index>\d{3})$")
#: How far (ms) a frame may precede the frames before it (clock adjustments of the camera
#: PC) before its part is taken for a leftover of another recording, or its record for pixels.
_CLOCK_SLACK_MS = 10_000


def split_part(filename: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """Split a file name of a series into the series base and the part number.

    Parameters
    ----------
    filename
        ``NAME_NNN.tvips`` (a part) or ``NAME.tvips`` (the series, no part number).

    Returns
    -------
    tuple
        ``(base, index)``: the path without part suffix and extension, and the part number
        (``None`` when the name has none).
    """
    path = Path(filename)
    match = _PART.match(path.stem)
    if match is None:
        return path.with_name(path.stem), None
    return path.with_name(match["base"]), int(match["index"])


def is_tvips(filename: str | os.PathLike[str]) -> bool:
    """Whether ``filename`` has the TVIPS extension (any case)."""
    return Path(filename).suffix.lower() == EXTENSION


def is_first_part(filename: str | os.PathLike[str]) -> bool:
    """Whether ``filename`` is the ``_000`` part of a series, the one with the main header."""
    return is_tvips(filename) and split_part(filename)[1] == 0


def first_part(filename: str | os.PathLike[str]) -> Path:
    """Return the ``_000`` part of the series of ``filename`` (any part, or ``NAME.tvips``)."""
    base, _ = split_part(filename)
    return part_path(base, Path(filename).suffix, 0)


def series_name(filename: str | os.PathLike[str]) -> str:
    """Return the name of the series that ``filename`` belongs to (``NAME``)."""
    return split_part(filename)[0].name


def series_base(filename: str | os.PathLike[str]) -> tuple[Path, str]:
    """Split the name of a series to read into its base and extension.

    ``NAME_000.tvips`` and ``NAME.tvips`` both name the series ``NAME`` (the ``_000`` suffix
    is added when missing); another part number is refused, since only ``_000`` holds the
    main header.

    Parameters
    ----------
    filename
        The name given by the user.

    Returns
    -------
    tuple
        ``(base, extension)``: the path without part suffix and extension, and the extension
        as given (``.tvips`` in any case).
    """
    path = Path(filename)
    if path.suffix.lower() != EXTENSION:
        raise FormatError(
            f"not a TVIPS series name: the extension is {path.suffix!r}, not {EXTENSION!r}",
            path=path,
        )
    base, index = split_part(path)
    if index:
        raise FormatError(
            f"part _{index:03d} of a series: a series is read from its first part, "
            f"{first_part(path).name}, which holds the main header",
            path=path,
        )
    return base, path.suffix


def part_path(base: Path, extension: str, index: int) -> Path:
    """Return the file of part ``index`` of the series ``base``: ``base_NNN<extension>``."""
    return base.with_name(f"{base.name}_{index:03d}{extension}")


def part_files(base: Path, extension: str) -> dict[int, str]:
    """Return the files named as parts of the series ``base`` in its folder, by part number.

    Parameters
    ----------
    base, extension
        As returned by :func:`series_base`.

    Returns
    -------
    dict
        ``{index: path}`` of every file ``base_NNN<extension>``.
    """
    pattern = re.compile(re.escape(base.name) + r"_(\d{3})" + re.escape(extension) + "$")
    return {
        int(match[1]): entry.path
        for entry in os.scandir(base.parent)
        if (match := pattern.match(entry.name)) and entry.is_file()
    }


def discover_parts(base: Path, extension: str) -> list[Path]:
    """List the files of a series, in order; refuse a series whose part numbers have a gap.

    Parameters
    ----------
    base, extension
        As returned by :func:`series_base`.

    Returns
    -------
    list of pathlib.Path
        ``base_000<extension>``, ``base_001<extension>``, ...
    """
    first = part_path(base, extension, 0)
    if not first.is_file():
        raise FormatError(
            "no such file: the first part of the series, which holds the main header "
            "(the _000 suffix is added to names without one)",
            path=first,
        )
    indices = sorted(part_files(base, extension))
    count = next((number for number, index in enumerate(indices) if number != index), len(indices))
    if indices[-1] >= count:
        raise FormatError(
            f"part _{count:03d} of the series is missing but part _{indices[-1]:03d} exists",
            path=part_path(base, extension, count),
        )
    return [part_path(base, extension, index) for index in range(count)]


@dataclass(frozen=True, slots=True)
class TvipsPart:
    """One file of a series and the complete records it holds."""

    path: str
    offset: int  # byte where the records start: 256 in _000, else 0
    frames: int  # complete records


@dataclass(frozen=True, slots=True)
class TvipsSeries(Source):
    """The files of one TVIPS recording, in order, with their common layout."""

    parts: tuple[TvipsPart, ...]
    layout: TvipsLayout
    main_header: MainHeader
    partial_bytes: int = 0  # bytes of an incomplete record at the end of the last part
    start_ms: int | None = None  # time of the first frame, ms since the epoch

    @classmethod
    def open(cls, filename: str | os.PathLike[str]) -> TvipsSeries:
        """Open the series named by ``filename`` and count its complete records.

        Parameters
        ----------
        filename
            ``NAME_000.tvips`` or ``NAME.tvips``.

        Returns
        -------
        TvipsSeries
            The series, checked: every part but the last holds whole records, the first and
            last record of each part start with a frame header, and the parts follow each
            other in time.
        """
        paths = discover_parts(*series_base(filename))
        with open(paths[0], "rb") as stream:
            main = parse_main_header(stream.read(MAIN_HEADER_SIZE), path=paths[0])
        layout = TvipsLayout.from_main_header(main)
        parts = []
        partial = 0
        for number, path in enumerate(paths):
            offset = MAIN_HEADER_SIZE if number == 0 else 0
            frames, rest = divmod(os.path.getsize(path) - offset, layout.record_size)
            if rest and number < len(paths) - 1:
                raise FormatError(
                    f"holds {frames} records of {layout.record_size} bytes and {rest} bytes "
                    f"more, but records never straddle files: the main header's frame size "
                    f"({layout.height} x {layout.width} pixels of {layout.bits_per_pixel} "
                    f"bits, {layout.header_bytes}-byte frame headers) does not match this file",
                    path=path,
                    offset=offset + frames * layout.record_size,
                )
            parts.append(TvipsPart(os.fspath(path), offset, frames))
            partial = rest
        return cls(tuple(parts), layout, main, partial, _check_parts(layout, parts))

    def refresh(self) -> TvipsSeries:
        """Look again at a series that is being written: new records and new parts.

        Returns
        -------
        TvipsSeries
            The series as it is now.
        """
        now = TvipsSeries.open(self.path)
        if now.main_header != self.main_header or now.frames < self.frames:
            raise FormatError(
                "the series was replaced by another recording while it was read", path=self.path
            )
        return now

    @property
    def path(self) -> str:
        """The first file of the series (``_000``)."""
        return self.parts[0].path

    @property
    def frames(self) -> int:
        """Complete records in all parts."""
        return sum(part.frames for part in self.parts)

    @property
    def name(self) -> str:
        """The series name: the first part's name without ``_000.tvips``."""
        return series_name(self.path)

    @property
    def files(self) -> list[str]:
        """The parts, in order."""
        return [part.path for part in self.parts]

    @property
    def record_size(self) -> int:
        """Bytes of one record: frame header and pixels."""
        return self.layout.record_size

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of a frame."""
        return self.layout.frame_shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native dtype of decoded frames."""
        return self.layout.dtype

    def scan(self) -> ScanGrid:
        """Return the scan the rotator index shows (``scan_shape="auto"`` of the reader)."""
        # The reader holds the scan rules; it imports this module, hence here.
        from stemcast.formats.tvips.reader import auto_scan

        return auto_scan(self)

    def signal(self, navigation: tuple[int, ...], scan: ScanShape) -> dict[str, Any]:
        """Return axes and metadata as :func:`~stemcast.readers.tvips.file_reader` gives them."""
        from stemcast.formats.tvips.reader import signal_axes, signal_metadata

        first = frame_header_from_record(self.headers(0, 1)[0])
        stack = scan.evidence is Evidence.NONE or len(navigation) < 2
        stub = np.broadcast_to(np.int64(0), tuple(reversed(navigation)))
        return {
            "axes": signal_axes(self, stub, stack, first),
            "metadata": signal_metadata(self, first),
            "original_metadata": {},
        }

    @property
    def last_path(self) -> str:
        """The last file of the series."""
        return self.parts[-1].path

    def bounds(self) -> npt.NDArray[np.int64]:
        """Return the index of the first frame of each part, then the number of frames."""
        return np.cumsum([0, *(part.frames for part in self.parts)], dtype=np.int64)

    def _spans(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """Yield ``(part number, first, stop)`` of the records ``start:stop`` in each part.

        ``first`` and ``stop`` count the part's own records; parts holding none are left out.
        """
        bounds = self.bounds()
        for number in range(len(self.parts)):
            begin = int(bounds[number])
            lo = max(start, begin) - begin
            hi = min(stop, int(bounds[number + 1])) - begin
            if hi > lo:
                yield number, lo, hi

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.frames:
            raise ParameterError(
                f"frame range {start}:{stop} outside 0:{self.frames}", parameter="frames"
            )

    @property
    def _not_before(self) -> int | None:
        """The earliest plausible frame time: a little before the first frame."""
        return None if self.start_ms is None else self.start_ms - _CLOCK_SLACK_MS

    def memmap(self, index: int) -> npt.NDArray[Any]:
        """Memory-map the complete records of part ``index``, read-only.

        Parameters
        ----------
        index
            Part number.

        Returns
        -------
        numpy.ndarray
            Structured records (:attr:`TvipsLayout.record_dtype`).
        """
        part = self.parts[index]
        dtype = self.layout.record_dtype
        if part.frames == 0:
            return np.empty(0, dtype=dtype)
        return np.memmap(part.path, dtype=dtype, mode="r", offset=part.offset, shape=(part.frames,))

    def frames_view(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Frames ``start:stop`` without a copy when they lie in one part, else a copy.

        Parameters
        ----------
        start, stop
            Frame range.

        Returns
        -------
        numpy.ndarray
            ``(stop - start, rows, columns)`` native-endian frames (read-only when mapped).
        """
        self._check_range(start, stop)
        bounds = self.bounds()
        index = int(np.searchsorted(bounds, start, side="right")) - 1
        if stop > start and stop <= bounds[index + 1] and self.layout.pixel_dtype.isnative:
            local = start - int(bounds[index])
            return self.memmap(index)["data"][local : local + stop - start]
        return self.read_frames(np.arange(start, stop, dtype=np.int64))

    def read_frames(
        self, indices: npt.ArrayLike, out: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[Any]:
        """Read the frames at ``indices`` (any order, repeats allowed) into one array.

        Parameters
        ----------
        indices
            Frame indices.
        out
            Optional ``(len(indices), rows, columns)`` array of :attr:`TvipsLayout.dtype`.

        Returns
        -------
        numpy.ndarray
            The decoded frames (``out`` when given).
        """
        wanted = np.asarray(indices, dtype=np.int64).ravel()
        layout = self.layout
        if out is None:
            out = np.empty((wanted.size, *layout.frame_shape), dtype=layout.dtype)
        if wanted.size == 0:
            return out
        low, high = int(wanted.min()), int(wanted.max())
        if low < 0 or high >= self.frames:
            raise ParameterError(
                f"frame {low if low < 0 else high} outside 0:{self.frames}", parameter="indices"
            )
        bounds = self.bounds()
        part_of = np.searchsorted(bounds, wanted, side="right") - 1
        cuts = np.flatnonzero(np.diff(part_of)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, wanted.size], strict=True):
            number = int(part_of[lo])
            local = wanted[lo:hi] - bounds[number]
            payload = self.memmap(number)["data"]
            first = int(local[0])
            if (np.diff(local) == 1).all():
                layout.decode(payload[first : first + hi - lo], out=out[lo:hi])
            elif layout.pixel_dtype.isnative:
                np.take(payload, local, axis=0, out=out[lo:hi])
            else:
                layout.decode(payload[local], out=out[lo:hi])
        return out

    def headers(self, start: int = 0, stop: int | None = None) -> npt.NDArray[Any]:
        """Return the frame headers of frames ``start:stop``, checked.

        Parameters
        ----------
        start, stop
            Frame range; ``stop`` defaults to all complete records.

        Returns
        -------
        numpy.ndarray
            Structured headers (:attr:`TvipsLayout.header_dtype`).
        """
        stop = self.frames if stop is None else stop
        self._check_range(start, stop)
        pieces = []
        for number, lo, hi in self._spans(start, stop):
            part = self.parts[number]
            headers = np.array(self.memmap(number)["header"][lo:hi])
            offset = part.offset + lo * self.layout.record_size
            self.layout.check_headers(
                headers, path=part.path, offset=offset, first=lo, not_before_ms=self._not_before
            )
            pieces.append(headers)
        if not pieces:
            return np.empty(0, dtype=self.layout.header_dtype)
        return np.concatenate(pieces)

    def read_records(
        self, start: int, stop: int, out: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[Any]:
        """Read complete records ``start:stop`` with plain reads (no memory map).

        This is what the live tailer uses on files that grow: it reads only bytes that the
        last look at the file found complete.

        Parameters
        ----------
        start, stop
            Frame range, ``0 <= start <= stop <= frames``.
        out
            Optional C-contiguous array of ``stop - start`` records
            (:attr:`TvipsLayout.record_dtype`) to read into, e.g. a reused buffer.

        Returns
        -------
        numpy.ndarray
            Structured records (:attr:`TvipsLayout.record_dtype`), headers checked.
        """
        self._check_range(start, stop)
        layout = self.layout
        if out is not None and (
            out.shape != (stop - start,)
            or out.dtype != layout.record_dtype
            or not out.flags.c_contiguous
        ):
            raise ParameterError(
                f"out must be {stop - start} contiguous records of {layout.record_dtype}",
                parameter="out",
            )
        records = np.empty(stop - start, dtype=layout.record_dtype) if out is None else out
        buffer = records.view(np.uint8)
        filled = 0
        for number, lo, hi in self._spans(start, stop):
            part = self.parts[number]
            offset = part.offset + lo * layout.record_size
            size = (hi - lo) * layout.record_size
            view = memoryview(buffer[filled * layout.record_size :][:size])  # type: ignore[arg-type]
            got = _read_into(part.path, offset, view)
            if got != size:
                raise FormatError(
                    f"file shrank while it was read: {got} of {size} bytes",
                    path=part.path,
                    offset=offset,
                )
            headers = records["header"][filled : filled + hi - lo]
            layout.check_headers(
                headers, path=part.path, offset=offset, first=lo, not_before_ms=self._not_before
            )
            filled += hi - lo
        return records

    def read_headers(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Read only the frame headers of records ``start:stop``, one positional read each.

        Parameters
        ----------
        start, stop
            Frame range, ``0 <= start <= stop <= frames``.

        Returns
        -------
        numpy.ndarray
            The headers (:attr:`TvipsLayout.header_dtype`), checked as :meth:`read_records`
            checks them.
        """
        self._check_range(start, stop)
        layout = self.layout
        headers = np.empty(stop - start, dtype=layout.header_dtype)
        raw = headers.view(np.uint8).reshape(stop - start, layout.header_bytes)
        filled = 0
        for number, lo, hi in self._spans(start, stop):
            part = self.parts[number]
            offset = part.offset + lo * layout.record_size
            read_strided(part.path, offset, layout.record_size, raw[filled : filled + hi - lo])
            layout.check_headers(
                headers[filled : filled + hi - lo],
                path=part.path,
                offset=offset,
                first=lo,
                not_before_ms=self._not_before,
            )
            filled += hi - lo
        return headers

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
            Native-endian frames with their frame headers (:attr:`TvipsLayout.header_dtype`).
        """
        stop = self.frames if stop is None else stop
        if batch_frames < 1:
            raise ParameterError(f"{batch_frames} is below 1", parameter="batch_frames")
        self._check_range(start, stop)
        for first in range(start, stop, batch_frames):
            records = self.read_records(first, min(first + batch_frames, stop))
            yield FrameBatch(
                first, self.layout.decode(records["data"]), np.array(records["header"])
            )


def _read_header(
    layout: TvipsLayout, part: TvipsPart, local: int, not_before_ms: int | None
) -> npt.NDArray[Any]:
    """Read and check the frame header of record ``local`` of ``part``."""
    offset = part.offset + local * layout.record_size
    with open(part.path, "rb", buffering=0) as stream:
        stream.seek(offset)
        raw = stream.read(layout.header_bytes)
    if len(raw) < layout.header_bytes:
        raise FormatError("file shrank while it was read", path=part.path, offset=offset)
    headers = np.frombuffer(raw, dtype=layout.header_dtype)
    layout.check_headers(
        headers, path=part.path, offset=offset, first=local, not_before_ms=not_before_ms
    )
    return headers


def _check_parts(layout: TvipsLayout, parts: list[TvipsPart]) -> int | None:
    """Check the first and last record of each part and that the parts follow in time.

    Returns
    -------
    int or None
        Time of the first frame of the series (ms since the epoch), ``None`` without frames.
    """
    start: int | None = None
    previous: tuple[int, TvipsPart] | None = None
    for part in parts:
        if part.frames == 0:
            continue
        first = _ms(_read_header(layout, part, 0, None))
        last = _ms(_read_header(layout, part, part.frames - 1, first - _CLOCK_SLACK_MS))
        if previous is not None and first < previous[0] - _CLOCK_SLACK_MS:
            raise FormatError(
                f"its first frame was recorded {(previous[0] - first) / 1000:.3f} s before the "
                f"last frame of {Path(previous[1].path).name}: a leftover part of another "
                "recording? Move it away to read the series",
                path=part.path,
                offset=part.offset,
            )
        start = first if start is None else start
        previous = (last, part)
    return start


def _ms(headers: npt.NDArray[Any]) -> int:
    """Milliseconds since the epoch of the first of ``headers``."""
    return int(headers["timestamp"][0]) * 1000 + int(headers["ms"][0])


def _read_into(path: str, offset: int, view: memoryview) -> int:
    """Fill ``view`` from ``path`` at ``offset``; return the bytes read (fewer at end of file)."""
    got = 0
    with open(path, "rb", buffering=0) as stream:
        stream.seek(offset)
        while got < len(view):
            count = stream.readinto(view[got:])
            if not count:
                break
            got += count
    return got
