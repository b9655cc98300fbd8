"""``scan_shape="auto"``: the scan found from the rotator index (``stemcast.shape``).

The rule is pinned on the reference's own test vectors (signed arrays), then on synthetic
camera recordings: a free-running camera and a scan engine whose clocks differ, frames before,
between and after the scans, dropped frames, several scans, interrupted scans, non-square
scans, split series. Where no scan can be found the reader returns a stack and warns, never a
wrong shape. The reference reader fails on most of these recordings (its unsigned subtraction
turns the drop back to 0 after a scan into a step).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stemcast.readers.tvips import file_reader, wind
from stemcast.shape import Evidence, rotator_grid, scan_from_rotator
from stemcast.writers.tvips import TvipsWriter
from tvips_helpers import Recording, camera_recording, ref_read, write_recording

# --------------------------------------------------------------------------------------------
# The rule on the reference's test vectors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rotator", "positions", "expected"),
    [
        ([1, 3, 3, 4, 5, 5, 9], 9, [0, 0, 1, 3, 4, 5, 5, 5, 6]),
        ([2, 3, 4, 5], 5, [0, 0, 1, 2, 3]),
        ([1, 2, 3, 4], 4, [0, 1, 2, 3]),
        ([1, 1, 1, 2], 2, [0, 3]),
    ],
)
def test_rotator_grid_matches_the_reference_vectors(
    rotator: list[int], positions: int, expected: list[int]
) -> None:
    assert rotator_grid(rotator, positions).tolist() == expected


@pytest.mark.parametrize(
    ("rotator", "start", "stop"),
    [
        ([0, 0, 1, 2, 3, 4, 5, 6, 0, 0], 2, 7),
        ([0, 1, 2, 3, 4, 5, 6, 0, 0], 1, 6),
        ([1, 2, 3, 4, 5, 6, 0, 0], 0, 5),
        ([0, 0, 1, 2, 3, 4, 5], 2, 6),
        ([0, 0, 1, 1, 3, 3, 4, 0], 2, 6),
        ([1, 2, 3, 4, 5], 0, 4),
    ],
)
def test_scan_start_and_stop_match_the_reference_on_unsigned_input(
    rotator: list[int], start: int, stop: int
) -> None:
    # Unsigned, as read from a file: the drop back to 0 must not count as a step.
    index = np.array(rotator, dtype=np.uint32)
    positions = int(index.max())
    found = scan_from_rotator(index, scan_x=np.maximum(index.astype(int) - 1, 0), scan_y=0 * index)
    assert found.frames is not None
    assert found.scan.shape == (positions, 1)
    assert (int(found.frames.min()), int(found.frames.max())) == (start, stop)


@pytest.mark.parametrize(
    ("rotator", "expected"),
    [
        ([0, 0, 1, 3, 3, 4, 5, 5, 9, 0, 0], [[2, 2, 3], [5, 6, 7], [7, 7, 8]]),
        ([1, 3, 3, 4, 5, 5, 9, 0, 0], [[0, 0, 1], [3, 4, 5], [5, 5, 6]]),
    ],
)
def test_square_scan_grid_matches_the_reference(rotator: list[int], expected: Any) -> None:
    found = scan_from_rotator(np.array(rotator, dtype=np.uint32))
    assert found.scan.evidence is Evidence.ROTATOR
    assert found.frames is not None
    assert found.frames.tolist() == expected
    assert found.filled == 4


def test_no_rotator_index_gives_no_shape() -> None:
    found = scan_from_rotator(np.zeros(4, np.uint32))
    assert (found.frames, found.scan.shape, found.scan.evidence) == (None, (4,), Evidence.NONE)


# --------------------------------------------------------------------------------------------
# Synthetic recordings
# --------------------------------------------------------------------------------------------


def read_auto(path: Path, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return file_reader(path, scan_shape="auto", **kwargs)[0]


def check_positions(result: dict[str, Any], recording: Recording, scan: tuple[int, ...]) -> None:
    """Each position shows a frame recorded there, or, if none was, one just before it."""
    assert result["data"].shape[:-2] == scan
    frames = np.asarray(result["data"])[..., 0, 0].astype(np.int64).reshape(-1, scan[-2] * scan[-1])
    rotidx = recording.rotidx.astype(np.int64)
    recorded = np.zeros(scan[-2] * scan[-1] + 1, bool)
    recorded[rotidx] = True
    for shown in frames:
        positions = np.arange(1, shown.size + 1)
        own = recorded[positions]
        assert (rotidx[shown][own] == positions[own]).all()
        assert (rotidx[shown][~own] < positions[~own]).all()
        assert (np.diff(shown) >= 0).all()


@pytest.mark.parametrize(
    ("camera_ms", "drop"),
    [(1.0, 0.0), (0.7, 0.0), (1.3, 0.0), (1.0, 0.05)],
    ids=["in step", "camera faster", "camera slower", "dropped frames"],
)
def test_square_scan_between_idle_frames(tmp_path: Path, camera_ms: float, drop: float) -> None:
    recording = camera_recording((8, 8), camera_ms=camera_ms, drop=drop, seed=3)
    write_recording(tmp_path / "r.tvips", recording)
    result = read_auto(tmp_path / "r.tvips")
    check_positions(result, recording, (8, 8))
    evidence = result["original_metadata"]["scan_shape"]
    assert (evidence["evidence"], evidence["shape"]) == ("rotator", (8, 8))
    if camera_ms > 1:
        assert "repeat a neighbour" in evidence["detail"]
    if drop:
        assert "dropped frames" in evidence["detail"]
    # The reference's unsigned rule takes the drop back to 0 for a step: it finds 0 positions
    # (an empty array) or fails.
    try:
        reference = ref_read(tmp_path / "r_000.tvips", scan_shape="auto")
    except ValueError:
        return
    assert reference["data"].shape[:2] != (8, 8)


def test_repeated_scans_become_a_navigation_axis(tmp_path: Path) -> None:
    recording = camera_recording((5, 5), scans=3, camera_ms=0.9, seed=5)
    write_recording(tmp_path / "r.tvips", recording, max_file_size=2000)
    result = read_auto(tmp_path / "r.tvips")
    check_positions(result, recording, (3, 5, 5))
    assert [axis["name"] for axis in result["axes"]] == ["", "y", "x", "dy", "dx"]
    assert result["original_metadata"]["scan_shape"]["shape"] == (5, 5, 3)


def test_interrupted_last_scan_is_left_out(tmp_path: Path) -> None:
    recording = camera_recording((4, 4), scans=3, interrupt_at=0.5, seed=6)
    write_recording(tmp_path / "r.tvips", recording)
    result = read_auto(tmp_path / "r.tvips")
    check_positions(result, recording, (2, 4, 4))
    assert "1 interrupted scan ignored" in result["original_metadata"]["scan_shape"]["detail"]


def test_non_square_scan_from_the_scan_positions(tmp_path: Path) -> None:
    recording = camera_recording((6, 10), camera_ms=1.1, seed=7)
    write_recording(tmp_path / "r.tvips", recording, extra=48, scan_positions=True)
    result = read_auto(tmp_path / "r.tvips", lazy=True)
    check_positions(result, recording, (6, 10))
    assert "scan positions" in result["original_metadata"]["scan_shape"]["detail"]


def test_non_square_scan_without_scan_positions_is_a_stack(tmp_path: Path) -> None:
    recording = camera_recording((6, 10), seed=8)
    frames = write_recording(tmp_path / "r.tvips", recording)
    with pytest.warns(UserWarning, match="not a square number"):
        result = file_reader(tmp_path / "r.tvips", scan_shape="auto")[0]
    np.testing.assert_array_equal(result["data"], frames)
    assert result["axes"][0]["name"] == "time"


def test_scan_positions_that_contradict_the_rotator_give_a_stack(tmp_path: Path) -> None:
    recording = camera_recording((4, 4), seed=9)
    recording.scan_x = recording.scan_x * 2
    write_recording(tmp_path / "r.tvips", recording, extra=16, scan_positions=True)
    with pytest.warns(UserWarning, match="give a 7 x 4 scan"):
        result = file_reader(tmp_path / "r.tvips", scan_shape="auto")[0]
    assert result["data"].shape[0] == recording.frames


@pytest.mark.parametrize("value", [3, 0, 2**32 - 1], ids=["dip", "zero", "spike"])
def test_single_frame_rotator_glitch_is_ignored(tmp_path: Path, value: int) -> None:
    recording = camera_recording((6, 6), seed=10)
    glitch = np.flatnonzero(recording.rotidx == 20)[0]
    original = recording.rotidx.copy()
    recording.rotidx[glitch] = value
    write_recording(tmp_path / "r.tvips", recording)
    result = read_auto(tmp_path / "r.tvips")
    recording.rotidx = original
    recording.rotidx[glitch] = 19  # counts as a repeat of the frame before it
    check_positions(result, recording, (6, 6))
    assert "1 single-frame glitch ignored" in result["original_metadata"]["scan_shape"]["detail"]


def test_longer_rotator_glitch_gives_a_stack(tmp_path: Path) -> None:
    recording = camera_recording((6, 6), seed=10)
    glitch = np.flatnonzero(recording.rotidx == 20)[0]
    recording.rotidx[glitch : glitch + 2] = 3
    write_recording(tmp_path / "r.tvips", recording)
    with pytest.warns(UserWarning, match="skips 20 of the 36 scan positions"):
        file_reader(tmp_path / "r.tvips", scan_shape="auto")


def test_recording_without_a_scan_gives_a_stack(tmp_path: Path) -> None:
    recording = camera_recording((3, 3), seed=11)
    recording.rotidx[:] = 0
    write_recording(tmp_path / "r.tvips", recording)
    with pytest.warns(UserWarning, match="rotator index is 0 in every frame"):
        result = file_reader(tmp_path / "r.tvips", scan_shape="auto")[0]
    assert result["original_metadata"]["scan_shape"]["evidence"] == "none"


def test_version_1_has_no_rotator(tmp_path: Path) -> None:
    with TvipsWriter(tmp_path / "v1.tvips", (2, 2), version=1) as writer:
        writer.write(np.zeros((4, 2, 2), np.uint16))
    with pytest.warns(UserWarning, match="version-1 frame headers hold no rotator"):
        file_reader(tmp_path / "v1.tvips", scan_shape="auto")


def test_winding_applies_to_the_auto_grid(tmp_path: Path) -> None:
    recording = camera_recording((4, 4), scans=2, seed=12)
    write_recording(tmp_path / "r.tvips", recording, max_file_size=1000)
    flyback = read_auto(tmp_path / "r.tvips")
    winding = read_auto(tmp_path / "r.tvips", winding_scan_axis="x", hysteresis=1)
    index = np.arange(32).reshape(2, 4, 4)
    expected = np.asarray(flyback["data"]).reshape(32, 4, 4)[wind(index, "x", 1)]
    np.testing.assert_array_equal(winding["data"], expected)


def test_scan_start_frame_is_ignored_by_auto(tmp_path: Path) -> None:
    recording = camera_recording((3, 3), seed=13)
    write_recording(tmp_path / "r.tvips", recording)
    np.testing.assert_array_equal(
        read_auto(tmp_path / "r.tvips", scan_start_frame=4)["data"],
        read_auto(tmp_path / "r.tvips")["data"],
    )
