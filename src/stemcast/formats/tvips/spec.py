"""TVIPS main (series) header and frame headers: pure bytes <-> typed records.

Nothing here touches a file, so the parsers can be fuzzed and the writer uses the same field
definitions. All values are little-endian (the files come from Windows PCs). Field names follow
the reference reader; the frame-header fields after byte 60 are those LiberTEM documents.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError, TruncatedError, UnsupportedError

#: Bytes of the main header at the start of ``_000``.
MAIN_HEADER_SIZE = 256
#: Frame header bytes of a version-1 file.
V1_FRAME_HEADER_SIZE = 12
#: Frame header bytes the reference reader needs for version 2 (fields up to ``objective``).
V2_FRAME_HEADER_SIZE = 60
VERSIONS = (1, 2)
#: Bits per pixel stemcast reads: cameras write 8 or 16; the reference writer also 32 and 64.
BITS_PER_PIXEL = (8, 16, 32, 64)
#: Filler of the main header written by the reference writer (HyperSpy / RosettaSciIO).
REFERENCE_FILLER = b"HYPERSPY " * 22 + b"HYPERS"
#: Filler of the main header written by stemcast.
STEMCAST_FILLER = b"STEMCAST " * 22 + b"STEMCA"

MAIN_HEADER_DTYPE = np.dtype(
    [
        ("size", "<u4"),  # bytes of this header: always 256
        ("version", "<u4"),  # 1 or 2
        ("dimx", "<u4"),  # image width, pixels
        ("dimy", "<u4"),  # image height, pixels
        ("bitsperpixel", "<u4"),  # bits per pixel: 8 or 16 from cameras
        ("offsetx", "<u4"),  # camera x offset of the image (read as nm or 1/nm)
        ("offsety", "<u4"),  # camera y offset of the image (read as nm or 1/nm)
        ("binx", "<u4"),  # binning x
        ("biny", "<u4"),  # binning y
        ("pixelsize", "<u4"),  # pixel size, whole nm (imaging) or 1/nm (diffraction)
        ("ht", "<u4"),  # high tension, kV
        ("magtotal", "<u4"),  # total magnification (camera length in diffraction)
        ("frameheaderbytes", "<u4"),  # bytes of each frame header (version 2)
        ("dummy", "S204"),  # filler: "TVIPS TVIPS ..." from cameras
    ]
)
#: Version-1 frame header (12 bytes).
_V1_FIELDS: list[tuple[str, str]] = [
    ("num", "<u4"),  # image counter
    ("timestamp", "<u4"),  # seconds since 1970-01-01 UTC
    ("ms", "<u4"),  # milliseconds to add to timestamp
]
#: Version-2 frame header fields, back to back from byte 0. The first 15 (60 bytes) are those
#: the reference reads; the rest are documented by LiberTEM (108 bytes in all).
_V2_FIELDS: list[tuple[str, str]] = [
    *_V1_FIELDS,
    ("LUTidx", "<u4"),  # display LUT index
    ("fcurrent", "<f4"),  # Faraday cup reading (unit unknown)
    ("mag", "<u4"),  # magnification reported for this frame
    ("mode", "<u4"),  # 1 imaging, 2 diffraction
    ("stagex", "<f4"),  # stage x (nm)
    ("stagey", "<f4"),  # stage y (nm)
    ("stagez", "<f4"),  # stage z (nm)
    ("stagea", "<f4"),  # alpha tilt, degrees
    ("stageb", "<f4"),  # beta tilt, degrees
    ("rotidx", "<u4"),  # rotator index: 1-based scan position, 0 when not scanning
    ("temperature", "<f4"),  # measured temperature (DENS holder)
    ("objective", "<f4"),  # the reference's "objective" (LiberTEM: DENS set-point)
    ("dens_power", "<f4"),  # DENS holder power
    ("obj_current", "<f4"),  # objective lens current
    ("scan_x", "<f4"),  # scan position x (whole numbers), 0-based
    ("scan_y", "<f4"),  # scan position y (whole numbers), 0-based
    ("bias_u_setpoint", "<f4"),  # biasing holder: voltage set-point
    ("bias_u_value", "<f4"),  # voltage
    ("bias_i_setpoint", "<f4"),  # current set-point
    ("bias_i_value", "<f4"),  # current
    ("bias_e_setpoint", "<f4"),  # field set-point
    ("bias_r", "<f4"),  # resistance
    ("bias_limit_u", "<f4"),  # compliance limit, voltage
    ("bias_limit_i", "<f4"),  # compliance limit, current
]


def frame_header_dtype(header_bytes: int) -> np.dtype[Any]:
    """Structured dtype of a frame header of ``header_bytes`` bytes.

    Parameters
    ----------
    header_bytes
        12 for version 1; at least 60 for version 2 (the main header's ``frameheaderbytes``).

    Returns
    -------
    numpy.dtype
        The known fields that fit in ``header_bytes`` (the rest is opaque), with
        ``itemsize == header_bytes``.
    """
    if header_bytes == V1_FRAME_HEADER_SIZE:
        fields = _V1_FIELDS
    elif header_bytes >= V2_FRAME_HEADER_SIZE:
        fields = _V2_FIELDS
    else:
        raise FormatError(
            f"frame headers of {header_bytes} bytes: version 1 uses 12, version 2 at least 60"
        )
    names, formats, offsets = [], [], []
    offset = 0
    for name, fmt in fields:
        size = np.dtype(fmt).itemsize
        if offset + size > header_bytes:
            break
        names.append(name)
        formats.append(fmt)
        offsets.append(offset)
        offset += size
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": header_bytes}
    )


@dataclass(frozen=True, slots=True)
class MainHeader:
    """The 256-byte main header of a TVIPS series (first bytes of ``_000``)."""

    version: int
    dimx: int  # pixels
    dimy: int  # pixels
    bitsperpixel: int
    offsetx: int = 0  # nm or 1/nm
    offsety: int = 0  # nm or 1/nm
    binx: int = 1
    biny: int = 1
    pixelsize: int = 1  # nm or 1/nm
    ht: int = 0  # kV
    magtotal: int = 0
    frameheaderbytes: int = V2_FRAME_HEADER_SIZE
    dummy: bytes = STEMCAST_FILLER
    size: int = MAIN_HEADER_SIZE

    def as_dict(self) -> dict[str, Any]:
        """Return the fields in file order, as ``original_metadata["tvips_header"]``."""
        values = asdict(self)
        return {name: values[name] for name in MAIN_HEADER_DTYPE.names or ()}


def parse_main_header(raw: bytes, *, path: str | os.PathLike[str] | None = None) -> MainHeader:
    """Parse and check the main header of a TVIPS series.

    Parameters
    ----------
    raw
        At least the first 256 bytes of the ``_000`` file.
    path
        The file, for error messages.

    Returns
    -------
    MainHeader
        The typed header.
    """
    where = os.fspath(path) if path is not None else None
    if len(raw) < MAIN_HEADER_SIZE:
        raise TruncatedError(
            f"main header cut short: {len(raw)} of {MAIN_HEADER_SIZE} bytes", path=where, offset=0
        )
    record = np.frombuffer(raw, dtype=MAIN_HEADER_DTYPE, count=1)[0]
    fields = {name: int(record[name]) for name in MAIN_HEADER_DTYPE.names or () if name != "dummy"}
    header = MainHeader(**fields, dummy=bytes(record["dummy"]))

    def offset_of(name: str) -> int:
        return int(MAIN_HEADER_DTYPE.fields[name][1])  # type: ignore[index]

    if header.size != MAIN_HEADER_SIZE:
        raise FormatError(
            f"main header size field is {header.size}, a TVIPS main header is "
            f"{MAIN_HEADER_SIZE} bytes: not a TVIPS file",
            path=where,
            offset=offset_of("size"),
        )
    if header.version not in VERSIONS:
        raise UnsupportedError(
            f"TVIPS format version {header.version}; versions {VERSIONS} are known",
            path=where,
            offset=offset_of("version"),
        )
    if header.bitsperpixel not in BITS_PER_PIXEL:
        raise FormatError(
            f"{header.bitsperpixel} bits per pixel; expected one of {BITS_PER_PIXEL}",
            path=where,
            offset=offset_of("bitsperpixel"),
        )
    if header.dimx == 0 or header.dimy == 0:
        raise FormatError(
            f"empty frames of {header.dimx} x {header.dimy} pixels",
            path=where,
            offset=offset_of("dimx"),
        )
    if header.version == 2 and header.frameheaderbytes < V2_FRAME_HEADER_SIZE:
        raise FormatError(
            f"version-2 frame headers of {header.frameheaderbytes} bytes; at least "
            f"{V2_FRAME_HEADER_SIZE} expected",
            path=where,
            offset=offset_of("frameheaderbytes"),
        )
    return header


def format_main_header(header: MainHeader) -> bytes:
    """Render a main header as 256 bytes.

    Parameters
    ----------
    header
        The header; ``dummy`` is cut or NUL-padded to 204 bytes.

    Returns
    -------
    bytes
        Exactly 256 bytes.
    """
    record = np.zeros(1, dtype=MAIN_HEADER_DTYPE)
    for name, value in header.as_dict().items():
        record[name] = value
    return record.tobytes()


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """One parsed frame header; fields a version-1 header lacks are ``None``."""

    num: int  # image counter
    timestamp: int  # seconds since 1970-01-01 UTC
    ms: int  # milliseconds to add to timestamp
    mode: int | None = None  # 1 imaging, 2 diffraction
    fcurrent: float | None = None
    stagex: float | None = None
    stagey: float | None = None
    stagez: float | None = None
    stagea: float | None = None  # degrees
    stageb: float | None = None  # degrees
    objective: float | None = None
    rotidx: int | None = None

    @property
    def utc(self) -> datetime:
        """The acquisition time of the frame, timezone-aware UTC."""
        return datetime.fromtimestamp(self.timestamp, tz=UTC) + timedelta(milliseconds=self.ms)


def frame_header_from_record(record: npt.NDArray[Any] | np.void) -> FrameHeader:
    """Turn one element of a :func:`frame_header_dtype` array into a :class:`FrameHeader`.

    Parameters
    ----------
    record
        One frame header (a structured scalar or 0-d array).

    Returns
    -------
    FrameHeader
        The typed header.
    """
    names = record.dtype.names or ()
    values: dict[str, Any] = {}
    for name in FrameHeader.__dataclass_fields__:
        if name in names:
            value = record[name]
            values[name] = float(value) if value.dtype.kind == "f" else int(value)
    return FrameHeader(**values)


def parse_frame_header(
    raw: bytes, header_bytes: int, *, path: str | os.PathLike[str] | None = None, offset: int = 0
) -> FrameHeader:
    """Parse one frame header.

    Parameters
    ----------
    raw
        At least ``header_bytes`` bytes from the start of a frame record.
    header_bytes
        The frame header size of the series (12 for version 1).
    path, offset
        Where the bytes come from, for error messages.

    Returns
    -------
    FrameHeader
        The typed header.
    """
    if len(raw) < header_bytes:
        raise TruncatedError(
            f"frame header cut short: {len(raw)} of {header_bytes} bytes",
            path=os.fspath(path) if path is not None else None,
            offset=offset,
        )
    dtype = frame_header_dtype(header_bytes)
    return frame_header_from_record(np.frombuffer(raw, dtype=dtype, count=1)[0])
