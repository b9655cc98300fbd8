"""Public API of the blockfile reader: the reference library's ``file_reader``, same parameters."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError, TruncatedError, UnsupportedError
from stemcast.formats._mmap import resolve_mmap_mode
from stemcast.formats.blockfile.spec import (
    MAX_RECORD_SIZE,
    VBF_OFFSET,
    BlockfileHeader,
    byte_order,
    field_offset,
    parse_header,
    serial_to_datetime,
)
from stemcast.formats.frame_sums import FrameChunk, as_frames

_logger = logging.getLogger(__name__)


def read_header(
    path: str | os.PathLike[str],
    endianess: str | None = None,
    *,
    endianness: str | None = None,
) -> BlockfileHeader:
    """Read the header and note of a blockfile.

    Parameters
    ----------
    path
        The ``.blo`` file.
    endianess, endianness : {"<", ">"}, optional
        Two spellings of the byte order of the file (``"<"`` when neither is given); see
        :func:`file_reader`.

    Returns
    -------
    BlockfileHeader
        The typed header.
    """
    endianess = byte_order(endianess, endianness)
    if not os.path.isfile(path):
        raise FormatError("no such file", path=path)
    with open(path, "rb") as stream:
        raw = stream.read(VBF_OFFSET)
        header = parse_header(raw, endianess=endianess, path=path)
        if header.vbf_offset > len(raw):
            # The note runs up to the navigator, which a corrupt header may put anywhere:
            # read no further than the file goes (a short file is refused by its size later).
            end = min(header.vbf_offset, os.fstat(stream.fileno()).st_size)
            raw += stream.read(max(end - len(raw), 0))
            header = parse_header(raw, endianess=endianess, path=path)
    return header


def read_navigator(
    path: str | os.PathLike[str],
    endianess: str | None = None,
    *,
    endianness: str | None = None,
) -> npt.NDArray[np.uint8]:
    """Read the virtual bright-field (navigator) image stored in a blockfile.

    Parameters
    ----------
    path
        The ``.blo`` file.
    endianess, endianness : {"<", ">"}, optional
        Two spellings of the byte order of the file (``"<"`` when neither is given); see
        :func:`file_reader`.

    Returns
    -------
    numpy.ndarray
        ``(NY, NX)`` uint8 image, x fastest as the frames.
    """
    header = read_header(path, byte_order(endianess, endianness))
    with open(path, "rb") as stream:
        available = os.fstat(stream.fileno()).st_size - header.vbf_offset
        stream.seek(header.vbf_offset)
        raw = stream.read(max(min(header.frames, available), 0))
    if len(raw) < header.frames:
        raise TruncatedError(
            f"navigator image cut short: {len(raw)} of {header.frames} bytes",
            path=path,
            offset=header.vbf_offset + len(raw),
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(header.ny, header.nx).copy()


def _check_size(path: str, header: BlockfileHeader) -> None:
    """Refuse a file too short for its frames; warn about (and ignore) trailing bytes."""
    if header.record_size > MAX_RECORD_SIZE:
        raise UnsupportedError(
            f"frames of {header.frame_size} x {header.frame_size} {header.bit_depth}-bit "
            f"pixels ({header.record_size} bytes a record) are larger than the "
            f"{MAX_RECORD_SIZE} bytes a record can have",
            path=path,
            offset=field_offset(header.byte_order, "DP_SZ"),
        )
    size = os.path.getsize(path)
    expected = header.file_size
    if size < expected:
        record = header.record_dtype().itemsize
        complete = max(size - header.data_offset, 0) // record
        raise TruncatedError(
            f"the header announces {header.nx} x {header.ny} frames of {record} bytes from byte "
            f"{header.data_offset} ({expected} bytes in all) but the file has {size} bytes: "
            f"{complete} complete frames",
            path=path,
            offset=header.data_offset + complete * record,
        )
    if size > expected:
        warnings.warn(
            f"{path}: {size - expected} bytes after the last of the {header.frames} frames the "
            "header announces are ignored",
            UserWarning,
            stacklevel=3,
        )


@dataclass(frozen=True, slots=True)
class _RecordSource:
    """Array-like view of the patterns of a blockfile, read on access.

    The dask graph holds this small descriptor, never data: each task maps the file, copies
    its block out and drops the mapping, so no file stays open and the array pickles small.
    """

    path: str
    offset: int
    record: np.dtype[np.void]
    nav_shape: tuple[int, int]

    @property
    def shape(self) -> tuple[int, ...]:
        """``(NY, NX, DP_SZ, DP_SZ)``."""
        return (*self.nav_shape, *self.record["data"].shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Pixel dtype."""
        return self.record["data"].base

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return 4

    def __getitem__(self, key: Any) -> npt.NDArray[Any]:
        records = np.memmap(
            self.path, dtype=self.record, mode="r", offset=self.offset, shape=self.nav_shape
        )
        chunk: npt.NDArray[Any] = np.array(records["data"][key]).view(FrameChunk)
        return chunk


def _lazy(source: _RecordSource) -> Any:
    import dask.array as da
    from dask.array.core import normalize_chunks
    from dask.base import tokenize

    chunks = normalize_chunks(  # type: ignore[no-untyped-call]
        ("auto", "auto", -1, -1), source.shape, dtype=source.dtype
    )
    stat = os.stat(source.path)
    token = tokenize(source.path, stat.st_mtime_ns, stat.st_size, source.offset, source.record)
    return da.from_array(  # type: ignore[no-untyped-call]
        source,
        chunks=chunks,
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0, 0), dtype=source.dtype),
        name=f"blockfile-{token}",
    )


def _kilo(value: float) -> float:
    return value * 1e-3


def _camera_length(value: float) -> float:
    return value * 1e-4


def _hundredth(value: float) -> float:
    return value * 1e-2


#: How HyperSpy maps header fields to metadata (the reference's mapping).
MAPPING: dict[str, tuple[str, Callable[[float], float]]] = {
    "blockfile_header.Beam_energy": ("Acquisition_instrument.TEM.beam_energy", _kilo),
    "blockfile_header.Camera_length": ("Acquisition_instrument.TEM.camera_length", _camera_length),
    "blockfile_header.Scan_rotation": ("Acquisition_instrument.TEM.rotation", _hundredth),
}


def _axes(header: BlockfileHeader, nav_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Axis dictionaries in array order: navigation (nm) then the two signal axes (cm)."""
    fields = header.fields
    sdp = fields["SDP"]
    scale_dp = 100 / sdp if sdp != 0 else 1.0
    nav = {"y": (header.ny, fields["SY"]), "x": (header.nx, fields["SX"])}
    names = [name for name, (size, _) in nav.items() if size > 1]
    specs = [(name, "nm", nav[name][1], True) for name in names]
    specs += [("dy", "cm", scale_dp, False), ("dx", "cm", scale_dp, False)]
    sizes = (*nav_shape, header.frame_size, header.frame_size)
    return [
        {
            "name": name,
            "units": units,
            "scale": scale,
            "offset": 0.0,
            "size": size,
            "index_in_array": index,
            "navigate": navigate,
        }
        for index, ((name, units, scale, navigate), size) in enumerate(
            zip(specs, sizes, strict=True)
        )
    ]


def _general(header: BlockfileHeader, name: str, path: str) -> dict[str, Any]:
    general: dict[str, Any] = {"original_filename": name}
    serial = float(header.fields["Acquisition_time"])
    try:
        if not math.isfinite(serial):
            raise OverflowError
        moment = serial_to_datetime(serial).astimezone()
    except (OverflowError, ValueError):
        _logger.warning("%s: acquisition time %r is not a valid date", path, serial)
    else:
        general["date"] = moment.date().isoformat()
        general["time"] = moment.time().isoformat()
        general["time_zone"] = moment.tzname()
    general["notes"] = header.note
    return general


def file_reader(
    filename: str | os.PathLike[str],
    lazy: bool = False,
    mmap_mode: str | None = None,
    endianess: str | None = None,
    *,
    endianness: str | None = None,
) -> list[dict[str, Any]]:
    """Read a blockfile.

    Parameters
    ----------
    filename : str, pathlib.Path
        Filename of the file to read or corresponding pathlib.Path.
    lazy : bool, default=False
        Whether to open the file lazily or not. The dask tasks map the file only while they
        copy their block out, so no file handle stays open.
    mmap_mode : {None, "r+", "r", "c"}, default=None
        Argument passed to :class:`numpy.memmap`. A memory-mapped array is stored on disk, and
        not directly loaded into memory. However, it can be accessed and sliced like any
        ndarray. Lazy loading does not support in-place writing (i.e lazy loading and the
        "r+" mode are incompatible). If None (default), the value is "r" when lazy=True,
        otherwise it is "c". "w+" is refused: it would overwrite the file.
    endianess : str, default="<"
        "<" or ">", depending on how the bits are written to the file. A header whose
        signature reads only in the other byte order (RosettaSciIO writes its headers
        little-endian whatever this argument) is read in that order.
    endianness : str, optional
        The same, spelled as the reference library spells it since its 0.13. Either spelling
        may be given, or both with the same value; different values raise
        :class:`~stemcast.errors.ParameterError`. Neither spelling warns.

    Returns
    -------
    list of dict
        One dictionary with the fields ``data`` (``(NY, NX, DP_SZ, DP_SZ)`` uint8 patterns,
        scan axes of length 1 dropped), ``axes``, ``metadata``, ``original_metadata``
        (``{"blockfile_header": {...}}``) and ``mapping``.

    Notes
    -----
    Truncated files (fewer frame records than ``NX * NY``) are refused with
    :class:`~stemcast.errors.TruncatedError`, where the reference pads them with zeros.
    """
    endianess = byte_order(endianess, endianness)
    mode = resolve_mmap_mode(mmap_mode, lazy)
    path = os.fspath(filename)
    header = read_header(path, endianess)
    _check_size(path, header)
    full = (header.ny, header.nx)
    nav_shape = tuple(size for size in full if size > 1)
    record = header.record_dtype(endianess)
    frame = (header.frame_size, header.frame_size)
    if lazy:
        data = _lazy(_RecordSource(path, header.data_offset, record, full))
    else:
        records = np.memmap(path, dtype=record, mode=mode, offset=header.data_offset, shape=full)
        data = as_frames(records["data"])
    data = data.reshape(*nav_shape, *frame)
    return [
        {
            "data": data,
            "axes": _axes(header, nav_shape),
            "metadata": {
                "General": _general(header, os.path.basename(path), path),
                "Signal": {"signal_type": "diffraction"},
            },
            "original_metadata": {"blockfile_header": header.as_dict()},
            "mapping": dict(MAPPING),
        }
    ]
