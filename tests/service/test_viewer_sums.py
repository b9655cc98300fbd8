"""The viewer's detectors and per-frame sums, against numpy on RosettaSciIO's reading of the
same simulated files."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from rsciio.quantumdetector import file_reader as read_mib
from rsciio.tvips import file_reader as read_tvips

import stemcast
from stemcast.errors import ParameterError
from stemcast.service.live.tail import open_source
from stemcast.service.viewer.detectors import Detector, batch_sums, file_sums
from stemcast.service.viewer.wire import pack
from stemcast.simulate import diffraction_patterns, simulate_mib, simulate_tvips

SHAPE = (64, 64)


def ring(shape: tuple[int, int], cx: float, cy: float, inner: float, outer: float) -> np.ndarray:
    """The documented detector: (col - cx)**2 + (row - cy)**2 between inner**2 and outer**2."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    distance = (cols - cx) ** 2 + (rows - cy) ** 2
    return (distance >= inner**2) & (distance <= outer**2)


def reference(frames: np.ndarray, detector: dict) -> np.ndarray:
    """The detector applied with numpy to frames ``(n, rows, cols)``, as docs/viewer.md says."""
    frames = frames.astype(np.float64)
    shape = frames.shape[1:]
    if detector["kind"] in ("com_x", "com_y"):
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
        total = frames.sum(axis=(1, 2))
        if detector["kind"] == "com_x":
            return (frames * cols).sum(axis=(1, 2)) / total - (shape[1] - 1) / 2
        return (frames * rows).sum(axis=(1, 2)) / total - (shape[0] - 1) / 2
    if detector["kind"] == "disk":
        mask = ring(shape, detector["cx"], detector["cy"], 0, detector["r"])
    else:
        mask = ring(shape, detector["cx"], detector["cy"], detector["inner"], detector["outer"])
    return (frames * mask).sum(axis=(1, 2))


DETECTORS = [
    {"kind": "disk", "cx": 31.5, "cy": 32.0, "r": 5.5},
    {"kind": "disk", "cx": 10.25, "cy": 50.0, "r": 30.0},
    {"kind": "annulus", "cx": 32.0, "cy": 31.0, "inner": 8.0, "outer": 20.0},
    {"kind": "com_x"},
    {"kind": "com_y"},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    """Simulated runs of every kind, with their frames as RosettaSciIO reads them (stemcast's
    Merlin reader for RAW frames, which RosettaSciIO does not read)."""
    folder = tmp_path_factory.mktemp("camera")
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, depth, raw in (("m12", 12, False), ("m1", 1, True), ("m24", 24, False)):
            [path] = simulate_mib(
                folder, name=name, scan_shape=(6, 4), frame_size=64, counter_depth=depth, raw=raw
            )
            reader = stemcast.load if raw else read_mib
            data = np.asarray(reader(str(path), navigation_shape=(6, 4))[0]["data"])
            found[name] = (path, data.reshape(24, *SHAPE))
        [path] = simulate_tvips(folder, name="t", scan_shape=(6, 4), frame_size=64, bits=16)
        data = np.asarray(read_tvips(str(path))[0]["data"])
        found["tvips"] = (path, data.reshape(-1, *SHAPE))
    return found


@pytest.mark.parametrize("spec", DETECTORS)
@pytest.mark.parametrize("name", ["m12", "m1", "m24", "tvips"])
def test_sums_from_files_and_from_frames_are_the_detector_applied_with_numpy(
    runs: dict[str, tuple[Path, np.ndarray]], name: str, spec: dict
) -> None:
    path, frames = runs[name]
    detector = Detector.parse(spec, SHAPE)
    expected = reference(frames, spec)
    source = open_source(path)
    stop = len(frames)
    from_files = file_sums(source, 5, stop, [detector.measure], threads=1)[detector.measure]
    from_frames = batch_sums(source.read(0, stop).frames, [detector.measure])[detector.measure]
    np.testing.assert_allclose(detector.values(from_files, 0, stop - 5, SHAPE), expected[5:])
    np.testing.assert_allclose(detector.values(from_frames, 0, stop, SHAPE), expected)


def test_a_ring_counts_the_pixels_on_its_edges() -> None:
    frames = np.ones((1, 9, 9), np.uint16)
    disk = Detector.parse({"kind": "disk", "cx": 4, "cy": 4, "r": 2}, (9, 9))
    annulus = Detector.parse({"kind": "annulus", "cx": 4, "cy": 4, "inner": 1, "outer": 2}, (9, 9))
    sums = batch_sums(frames, [disk.measure, annulus.measure])
    # Distances 0, 1 (4 pixels), sqrt 2 (4) and 2 (4): 13 pixels; without the centre 12.
    assert sums[disk.measure]["total"].tolist() == [13.0]
    assert sums[annulus.measure]["total"].tolist() == [12.0]


def test_an_empty_frame_has_no_centre_of_mass() -> None:
    com = Detector.parse({"kind": "com_x"}, (4, 4))
    sums = batch_sums(np.zeros((2, 4, 4), np.uint8), [com.measure])
    assert np.isnan(com.values(sums[com.measure], 0, 2, (4, 4))).all()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (None, "an object"),
        ({"kind": "square"}, "kind 'square'"),
        ({"kind": "disk", "cx": 1, "cy": 1}, "r must be a number"),
        ({"kind": "disk", "cx": 1, "cy": 1, "r": 0}, "r = 0 is not above 0"),
        ({"kind": "disk", "cx": True, "cy": 1, "r": 3}, "cx must be a number"),
        ({"kind": "disk", "cx": 1, "cy": 1e9, "r": 3}, "cy = 1e\\+09 is not from"),
        ({"kind": "annulus", "cx": 1, "cy": 1, "inner": 5, "outer": 4}, "not below outer"),
        ({"kind": "disk", "cx": float("nan"), "cy": 1, "r": 3}, "cx must be a number"),
    ],
)
def test_a_detector_out_of_range_is_refused_naming_the_problem(spec: object, problem: str) -> None:
    with pytest.raises(ParameterError, match=problem) as error:
        Detector.parse(spec, SHAPE)
    assert error.value.parameter == "detector"


def test_the_bright_field_disk_is_found_where_the_simulator_draws_it() -> None:
    frames = next(diffraction_patterns((4, 4), (256, 256), batch_frames=16))
    found = Detector.bright_field(frames[:8, ::-1])
    # The simulator's central disk: radius 20 around pixel (128, 128) of its frames; the
    # frames are published with their rows flipped (row 128 becomes row 127).
    assert found is not None
    assert (found.cx, found.cy) == (128.0, 127.0)
    assert 19 <= found.outer <= 22


def test_frames_with_no_disk_have_no_bright_field() -> None:
    assert Detector.bright_field(np.zeros((2, 16, 16), np.uint16)) is None


def test_a_message_is_a_json_header_then_aligned_little_endian_arrays() -> None:
    values = np.array([1.5, -2.0, np.nan])
    pixels = np.arange(6, dtype=">u2").reshape(2, 3)
    message = pack({"type": "image", "run": "r"}, {"values": values, "pixels": pixels})
    (length,) = struct.unpack_from("<I", message)
    header = json.loads(message[4 : 4 + length])
    assert (4 + length) % 8 == 0
    assert header["arrays"] == [
        {"name": "values", "dtype": "<f8", "length": 3},
        {"name": "pixels", "dtype": "<u2", "length": 6},
    ]
    offset = 4 + length
    np.testing.assert_array_equal(np.frombuffer(message, "<f8", 3, offset), values)
    offset += 24
    assert np.frombuffer(message, "<u2", 6, offset).tolist() == list(range(6))
    assert len(message) == offset + 16
