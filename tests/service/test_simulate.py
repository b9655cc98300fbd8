"""The camera simulator: scan order, fly-back frames, interruptions, rolling parts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stemcast import simulate
from stemcast.cli import main
from stemcast.errors import ParameterError
from stemcast.readers.mib import MibRun
from stemcast.readers.tvips import TvipsSeries
from stemcast.simulate import scan_frames, simulate_mib, simulate_tvips


def test_snake_scans_reverse_every_other_line() -> None:
    plain = list(scan_frames((5, 4), (16, 16)))
    snake = list(scan_frames((5, 4), (16, 16), snake=True))
    for number, (line, serpentine) in enumerate(zip(plain, snake, strict=True)):
        np.testing.assert_array_equal(serpentine, line[::-1] if number % 2 else line)


def test_fly_back_frames_repeat_the_end_of_each_line() -> None:
    lines = list(scan_frames((5, 3), (16, 16), flyback_frames=2))
    assert [len(line) for line in lines] == [7, 7, 7]
    for line in lines:
        np.testing.assert_array_equal(line[5:], line[4:5].repeat(2, axis=0))


def test_a_pattern_pool_repeats_lines() -> None:
    lines = list(scan_frames((4, 5), (16, 16), pattern_pool=2))
    np.testing.assert_array_equal(lines[2], lines[0])
    np.testing.assert_array_equal(lines[3], lines[1])


def test_an_interrupted_merlin_run_ends_mid_record(tmp_path: Path) -> None:
    [path] = simulate_mib(tmp_path, scan_shape=(6, 6), frame_size=32, interrupt_after=10)
    run = MibRun.open(path)
    assert run.frames == 10
    assert path.stat().st_size == 10 * run.layout.record_size + run.layout.record_size // 2
    assert "Frames in Acquisition (Number):\t36\n" in path.with_suffix(".hdr").read_text("latin-1")


def test_a_tvips_series_rolls_over_parts_at_the_size_cap(tmp_path: Path) -> None:
    paths = simulate_tvips(tmp_path, scan_shape=(4, 4), frame_size=32, bits=8, max_file_size=5000)
    assert len(paths) == 4
    assert all(path.stat().st_size <= 5000 for path in paths)
    assert TvipsSeries.open(paths[0]).frames == 16
    with pytest.raises(ParameterError, match="8 or 16 bits"):
        simulate_tvips(tmp_path, bits=12)


def _interrupted_after(lines: int) -> Callable[..., Iterator[np.ndarray]]:
    """The simulator's scan lines, then KeyboardInterrupt (Ctrl-C) after ``lines`` of them."""
    pooled_lines = simulate._pooled_lines

    def lines_then_interrupt(*args: Any, **kwargs: Any) -> Iterator[np.ndarray]:
        for number, line in enumerate(pooled_lines(*args, **kwargs)):
            if number == lines:
                raise KeyboardInterrupt
            yield line

    return lines_then_interrupt


def test_a_merlin_simulation_stopped_by_ctrl_c_keeps_the_frames_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulate, "_pooled_lines", _interrupted_after(2))
    with pytest.raises(KeyboardInterrupt):
        simulate_mib(tmp_path, scan_shape=(6, 6), frame_size=32)
    assert MibRun.open(tmp_path / "scan.mib").frames == 12
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scan.hdr", "scan.mib"]


def test_a_tvips_simulation_stopped_by_ctrl_c_keeps_the_parts_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulate, "_pooled_lines", _interrupted_after(3))
    with pytest.raises(KeyboardInterrupt):
        simulate_tvips(tmp_path, scan_shape=(4, 4), frame_size=32, bits=8, max_file_size=5000)
    assert TvipsSeries.open(tmp_path / "scan_000.tvips").frames == 12


def _headers(path: Path) -> np.ndarray:
    series = TvipsSeries.open(path)
    return next(series.batches(0, series.frames, batch_frames=series.frames)).headers


def test_a_tvips_scan_engine_reports_the_scan_between_frames_before_and_after_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The simulate command, as a user runs it (in this process: its output is the parts).
    status = main([
        "simulate", str(tmp_path), "--format", "tvips", "--scan", "3x2", "--frame-size", "16",
        "--depth", "16", "--frames-before-scan", "2", "--frames-after-scan", "3",
    ])  # fmt: skip
    assert status == 0
    [path] = [Path(line) for line in capsys.readouterr().out.split()]
    headers = _headers(path)
    # Spec: the rotator index is the 1-based scan position, 0 when not scanning.
    assert headers["rotidx"].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0]
    assert headers["scan_x"].tolist() == [0, 0, 0, 1, 2, 0, 1, 2, 0, 0, 0]
    assert headers["scan_y"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    frames = TvipsSeries.open(path).read_frames(range(11))
    # The beam waits at the first position before the scan and at the last after it.
    np.testing.assert_array_equal(frames[:2], frames[[2, 2]])
    np.testing.assert_array_equal(frames[8:], frames[[7, 7, 7]])


def test_a_tvips_camera_without_scan_engine_reports_no_scan(tmp_path: Path) -> None:
    [path] = simulate_tvips(tmp_path, scan_shape=(3, 2), frame_size=16, scan_engine=False)
    headers = _headers(path)
    assert headers["rotidx"].tolist() == [0] * 6
    assert not headers["scan_x"].any()
    assert not headers["scan_y"].any()


def test_tvips_scan_options_are_refused_for_merlin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(tmp_path), "--format", "mib", "--frames-after-scan", "2"]) == 2
    assert "--frames-after-scan: TVIPS options" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
