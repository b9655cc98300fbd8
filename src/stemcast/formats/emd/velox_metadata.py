"""Velox metadata: JSON groups, acquisition date, image titles and the HyperSpy mapping.

Every signal's ``original_metadata`` is its own ``Metadata`` JSON (first frame) updated with
the file's ``Displays``, ``Operations``, ``SharedProperties`` and ``Features`` groups. The
``mapping`` returned with each signal tells HyperSpy how to fill ``metadata`` from it (beam
energy, camera length, magnification, stage, EDS detector); :func:`apply_mapping` applies it
for callers that do not use HyperSpy.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import h5py

from stemcast.errors import FormatError
from stemcast.formats.emd.hdf5 import Hdf5Source, members

__all__ = [
    "apply_mapping",
    "detector_entry",
    "display_labels",
    "general_metadata",
    "image_title",
    "metadata_groups",
    "velox_mapping",
]

_logger = logging.getLogger(__name__)

_GROUPS = ("Displays", "Operations", "SharedProperties", "Features")
_ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga "
    "Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd "
    "Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac "
    "Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
)
#: Chemical symbols by atomic number (index 0 unused).
_SYMBOLS = ("", *_ELEMENTS.split(" "))

Mapping_ = dict[str, tuple[str, Callable[[Any], Any] | None]]


def metadata_groups(source: Hdf5Source) -> dict[str, Any]:
    """Read the file-level JSON groups, ``{group: {name: JSON or {uuid: JSON}}}``."""
    file = source.file
    groups: dict[str, Any] = {}
    for name in _GROUPS:
        if name not in file or not isinstance(file[name], h5py.Group):
            continue
        content: dict[str, Any] = {}
        for key, node in members(file[name]):
            try:
                if isinstance(node, h5py.Dataset):
                    content[key] = source.json(node)
                elif isinstance(node, h5py.Group):
                    content[key] = {
                        uuid: source.json(item)
                        for uuid, item in members(node)
                        if isinstance(item, h5py.Dataset)
                    }
            except (FormatError, IndexError) as error:
                _logger.warning("Some metadata can't be read (%s/%s: %s).", name, key, error)
        groups[name] = content
    return groups


def acquisition_time(metadata: Mapping[str, Any]) -> datetime | None:
    """Start of the acquisition in the local time zone, if the metadata records it."""
    try:
        stamp = float(metadata["Acquisition"]["AcquisitionStartDatetime"]["DateTime"])
    except (KeyError, TypeError, ValueError):
        try:
            custom = metadata["CustomProperties"]["Detectors[BM-Ceta].TimeStamp"]
            stamp = float(custom["value"]) / 1e6
        except (KeyError, TypeError, ValueError):
            return None
    return datetime.fromtimestamp(stamp, tz=UTC).astimezone()


def general_metadata(
    filename: str | os.PathLike[str], title: str, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """``metadata["General"]``: file name, title and the local date and time of acquisition."""
    general: dict[str, Any] = {"original_filename": os.path.basename(filename), "title": title}
    when = acquisition_time(metadata)
    if when is not None:
        general["date"] = when.date().isoformat()
        general["time"] = when.time().isoformat()
        general["time_zone"] = when.tzname()
    return general


def detector_entry(metadata: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """Return the ``Detectors`` entry whose ``DetectorName`` is ``name``."""
    for entry in (metadata.get("Detectors") or {}).values():
        if isinstance(entry, dict) and entry.get("DetectorName") == name:
            return entry
    return None


def _ends_with(path: Any, uuid: str) -> bool:
    return isinstance(path, str) and bool(path) and path.endswith(uuid)


def _operation_title(kind: str, operation: Mapping[str, Any], uuid: str) -> str | None:
    data_path = operation.get("dataPath")
    if kind == "CameraInputOperation" and _ends_with(data_path, uuid):
        return str(operation.get("cameraName"))
    if kind == "StemInputOperation" and _ends_with(data_path, uuid):
        return str(operation.get("detector"))
    if kind == "SurfaceReconstructionOperation":
        name = "iDPC" if operation.get("integrationMode") == "true" else "dDPC"
        if _ends_with(operation.get("unfilteredDataPath"), uuid):
            return name
        if _ends_with(data_path, uuid):
            return ("Filtered " if operation.get("enableFilter") == "true" else "") + name
    if kind == "MathematicsOperation" and _ends_with(data_path, uuid):
        index = ((operation.get("outputs") or [{}])[0] or {}).get("inputIndex")
        return {"0": "A-C", "1": "B-D"}.get(str(index))
    if kind == "DpcOperation" and _ends_with(data_path, uuid):
        return "DPC"
    if kind == "IntegrationOperation" and _ends_with(data_path, uuid):
        return "DCFI"
    if kind == "FftOperation" and _ends_with(operation.get("imageOutputPath"), uuid):
        return "Half FFT"
    return None


def image_title(
    version: int, uuid: str, metadata: Mapping[str, Any], groups: Mapping[str, Any]
) -> str:
    """Title of an image: from the operation that made it (Velox < 11) or its detector.

    Parameters
    ----------
    version
        The Velox file version.
    uuid
        The image's group name under ``Data/Image``.
    metadata
        The image's ``Metadata`` JSON.
    groups
        The file-level groups (:func:`metadata_groups`).

    Returns
    -------
    str
        The title.
    """
    if version < 11:
        for kind, operations in (groups.get("Operations") or {}).items():
            if not isinstance(operations, dict):
                continue
            for operation in operations.values():
                if isinstance(operation, dict):
                    title = _operation_title(kind, operation, uuid)
                    if title is not None:
                        return title
        return "Unrecognized_image_signal"
    index = (metadata.get("BinaryResult") or {}).get("DetectorIndex")
    entry = (metadata.get("Detectors") or {}).get(f"Detector-{index}") or {}
    return str(entry.get("DetectorName", "Unrecognized_image_signal"))


def display_labels(source: Hdf5Source, groups: Mapping[str, Any]) -> dict[str, str]:
    """Display label of each image (``{image uuid: label}``), used to title SI images.

    Velox < 11 keeps the label with the image's data path in
    ``/Presentation/Displays/ImageDisplay``; Velox 11 and later link ``/Displays/ImageDisplay``
    entries to the image through ``SharedProperties/ImageSeriesDataReference``.
    """
    labels: dict[str, str] = {}
    displays = source.file.get("Presentation/Displays/ImageDisplay")
    if isinstance(displays, h5py.Group):
        for _, node in members(displays):
            if not isinstance(node, h5py.Dataset):
                continue
            display = source.json_object(node)
            label = (display.get("display") or {}).get("label")
            if label is not None and display.get("dataPath"):
                labels[posixpath.basename(display["dataPath"])] = unquote(str(label))
    references = (groups.get("SharedProperties") or {}).get("ImageSeriesDataReference") or {}
    for display in ((groups.get("Displays") or {}).get("ImageDisplay") or {}).values():
        if not isinstance(display, dict) or "data" not in display:
            continue
        reference = references.get(posixpath.basename(str(display["data"]))) or {}
        if reference.get("dataPath") and "id" in display:
            labels[posixpath.basename(reference["dataPath"])] = str(display["id"])
    return labels


def _local_zone(stamp: Any) -> str | None:
    """Name of the local time zone at the acquisition time (Unix seconds)."""
    return datetime.fromtimestamp(float(stamp), tz=UTC).astimezone().tzname()


def _kilo(value: Any) -> float:
    return float(value) / 1e3


def _milli(value: Any) -> float:
    return float(value) * 1e3


def _degrees_3(value: Any) -> float:
    return round(math.degrees(float(value)), 3)


def _round_3(value: Any) -> float:
    return round(float(value), 3)


def _round_6(value: Any) -> float:
    return round(float(value), 6)


def _degrees_text(value: Any) -> str:
    return f"{math.degrees(float(value)):.3f}"


def _seconds_text(value: Any) -> str:
    return f"{float(value):.6f}"


def element_symbols(settings: Any) -> list[str]:
    """Chemical symbols of the elements selected in the EDS quantification settings.

    Parameters
    ----------
    settings
        ``{uuid: settings}`` of ``EDSSpectrumQuantificationSettings`` (Velox 11 and later) or
        ``ImageQuantificationOperation`` (earlier), each with an ``elementSelection`` list of
        atomic numbers (absent when none is selected).

    Returns
    -------
    list of str
        The symbols, in selection order.
    """
    symbols: list[str] = []
    if not isinstance(settings, dict):
        return symbols
    for entry in settings.values():
        if not isinstance(entry, dict):
            continue
        for number in entry.get("elementSelection") or []:
            index = int(number)
            if 0 < index < len(_SYMBOLS) and _SYMBOLS[index] not in symbols:
                symbols.append(_SYMBOLS[index])
    return symbols


def velox_mapping(version: int, *, spectrum: bool, individual_detector: bool) -> Mapping_:
    """Build the HyperSpy mapping ``{original_metadata path: (metadata path, conversion)}``.

    Parameters
    ----------
    version
        Velox file version (where the element selection is kept).
    spectrum
        Map the element selection and EDS detector (single spectra and spectrum images).
    individual_detector
        Also map the angles and times of the EDS detector of a per-detector signal.

    Returns
    -------
    dict
        The mapping.
    """
    tem = "Acquisition_instrument.TEM"
    mapping: Mapping_ = {
        "Acquisition.AcquisitionStartDatetime.DateTime": ("General.time_zone", _local_zone),
        "Optics.AccelerationVoltage": (f"{tem}.beam_energy", _kilo),
        "Optics.CameraLength": (f"{tem}.camera_length", _milli),
        "CustomProperties.StemMagnification.value": (f"{tem}.magnification", float),
        "Instrument.InstrumentClass": (f"{tem}.microscope", None),
        "Stage.AlphaTilt": (f"{tem}.Stage.tilt_alpha", _degrees_3),
        "Stage.BetaTilt": (f"{tem}.Stage.tilt_beta", _degrees_3),
        "Stage.Position.x": (f"{tem}.Stage.x", _round_6),
        "Stage.Position.y": (f"{tem}.Stage.y", _round_6),
        "Stage.Position.z": (f"{tem}.Stage.z", _round_6),
        "ImportedDataParameter.Number_of_frames": (f"{tem}.Detector.EDS.number_of_frames", None),
        "DetectorMetadata.ElevationAngle": (f"{tem}.Detector.EDS.elevation_angle", _round_3),
        "DetectorMetadata.Gain": (
            "Signal.Noise_properties.Variance_linear_model.gain_factor",
            float,
        ),
        "DetectorMetadata.Offset": (
            "Signal.Noise_properties.Variance_linear_model.gain_offset",
            float,
        ),
    }
    if individual_detector:
        mapping.update(
            {
                "DetectorMetadata.AzimuthAngle": (
                    f"{tem}.Detector.EDS.azimuth_angle",
                    _degrees_text,
                ),
                "DetectorMetadata.LiveTime": (f"{tem}.Detector.EDS.live_time", _seconds_text),
                "DetectorMetadata.RealTime": (f"{tem}.Detector.EDS.real_time", _seconds_text),
            }
        )
    if spectrum:
        source = (
            "SharedProperties.EDSSpectrumQuantificationSettings"
            if version >= 11
            else "Operations.ImageQuantificationOperation"
        )
        mapping[source] = ("Sample.elements", element_symbols)
    return mapping


def apply_mapping(mapping: Mapping_, original: Mapping[str, Any], metadata: dict[str, Any]) -> None:
    """Fill ``metadata`` from ``original`` as HyperSpy does with a reader's mapping.

    Parameters
    ----------
    mapping
        ``{original path: (metadata path, conversion or None)}``, dotted paths.
    original
        The ``original_metadata`` tree.
    metadata
        The ``metadata`` tree, updated in place.
    """
    for source, (target, convert) in mapping.items():
        value: Any = original
        for key in source.split("."):
            if not isinstance(value, Mapping) or key not in value:
                break
            value = value[key]
        else:
            try:
                value = convert(value) if convert is not None else value
            except (TypeError, ValueError):
                _logger.warning("Metadata %s = %r can't be converted.", source, value)
                continue
            node = metadata
            *parents, leaf = target.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
