"""NanoMegas ASTAR blockfile (``.blo``) headers: pure bytes <-> typed header.

Nothing here touches a file, so the parser can be fuzzed and the writer uses the same field
definitions. The layout follows the format specification (shared/specs/blockfile.md):

.. code-block:: text

    0                fixed header, 240 bytes (HEADER_DTYPE)
    240 .. D1        free-text note (Latin-1, CRLF line breaks), NUL padded
    D1 (4096)        virtual bright-field image, NY * NX uint8, x fastest
    D2               NY * NX frame records: 0x55AA marker, u32 serial number, DP_SZ^2 pixels

where ``D1 = Data_offset_1`` and ``D2 = Data_offset_2``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np

from stemcast.errors import FormatError, ParameterError, TruncatedError, UnsupportedError

ID_TEXT = b"IMGBLO"
#: Signature of the classic 8-bit files (ASTAR and every open writer).
SIGNATURE_8BIT = 0x0102
#: Signature of newer ASTAR files, which may hold 16-bit patterns (see :func:`note_bit_depth`).
SIGNATURE_16BIT = 0x0103
SIGNATURES = (SIGNATURE_8BIT, SIGNATURE_16BIT)
HEADER_SIZE = 240
#: Where ASTAR puts the navigator image (``Data_offset_1`` of every observed file).
VBF_OFFSET = 4096
#: ``UNKNOWN1`` of ASTAR-written files (RosettaSciIO writes 131141 instead).
ASTAR_UNKNOWN1 = 131135
#: ``Acquisition_time`` of a header without a date: 1970-01-02 00:00 UTC, as RosettaSciIO.
DEFAULT_ACQUISITION_TIME = 25570.0
#: First two bytes of every frame record, before the serial number.
FRAME_MARKER = 0x55AA
#: Bytes before each frame: the marker and the frame's serial number.
RECORD_HEADER_SIZE = 6
#: Largest scan size and frame size: the header stores them as 16-bit integers.
MAX_SIZE = 65535
#: Largest frame record: numpy's structured dtypes hold at most a C ``int`` of bytes.
MAX_RECORD_SIZE = 2**31 - 1
#: The named ``intensity_scaling`` options of the writers (besides ``None`` and a range).
INTENSITY_SCALINGS = ("dtype", "minmax", "crop")
#: Origin of the OLE / Excel serial dates of ``Acquisition_time``.
SERIAL_DATE_ORIGIN = datetime(1899, 12, 30, tzinfo=UTC)

CENTERING_FIELDS = tuple(f"Centering_N{index}" for index in range(8))
DISTORTION_FIELDS = tuple(f"Distortion_N{index:02d}" for index in range(14))

#: Fields whose byte order follows the ``endianess`` argument; the centering and distortion
#: doubles after them are little-endian in every file (the reference writes them in native
#: order, which is little-endian on every machine it runs on).
_ORDERED_FIELDS: tuple[tuple[str, str], ...] = (
    ("ID", "S6"),  # magic text b"IMGBLO"
    ("MAGIC", "u2"),  # format signature: 0x0102 classic 8-bit, 0x0103 newer ASTAR
    ("Data_offset_1", "u4"),  # bytes: start of the navigator image (4096)
    ("Data_offset_2", "u4"),  # bytes: start of the first frame record
    ("UNKNOWN1", "u4"),  # flags? ASTAR files: 131135
    ("DP_SZ", "u2"),  # pixels: side of the square diffraction patterns
    ("DP_rotation", "u2"),  # pattern rotation, 1/100 degree?
    ("NX", "u2"),  # scan columns (fast axis)
    ("NY", "u2"),  # scan rows (slow axis)
    ("Scan_rotation", "u2"),  # 1/100 degree
    ("SX", "f8"),  # nm: scan step along x
    ("SY", "f8"),  # nm: scan step along y
    ("Beam_energy", "u4"),  # V: accelerating voltage
    ("SDP", "u2"),  # 100 x pixels per cm: diffraction calibration, pixel size = 100 / SDP cm
    ("Camera_length", "u4"),  # 10 x mm?
    ("Acquisition_time", "f8"),  # days since 1899-12-30 00:00 UTC (OLE serial date)
)
_NATIVE_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (name, "<f8")  # pattern-centering parameters (not applied by readers)
    for name in CENTERING_FIELDS
) + tuple(
    (name, "<f8")  # distortion-correction parameters (not applied by readers)
    for name in DISTORTION_FIELDS
)
FIELD_NAMES = tuple(name for name, _ in _ORDERED_FIELDS + _NATIVE_FIELDS)

#: Header fields a writer computes from the data; never copied from another file's header.
GEOMETRY_FIELDS = ("ID", "MAGIC", "Data_offset_1", "Data_offset_2", "DP_SZ", "NX", "NY")

_BIT_DEPTH = re.compile(r"Blo Bit Depth\s*:\s*(\d+)\s*bits?", re.IGNORECASE)
_BIT_DEPTH_LINE = re.compile(r"[^\r\n]*Blo Bit Depth\s*:[^\r\n]*(\r?\n)?", re.IGNORECASE)


def check_endianess(endianess: str, parameter: str = "endianess") -> str:
    """Return ``endianess`` if it is ``"<"`` or ``">"``, else raise :class:`ParameterError`."""
    if endianess not in ("<", ">"):
        raise ParameterError(f"{endianess!r} is not '<' or '>'", parameter=parameter)
    return endianess


def byte_order(endianess: str | None = None, endianness: str | None = None) -> str:
    """Resolve the two spellings of the byte-order parameter.

    The reference library spells the parameter ``endianness`` since its 0.13 and
    ``endianess`` before; both are accepted, alone or together when they agree.

    Parameters
    ----------
    endianess, endianness : {"<", ">"}, optional
        The byte order under either spelling; ``"<"`` when neither is given.

    Returns
    -------
    str
        ``"<"`` or ``">"``.

    Raises
    ------
    ParameterError
        When a value is not ``"<"`` or ``">"``, or when the two spellings disagree.
    """
    if endianess is not None and endianness is not None and endianess != endianness:
        raise ParameterError(
            f"endianess={endianess!r} and endianness={endianness!r} disagree: give one of them",
            parameter="endianness",
        )
    if endianness is not None:
        return check_endianess(endianness, "endianness")
    if endianess is not None:
        return check_endianess(endianess)
    return "<"


def header_dtype(endianess: str = "<") -> np.dtype[np.void]:
    """Return the 240-byte header as a packed numpy structured dtype.

    Parameters
    ----------
    endianess : str, default="<"
        ``"<"`` or ``">"``: byte order of every field but the centering and distortion
        doubles, which are always little-endian.

    Returns
    -------
    numpy.dtype
        The structured dtype, :data:`HEADER_SIZE` bytes.
    """
    check_endianess(endianess)
    ordered = [
        (name, endianess + code if code[0] != "S" else code) for name, code in _ORDERED_FIELDS
    ]
    return np.dtype(ordered + list(_NATIVE_FIELDS))


HEADER_DTYPE = header_dtype("<")


def record_dtype(
    frame_size: int, pixel_dtype: np.dtype[Any], endianess: str = "<"
) -> np.dtype[np.void]:
    """Structured dtype of one frame record: marker, serial number, pattern.

    Parameters
    ----------
    frame_size
        Side of the square pattern in pixels.
    pixel_dtype
        ``uint8`` (classic files) or ``uint16`` (16-bit ASTAR files).
    endianess : str, default="<"
        Byte order of the marker and serial number.

    Returns
    -------
    numpy.dtype
        Packed ``marker`` (u2), ``serial`` (u4) and ``data`` fields.
    """
    return np.dtype(
        [
            ("marker", endianess + "u2"),  # FRAME_MARKER
            ("serial", endianess + "u4"),  # frame index in scan order, 0-based
            ("data", pixel_dtype, (frame_size, frame_size)),  # the pattern, row-major
        ]
    )


def data_offset(frames: int, vbf_offset: int = VBF_OFFSET) -> int:
    """``Data_offset_2`` as ASTAR writes it: after the navigator, rounded up to 16 bytes.

    Parameters
    ----------
    frames
        ``NX * NY``, the size of the navigator image in bytes.
    vbf_offset
        ``Data_offset_1``.

    Returns
    -------
    int
        Offset of the first frame record.
    """
    end = vbf_offset + frames
    return -(-end // 16) * 16


def note_bit_depth(note: str) -> int:
    """Bits per pixel announced by a ``Blo Bit Depth: 16 bits`` line of the note (default 8)."""
    match = _BIT_DEPTH.search(note)
    return int(match[1]) if match else 8


def without_bit_depth(note: str) -> str:
    """Remove the ``Blo Bit Depth`` line of a note (for a file rewritten with 8-bit data)."""
    return _BIT_DEPTH_LINE.sub("", note)


def serial_to_datetime(serial: float) -> datetime:
    """Convert an OLE serial date (``Acquisition_time``) to an aware UTC datetime.

    Parameters
    ----------
    serial
        Days since 1899-12-30 00:00 UTC, the fraction being the time of day.

    Returns
    -------
    datetime.datetime
        The moment, in UTC, to the microsecond.
    """
    days = int(serial)
    return SERIAL_DATE_ORIGIN + timedelta(days=days, seconds=(serial - days) * 86400)


def datetime_to_serial(moment: datetime) -> float:
    """Convert a datetime to an OLE serial date; a naive datetime is taken as UTC.

    Parameters
    ----------
    moment
        The acquisition time.

    Returns
    -------
    float
        Days since 1899-12-30 00:00 UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - SERIAL_DATE_ORIGIN
    return delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400


@dataclass(frozen=True, slots=True)
class BlockfileHeader:
    """A parsed blockfile header and note.

    Attributes
    ----------
    fields
        Every header field by its name in the specification (``"NX"``, ``"SDP"``, ...), as
        numpy scalars, in file order.
    note
        The free-text note, NULs stripped.
    byte_order
        ``"<"`` or ``">"``: the byte order the header was found in.
    """

    fields: Mapping[str, Any]
    note: str
    byte_order: str

    @property
    def nx(self) -> int:
        """Scan columns."""
        return int(self.fields["NX"])

    @property
    def ny(self) -> int:
        """Scan rows."""
        return int(self.fields["NY"])

    @property
    def frames(self) -> int:
        """Frame records announced: ``NX * NY``."""
        return self.nx * self.ny

    @property
    def frame_size(self) -> int:
        """Side of the square patterns in pixels."""
        return int(self.fields["DP_SZ"])

    @property
    def vbf_offset(self) -> int:
        """Byte offset of the navigator image."""
        return int(self.fields["Data_offset_1"])

    @property
    def data_offset(self) -> int:
        """Byte offset of the first frame record."""
        return int(self.fields["Data_offset_2"])

    @property
    def bit_depth(self) -> int:
        """Bits per pixel: 8, or 16 for newer ASTAR files that say so in their note."""
        return note_bit_depth(self.note)

    def pixel_dtype(self, endianess: str = "<") -> np.dtype[Any]:
        """Dtype of the pattern pixels (``uint8``, or ``uint16`` in the given byte order)."""
        return np.dtype(np.uint8) if self.bit_depth == 8 else np.dtype(endianess + "u2")

    def record_dtype(self, endianess: str = "<") -> np.dtype[np.void]:
        """Structured dtype of one frame record of this file."""
        return record_dtype(self.frame_size, self.pixel_dtype(endianess), endianess)

    @property
    def record_size(self) -> int:
        """Bytes of one frame record: marker, serial number and pattern."""
        return RECORD_HEADER_SIZE + self.frame_size**2 * self.bit_depth // 8

    @property
    def file_size(self) -> int:
        """Bytes a complete file has: up to the end of the last frame record."""
        return self.data_offset + self.frames * self.record_dtype().itemsize

    def as_dict(self) -> dict[str, Any]:
        """Return the fields and the note (``"Note"``), as ``original_metadata`` holds them."""
        return {**self.fields, "Note": self.note}


def _record(raw: bytes, endianess: str) -> np.void:
    return cast(np.void, np.frombuffer(raw, dtype=header_dtype(endianess), count=1)[0])


def _detect_order(raw: bytes, endianess: str, where: str | None) -> str:
    """Byte order of the header: the requested one, unless only the other gives a signature.

    RosettaSciIO writes its header little-endian whatever its ``endianness`` argument, so a
    file it wrote with ``">"`` has a little-endian header and big-endian frame markers.
    """
    for order in (endianess, "<" if endianess == ">" else ">"):
        if int(_record(raw, order)["MAGIC"]) in SIGNATURES:
            return order
    magic = int(_record(raw, endianess)["MAGIC"])
    warnings.warn(
        f"{where or '<bytes>'}: unrecognised blockfile signature 0x{magic:04X} (expected "
        f"0x{SIGNATURE_8BIT:04X}); reading it as a classic file, correctness not guaranteed",
        UserWarning,
        stacklevel=4,
    )
    return endianess


def parse_header(
    raw: bytes, *, endianess: str = "<", path: str | os.PathLike[str] | None = None
) -> BlockfileHeader:
    """Parse a blockfile header and its note.

    Parameters
    ----------
    raw
        The first bytes of the file: at least the 240-byte header, and up to
        ``Data_offset_1`` (4096 in every known file) for the whole note.
    endianess : str, default="<"
        ``"<"`` or ``">"``: the expected byte order of the header. A header whose signature
        only makes sense in the other order is read in that order.
    path
        Where the bytes come from, for error messages.

    Returns
    -------
    BlockfileHeader
        The typed header.
    """
    check_endianess(endianess)
    where = os.fspath(path) if path is not None else None
    if not raw or raw[: len(ID_TEXT)] != ID_TEXT[: len(raw)]:
        raise FormatError(
            f"not a blockfile: starts with {bytes(raw[:8])!r}, expected {ID_TEXT!r}",
            path=where,
            offset=0,
        )
    if len(raw) < HEADER_SIZE:
        raise TruncatedError(
            f"blockfile header cut short: {len(raw)} of {HEADER_SIZE} bytes", path=where, offset=0
        )
    order = _detect_order(raw, endianess, where)
    record = _record(raw, order)
    fields = {name: record[name] for name in FIELD_NAMES}
    for name in ("DP_SZ", "NX", "NY"):
        if int(fields[name]) == 0:
            raise FormatError(
                f"header field {name} is 0: no frames to read",
                path=where,
                offset=field_offset(order, name),
            )
    vbf, data = int(fields["Data_offset_1"]), int(fields["Data_offset_2"])
    frames = int(fields["NX"]) * int(fields["NY"])
    if vbf < HEADER_SIZE or data < vbf + frames:
        raise FormatError(
            f"header offsets do not fit: navigator at byte {vbf} ({frames} bytes), frames at "
            f"byte {data}; the note needs {HEADER_SIZE} <= Data_offset_1 and the navigator "
            "Data_offset_1 + NX * NY <= Data_offset_2",
            path=where,
            offset=8,
        )
    note = bytes(raw[HEADER_SIZE:vbf]).decode("latin-1").strip("\x00")
    header = BlockfileHeader(fields, note, order)
    if header.bit_depth not in (8, 16):
        raise UnsupportedError(
            f"the note announces {header.bit_depth}-bit pixels; only 8 and 16 are known",
            path=where,
            offset=HEADER_SIZE,
        )
    return header


def field_offset(endianess: str, name: str) -> int:
    """Byte offset of header field ``name``."""
    return int(header_dtype(endianess).fields[name][1])  # type: ignore[index]


def _field_value(name: str, value: Any, dtype: np.dtype[Any]) -> Any:
    """``value`` converted for field ``name``; refuses values the field cannot hold."""
    kind = dtype.kind
    try:
        if kind == "S":
            return bytes(value)
        if kind == "f":
            return float(value)
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ParameterError(
            f"header field {name} cannot hold {value!r}", parameter="blockfile_header"
        ) from None
    info = np.iinfo(dtype)
    if not info.min <= number <= info.max or number != value:
        raise ParameterError(
            f"header field {name} cannot hold {value!r} ({dtype.name}: integers "
            f"{info.min}..{info.max})",
            parameter="blockfile_header",
        )
    return number


def format_header(fields: Mapping[str, Any], note: str, *, endianess: str = "<") -> bytes:
    """Render the header and its note: everything before ``Data_offset_1``.

    Parameters
    ----------
    fields
        A value for every name of :data:`FIELD_NAMES`.
    note
        Free text, encoded as Latin-1 (characters outside it become ``?``) and cut to the
        space before ``Data_offset_1``.
    endianess : str, default="<"
        ``"<"`` or ``">"``, for every field but the centering and distortion doubles.

    Returns
    -------
    bytes
        ``Data_offset_1`` bytes: header, note, NUL padding.
    """
    dtype = header_dtype(endianess)
    record = np.zeros((), dtype=dtype)
    for name in FIELD_NAMES:
        record[name] = _field_value(name, fields[name], dtype.fields[name][0])  # type: ignore[index]
    vbf = int(record["Data_offset_1"])
    if vbf < HEADER_SIZE:
        raise ParameterError(
            f"Data_offset_1 = {vbf} leaves no room for the {HEADER_SIZE}-byte header",
            parameter="blockfile_header",
        )
    text = note.encode("latin-1", errors="replace")[: vbf - HEADER_SIZE]
    return record.tobytes() + text + bytes(vbf - HEADER_SIZE - len(text))
