"""Merlin frame headers ("MQ1") and ``.hdr`` acquisition headers: pure bytes <-> records.

Nothing here touches a file, so the parsers can be fuzzed and the writer can use the same
field definitions. Field numbers follow the layout of the Merlin software (see docs/formats).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError, TruncatedError

MAGIC = "MQ1"
EXTENDED_MAGIC = "MQ1A"
#: Bytes needed to read the header size: ``MQ1,`` + 6- or 7-digit sequence + ``,`` + 5 digits
#: + ``,``.
PREFIX_SIZE = 18
#: Pixel types the Merlin software writes in field 6; ``R64`` is RAW (bit-packed words).
PIXEL_TYPES = ("U01", "U08", "U16", "U32", "U64", "R64")
COUNTER_DEPTHS = (1, 6, 12, 24)
#: Fields before the threshold block (0..13) plus the eight thresholds.
_FIXED_FIELDS = 22


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """One parsed Merlin frame header.

    Widths and heights are as stored (a RAW quad frame reads 1024 x 256).
    """

    sequence_number: int  # 1-based, continues across the files of one acquisition
    header_size: int  # bytes; the pixel data start at this offset inside the record
    chip_count: int
    width: int  # stored columns
    height: int  # stored rows (fewer than 256 per chip with a row ROI)
    pixel_type: str  # one of PIXEL_TYPES
    layout: str  # sensor layout without padding: "1x1", "2x2", "2x2G", "Nx1", ...
    chip_select: int  # bit mask of the active chips
    local_time: str  # "YYYY-MM-DD HH:MM:SS.ffffff", local time of the acquisition PC
    shutter_s: float  # seconds
    counter: int
    colour_mode: int
    gain_mode: int
    thresholds_kev: tuple[float, ...]
    dacs: tuple[str, ...] = field(default=())  # per chip: chip type then 27 DAC values
    utc_time: str | None = None  # ISO 8601 with nanoseconds and "Z" (extended block)
    shutter_ns: int | None = None  # nanoseconds (extended block)
    counter_depth: int | None = None  # bits: 1, 6, 12 or 24 (extended block)

    @property
    def raw(self) -> bool:
        """Whether the pixel payload is RAW (bit-packed 64-bit words)."""
        return self.pixel_type == "R64"

    @property
    def exposure_ms(self) -> float:
        """Exposure time in milliseconds, from the nanosecond field when present."""
        if self.shutter_ns is not None:
            return self.shutter_ns / 1e6
        return self.shutter_s * 1e3


def _integer(text: str, name: str, *, base: int = 10, path: str | None, offset: int) -> int:
    try:
        return int(text.strip(), base)
    except ValueError:
        raise FormatError(
            f"frame header field {name} is {text!r}, not an integer", path=path, offset=offset
        ) from None


def _real(text: str, name: str, *, path: str | None, offset: int) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise FormatError(
            f"frame header field {name} is {text!r}, not a number", path=path, offset=offset
        ) from None


def parse_header_size(
    prefix: bytes, *, path: str | os.PathLike[str] | None = None, offset: int = 0
) -> int:
    """Return the header size announced by the first bytes of a frame record.

    Parameters
    ----------
    prefix
        At least :data:`PREFIX_SIZE` bytes from the start of a record.
    path, offset
        Where the bytes come from, for error messages.

    Returns
    -------
    int
        The header size in bytes (the offset of the pixel data in the record).
    """
    where = os.fspath(path) if path is not None else None
    if len(prefix) == 0:
        raise FormatError("empty file, no Merlin frame header", path=where, offset=offset)
    if not prefix.startswith(MAGIC.encode() + b","):
        raise FormatError(
            f"not a Merlin frame header: starts with {bytes(prefix[:8])!r}, expected b'MQ1,'",
            path=where,
            offset=offset,
        )
    if len(prefix) < PREFIX_SIZE:
        raise TruncatedError(
            f"frame header cut short after {len(prefix)} bytes", path=where, offset=offset
        )
    text = prefix[:PREFIX_SIZE].decode("latin-1")
    # The sequence number has six digits, seven past frame 999 999.
    start = 11 if text[10] == "," else 12 if text[11] == "," else 0
    size_text = text[start : start + 5]
    size = _integer(size_text, "2 (header size)", path=where, offset=offset) if start else 0
    if size < PREFIX_SIZE or text[start + 5 : start + 6] != ",":
        raise FormatError(
            f"frame header size field {size_text!r} is not a valid size"
            if start
            else f"frame header sequence number field {text[4:12]!r} is not 6 or 7 digits",
            path=where,
            offset=offset,
        )
    return size


def parse_frame_header(
    raw: bytes, *, path: str | os.PathLike[str] | None = None, offset: int = 0
) -> FrameHeader:
    """Parse one Merlin frame header.

    Parameters
    ----------
    raw
        The header bytes: exactly the header size, NUL padding included (longer input is cut
        to the announced header size).
    path, offset
        Where the bytes come from, for error messages.

    Returns
    -------
    FrameHeader
        The typed header.
    """
    where = os.fspath(path) if path is not None else None
    size = parse_header_size(raw, path=where, offset=offset)
    if len(raw) < size:
        raise TruncatedError(
            f"frame header announces {size} bytes but only {len(raw)} are present",
            path=where,
            offset=offset,
        )
    text = bytes(raw[:size]).decode("latin-1")
    end = text.find("\x00")
    if end >= 0:
        text = text[:end]
    fields = text.split(",")
    if fields and fields[-1].strip() == "":
        fields.pop()
    if len(fields) < _FIXED_FIELDS:
        raise FormatError(
            f"frame header has {len(fields)} fields, at least {_FIXED_FIELDS} expected",
            path=where,
            offset=offset,
        )

    def integer(index: int, name: str, base: int = 10) -> int:
        return _integer(fields[index], f"{index} ({name})", base=base, path=where, offset=offset)

    pixel_type = fields[6].strip()
    if pixel_type not in PIXEL_TYPES:
        raise FormatError(
            f"frame header field 6 (pixel type) is {pixel_type!r}, expected one of {PIXEL_TYPES}",
            path=where,
            offset=offset,
        )
    width, height = integer(4, "width"), integer(5, "height")
    if width <= 0 or height <= 0:
        raise FormatError(
            f"frame header gives an empty frame of {width} x {height} pixels",
            path=where,
            offset=offset,
        )
    thresholds = tuple(
        _real(fields[i], f"{i} (threshold)", path=where, offset=offset) for i in range(14, 22)
    )

    utc_time = shutter_ns = counter_depth = None
    try:
        extended = fields.index(EXTENDED_MAGIC)
    except ValueError:
        extended = -1
        dacs = tuple(fields[_FIXED_FIELDS:])
    else:
        dacs = tuple(fields[_FIXED_FIELDS:extended])
        if len(fields) < extended + 4:
            raise FormatError(
                "frame header extended block (MQ1A) is cut short", path=where, offset=offset
            )
        utc_time = fields[extended + 1].strip()
        shutter_text = fields[extended + 2].strip()
        if not shutter_text.endswith("ns"):
            raise FormatError(
                f"frame header extended shutter time {shutter_text!r} does not end in 'ns'",
                path=where,
                offset=offset,
            )
        shutter_ns = _integer(shutter_text[:-2], "shutter (ns)", path=where, offset=offset)
        counter_depth = _integer(fields[extended + 3], "counter depth", path=where, offset=offset)
        if counter_depth not in COUNTER_DEPTHS:
            raise FormatError(
                f"frame header counter depth is {counter_depth}, expected one of {COUNTER_DEPTHS}",
                path=where,
                offset=offset,
            )

    return FrameHeader(
        sequence_number=integer(1, "sequence number"),
        header_size=size,
        chip_count=integer(3, "chip count"),
        width=width,
        height=height,
        pixel_type=pixel_type,
        layout=fields[7].strip(),
        chip_select=integer(8, "chip select", base=16),
        local_time=fields[9].strip(),
        shutter_s=_real(fields[10], "10 (shutter)", path=where, offset=offset),
        counter=integer(11, "counter"),
        colour_mode=integer(12, "colour mode"),
        gain_mode=integer(13, "gain mode"),
        thresholds_kev=thresholds,
        dacs=dacs,
        utc_time=utc_time,
        shutter_ns=shutter_ns,
        counter_depth=counter_depth,
    )


def format_frame_header(header: FrameHeader) -> bytes:
    """Render a frame header as the Merlin software writes it, NUL-padded to its size.

    Parameters
    ----------
    header
        The header to render; ``header.header_size`` is the padded size.

    Returns
    -------
    bytes
        Exactly ``header.header_size`` bytes.

    Raises
    ------
    FormatError
        If the fields do not fit in ``header.header_size`` bytes.
    """
    fields = [
        MAGIC,
        f"{header.sequence_number:06d}",
        f"{header.header_size:05d}",
        f"{header.chip_count:02d}",
        f"{header.width:04d}",
        f"{header.height:04d}",
        header.pixel_type,
        f"{header.layout:>6}",
        f"{header.chip_select:02X}",
        header.local_time,
        f"{header.shutter_s:.6f}",
        str(header.counter),
        str(header.colour_mode),
        str(header.gain_mode),
        *(merlin_float(value) for value in header.thresholds_kev),
        *header.dacs,
    ]
    if header.utc_time is not None:
        shutter = f"{header.shutter_ns}ns"
        fields += [EXTENDED_MAGIC, header.utc_time, shutter, str(header.counter_depth)]
    text = (",".join(fields) + ",").encode("latin-1")
    if len(text) > header.header_size:
        raise FormatError(
            f"frame header needs {len(text)} bytes, more than its size {header.header_size}"
        )
    return text.ljust(header.header_size, b"\x00")


def merlin_float(value: float) -> str:
    """Format a number as the Merlin software does: ``5.110000E+2`` (one-digit exponent).

    Parameters
    ----------
    value
        The number.

    Returns
    -------
    str
        Six decimals, then ``E`` and the signed exponent without zero padding.
    """
    mantissa, exponent = f"{value:.6E}".split("E")
    return f"{mantissa}E{int(exponent):+d}"


def parse_hdr_text(text: str) -> dict[str, str]:
    """Parse the text of a Merlin ``.hdr`` acquisition header.

    Parameters
    ----------
    text
        The whole file decoded as Latin-1.

    Returns
    -------
    dict
        ``{key: value}`` with the trailing colon removed from keys. Values keep their leading
        spaces (``"   1x1"``) as the Merlin software writes them.
    """
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(("HDR", "End\t")) or not line.strip():
            continue
        key, tab, value = line.partition("\t")
        if not tab:
            key, _, value = line.partition(":")
        entries[key.rstrip().removesuffix(":")] = value.rstrip("\r\n")
    return entries


#: ``.hdr`` keys that describe the scan (Merlin software; ``ScanX``/``ScanY`` since 1.5).
HDR_FRAMES_EXPECTED = "Frames in Acquisition (Number)"
HDR_FRAMES_PER_TRIGGER = "Frames per Trigger (Number)"
HDR_SCAN_X = "ScanX"
HDR_SCAN_Y = "ScanY"


@dataclass(frozen=True, slots=True)
class HdrScan:
    """What a ``.hdr`` says of the scan.

    Attributes
    ----------
    frames_expected
        ``Frames in Acquisition``: frames the acquisition was set up for (0: unknown).
    frames_per_trigger
        ``Frames per Trigger``: the scan width for line-triggered scans, else 1.
    scan_size
        ``(ScanX, ScanY)`` when both are written and positive.
    """

    frames_expected: int | None = None
    frames_per_trigger: int | None = None
    scan_size: tuple[int, int] | None = None

    @classmethod
    def from_entries(cls, entries: Mapping[str, str] | None) -> HdrScan:
        """Read the scan keys of parsed ``.hdr`` entries (see :func:`parse_hdr_text`).

        Parameters
        ----------
        entries
            The parsed ``.hdr``, or ``None`` when there is none.

        Returns
        -------
        HdrScan
            The values found; a missing or unreadable value is ``None``.
        """
        if not entries:
            return cls()
        x, y = _hdr_int(entries, HDR_SCAN_X), _hdr_int(entries, HDR_SCAN_Y)
        return cls(
            frames_expected=_hdr_int(entries, HDR_FRAMES_EXPECTED),
            frames_per_trigger=_hdr_int(entries, HDR_FRAMES_PER_TRIGGER),
            scan_size=(x, y) if x and y and x > 0 and y > 0 else None,
        )


def _hdr_int(entries: Mapping[str, str], key: str) -> int | None:
    try:
        return int(entries[key].strip())
    except (KeyError, ValueError):
        return None


def format_hdr_text(entries: dict[str, str], *, size: int = 2048) -> bytes:
    """Render a ``.hdr`` acquisition header, CR LF terminated and space-padded to ``size``.

    Parameters
    ----------
    entries
        ``{key: value}`` in the order to write them.
    size
        Padded length in bytes; the Merlin software pads to 2048.

    Returns
    -------
    bytes
        The file content.
    """
    lines = ["HDR,\t"] + [f"{key}:\t{value}" for key, value in entries.items()]
    body = ("\r\n".join(lines) + "\r\nEnd\t").encode("latin-1")
    return body.ljust(size, b" ")


def _headers_list(headers: bytes | Iterable[bytes], max_index: int) -> list[bytes]:
    if isinstance(headers, (bytes, np.bytes_)):
        items = [bytes(headers)]
    else:
        items = [bytes(item) for item in np.asarray(headers).ravel()]
    return items if max_index == -1 else items[:max_index]


def _extended_field(header: bytes, index: int) -> str:
    """Field ``index`` (negative: from the end) of a header, ignoring a trailing comma."""
    # Splitting only the last fields: the DAC list makes a full split ten times slower, and
    # the live service parses the timestamp of every frame.
    fields = header.rstrip(b"\x00").decode("latin-1").rsplit(",", 1 - index)
    if fields and fields[-1] == "":
        fields.pop()
    return fields[len(fields) + index]


def parse_exposures(headers: bytes | Iterable[bytes], max_index: int = 10000) -> list[float]:
    """Parse the exposure time from the header of each frame.

    Parameters
    ----------
    headers : bytes str or iterable of bytes str
        The headers as a bytes string.
    max_index : int
        Define the maximum index of the frame to be considered to avoid reading the header of
        all frames. If -1, all frames will be read.

    Returns
    -------
    list
        The exposure in ms of each frame.
    """
    return [int(_extended_field(item, -2)[:-2]) / 1e6 for item in _headers_list(headers, max_index)]


def parse_timestamps(headers: bytes | Iterable[bytes], max_index: int = 10000) -> list[str]:
    """Parse the timestamp from the header of each frame.

    Parameters
    ----------
    headers : bytes str or iterable of bytes str
        The headers as a bytes string.
    max_index : int
        Define the maximum index of the frame to be considered to avoid reading the header of
        all frames. If -1, all frames will be read.

    Returns
    -------
    list
        The timestamp of each frame (ISO 8601, UTC, nanoseconds).
    """
    return [_extended_field(item, -3) for item in _headers_list(headers, max_index)]


def timestamps_ns(
    headers: Iterable[bytes], *, locate: Callable[[int], tuple[str, int]] | None = None
) -> npt.NDArray[np.int64]:
    """Frame timestamps in nanoseconds since the epoch, from the MQ1A block of each header.

    Parameters
    ----------
    headers
        Raw frame headers.
    locate
        Gives the file and byte offset of header ``i``, for error messages.

    Returns
    -------
    numpy.ndarray
        One ``int64`` per header.

    Raises
    ------
    FormatError
        If a header has no MQ1A timestamp, or one that is not an ISO 8601 time.
    """
    items = list(headers)
    try:
        stamps = [item.removesuffix("Z") for item in parse_timestamps(items, max_index=-1)]
        return np.array(stamps, dtype="datetime64[ns]").astype(np.int64)
    except (ValueError, IndexError, OverflowError):
        # Only now look for the culprit, header by header: the vectorised parse stays fast.
        for index, item in enumerate(items):
            try:
                stamp = _extended_field(bytes(item), -3)
                np.datetime64(stamp.removesuffix("Z"), "ns")
            except (ValueError, IndexError, OverflowError):
                path, offset = locate(index) if locate is not None else (None, None)
                header = "frame header" if locate is not None else f"frame header {index}"
                raise FormatError(
                    f"{header} has no valid MQ1A timestamp (found {_field_text(item)!r})",
                    path=path,
                    offset=offset,
                ) from None
        raise


def _field_text(header: bytes) -> str:
    """Return the field where a header's MQ1A timestamp should be, cut for messages."""
    try:
        return _extended_field(bytes(header), -3)[:40]
    except IndexError:
        return ""
