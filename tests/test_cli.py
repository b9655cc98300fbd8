"""The command line, run as a user would: a real subprocess of the installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import warnings
import zipfile
from pathlib import Path
from signal import SIGINT

import numpy as np
import pytest
from rsciio.emd import file_reader as read_emd
from rsciio.quantumdetector import file_reader as read_mib

from stemcast.writers.mib import write_mib

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def test_demo_follows_a_simulated_camera_live_and_finds_its_shape(tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--scan", "12x8", "--frame-size", "64", "--fps", "0", "--directory", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "received   96 of 96 frames, complete" in result.stdout
    assert "scan shape 12 x 8 (x, y) from timestamps" in result.stdout
    assert "Virtual bright-field image (8 x 12 scan" in result.stdout
    assert (tmp_path / "demo.mib").stat().st_size == 96 * (384 + 64 * 64 * 2)
    assert (tmp_path / "demo.hdr").stat().st_size == 2048
    assert "converted  demo.blo" in result.stdout
    [emd] = read_emd(str(tmp_path / "converted" / tmp_path.name / "demo.emd"))
    [mib] = read_mib(str(tmp_path / "demo.mib"), navigation_shape=(12, 8))
    np.testing.assert_array_equal(emd["data"], mib["data"])


def test_serve_simulate_and_subscribe_work_together(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "service"))
    from live import start_daemon

    camera = tmp_path / "camera"
    camera.mkdir()
    daemon = start_daemon(camera, tmp_path / "serve.log", "--idle-timeout", "1")
    try:
        subscriber = subprocess.Popen(
            [sys.executable, "-m", "stemcast.cli", "subscribe", daemon.data, "--series", "2"],
            stdout=subprocess.PIPE,
            text=True,
        )
        mib = run_cli(
            "simulate", str(camera), "--format", "mib", "--scan", "6x4", "--frame-size", "64",
            "--depth", "6", "--raw", "--fps", "200", "--name", "m",
        )  # fmt: skip
        assert mib.returncode == 0, mib.stderr
        assert mib.stdout.split() == [str(camera / "m.mib")]
        tvips = run_cli(
            "simulate", str(camera), "--format", "tvips", "--scan", "4x4", "--frame-size", "32",
            "--depth", "8", "--max-file-size", "4000", "--interrupt-after", "10", "--name", "t",
        )  # fmt: skip
        assert tvips.returncode == 0, tvips.stderr
        assert len(tvips.stdout.split()) >= 3
        output, _ = subscriber.communicate(timeout=60)
    finally:
        assert daemon.stop() == 0
    assert subscriber.returncode == 0
    lines = output.splitlines()
    assert any("started: merlin 64x64 |u1, 24 frames expected" in line for line in lines)
    assert any("complete: 24 frames, scan 6x4 from timestamps" in line for line in lines)
    assert any("started: tvips 32x32 |u1" in line for line in lines)
    assert any("interrupted: 10 frames" in line for line in lines)


def test_info_describes_a_blockfile() -> None:
    from conftest import shared_file

    blockfile = shared_file("blockfile", "test2.blo")
    result = run_cli("info", str(blockfile))
    assert result.returncode == 0, result.stderr
    assert "2 x 3 x 5 x 5 uint8" in result.stdout
    result = run_cli("info", "--json", str(blockfile))
    assert result.returncode == 0, result.stderr
    [signal] = json.loads(result.stdout)["signals"]
    assert signal["shape"] == [2, 3, 5, 5]
    assert [axis["name"] for axis in signal["axes"]] == ["y", "x", "dy", "dx"]


@pytest.mark.parametrize(
    ("name", "navigation", "scan", "evidence"),
    [
        # 2233: rotator index 1..4 over 4 frames, a 2 x 2 scan.
        ("test_tvips_2233_000.tvips", None, [2, 2], "rotator"),
        # 2345: the rotator index counts 5 positions in 6 frames: no scan, a stack.
        ("test_tvips_2345_000.tvips", None, [6], "none"),
        ("test_tvips_2345_000.tvips", "2x3", [2, 3], "user"),
    ],
)
def test_info_on_a_tvips_series_agrees_with_convert(
    tmp_path: Path, name: str, navigation: str | None, scan: list[int], evidence: str
) -> None:
    from conftest import shared_file

    path = shared_file("tvips", name)
    shape = [] if navigation is None else ["--navigation-shape", navigation]
    result = run_cli("info", "--json", *shape, str(path))
    assert result.returncode == 0, result.stderr
    [signal] = json.loads(result.stdout)["signals"]
    assert signal["scan_shape"] == scan
    assert signal["scan_shape_evidence"] == evidence
    converted = run_cli("convert", str(path), "--to", "emd", "--output", str(tmp_path), *shape)
    assert converted.returncode == 0, converted.stderr
    [written] = read_emd(converted.stdout.split()[0])
    assert signal["shape"] == list(written["data"].shape)
    assert signal["shape"][: len(scan)] == scan[::-1]  # (y, x) in the array
    text = run_cli("info", *shape, str(path))
    assert f"scan shape   {' x '.join(map(str, scan))}" in text.stdout
    assert f"from {evidence}: " in text.stdout


def test_info_lists_every_signal_of_a_velox_file(tmp_path: Path) -> None:
    from conftest import shared_file

    with zipfile.ZipFile(shared_file("emd", "velox_emd_version11.zip")) as archive:
        archive.extractall(tmp_path)
    path = tmp_path / "Test SI 16x16 215 kx.emd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = read_emd(str(path), lazy=True)
    assert len(expected) > 1
    result = run_cli("info", "--json", str(path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "emd"
    assert [signal["title"] for signal in summary["signals"]] == [
        signal["metadata"]["General"]["title"] for signal in expected
    ]
    assert [signal["shape"] for signal in summary["signals"]] == [
        list(signal["data"].shape) for signal in expected
    ]
    text = run_cli("info", str(path)).stdout
    assert f"emd ({len(expected)} signals)" in text
    for number, signal in enumerate(expected, 1):
        assert f"signal {number:<5} {signal['metadata']['General']['title']}" in text


def test_info_help_names_the_formats_it_describes() -> None:
    detailed = run_cli("info", "--help")
    assert detailed.returncode == 0
    overview = run_cli("--help").stdout
    # The command's one-line help, wrapped: from "info" to the next command.
    one_line = overview.split("\n    info ", 1)[1].split("\n    serve ", 1)[0]
    for name in (".mib", ".tvips", ".blo", "EMD"):
        assert name in detailed.stdout
        assert name in one_line


def test_demo_serve_points_to_the_viewer_and_serves_until_interrupted(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "stemcast.cli", "demo", "--serve", "--scan", "6x4",
         "--frame-size", "32", "--fps", "0", "--directory", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("viewer"):
            line = demo.stdout.readline()
            assert line, "".join(lines) + demo.stderr.read()
            lines.append(line)
        url = lines[-1].split()[1]
        assert url.startswith("http://127.0.0.1:")
        assert f"(stemcast view {url.rstrip('/')})" in lines[-1]
        with _NO_PROXY.open(url, timeout=30) as response:
            assert b'id="frames"' in response.read()
        with _NO_PROXY.open(url + "runs", timeout=30) as response:
            [run] = json.loads(response.read())["runs"]
        assert (run["status"], run["frames"]) == ("complete", 24)
    finally:
        demo.send_signal(SIGINT)
        code = demo.wait(60)
    assert code == 0, demo.stderr.read() if demo.stderr else ""


def test_view_opens_the_viewer_of_a_running_service_in_a_browser(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "service"))
    from live import start_daemon

    camera = tmp_path / "camera"
    camera.mkdir()
    daemon = start_daemon(camera, tmp_path / "serve.log")
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    try:
        environment = {**os.environ, "BROWSER": str(browser)}
        shown = subprocess.run(
            [sys.executable, "-m", "stemcast.cli", "view", daemon.http, "--run", "r 1"],
            capture_output=True, text=True, timeout=60, env=environment, check=False,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert opened.read_text().strip() == f"{daemon.http}/?run=r%201"
        assert shown.stdout == f"stemcast view: opened {daemon.http}/?run=r%201 in a browser\n"
        printed = run_cli("view", daemon.http.removeprefix("http://"), "--no-browser")
        assert printed.stdout == f"stemcast view: open {daemon.http}/ in a browser\n"
    finally:
        daemon.stop()
    gone = run_cli("view", daemon.http, "--timeout", "2")
    assert gone.returncode == 1
    assert f"no stemcast service answers at {daemon.http}" in gone.stderr
