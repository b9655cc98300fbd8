"""Public API of the Merlin reader: the functions of the reference library, same parameters."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError, ParameterError
from stemcast.formats._mmap import resolve_mmap_mode
from stemcast.formats.frame_sums import as_frames
from stemcast.formats.mib.layout import MibLayout
from stemcast.formats.mib.lazy import FrameSource, lazy_frames, read_frames
from stemcast.formats.mib.run import (
    MibRun,
    check_headers,
    find_hdr,
    header_from_buffer,
    read_hdr,
    run_scan_shape,
)
from stemcast.formats.mib.spec import (
    FrameHeader,
    HdrScan,
)
from stemcast.formats.mib.virtual import frame_totals
from stemcast.shape import ScanShape, check_navigation_shape, complete_lines

_logger = logging.getLogger(__name__)

#: Headers read to infer the scan width from timestamps (as the reference reader).
_DYNAMIC_RANGE = {"U01": "1 or 6-bit", "U08": "1 or 6-bit", "U16": "12-bit", "U32": "24-bit"}

PathOrBuffer = str | os.PathLike[str] | bytes | bytearray | memoryview


class MIBProperties:
    """Properties of a Merlin ``.mib`` file, from its first frame header.

    The attributes are those of the reference reader; :meth:`as_dict` gives the dictionary
    stored as ``original_metadata["mib_properties"]``.
    """

    def __init__(self) -> None:
        self.path: str | None = None
        self.buffer = False
        self.merlin_size: tuple[int, int] | None = None
        self.assembly_size: str | None = None
        self.raw = False
        self.dynamic_range: str | None = None
        self.packed: bool | None = None
        self.dtype: str | None = None
        self.head_size: int | None = None
        self.offset = 0
        self.navigation_shape: tuple[int, ...] | None = None
        self.xy: int | None = None
        self.number_of_frames_in_file: int | None = None
        self.gap: int | None = None
        self.quad_scale: int | None = None
        self.detector_geometry: str | None = None
        self.frame_double: int | None = None
        self.roi_rows: int | None = None
        self.exposure: float | None = None
        self.timestamp: str | None = None
        self.file_size: int | None = None
        self.frame_number_in_file: int | None = None
        self.run: MibRun | None = None
        self.header: FrameHeader | None = None
        self.layout: MibLayout | None = None

    def __repr__(self) -> str:
        return f"MIBProperties({self.as_dict()!r})"

    def as_dict(self) -> dict[str, Any]:
        """Return the properties as the reference reader's ``mib_properties`` dictionary."""
        hidden = ("run", "header", "layout")
        return {key: value for key, value in vars(self).items() if key not in hidden}

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> MIBProperties:
        """Read the properties of a ``.mib`` file (and of the other files of its run).

        Parameters
        ----------
        path
            The ``.mib`` file.

        Returns
        -------
        MIBProperties
            The properties.
        """
        prop = cls()
        prop.parse_file(path)
        return prop

    @classmethod
    def from_buffer(cls, buffer: bytes | bytearray | memoryview) -> MIBProperties:
        """Read the properties of MIB records held in memory.

        Parameters
        ----------
        buffer
            Whole MIB records, back to back.

        Returns
        -------
        MIBProperties
            The properties.
        """
        prop = cls()
        header = header_from_buffer(buffer)
        prop._fill(header, MibLayout.from_header(header, path="<memory buffer>"))
        prop.buffer = True
        prop.file_size = len(buffer)
        prop.frame_number_in_file = len(buffer) // prop._layout().record_size
        return prop

    def parse_file(self, path: str | os.PathLike[str]) -> None:
        """Fill the properties from a ``.mib`` file.

        Parameters
        ----------
        path
            The ``.mib`` file.
        """
        run = MibRun.open(path)
        self._fill(run.first_header, run.layout)
        self.run = run
        self.path = os.fspath(path)
        self.file_size = sum(os.path.getsize(segment.path) for segment in run.segments)
        self.frame_number_in_file = run.frames

    def _fill(self, header: FrameHeader, layout: MibLayout) -> None:
        self.header, self.layout = header, layout
        self.merlin_size = layout.frame_shape
        self.head_size = header.header_size
        self.assembly_size = "quad" if header.chip_count == 4 else "single"
        self.raw = header.raw
        self.dynamic_range = (
            f"{layout.counter_depth}-bit" if header.raw else _DYNAMIC_RANGE.get(header.pixel_type)
        )
        self.dtype = layout.dtype.name
        geometry = header.layout
        self.detector_geometry = (
            "2x2" if geometry.endswith("2x2") else "Nx1" if geometry.endswith("Nx1") else ""
        )
        self.exposure = header.exposure_ms
        self.timestamp = header.utc_time

    def _layout(self) -> MibLayout:
        if self.layout is None:
            raise ParameterError("MIBProperties not filled from a file", parameter="mib_prop")
        return self.layout


def parse_hdr_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a Merlin ``.hdr`` acquisition header.

    Parameters
    ----------
    path
        The ``.hdr`` file.

    Returns
    -------
    dict
        ``{key: value}`` of its lines.
    """
    return read_hdr(path)


def _navigation(
    navigation_shape: Sequence[int] | None, first: int, n_load: int, frames_in_file: int
) -> tuple[int, ...]:
    """Array-order navigation shape for the frames to load (the reference's rules)."""
    if navigation_shape is None:
        return (n_load,)
    shape = check_navigation_shape(navigation_shape)
    total = int(np.prod(shape, dtype=np.int64))
    if total > frames_in_file:
        if first == 0 and len(shape) > 1:
            kept = complete_lines(shape, n_load)
            if kept[-1] == 0:
                raise ParameterError(
                    f"{shape} needs {int(np.prod(shape[:-1]))} frames for one complete line, "
                    f"only {n_load} are available",
                    parameter="navigation_shape",
                )
            if kept != shape:
                _logger.warning(
                    "Interrupted acquisition: %d of %d frames, keeping the %d complete lines",
                    frames_in_file,
                    total,
                    kept[-1],
                )
            return tuple(reversed(kept))
        return (n_load,)
    if n_load < total:
        warnings.warn(
            f"navigation_shape {shape} needs {total} frames but only {n_load} are loaded "
            "(first_frame/last_frame); loading them as a stack",
            UserWarning,
            stacklevel=3,
        )
        return (n_load,)
    return tuple(reversed(shape))


def _frame_range(
    first_frame: int | None, last_frame: int | None, frames_in_file: int, path: str | None
) -> tuple[int, int]:
    """``(first, n_load)`` of ``slice(first_frame, last_frame)``; refuses empty selections."""
    for name, value in (("first_frame", first_frame), ("last_frame", last_frame)):
        if value is not None and not hasattr(value, "__index__"):
            raise ParameterError(f"expected an int or None, got {value!r}", parameter=name)
    first, last, _ = slice(first_frame, last_frame).indices(frames_in_file)
    if frames_in_file and last <= first:
        raise ParameterError(
            f"frames {first_frame}:{last_frame} select none of the {frames_in_file} frames",
            path=path,
            parameter="first_frame" if first >= frames_in_file else "last_frame",
        )
    return first, max(last - first, 0)


def load_mib_data(
    path: PathOrBuffer,
    lazy: bool = False,
    chunks: Any = "auto",
    mmap_mode: str | None = None,
    navigation_shape: Sequence[int] | None = None,
    first_frame: int | None = None,
    last_frame: int | None = None,
    distributed: bool = False,
    mib_prop: MIBProperties | None = None,
    return_headers: bool = False,
    print_info: bool = False,
    return_mmap: bool = True,
) -> Any:
    """Load Quantum Detectors MIB file from a path or a memory buffer.

    Parameters
    ----------
    path : str or bytes
        The path to the mib file, otherwise the memory buffer of the mib file. Lazy loading is
        not supported with memory buffer.
    lazy : bool, default=False
        Whether to open the file lazily or not.
    chunks : tuple of int or None, default="auto"
        The chunks used when reading the data lazily. This argument is passed to the chunks of
        the :func:`dask.array.from_array` function. ``"auto"`` keeps frames whole.
    mmap_mode : {None, "r+", "r", "c"}, default=None
        Argument passed to :class:`numpy.memmap`. If None (default), the value is "r" when
        lazy=True, otherwise it is "c". "r+" is incompatible with lazy loading; "w+" is refused
        because it would overwrite the file.
    navigation_shape : tuple or None, default=None
        Specify the shape of the navigation space, ``(x, y)``. If None, the frames are loaded
        as a stack.
    first_frame, last_frame : int or None, default=None
        The first/last frame to load. It follows python indexing syntax, i.e. negative integer
        means reverse indexing. If None, it uses first/last index.
    distributed : bool, default=False
        Kept for compatibility: the dask arrays always carry slice descriptors and each task
        maps its own slice of the file, which suits dask-distributed.
    mib_prop : MIBProperties, default=None
        The MIBProperties instance of the file. If None, it will be parsed from the file.
    return_headers : bool, default=False
        If True, also return headers.
    print_info : bool, default=False
        If True, display information when loading the file.
    return_mmap : bool, default=True
        If True, return the numpy.memmap object (big-endian values as stored). RAW data and
        runs split over several files cannot be mapped: they are returned as decoded arrays.

    Returns
    -------
    numpy.ndarray or dask.array.Array or numpy.memmap
        The data from the mib reshaped according to the navigation_shape argument; with
        ``return_headers=True``, a tuple ``(data, headers)``.
    """
    del distributed
    if return_headers and not return_mmap:
        raise ParameterError(
            "headers can only be returned with return_mmap=True", parameter="return_headers"
        )
    mode = resolve_mmap_mode(mmap_mode, lazy)
    is_buffer = isinstance(path, (bytes, bytearray, memoryview))
    if is_buffer and lazy:
        raise ParameterError("lazy loading is not supported with a memory buffer", parameter="lazy")
    if mib_prop is None:
        mib_prop = (
            MIBProperties.from_buffer(path)  # type: ignore[arg-type]
            if is_buffer
            else MIBProperties.from_path(path)  # type: ignore[arg-type]
        )
    layout = mib_prop._layout()
    frames_in_file = mib_prop.frame_number_in_file or 0
    first, n_load = _frame_range(first_frame, last_frame, frames_in_file, mib_prop.path)
    nav = _navigation(navigation_shape, first, n_load, frames_in_file)
    count = int(np.prod(nav, dtype=np.int64))
    mib_prop.navigation_shape = nav
    mib_prop.xy = count
    if print_info:
        print(_describe(mib_prop, first, nav))
    if is_buffer:
        records = np.frombuffer(path, dtype=layout.record_dtype, count=frames_in_file)  # type: ignore[arg-type]
        records = records[first : first + count]
        check_headers(records, layout, "<memory buffer>", first * layout.record_size)
        return _shape_output(records, layout, nav, return_headers, return_mmap)
    run = mib_prop.run
    if run is None:
        raise ParameterError("MIBProperties has no file to read", parameter="mib_prop")
    if return_mmap:
        mapped = None if layout.raw else run.memmap(first, first + count, mode)
        if mapped is None:
            mapped = run.read_records(first, first + count)
        return _shape_output(mapped, layout, nav, return_headers, True)
    if not lazy:
        return as_frames(_squeeze(read_frames(run, first, nav)))
    return _lazy(FrameSource(run, first, nav), chunks)


def _shape_output(
    records: npt.NDArray[Any],
    layout: MibLayout,
    nav: tuple[int, ...],
    return_headers: bool,
    return_mmap: bool,
) -> Any:
    """Reshape records to ``nav + frame`` data (stored values, or decoded when RAW)."""
    data = layout.decode(records["data"]) if layout.raw or not return_mmap else records["data"]
    data = data.reshape(*nav, *layout.frame_shape)
    if not return_mmap:
        data = _squeeze(data)
    data = as_frames(data)
    if return_headers:
        return data, records["header"].reshape(nav)
    return data


def _squeeze(data: Any) -> Any:
    """Drop length-1 axes by reshaping, which keeps a memory map a :class:`numpy.memmap`."""
    return data.reshape(tuple(size for size in data.shape if size != 1))


def _describe(prop: MIBProperties, first: int, nav: tuple[int, ...]) -> str:
    layout = prop._layout()
    lines = [
        f"path: {prop.path or '<memory buffer>'}",
        f"frames in file: {prop.frame_number_in_file} (loading from frame {first})",
        f"navigation shape (array order): {nav}",
        f"frame shape: {layout.frame_shape}, counter depth {layout.counter_depth} bits, "
        f"{'RAW' if layout.raw else 'processed'}, {prop.assembly_size}",
        f"header size: {layout.header_size} bytes, record size: {layout.record_size} bytes",
        f"exposure: {prop.exposure} ms, first timestamp: {prop.timestamp}",
    ]
    if prop.run is not None and len(prop.run.segments) > 1:
        lines.append(f"files: {', '.join(segment.path for segment in prop.run.segments)}")
    return "\n".join(lines)


def scan_shape_of(
    prop: MIBProperties, hdr: dict[str, str] | None, navigation_shape: Sequence[int] | None
) -> ScanShape:
    """Infer the scan shape of a run from the user's shape, its ``.hdr`` and its timestamps.

    Parameters
    ----------
    prop
        Properties of the run (its file is read for timestamps if needed).
    hdr
        The parsed ``.hdr`` file, if any.
    navigation_shape
        The user's shape ``(x, y)``, if given.

    Returns
    -------
    ScanShape
        Intended shape and evidence.
    """
    frames = prop.frame_number_in_file or 0
    read = prop.run.timestamps_ns if prop.run is not None and prop.timestamp else None
    return run_scan_shape(frames, HdrScan.from_entries(hdr), navigation_shape, read)


def file_reader(
    filename: str | os.PathLike[str],
    lazy: bool = False,
    chunks: Any = "auto",
    mmap_mode: str | None = None,
    navigation_shape: Sequence[int] | None = None,
    first_frame: int | None = None,
    last_frame: int | None = None,
    distributed: bool = False,
    print_info: bool = False,
) -> list[dict[str, Any]]:
    """Read a Quantum Detectors mib file.

    If a hdr file with the same file name was saved along the mib file, it will be used to
    read the metadata. A run split over several files (``NAME1.mib``, ``NAME2.mib``, ...) is
    read whole from any of its files.

    Parameters
    ----------
    filename : str, pathlib.Path
        Filename of the file to read or corresponding pathlib.Path.
    lazy : bool, default=False
        Whether to open the file lazily or not.
    chunks : tuple of int or None, default="auto"
        The chunks used when reading the data lazily. This argument is passed to the chunks of
        the :func:`dask.array.from_array` function.
    mmap_mode : {None, "r+", "r", "c"}, default=None
        Argument passed to :class:`numpy.memmap`. If None (default), the value is "r" when
        lazy=True, otherwise it is "c".
    navigation_shape : tuple or None, default=None
        Specify the shape of the navigation space. If None, the navigation shape will be
        inferred from metadata and if not possible, the data will be loaded as a stack.
    first_frame, last_frame : int or None, default=None
        The first/last frame to load. It follows python indexing syntax, i.e. negative integer
        means reverse indexing. If None, it uses first/last index.
    distributed : bool, default=False
        Kept for compatibility; lazy arrays are always suitable for dask-distributed.
    print_info : bool
        Display information about the mib file.

    Returns
    -------
    list of dict
        One dictionary with the fields ``data``, ``axes``, ``metadata``, ``original_metadata``
        and ``mapping``. Eager processed data are a copy-on-write memory map with the stored
        (big-endian) dtype; lazy and RAW data are native-endian.

    Notes
    -----
    In case of interrupted acquisition, only the completed lines are read and the incomplete
    line are discarded. When the scanning shape is not available from the metadata, the
    timestamps are used to find the line length; the evidence used is recorded in
    ``original_metadata["scan_shape"]``.
    """
    del distributed
    prop, hdr, scan, nav_arg = _open_run(filename, navigation_shape)
    mode = resolve_mmap_mode(mmap_mode, lazy)
    if lazy or prop._layout().raw or (prop.run is not None and len(prop.run.segments) > 1):
        data = _load_oriented(prop, lazy, chunks, nav_arg, first_frame, last_frame, print_info)
    else:
        data = load_mib_data(
            filename,
            mmap_mode=mode,
            navigation_shape=nav_arg,
            first_frame=first_frame,
            last_frame=last_frame,
            mib_prop=prop,
            print_info=print_info,
        )
        data = as_frames(_squeeze(data[..., ::-1, :]))
    return [signal_dict(data, prop, hdr, scan, Path(filename).name)]


def _load_oriented(
    prop: MIBProperties,
    lazy: bool,
    chunks: Any,
    navigation_shape: Sequence[int] | None,
    first_frame: int | None,
    last_frame: int | None,
    print_info: bool,
) -> Any:
    """Return decoded (native-endian) frames, flipped as ``file_reader`` returns them."""
    first, nav = _select_frames(prop, navigation_shape, first_frame, last_frame, print_info)
    assert prop.run is not None
    if not lazy:
        return as_frames(_squeeze(read_frames(prop.run, first, nav, flip_rows=True)))
    return _lazy(FrameSource(prop.run, first, nav, flip_rows=True), chunks)


def _lazy(source: FrameSource, chunks: Any) -> Any:
    """Return the dask array of the frames, squeezed, summing whole frames from the records."""
    from stemcast.formats.mib.lazy_sums import LazyFrames

    return LazyFrames.of(lazy_frames(source, chunks).squeeze(), source.run, source.first)


def _open_run(
    filename: str | os.PathLike[str], navigation_shape: Sequence[int] | None
) -> tuple[MIBProperties, dict[str, str] | None, ScanShape, tuple[int, ...] | None]:
    """Properties, ``.hdr`` entries, scan shape, and the navigation shape to load with."""
    if navigation_shape is not None:
        check_navigation_shape(navigation_shape)
    prop = MIBProperties.from_path(filename)
    hdr_path = find_hdr(filename)
    hdr = read_hdr(hdr_path) if hdr_path is not None else None
    if hdr is None:
        _logger.warning("`hdr` file couldn't be found.")
    scan = scan_shape_of(prop, hdr, navigation_shape)
    nav_arg = scan.shape if len(scan.shape) > 1 or navigation_shape is not None else None
    frames = prop.frame_number_in_file or 0
    if navigation_shape is None and nav_arg is not None and not complete_lines(nav_arg, frames)[-1]:
        raise FormatError(
            f"the scan shape {nav_arg} (evidence: {scan.evidence.value}) needs "
            f"{int(np.prod(nav_arg[:-1]))} frames for one complete line, the run has {frames}",
            path=filename,
        )
    return prop, hdr, scan, nav_arg


def _select_frames(
    prop: MIBProperties,
    navigation_shape: Sequence[int] | None,
    first_frame: int | None,
    last_frame: int | None,
    print_info: bool,
) -> tuple[int, tuple[int, ...]]:
    """First frame and navigation shape (array order) of a selection; records them in ``prop``."""
    frames_in_file = prop.frame_number_in_file or 0
    first, n_load = _frame_range(first_frame, last_frame, frames_in_file, prop.path)
    nav = _navigation(navigation_shape, first, n_load, frames_in_file)
    prop.navigation_shape = nav
    prop.xy = int(np.prod(nav, dtype=np.int64))
    if print_info:
        print(_describe(prop, first, nav))
    return first, nav


def virtual_image(
    filename: str | os.PathLike[str],
    mask: npt.ArrayLike | None = None,
    navigation_shape: Sequence[int] | None = None,
    first_frame: int | None = None,
    last_frame: int | None = None,
) -> npt.NDArray[np.uint64]:
    """Sum every frame of a Merlin run over a virtual detector, without loading the frames.

    The result equals ``file_reader(filename, ...)[0]["data"]`` summed over its signal axes
    under ``mask`` (``(data * mask).sum(axis=(-2, -1))``), for the same navigation shape, but
    no frame is kept in memory: 1-bit RAW frames are not even unpacked (each total is a
    population count of the stored words under the mask), and the other kinds are summed block
    by block on every core.

    Parameters
    ----------
    filename : str, pathlib.Path
        Any ``.mib`` file of the run (a run split over several files is read whole).
    mask : array-like of bool, optional
        The detector: a boolean array of the frame shape, in the orientation ``file_reader``
        returns (rows flipped with respect to the file). ``None`` (default) sums every pixel.
    navigation_shape : tuple or None, default=None
        As for :func:`file_reader`: ``(x, y)``, or inferred from the metadata.
    first_frame, last_frame : int or None, default=None
        As for :func:`file_reader`: Python indexing, negative values count from the end.

    Returns
    -------
    numpy.ndarray
        ``uint64`` totals with the navigation shape of :func:`file_reader` (``(y, x)`` for a
        scan).

    Raises
    ------
    stemcast.errors.ParameterError
        If the mask does not have the frame shape or is not boolean, or the selection is
        invalid.
    stemcast.errors.FormatError
        If the file is not a valid Merlin file.
    """
    prop, _, _, nav_arg = _open_run(filename, navigation_shape)
    first, nav = _select_frames(prop, nav_arg, first_frame, last_frame, print_info=False)
    assert prop.run is not None
    totals = frame_totals(prop.run, first, int(np.prod(nav, dtype=np.int64)), mask)
    image: npt.NDArray[np.uint64] = _squeeze(totals.reshape(nav))
    return image


def signal_dict(
    data: Any, prop: MIBProperties, hdr: dict[str, str] | None, scan: ScanShape, name: str
) -> dict[str, Any]:
    """Return the signal of ``data`` with the axes and metadata :func:`file_reader` gives."""
    axes = [
        {
            "size": size,
            "index_in_array": index,
            "name": "",
            "scale": 1.0,
            "offset": 0.0,
            "units": "",
            "navigate": index < data.ndim - 2,
        }
        for index, size in enumerate(data.shape)
    ]
    general: dict[str, Any] = {"original_filename": name}
    if prop.timestamp and "T" in prop.timestamp:
        date, time = prop.timestamp.split("T", 1)
        general["date"] = date
        general["time"] = time.removesuffix("Z")
        if time.endswith("Z"):
            general["time_zone"] = "UTC"
    original: dict[str, Any] = {"mib_properties": prop.as_dict()}
    if hdr is not None:
        original["hdr_file"] = hdr
    original["scan_shape"] = {
        "shape": scan.shape,
        "evidence": scan.evidence.value,
        "detail": scan.detail,
    }
    if prop.run is not None:
        original["files"] = [segment.path for segment in prop.run.segments]
    return {
        "data": data,
        "axes": axes,
        "metadata": {
            "General": general,
            "Signal": {"signal_type": "electron_diffraction"},
            "Acquisition_instrument": {"dwell_time": (prop.exposure or 0.0) * 1e-3},
        },
        "original_metadata": original,
        "mapping": {},
    }
