"""Public API of the TVIPS reader: ``file_reader`` of the reference library, same parameters.

Deviations from the reference, all deliberate:

* ``General.date``/``time`` are the true UTC time of the first frame (the reference converts
  to the reading machine's local time and labels it UTC); milliseconds are kept.
* Version-1 files (12-byte frame headers) are read.
* ``scan_shape="auto"`` uses :func:`stemcast.shape.scan_from_rotator` and falls back to a
  stack of frames, with a warning, instead of raising or returning a wrong shape.
* Numbers in ``axes`` and ``metadata`` are Python ``int``/``float`` (equal in value to the
  reference's numpy scalars); the time axis scale is computed without the rounding error of
  subtracting two epoch times in float64.
* A truncated last record (an acquisition cut short) is skipped with a warning.
"""

from __future__ import annotations

import logging
import operator
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import ParameterError, TruncatedError
from stemcast.formats.tvips.lazy import GridSource, lazy_frames
from stemcast.formats.tvips.run import TvipsSeries
from stemcast.formats.tvips.spec import FrameHeader, frame_header_from_record
from stemcast.shape import (
    Evidence,
    ScanGrid,
    ScanShape,
    check_navigation_shape,
    scan_from_rotator,
)

_logger = logging.getLogger(__name__)

_WINDING_AXES = ("x", "y", 0, 1)
#: ``mode`` value of diffraction frames.
DIFFRACTION = 2


def _user_scan_shape(scan_shape: Any) -> tuple[int, ...] | str | None:
    """``None``, ``"auto"`` or a tuple of positive ints; anything else is a ParameterError."""
    if scan_shape is None:
        return None
    if isinstance(scan_shape, str):
        if scan_shape == "auto":
            return "auto"
        raise ParameterError(
            f"{scan_shape!r} is neither 'auto' nor a tuple of int", parameter="scan_shape"
        )
    return check_navigation_shape(scan_shape, parameter="scan_shape")


def _check_parameters(
    scan_start_frame: Any, winding_scan_axis: Any, hysteresis: Any
) -> tuple[int, int]:
    """Validate the scan parameters; return ``(scan_start_frame, hysteresis)`` as ints."""
    try:
        start = operator.index(scan_start_frame)
    except TypeError:
        raise ParameterError(
            f"expected an int, got {scan_start_frame!r}", parameter="scan_start_frame"
        ) from None
    if start < 0:
        raise ParameterError(f"{start} is negative", parameter="scan_start_frame")
    if winding_scan_axis is not None and (
        isinstance(winding_scan_axis, bool) or winding_scan_axis not in _WINDING_AXES
    ):
        raise ParameterError(
            f"Invalid winding scan axis {winding_scan_axis!r}: use 'x', 'y' or None",
            parameter="winding_scan_axis",
        )
    try:
        shift = operator.index(hysteresis)
    except TypeError:
        raise ParameterError(
            f"expected an int, got {hysteresis!r}", parameter="hysteresis"
        ) from None
    return start, shift


def wind(
    grid: npt.NDArray[np.int64], axis: str | int | None, hysteresis: int
) -> npt.NDArray[np.int64]:
    """Undo a winding ("snake") scan on a grid of frame indices.

    The even rows (``axis`` ``"x"``) or even columns (``"y"``), counting from 0, were scanned
    backwards: they are reversed, then rolled by ``hysteresis`` scan points to realign them
    with the odd ones, as the TVIPS utilities do.

    Parameters
    ----------
    grid
        Frame indices, ``(..., y, x)``.
    axis
        ``"x"``/``0``, ``"y"``/``1``, or ``None`` (no winding).
    hysteresis
        Shift of the reversed lines, in scan points (may be negative).

    Returns
    -------
    numpy.ndarray
        The corrected grid (a copy).
    """
    result = grid.copy()
    if axis in ("x", 0):
        result[..., ::2, :] = np.roll(grid[..., ::2, ::-1], hysteresis, axis=-1)
    elif axis in ("y", 1):
        result[..., :, ::2] = np.roll(grid[..., ::-1, ::2], hysteresis, axis=-2)
    return result


def _scan_grid(
    series: TvipsSeries, scan_shape: tuple[int, ...] | str | None, start: int
) -> tuple[ScanShape, npt.NDArray[np.int64]]:
    """Return the scan shape and the grid of frame indices that ``scan_shape`` asks for."""
    frames = series.frames
    if isinstance(scan_shape, tuple):
        total = int(np.prod(scan_shape, dtype=np.int64))
        if start + total > frames:
            raise ParameterError(
                f"scan shape {scan_shape} from frame {start} needs frames {start}.."
                f"{start + total - 1}, but the series has {frames} frames",
                path=series.path,
                parameter="scan_shape",
            )
        user = ScanShape(
            tuple(reversed(scan_shape)), Evidence.USER, f"scan shape {scan_shape} given by the user"
        )
        return user, np.arange(start, start + total, dtype=np.int64).reshape(scan_shape)
    if scan_shape == "auto":
        found = auto_scan(series)
        if found.frames is not None:
            return found.scan, found.frames
        warnings.warn(
            f"{series.path}: scan_shape='auto' found no scan ({found.scan.detail}); "
            "loading a stack of frames. Give scan_shape=(..., y, x) to read a scan",
            UserWarning,
            stacklevel=3,
        )
        return found.scan, np.arange(frames, dtype=np.int64)
    stack = ScanShape((frames,), Evidence.NONE, "image stack (no scan_shape given)")
    return stack, np.arange(frames, dtype=np.int64)


def auto_scan(series: TvipsSeries) -> ScanGrid:
    """``scan_shape="auto"``: the scan the rotator index of the frame headers shows."""
    headers = series.headers()
    names = headers.dtype.names or ()
    if "rotidx" not in names:
        reason = "version-1 frame headers hold no rotator index"
        return ScanGrid(ScanShape((series.frames,), Evidence.NONE, reason), None)
    found = scan_from_rotator(
        headers["rotidx"],
        counters=headers["num"],
        scan_x=headers["scan_x"] if "scan_x" in names else None,
        scan_y=headers["scan_y"] if "scan_y" in names else None,
    )
    if found.frames is not None:
        _logger.info("%s: scan shape %s: %s", series.path, found.scan.shape, found.scan.detail)
    return found


def _time_axis(series: TvipsSeries, size: int) -> dict[str, Any]:
    headers = series.headers(0, min(2, series.frames))
    milliseconds = headers["timestamp"].astype(np.int64) * 1000 + headers["ms"]
    scale = float(milliseconds[1] - milliseconds[0]) / 1000 if len(headers) > 1 else 1.0
    return {
        "size": size,
        "index_in_array": 0,
        "name": "time",
        "scale": scale,
        "offset": float(milliseconds[0]) / 1000,
        "units": "s",
        "navigate": True,
    }


def signal_axes(
    series: TvipsSeries, grid: npt.NDArray[np.int64], stack: bool, first: FrameHeader
) -> list[dict[str, Any]]:
    """Return the axes of a signal of ``grid`` positions, as :func:`file_reader` gives them."""
    main = series.main_header
    units = "1/nm" if first.mode == DIFFRACTION else "nm"
    nav = grid.ndim
    axes: list[dict[str, Any]]
    if stack:
        axes = [_time_axis(series, grid.shape[0])]
    else:
        names = ["y", "x"][-nav:]
        names = [""] * (nav - len(names)) + names
        axes = [
            {
                "size": int(size),
                "index_in_array": index,
                "name": name,
                "scale": 1.0,
                "offset": 0.0,
                "units": "nm" if name else "",
                "navigate": True,
            }
            for index, (name, size) in enumerate(zip(names, grid.shape, strict=True))
        ]
    for index, (name, size, offset) in enumerate(
        (("dy", main.dimy, main.offsety), ("dx", main.dimx, main.offsetx)), start=nav
    ):
        axes.append(
            {
                "size": size,
                "index_in_array": index,
                "name": name,
                "scale": float(main.pixelsize),
                "offset": float(offset),
                "units": units,
                "navigate": False,
            }
        )
    return axes


def signal_metadata(series: TvipsSeries, first: FrameHeader) -> dict[str, Any]:
    """Return the metadata of the series, as :func:`file_reader` gives it."""
    main = series.main_header
    moment = first.utc
    time = moment.strftime("%H:%M:%S") + (f".{first.ms:03d}" if first.ms else "")
    tem: dict[str, Any] = {"magnification": main.magtotal, "beam_energy": main.ht}
    if first.mode is not None:
        tem.update(
            beam_current=first.fcurrent,
            defocus=first.objective,
            Stage={
                "tilt_alpha": first.stagea,
                "tilt_beta": first.stageb,
                "x": first.stagex,
                "y": first.stagey,
                "z": first.stagez,
            },
        )
    metadata: dict[str, Any] = {
        "General": {
            "original_filename": Path(series.path).name,
            "date": moment.date().isoformat(),
            "time": time,
            "time_zone": "UTC",
        },
        "Acquisition_instrument": {"TEM": tem},
    }
    if first.mode == DIFFRACTION:
        metadata["Signal"] = {"signal_type": "diffraction"}
    return metadata


def file_reader(
    filename: str | os.PathLike[str],
    lazy: bool = False,
    scan_shape: str | Sequence[int] | None = None,
    scan_start_frame: int = 0,
    winding_scan_axis: str | int | None = None,
    hysteresis: int = 0,
    rechunking: bool | str | dict[int, Any] = "auto",
) -> list[dict[str, Any]]:
    """Read TVIPS stream file for in-situ and 4D STEM data.

    Parameters
    ----------
    filename : str, pathlib.Path
        Filename of the file to read or corresponding pathlib.Path. ``NAME.tvips`` reads
        ``NAME_000.tvips`` and the parts that follow it.
    lazy : bool, default=False
        Whether to open the file lazily or not. Lazy chunks map the files read-only on the
        worker that computes them.
    scan_shape : str or tuple of int or None, optional
        By default the data is loaded as an image stack (1 navigation axis). A tuple of
        integers can be provided to indicate the shape of the navigation axes. For example,
        ``(3, 4)`` will have 3 scan points in the y direction and 4 in the x direction. If it
        concerns a 4D-STEM dataset, the (..., ``scan_y``, ``scan_x``) dimension can be
        provided. ``"auto"`` can also be selected, in which case the ``rotidx`` information in
        the frame headers will be used to try to reconstruct the scan (see
        :func:`stemcast.shape.scan_from_rotator`); when that fails the data is loaded as an
        image stack with a warning. Additional navigation axes must be prepended.
    scan_start_frame : int, optional
        Index of the first frame of the dataset to consider. Mainly relevant for 4D-STEM
        datasets. If ``scan_shape = "auto"`` this is ignored.
    winding_scan_axis : str, optional
        If the acquisition software collected data without beam flyback but with a winding
        "snake" scan, then every second scan row or column needs to be reversed to make sense
        of the data. This can be indicated with values ``"x"`` or ``"y"``, depending on
        whether winding happened along the primary or secondary axis. By default, flyback scan
        without winding is assumed with ``x`` the fast scan and ``y`` the slow scan direction.
    hysteresis : int, optional
        Only applicable if ``winding_scan_axis`` is not ``None``, as it is likely there is an
        overshoot of a few pixels (2-5) every second scan row. This parameter allows shifts
        every second row by the indicated number of scan points to align even and odd scan
        rows. Default is 0, no hysteresis.
    rechunking : bool, str, dict, default="auto"
        Only relevant when using lazy loading. If set to False each tvips file is a single
        chunk. For a better experience, with the default setting of ``"auto"`` rechunking is
        performed such that the navigation axes are optimally chunked and the signal axes are
        not chunked. If set to anything else, e.g. a dictionary, the value will be passed to
        the chunks argument in :meth:`dask.array.Array.rechunk`.

    Returns
    -------
    list of dict
        One dictionary with the fields ``data`` (numpy or dask array, native byte order),
        ``axes``, ``metadata``, ``original_metadata`` (``tvips_header``: the main header;
        ``scan_shape``: the shape and its evidence; ``files``: the parts read) and
        ``mapping``.

    Notes
    -----
    ``metadata["General"]["date"]`` and ``["time"]`` are the UTC time of the first frame
    (``time_zone`` is ``"UTC"``), whatever the time zone of the reading machine. A last
    record cut short (an acquisition that stopped mid-frame) is skipped with a warning.
    """
    shape_arg = _user_scan_shape(scan_shape)
    start, shift = _check_parameters(scan_start_frame, winding_scan_axis, hysteresis)
    series = TvipsSeries.open(filename)
    if series.partial_bytes:
        warnings.warn(
            f"{series.last_path}: the last {series.partial_bytes} bytes are an incomplete "
            f"frame record (acquisition cut short); reading the {series.frames} complete frames",
            UserWarning,
            stacklevel=2,
        )
    if series.frames == 0:
        raise TruncatedError("the series holds no complete frame record", path=series.path)
    first = frame_header_from_record(series.headers(0, 1)[0])
    scan, grid = _scan_grid(series, shape_arg, start)
    stack = scan.evidence is Evidence.NONE
    if winding_scan_axis is not None:
        if grid.ndim < 2 or stack:
            warnings.warn(
                "winding_scan_axis needs a scan of 2 or more dimensions; ignored",
                UserWarning,
                stacklevel=2,
            )
        else:
            grid = wind(grid, winding_scan_axis, shift)
    source = GridSource(series, grid)
    data = lazy_frames(source, rechunking) if lazy else source.read()
    original = {
        "tvips_header": series.main_header.as_dict(),
        "scan_shape": {
            "shape": scan.shape,
            "evidence": scan.evidence.value,
            "detail": scan.detail,
        },
        "files": [part.path for part in series.parts],
    }
    return [
        {
            "data": data,
            "axes": signal_axes(series, grid, stack, first),
            "metadata": signal_metadata(series, first),
            "original_metadata": original,
            "mapping": {},
        }
    ]
