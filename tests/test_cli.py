"""The command line, run as a user would: a real subprocess of the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from stemcast.writers.mib import write_mib


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemcast.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_info_reports_shape_evidence_and_interruption(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 4096, (20, 64, 64), dtype=np.uint16)
    path = write_mib(
        tmp_path / "cut.mib",
        frames,
        counter_depth=12,
        scan_shape=(6, 4),
        frames_expected=24,
        frames_per_trigger=6,
    )
    result = run_cli("info", "--json", str(path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["frames"] == 20
    assert summary["frame_shape"] == [64, 64]
    assert summary["scan_shape"] == [6, 4]
    assert summary["scan_shape_evidence"] == "hdr"
    assert summary["shape_loaded"] == [6, 3]


def test_info_on_a_file_that_is_not_merlin_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "notes.mib"
    path.write_text("hello, this is not a detector file\n")
    result = run_cli("info", str(path))
    assert result.returncode == 2
    assert "notes.mib" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_writes_a_scan_and_finds_its_shape_from_timestamps(tmp_path: Path) -> None:
    result = run_cli("demo", "--scan", "12x8", "--frame-size", "64", "--directory", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "12 x 8 (x, y) from timestamps" in result.stdout
    assert "Virtual bright-field image (8 x 12 scan" in result.stdout
    assert (tmp_path / "demo.mib").stat().st_size == 96 * (384 + 64 * 64 * 2)
    assert (tmp_path / "demo.hdr").stat().st_size == 2048


def test_info_describes_tvips_and_blockfile_files() -> None:
    from conftest import shared_file

    tvips = shared_file("tvips", "test_tvips_2233_000.tvips")
    blockfile = shared_file("blockfile", "test2.blo")
    result = run_cli("info", "--json", str(tvips))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "tvips"
    assert summary["shape"] == [4, 3, 3]
    assert summary["axes"][0]["units"] == "s"
    result = run_cli("info", str(blockfile))
    assert result.returncode == 0, result.stderr
    assert "2 x 3 x 5 x 5 uint8" in result.stdout
