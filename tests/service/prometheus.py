"""A real Prometheus server for the tests: scrapes given targets every second, answers queries.

The binary comes from the distribution (``apt-get install prometheus``, which ``.ci/run``
does); tests that need it are skipped when it is not on PATH. The system service is never
used: each server here has its own configuration, storage folder and port.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = (
    "the prometheus binary is not on PATH: install it with "
    "'apt-get install --no-install-recommends prometheus' (Debian/Ubuntu), as .ci/run does"
)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """GET an API endpoint; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a query that yields one series, None while it yields none."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_for_value(self, expr: str, expected: float, timeout_s: float = 30.0) -> None:
        """Poll until ``expr`` equals ``expected``; fail with the last value and the targets."""
        deadline = time.monotonic() + timeout_s
        last = self.value(expr)
        while last != expected:
            if time.monotonic() > deadline:
                targets = self.api("/api/v1/targets")["activeTargets"]
                health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
                raise AssertionError(f"{expr} is {last}, not {expected}; targets: {health}")
            time.sleep(0.25)
            last = self.value(expr)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _config(targets: list[str], interval_s: float) -> dict[str, Any]:
    interval = f"{round(interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [{"job_name": "stemcast", "static_configs": [{"targets": targets}]}],
    }


def _wait_ready(server: PrometheusServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {server.log.read_text()}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"prometheus did not get ready: {server.log.read_text()}")
        time.sleep(0.1)


@contextlib.contextmanager
def prometheus(
    directory: Path, targets: list[str], *, interval_s: float = 1.0, timeout_s: float = 30.0
) -> Iterator[PrometheusServer]:
    """Run Prometheus scraping ``targets`` (``host:port``, path ``/metrics``) until exit.

    Skips the calling test when the binary is missing.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(INSTALL_HINT)
    directory.mkdir(parents=True, exist_ok=True)
    # YAML is a superset of JSON: no YAML library needed to write the configuration.
    config = directory / "prometheus.yml"
    config.write_text(json.dumps(_config(targets, interval_s)))
    port = free_port()
    log = directory / "prometheus.log"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={directory / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(server, timeout_s)
        yield server
    finally:
        server.stop()
