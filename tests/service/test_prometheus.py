"""A real Prometheus server scrapes the metrics and gives back what was counted."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from live import Receiver, daemons
from prometheus import prometheus

from stemcast.service.metrics import ConsumerLag, Metrics

SCAN = (16, 16)
FRAME_SIZE = 64


@pytest.fixture
def served_metrics() -> Iterator[tuple[Metrics, str]]:
    """A :class:`Metrics` served at ``/metrics`` over real HTTP on loopback."""
    metrics = Metrics()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, content_type = metrics.render(self.headers.get("Accept", ""))
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield metrics, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_prometheus_ingests_the_exposition_it_negotiates(
    served_metrics: tuple[Metrics, str], tmp_path: Path
) -> None:
    metrics, target = served_metrics
    metrics.ingested("merlin", 256, 256 * 8_576)
    for seconds in (0.002, 0.002, 0.002, 0.2):
        metrics.decode_latency("tvips", seconds)
    metrics.bind_runs(lambda: {"complete": 3, "interrupted": 1})
    metrics.bind_consumers(lambda: [ConsumerLag("writer", "run-1/emd", 40, 40 * 8_192, 2.5)])
    with prometheus(tmp_path, [target]) as server:
        server.wait_for_value('stemcast_frames_ingested_total{detector="merlin"}', 256)
        writer = '{kind="writer", name="run-1/emd"}'
        assert server.value(f"stemcast_consumer_lag_frames{writer}") == 40
        assert server.value(f"stemcast_consumer_lag_bytes{writer}") == 40 * 8_192
        assert server.value(f"stemcast_consumer_lag_seconds{writer}") == 2.5
        assert server.value('stemcast_bytes_ingested_total{detector="merlin"}') == 256 * 8_576
        assert server.value('stemcast_runs{status="complete"}') == 3
        assert server.value('stemcast_frames_published_total{detector="tvips"}') == 0
        median = server.value(
            'histogram_quantile(0.5, stemcast_decode_duration_seconds_bucket{detector="tvips"})'
        )
        # Three of four batches took 2 ms: the median lies in the (1 ms, 2.5 ms] bucket.
        assert median is not None
        assert 0.001 < median <= 0.0025


def test_frames_counted_by_the_daemon_reach_prometheus(tmp_path: Path) -> None:
    camera = tmp_path / "camera"
    with daemons(tmp_path) as start:
        service = start("--http", "127.0.0.1:0")
        receiver = Receiver(service.data)
        assert service.http is not None
        target = service.http.removeprefix("http://")
        with prometheus(tmp_path / "prometheus", [target]) as server:
            simulator = subprocess.Popen(
                [
                    sys.executable, "-m", "stemcast.cli", "simulate", str(camera),
                    "--scan", f"{SCAN[0]}x{SCAN[1]}", "--frame-size", str(FRAME_SIZE),
                    "--depth", "12", "--fps", "2000", "--hdr-scan-size", "--name", "run",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            [series] = receiver.series(1)
            output, _ = simulator.communicate(timeout=60)
            assert simulator.returncode == 0
            frames = SCAN[0] * SCAN[1]
            assert len(series.frames) == frames
            [mib] = [Path(line) for line in output.splitlines() if line.endswith(".mib")]
            server.wait_for_value('up{job="stemcast"}', 1)
            server.wait_for_value('stemcast_frames_ingested_total{detector="merlin"}', frames)
            server.wait_for_value('stemcast_frames_published_total{detector="merlin"}', frames)
            # Every byte of the file is a complete record (header and pixels), all read once.
            assert server.value('stemcast_bytes_ingested_total{detector="merlin"}') == (
                mib.stat().st_size
            )
            # 12-bit counters arrive as 16-bit pixels on the wire.
            assert server.value('stemcast_bytes_published_total{detector="merlin"}') == (
                frames * FRAME_SIZE * FRAME_SIZE * 2
            )
