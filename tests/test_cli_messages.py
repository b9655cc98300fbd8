"""What the command line says when something is in the way: one line, the option to change."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stemcast.formats.mib.run import MibRun


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemcast.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback TCP port something else listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--data-endpoint", "tcp://127.0.0.1:{port}", "--data-endpoint (setting data_endpoint)"),
        (
            "--preview-endpoint",
            "tcp://127.0.0.1:{port}",
            "--preview-endpoint (setting preview_endpoint)",
        ),
        ("--http", "127.0.0.1:{port}", "--http (setting http)"),
    ],
    ids=["data", "preview", "http"],
)
def test_serve_on_a_port_in_use_says_so_in_one_line(
    tmp_path: Path, taken_port: int, flag: str, value: str, named: str
) -> None:
    address = value.format(port=taken_port)
    free = {
        "--data-endpoint": "tcp://127.0.0.1:0",
        "--preview-endpoint": "tcp://127.0.0.1:0",
        "--http": "127.0.0.1:0",
    }
    free[flag] = address
    result = run_cli(
        "serve", "--watch", str(tmp_path), "--registry", str(tmp_path / "registry.sqlite3"),
        *(item for pair in free.items() for item in pair),
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("stemcast: error: ")
    assert address in line
    assert "Address already in use" in line
    assert named in line


def test_subscribe_says_once_that_it_waits(taken_port: int) -> None:
    # Nothing that speaks the protocol listens there: the subscriber waits, then times out.
    result = run_cli("subscribe", f"tcp://127.0.0.1:{taken_port}", "--timeout", "2")
    assert result.returncode == 1
    waiting = [line for line in result.stderr.splitlines() if "waiting" in line]
    assert waiting == [
        f"stemcast subscribe: nothing yet from tcp://127.0.0.1:{taken_port}: waiting for the "
        "service to answer, or for its next run (Ctrl-C stops)"
    ]


def test_simulate_quad_frames_are_512_wide_by_default(tmp_path: Path) -> None:
    result = run_cli("simulate", str(tmp_path), "--quad", "--scan", "2x2")
    assert result.returncode == 0, result.stderr
    assert MibRun.open(tmp_path / "scan.mib").frame_shape == (512, 512)


def test_the_demo_says_its_folder_goes_and_how_to_keep_it() -> None:
    result = run_cli("demo", "--scan", "4x4", "--frame-size", "32", "--fps", "0")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith("are deleted now; give --directory DIR to keep them.")
