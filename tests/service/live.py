"""Helpers of the end-to-end tests: the daemon as a real subprocess, real sockets on loopback."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stemcast.client import Frame, SeriesEnd, SeriesStart, Subscriber

_READY = re.compile(r"data (?P<data>tcp://\S+), preview (?P<preview>tcp://\S+)")


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    data: str
    preview: str
    log: Path

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons watching ``tmp_path/camera``; stop them (SIGTERM) on exit."""
    started: list[Daemon] = []

    def start(*flags: str) -> Daemon:
        folder = tmp_path / "camera"
        folder.mkdir(exist_ok=True)
        started.append(start_daemon(folder, tmp_path / f"daemon{len(started)}.log", *flags))
        return started[-1]

    try:
        yield start
    finally:
        for running in started:
            running.stop()


def start_daemon(directory: Path, log: Path, *flags: str) -> Daemon:
    """Start ``stemcast serve`` on free ports (port 0) and wait until it watches."""
    command = [
        sys.executable, "-m", "stemcast.cli", "serve", "--watch", str(directory),
        "--data-endpoint", "tcp://127.0.0.1:0", "--preview-endpoint", "tcp://127.0.0.1:0",
        *flags,
    ]  # fmt: skip
    stream = log.open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stream, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = _READY.search(line)
    if match is None:
        process.kill()
        process.wait()
        raise AssertionError(f"the daemon did not start: {line!r}\n{log.read_text()}")
    return Daemon(process, match["data"], match["preview"], log)


@dataclass
class Series:
    start: dict[str, Any]
    frames: list[np.ndarray] = field(default_factory=list)
    headers: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None


def receive(endpoint: str, series: int, timeout_s: float = 30.0) -> list[Series]:
    """Receive until ``series`` series have ended; in arrival order of their starts."""
    found: dict[str, Series] = {}
    ended = 0
    with Subscriber(endpoint, timeout_s=timeout_s) as subscriber:
        for event in subscriber:
            if isinstance(event, SeriesStart):
                assert event.series not in found
                found[event.series] = Series(event.header)
            elif isinstance(event, Frame):
                found[event.series].frames.append(event.data.copy())
                found[event.series].headers.append(event.header)
            elif isinstance(event, SeriesEnd):
                found[event.series].end = event.header
                ended += 1
                if ended == series:
                    break
    return list(found.values())


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
