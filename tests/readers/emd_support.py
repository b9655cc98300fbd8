"""Synthetic EMD files built from ../shared/specs/emd.md, and comparison with the reference.

* :func:`encode_spectrum_stream` writes a Velox EDS spectrum stream from a known count cube:
  pixel by pixel in raster order, frame after frame, one ``uint16`` channel value per
  detected X-ray (in any order within the pixel), ``0xFFFF`` after every pixel.
* :func:`write_velox` writes a Velox 11 file: a HAADF image, per-detector spectrum streams
  with ``FrameLocationTable``, a single spectrum and the JSON metadata that gives titles,
  calibrations and the element list.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

GATE = 0xFFFF
#: The reference reads Velox spectrum streams only with the optional ``sparse`` package.
needs_sparse = pytest.mark.skipif(
    importlib.util.find_spec("sparse") is None,
    reason="the reference reads Velox spectrum images with the optional 'sparse' package",
)
UNIX_TIME = 1709189884  # 2024-02-29 06:58:04 UTC


def encode_spectrum_stream(
    cube: np.ndarray,
    *,
    seed: int = 0,
    omit_final_marker: bool = False,
) -> np.ndarray:
    """Encode counts ``cube[frame, y, x, channel]`` as a Velox spectrum stream."""
    channels = cube.shape[-1]
    counts = cube.reshape(-1, channels).astype(np.int64)
    per_pixel = counts.sum(axis=1)
    events = np.repeat(np.tile(np.arange(channels, dtype=np.uint16), len(counts)), counts.ravel())
    pixel_of_event = np.repeat(np.arange(len(counts)), per_pixel)
    # Shuffle the events inside each pixel: the order within a pixel is arbitrary.
    order = np.lexsort((np.random.default_rng(seed).random(events.size), pixel_of_event))
    events = events[order]
    stream = np.empty(events.size + len(counts), dtype=np.uint16)
    gates = np.cumsum(per_pixel) + np.arange(len(counts))
    is_gate = np.zeros(stream.size, dtype=bool)
    is_gate[gates] = True
    stream[is_gate] = GATE
    stream[~is_gate] = events
    return stream[:-1] if omit_final_marker else stream


def frame_starts(stream: np.ndarray, pixels: int) -> np.ndarray:
    """Index in ``stream`` where each frame starts (the ``FrameLocationTable``)."""
    gates = np.flatnonzero(stream == GATE)
    frames = -(-(gates.size) // pixels)
    return np.array([0, *(gates[pixels * k - 1] + 1 for k in range(1, frames))], dtype=np.uint64)


def json_text(group: h5py.Group, name: str, value: Any) -> None:
    group.create_dataset(
        name,
        data=np.array([json.dumps(value).encode()], dtype=object),
        dtype=h5py.string_dtype("ascii"),
    )


def metadata_columns(group: h5py.Group, documents: list[dict[str, Any]]) -> None:
    """A Velox ``Metadata`` dataset: one NUL-padded JSON document per column."""
    table = np.zeros((60000, len(documents)), dtype=np.uint8)
    for column, document in enumerate(documents):
        raw = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
        table[: raw.size, column] = raw
    group.create_dataset("Metadata", data=table)


@dataclass
class Detector:
    """An EDS detector of the synthetic file."""

    name: str
    cube: np.ndarray  # (frames, ny, nx, channels) counts
    azimuth: float = 0.7853981633974483
    omit_final_marker: bool = False


@dataclass
class VeloxFile:
    """What :func:`write_velox` wrote, for the expected values of the tests."""

    path: Path
    haadf: np.ndarray  # (frames, ny, nx)
    spectrum: np.ndarray  # (channels,)
    detectors: list[Detector] = field(default_factory=list)


def microscope_metadata(
    detector: str,
    index: int,
    *,
    pixel_size: float,
    frame_time: float,
    scan: tuple[int, int],
    detectors: list[Detector],
) -> dict[str, Any]:
    """A Velox ``Metadata`` document (strings everywhere, as Velox writes them)."""
    entries: dict[str, Any] = {
        "Detector-0": {
            "DetectorName": "HAADF",
            "DetectorType": "ScanningDetector",
            "Gain": "38.19",
            "Offset": "-1.752",
        }
    }
    for number, eds in enumerate(detectors, start=1):
        entries[f"Detector-{number}"] = {
            "DetectorName": eds.name,
            "DetectorType": "AnalyticalDetector",
            "Dispersion": "10",
            "OffsetEnergy": "-250",
            "ElevationAngle": "0.31415927",
            "AzimuthAngle": str(eds.azimuth),
            "LiveTime": "0.49210381111044865",
            "RealTime": "0.51199649999999997",
        }
    ny, nx = scan
    return {
        "Acquisition": {"AcquisitionStartDatetime": {"DateTime": str(UNIX_TIME)}},
        "BinaryResult": {
            "Detector": detector,
            "DetectorIndex": str(index),
            "Offset": {"x": "-4e-08", "y": "-3e-08"},
            "PixelSize": {"height": str(pixel_size), "width": str(pixel_size)},
            "PixelUnitX": "m",
            "PixelUnitY": "m",
        },
        "CustomProperties": {"StemMagnification": {"type": "double", "value": "225000"}},
        "Detectors": entries,
        "Instrument": {"InstrumentClass": "Titan"},
        "Optics": {"AccelerationVoltage": "300000", "CameraLength": "0.1159"},
        "Scan": {
            "FrameTime": str(frame_time),
            "ScanArea": {"bottom": "0.75", "left": "0.25", "right": "0.75", "top": "0.25"},
            "ScanSize": {"height": str(2 * ny), "width": str(2 * nx)},
        },
        "Stage": {
            "AlphaTilt": "8.9243432770017006e-05",
            "BetaTilt": "9.3221366114448756e-05",
            "Position": {"x": "-0.000416", "y": "0.0004", "z": "-0.000143"},
        },
    }


def write_velox(
    path: Path,
    detectors: list[Detector],
    *,
    pixel_size: float = 3.6e-9,
    frame_time: float = 0.6,
    elements: tuple[int, ...] = (6, 8, 29),
    frame_table: bool = True,
    declare_frames: bool = True,
    seed: int = 1,
) -> VeloxFile:
    """Write a Velox 11 spectrum-image file whose streams encode ``detectors[i].cube``."""
    frames, ny, nx, channels = detectors[0].cube.shape
    rng = np.random.default_rng(seed)
    haadf = rng.integers(0, 60000, (frames, ny, nx)).astype(np.uint16)
    spectrum = rng.integers(0, 1000, channels).astype(np.uint32)

    def metadata(detector: str, index: int) -> dict[str, Any]:
        return microscope_metadata(
            detector,
            index,
            pixel_size=pixel_size,
            frame_time=frame_time,
            scan=(ny, nx),
            detectors=detectors,
        )

    with h5py.File(path, "w") as file:
        json_text(file, "Version", {"version": "11", "format": "Velox"})
        image = file.create_group("Data/Image/0a3f1c2e9b8d4f7a8c6e5d4b3a291807")
        image.create_dataset("Data", data=np.moveaxis(haadf, 0, -1), chunks=(ny, nx, 1))
        image["FrameLookupTable"] = np.arange(frames, dtype=np.uint32)
        metadata_columns(image, [metadata("HAADF", 0)] * frames)
        single = file.create_group("Data/Spectrum/7c1e0d9a2b3f4e5d6c7b8a9f0e1d2c3b")
        single.create_dataset("Data", data=spectrum[:, None], chunks=(channels, 1))
        metadata_columns(single, [metadata(detectors[0].name, 1)])
        settings_group = file.create_group("Data/SpectrumImage/5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b")
        settings_group["Data"] = np.zeros((16, 1), dtype=np.uint8)
        metadata_columns(settings_group, [metadata(detectors[0].name, 1)])
        if declare_frames:
            json_text(
                settings_group,
                "SpectrumImageSettings",
                {"startFramePosition": "1", "endFramePosition": str(frames)},
            )
        for number, eds in enumerate(detectors, start=1):
            stream = encode_spectrum_stream(
                eds.cube, seed=seed + number, omit_final_marker=eds.omit_final_marker
            )
            group = file.create_group(f"Data/SpectrumStream/{number:02d}{'f' * 30}")
            group.create_dataset("Data", data=stream[:, None], chunks=(min(8192, stream.size), 1))
            if frame_table:
                group["FrameLocationTable"] = frame_starts(stream, ny * nx)[:, None]
            json_text(
                group,
                "AcquisitionSettings",
                {
                    "encoding": "uint16",
                    "bincount": str(channels),
                    "StreamEncoding": "uint16",
                    "Size": "2097152",
                    "RasterScanDefinition": {"Width": str(2 * nx), "Height": str(2 * ny)},
                },
            )
            metadata_columns(group, [metadata(eds.name, number)] * frames)
        reference = "1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e"
        json_text(
            file,
            "Displays/ImageDisplay/9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a",
            {
                "data": f"/SharedProperties/ImageSeriesDataReference/{reference}",
                "id": "HAADF",
                "title": "HAADF",
            },
        )
        json_text(file, "Displays/ImageDisplay/aa00bb11cc22dd33ee44ff5566778899", {"id": "CM"})
        json_text(
            file,
            f"SharedProperties/ImageSeriesDataReference/{reference}",
            {"dataPath": "/Data/Image/0a3f1c2e9b8d4f7a8c6e5d4b3a291807", "frameIndex": 0},
        )
        json_text(
            file,
            "SharedProperties/EDSSpectrumQuantificationSettings/0123456789abcdef0123456789abcdef",
            {"elementSelection": list(elements)},
        )
    return VeloxFile(path, haadf, spectrum, list(detectors))


def random_cube(
    shape: tuple[int, int, int, int], *, seed: int = 0, mean: float = 0.05
) -> np.ndarray:
    """Sparse Poisson counts ``(frames, ny, nx, channels)``, as EDS data are."""
    return np.random.default_rng(seed).poisson(mean, shape).astype(np.int64)


# Comparison with the reference reader ----------------------------------------------------


class _ListKeys(dict):
    """A dict whose ``keys()`` is a list, like HyperSpy's ``DictionaryTreeBrowser``.

    The reference's element-list conversion indexes ``keys()``; HyperSpy hands it such a tree.
    """

    def keys(self):  # type: ignore[override]
        return list(super().keys())


def apply_reference_mapping(signal: dict[str, Any]) -> dict[str, Any]:
    """The reference signal's ``metadata`` after HyperSpy applied its ``mapping``."""
    metadata = json.loads(json.dumps(signal["metadata"], default=_plain))
    for source, (target, convert) in (signal.get("mapping") or {}).items():
        value: Any = signal["original_metadata"]
        for key in source.split("."):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            if convert is not None:
                value = convert(_ListKeys(value) if isinstance(value, dict) else value)
            node = metadata
            *parents, leaf = target.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
    return metadata


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


def assert_equal_tree(ours: Any, reference: Any, where: str = "") -> None:
    """Nested dicts/lists/arrays equal, numbers compared with a relative tolerance."""
    if isinstance(reference, dict):
        assert isinstance(ours, dict), where
        assert set(ours) == set(reference), (where, set(ours) ^ set(reference))
        for key in reference:
            assert_equal_tree(ours[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, (list, tuple)):
        assert len(ours) == len(reference), where
        for index, (mine, theirs) in enumerate(zip(ours, reference, strict=True)):
            assert_equal_tree(mine, theirs, f"{where}[{index}]")
    elif isinstance(reference, np.ndarray) or isinstance(ours, np.ndarray):
        np.testing.assert_array_equal(ours, reference, err_msg=where)
    elif isinstance(reference, (float, np.floating)) and not isinstance(reference, bool):
        assert np.isclose(float(ours), float(reference), rtol=1e-9, atol=0), (
            where,
            ours,
            reference,
        )
    else:
        assert ours == reference, (where, ours, reference)


def assert_same_signal(
    ours: dict[str, Any], reference: dict[str, Any], *, skip_metadata: tuple[str, ...] = ()
) -> None:
    """A signal dict equal to the reference's: data, axes, metadata (mapped), original metadata.

    ``skip_metadata`` names dotted ``metadata`` paths where stemcast deliberately differs.
    """
    data, expected = np.asarray(ours["data"]), np.asarray(reference["data"])
    assert data.shape == expected.shape
    assert data.dtype == expected.dtype
    np.testing.assert_array_equal(data, expected)
    assert len(ours["axes"]) == len(reference["axes"])
    for mine, theirs in zip(ours["axes"], reference["axes"], strict=True):
        assert_equal_tree(
            {key: mine.get(key) for key in theirs}, dict(theirs), f"axis {theirs.get('name')}"
        )
    metadata = json.loads(json.dumps(ours["metadata"], default=_plain))
    expected_metadata = apply_reference_mapping(reference)
    for path in skip_metadata:
        for tree in (metadata, expected_metadata):
            *parents, leaf = path.split(".")
            node = tree
            for key in parents:
                node = node.get(key, {})
            node.pop(leaf, None)
    assert_equal_tree(metadata, expected_metadata, "metadata")
    original = dict(ours["original_metadata"])
    expected_original = dict(reference["original_metadata"])
    if original.get("DetectorMetadata") is None and "DetectorMetadata" not in expected_original:
        original.pop("DetectorMetadata", None)
    assert_equal_tree(original, expected_original, "original_metadata")
