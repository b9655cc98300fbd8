"""Helpers of the end-to-end tests: the daemon as a real subprocess, real sockets on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stemcast.client import Frame, SeriesEnd, SeriesStart, Start, Subscriber

_READY = re.compile(
    r"data (?P<data>tcp://[^\s,]+), preview (?P<preview>tcp://[^\s,]+)"
    r"(?:, http (?P<http>http://\S+))?"
)


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    data: str
    preview: str
    log: Path
    #: ``http://127.0.0.1:PORT`` of the control API, ``None`` when started with ``--http off``.
    http: str | None = None

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


def start_daemon(
    directory: Path, log: Path, *flags: str, preexec: Callable[[], None] | None = None
) -> Daemon:
    """Start ``stemcast serve`` on free ports (port 0) and wait until it watches.

    Unless ``flags`` say otherwise, the HTTP API listens on a free loopback port and the
    registry is ``registry.sqlite3`` next to ``log``. ``preexec`` runs in the child before
    the daemon starts (to drop privileges).
    """
    defaults = []
    if "--http" not in flags:
        defaults += ["--http", "127.0.0.1:0"]
    if "--registry" not in flags:
        defaults += ["--registry", str(log.parent / "registry.sqlite3")]
    command = [
        sys.executable, "-m", "stemcast.cli", "serve", "--watch", str(directory),
        "--data-endpoint", "tcp://127.0.0.1:0", "--preview-endpoint", "tcp://127.0.0.1:0",
        *defaults, *flags,
    ]  # fmt: skip
    stream = log.open("w")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=stream, text=True, preexec_fn=preexec
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = _READY.search(line)
    if match is None:
        process.kill()
        process.wait()
        raise AssertionError(f"the daemon did not start: {line!r}\n{log.read_text()}")
    return Daemon(process, match["data"], match["preview"], log, match["http"])


@dataclass
class Series:
    start: dict[str, Any]
    frames: list[np.ndarray] = field(default_factory=list)
    headers: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None


class Receiver:
    """Subscribe to a daemon's data channel now, from the start of the next runs, and keep
    every series in a thread; :meth:`series` waits for them.

    Created before the camera writes, so that no frame of the runs it waits for is missed.
    """

    def __init__(self, endpoint: str, *, start: Start = "run", timeout_s: float = 30.0) -> None:
        self.found: dict[str, Series] = {}
        self.ended = 0
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._subscriber = Subscriber(endpoint, start=start, timeout_s=timeout_s)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._subscriber as subscriber:
                for event in subscriber:
                    with self._changed:
                        self._keep(event)
                        self._changed.notify_all()
        except BaseException as error:  # reported by series()
            with self._changed:
                self.error = error
                self._changed.notify_all()

    def _keep(self, event: Any) -> None:
        if isinstance(event, SeriesStart):
            assert event.series not in self.found
            self.found[event.series] = Series(event.header)
        elif isinstance(event, Frame):
            self.found[event.series].frames.append(event.data.copy())
            self.found[event.series].headers.append(event.header)
        elif isinstance(event, SeriesEnd):
            self.found[event.series].end = event.header
            self.ended += 1

    def series(self, count: int, timeout_s: float = 30.0) -> list[Series]:
        """Wait until ``count`` series have ended; return the series in order of their starts."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: self.ended >= count or self.error is not None, timeout_s
            )
            if self.error is not None:
                raise self.error
            assert done, f"{self.ended} of {count} series ended in {timeout_s} s"
            return list(self.found.values())


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def wait_until(
    read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 20.0
) -> Any:
    """Call ``read`` until ``done`` holds for its value; return that value."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time; last value: {value!r}")
        time.sleep(0.05)
        value = read()
    return value


# Loopback calls never go through a proxy, whatever the environment says.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    """Make a real HTTP request; return the status and the decoded JSON body."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _HTTP.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


class Drain:
    """Consume a daemon's data channel in a thread, keeping the series headers.

    Every client gets every frame: this one only keeps the series headers, for tests that
    look at how runs end.
    """

    def __init__(self, endpoint: str) -> None:
        self.starts: list[dict[str, Any]] = []
        self.ends: list[dict[str, Any]] = []
        self._stop = threading.Event()
        # Subscribed before this returns, so a run that starts next is not missed.
        self._subscriber = Subscriber(endpoint, start="run", timeout_s=0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._subscriber as subscriber:
            while not self._stop.is_set():
                try:
                    event = subscriber.receive()
                except TimeoutError:
                    continue
                if isinstance(event, SeriesStart):
                    self.starts.append(event.header)
                elif isinstance(event, SeriesEnd):
                    self.ends.append(event.header)

    def end_of(self, name: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait for the series whose first file is called ``name`` to end; its header."""

        def find() -> dict[str, Any] | None:
            return next((end for end in self.ends if Path(end["sources"][0]).name == name), None)

        found: dict[str, Any] = wait_until(find, lambda end: end is not None, timeout_s)
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
