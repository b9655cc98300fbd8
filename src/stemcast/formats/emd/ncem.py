"""NCEM (Berkeley) EMD files: legacy EMD 0.2, prismatic outputs, emdfile/py4DSTEM, DE5.

An *EMD data group* is an HDF5 group with a truthy ``emd_group_type`` attribute holding one
N-D dataset and one ``dim`` dataset per axis (``dim1 ... dimN`` in legacy files, ``dim0 ...``
in emdfile 1.0). Legacy arrays are returned transposed (HDF5 axis ``k`` is ``dim{k+1}`` and
becomes the returned axis ``N-1-k``), as HyperSpy always did; emdfile arrays and prismatic
``datacube`` datasets are returned as stored.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from stemcast.errors import FormatError, ParameterError
from stemcast.formats.emd.hdf5 import Hdf5Source, decode_text, members
from stemcast.formats.emd.units import normalise_ncem_units

__all__ = ["is_ncem", "read_ncem"]

_logger = logging.getLogger(__name__)

#: Base names of the datasets that hold data (``dim*`` never matches).
_DATA_NAMES = (
    "data",
    "counted_datacube",
    "datacube",
    "diffractionslice",
    "realslice",
    "pointlistarray",
    "pointlist",
)
#: Root groups of EMD 0.2 whose attributes are the metadata.
_METADATA_GROUPS = ("microscope", "sample", "user", "comments")
_PRISMATIC_ROOT = "4DSTEM_simulation"
_PRISMATIC_PARAMETERS = "4DSTEM_simulation/metadata/metadata_0/original/simulation_parameters"
#: prismatic's short parameter keys -> their names.
_PRISMATIC_KEYS = {
    "i": "filenameAtoms",
    "a": "algorithm",
    "fx": "interpolationFactorX",
    "fy": "interpolationFactorY",
    "F": "numFP",
    "ns": "numSlices",
    "te": "includeThermalEffects",
    "oc": "includeOccupancy",
    "3D": "save3DOutput",
    # The reference maps "4D" to the same name as "3D"; kept so results agree.
    "4D": "save3DOutput",
    "DPC": "saveDPC_CoM",
    "ps": "savePotentialSlices",
    "nqs": "nyquistSampling",
    "px": "realspacePixelSizeX",
    "py": "realspacePixelSizeY",
    "P": "potBound",
    "s": "sliceThickness",
    "zs": "zStart",
    "E": "E0",
    "A": "alphaBeamMax",
    "rx": "probeStepX",
    "ry": "probeStepY",
    "df": "probeDefocus",
    "sa": "probeSemiangle",
    "d": "detectorAngleStep",
    "tx": "probeXtilt",
    "ty": "probeYtilt",
    "c": "cellDimension",
    "t": "tile",
    "wx": "scanWindowX",
    "wy": "scanWindowY",
    "wxr": "scanWindowX_r",
    "wyr": "scanWindowY_r",
    "2D": "integrationAngle",
}


def _truthy(value: Any) -> bool:
    if isinstance(value, (bytes, str, np.bytes_, np.str_)):
        return len(value) > 0
    array = np.asarray(value)
    return array.size == 1 and bool(array.reshape(()))


def _has_version(node: h5py.Group) -> bool:
    return "version_major" in node.attrs and "version_minor" in node.attrs


def is_ncem(file: h5py.File) -> bool:
    """Whether ``file`` carries NCEM version attributes (on the root or a top-level group)."""
    return _has_version(file) or any(
        isinstance(node, h5py.Group) and _has_version(node) for _, node in members(file)
    )


def _version(source: Hdf5Source) -> str | None:
    if not _has_version(source.file):
        return None
    major = decode_text(source.attribute(source.file, "version_major"))
    return f"{major}.{decode_text(source.attribute(source.file, 'version_minor'))}"


@dataclass(frozen=True, slots=True)
class _Stack:
    """Datasets read as one signal: one dataset, or the depth slices of a prismatic output."""

    title: str
    members: tuple[str, ...]
    stacked: bool


def _discover(source: Hdf5Source) -> list[str]:
    file = source.file
    found: list[str] = []

    def visit(name: str | bytes, node: Any) -> None:
        # h5py gives a path that is not UTF-8 text as bytes: no data path the reader knows.
        if not isinstance(node, h5py.Dataset) or not isinstance(name, str):
            return
        if not posixpath.basename(name).startswith(_DATA_NAMES):
            return
        parent = file[posixpath.dirname(name) or "/"]
        if "emd_group_type" in parent.attrs and _truthy(source.attribute(parent, "emd_group_type")):
            found.append(name)

    file.visititems(visit)
    return found


def _stacks(paths: list[str], stack_group: bool, prismatic: bool) -> list[_Stack]:
    """Group the dataset paths into signals.

    With ``stack_group``, every path containing the group of an earlier path joins it (for
    prismatic outputs the group name without its 4-digit depth index), as the reference does.
    """
    if not stack_group:
        return [_Stack(posixpath.basename(posixpath.dirname(p)), (p,), False) for p in paths]
    remaining = list(paths)
    stacks = []
    while remaining:
        path = remaining.pop(0)
        base = posixpath.dirname(path)
        if prismatic and "ppotential" not in path:
            base = base[:-4]
        members = [path] + [other for other in remaining if base in other]
        remaining = [other for other in remaining if other not in members]
        stacks.append(_Stack(posixpath.basename(base), tuple(members), True))
    return stacks


def _read_array(source: Hdf5Source, dataset: h5py.Dataset, lazy: bool) -> Any:
    if h5py.check_string_dtype(dataset.dtype) is not None:
        data = source.text(dataset)
        if lazy:
            import dask.array as da

            return da.from_array(data, chunks=-1)  # type: ignore[no-untyped-call, unused-ignore]
        return data
    if lazy:
        return source.lazy(dataset)
    return source.values(dataset)


def _dim_axis(source: Hdf5Source, dim_path: str, size: int) -> dict[str, Any]:
    file = source.file
    axis: dict[str, Any] = {"name": None, "units": None, "size": size, "offset": 0.0, "scale": 1.0}
    if dim_path not in file or not isinstance(file[dim_path], h5py.Dataset):
        return axis
    dim = file[dim_path]
    if "name" in dim.attrs:
        axis["name"] = decode_text(source.attribute(dim, "name"))
    if "units" in dim.attrs:
        axis["units"] = normalise_ncem_units(decode_text(source.attribute(dim, "units")))
    if dim.dtype.kind in "iuf" and dim.ndim >= 1 and dim.size >= 1:
        # In the stored precision (float32 for prismatic), as the reference computes it.
        values = np.asarray(source.values(dim)).ravel()
        axis["offset"] = float(values[0])
        if values.size >= 2:
            axis["scale"] = float(np.mean(np.diff(values)))
    return axis


def _simulation_parameters(source: Hdf5Source) -> dict[str, Any]:
    if _PRISMATIC_PARAMETERS not in source.file:
        return {}
    return {
        _PRISMATIC_KEYS.get(key, key): value
        for key, value in source.attributes(source.file[_PRISMATIC_PARAMETERS]).items()
    }


def _depth_axis(stack: _Stack, parameters: dict[str, Any]) -> dict[str, Any]:
    """Build the stack axis, calibrated from the simulation parameters for depth outputs."""
    axis: dict[str, Any] = {
        "index_in_array": 0,
        "name": stack.title,
        "offset": 0.0,
        "scale": 1.0,
        "size": len(stack.members),
        "units": None,
        "navigate": True,
    }
    if "depth" not in stack.title:
        return axis
    try:
        scale = float(parameters["numSlices"]) * float(parameters["sliceThickness"])
        start = float(parameters["zStart"])
        thickness = float(parameters["tile"][2]) * float(parameters["cellDimension"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return axis
    if not math.isclose(thickness, len(stack.members) * scale, rel_tol=1e-4):
        _logger.warning(
            "Depth axis is non-uniform and its offset and scale can't be set accurately."
        )
        return axis
    axis.update(offset=start if start != 0 else scale, scale=scale, units="Å")
    return axis


def _original_metadata(source: Hdf5Source, first: str, prismatic: bool) -> dict[str, Any]:
    file = source.file
    metadata: dict[str, Any] = {"EMD_version": _version(source)}
    for name in _METADATA_GROUPS:
        if name in file and isinstance(file[name], h5py.Group):
            metadata[name] = source.attributes(file[name])
    if prismatic:
        metadata["simulation_parameters"] = _simulation_parameters(source)
    calibration = f"{first.strip('/').split('/')[0]}/metadatabundle/calibration"
    if calibration in file and isinstance(file[calibration], h5py.Group):
        metadata["calibration"] = {
            key: source.values(node)
            for key, node in members(file[calibration])
            if isinstance(node, h5py.Dataset)
        }
    return metadata


def _read_stack(
    source: Hdf5Source, stack: _Stack, *, lazy: bool, prismatic: bool
) -> dict[str, Any]:
    file = source.file
    first = stack.members[0]
    group = posixpath.dirname(first)
    zero_based = posixpath.join(group, "dim0") in file
    transpose = posixpath.basename(first) != "datacube" and not zero_based
    arrays = []
    for member in stack.members:
        array = _read_array(source, file[member], lazy)
        arrays.append(array.T if transpose else array)
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        raise FormatError(
            f"datasets {list(stack.members)} are stacked as one signal but have different "
            f"shapes {sorted(shapes)}; read them with stack_group=False",
            path=source.path,
        )
    member_ndim = arrays[0].ndim
    dims = [i + (0 if zero_based else 1) for i in range(member_ndim)]
    if transpose:
        dims.reverse()
    signal_dims = set()
    if prismatic:
        signal_dims = {3, 4} if posixpath.basename(first) == "datacube" else {1, 2}
    axes = []
    lead = 1 if len(stack.members) > 1 else 0
    for index, dim in enumerate(dims):
        axis = _dim_axis(source, posixpath.join(group, f"dim{dim}"), arrays[0].shape[index])
        axes.append(
            {
                "index_in_array": index + lead,
                **axis,
                "navigate": prismatic and dim not in signal_dims,
            }
        )
    parameters = _simulation_parameters(source) if prismatic else {}
    if lead:
        if lazy:
            import dask.array as da

            data = da.stack(arrays, axis=0)  # type: ignore[no-untyped-call, unused-ignore]
        else:
            data = np.stack(arrays, axis=0)
        axes.insert(0, _depth_axis(stack, parameters))
    else:
        data = arrays[0]
    title = stack.title if stack.stacked else posixpath.basename(group)
    return {
        "data": data,
        "axes": axes,
        "metadata": {
            "General": {
                "title": title.replace("_depth", ""),
                "original_filename": os.path.basename(source.path),
            },
            "Signal": {"signal_type": "electron_diffraction" if "CBED" in group else ""},
        },
        "original_metadata": _original_metadata(source, first, prismatic),
    }


def read_ncem(
    source: Hdf5Source,
    *,
    lazy: bool,
    dataset_path: str | Sequence[str] | None,
    stack_group: bool | None,
) -> list[dict[str, Any]]:
    """Read the signals of an NCEM EMD file (see :func:`stemcast.readers.emd.file_reader`).

    Parameters
    ----------
    source
        The open file.
    lazy
        Return dask arrays that read the file block by block.
    dataset_path
        ``None`` (every data dataset), one path or a list of paths.
    stack_group
        Stack the datasets of groups with a common path (prismatic depth slices).

    Returns
    -------
    list of dict
        One signal dictionary per dataset or stack.
    """
    file = source.file
    prismatic = _PRISMATIC_ROOT in file
    if dataset_path is None:
        paths = _discover(source)
        stack = True if stack_group is None else bool(stack_group)
    elif isinstance(dataset_path, (str, os.PathLike)):
        paths = [os.fspath(dataset_path)]
        stack = bool(stack_group)
    else:
        paths = [os.fspath(name) for name in dataset_path]
        if stack_group:
            _logger.warning("stack_group=True is ignored when dataset_path is a list.")
        stack = False
    for name in paths:
        if name not in file or not isinstance(file[name], h5py.Dataset):
            raise ParameterError(
                f"no dataset {name!r} in the file", path=source.path, parameter="dataset_path"
            )
    return [
        _read_stack(source, group, lazy=lazy, prismatic=prismatic)
        for group in _stacks(paths, stack, prismatic)
    ]
