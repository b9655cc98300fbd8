"""Each consumer's lag, scraped from the daemon's ``/metrics`` while it stalls and after.

The daemon is a real subprocess, the clients real ZeroMQ sockets on loopback, the scrapes
real HTTP requests; a live writer is stalled by stopping its worker process (SIGSTOP).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq
from live import Daemon, Receiver, call, daemons, wait_until
from prometheus_client.parser import text_string_to_metric_families

from stemcast.protocol import CREDIT, SUBSCRIBE

SCAN = (16, 16)
FRAME_SIZE = 64
#: 12-bit counters arrive as 16-bit pixels.
FRAME_BYTES = FRAME_SIZE * FRAME_SIZE * 2
#: Messages the stalled client can take: the series message and ``CREDIT - 1`` frames.
STALLED_CREDIT = 8
STALLED_ID = b"stalled-client"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(service: Daemon) -> Samples:
    """``GET /metrics`` over HTTP: ``(name, sorted labels) -> value``."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{service.http}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def lag(samples: Samples, unit: str, kind: str, name: str) -> float | None:
    """``stemcast_consumer_lag_<unit>{kind, name}``, ``None`` when the consumer has none."""
    return samples.get((f"stemcast_consumer_lag_{unit}", (("kind", kind), ("name", name))))


def merlin(samples: Samples, name: str) -> float:
    return samples[(name, (("detector", "merlin"),))]


def simulate(camera: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "stemcast.cli", "simulate", str(camera),
            "--scan", f"{SCAN[0]}x{SCAN[1]}", "--frame-size", str(FRAME_SIZE), "--depth", "12",
            "--hdr-scan-size", "--name", "run", *flags,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


class StalledClient:
    """A plain DEALER that subscribes with a small credit, never gives any back, and says it
    is still there twice a second (a consumer stuck in its processing)."""

    def __init__(self, endpoint: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self._thread.start()

    def _run(self, endpoint: str) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.identity = STALLED_ID
        socket.linger = 1000
        socket.connect(endpoint)
        socket.send(
            json.dumps({"htype": SUBSCRIBE, "start": "run", "credit": STALLED_CREDIT}).encode()
        )
        while not self._stop.wait(0.5):
            socket.send(json.dumps({"htype": CREDIT, "credit": 0}).encode())
        socket.send(json.dumps({"htype": CREDIT, "credit": 0, "leave": True}).encode())
        socket.close()
        context.term()

    def leave(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_stalled_client_falls_behind_by_the_run_minus_its_credit_and_the_rest_goes_on(
    tmp_path: Path,
) -> None:
    frames = SCAN[0] * SCAN[1]
    stalled_name = STALLED_ID.hex()
    with daemons(tmp_path) as start:
        service = start()
        stalled = StalledClient(service.data)
        try:
            receiver = Receiver(service.data)
            wait_until(
                lambda: scrape(service)[("stemcast_subscribers", (("channel", "data"),))],
                lambda clients: clients == 2,
            )
            simulator = simulate(tmp_path / "camera", "--fps", "1000")
            assert simulator.wait(60) == 0
            [series] = receiver.series(1)
            assert len(series.frames) == frames

            # The follower and the ingestion counters went through the whole run.
            samples = wait_until(
                lambda: scrape(service),
                lambda now: (
                    merlin(now, "stemcast_frames_ingested_total") == frames
                    and lag(now, "frames", "client", stalled_name) == frames - (STALLED_CREDIT - 1)
                ),
            )
            assert merlin(samples, "stemcast_tail_lag_frames") == 0
            assert merlin(samples, "stemcast_tail_lag_bytes") == 0
            # Every frame to the client that keeps up, the credit's worth to the stalled one.
            assert merlin(samples, "stemcast_frames_published_total") == (
                frames + STALLED_CREDIT - 1
            )
            behind = frames - (STALLED_CREDIT - 1)
            assert lag(samples, "bytes", "client", stalled_name) == behind * FRAME_BYTES
            waited = lag(samples, "seconds", "client", stalled_name)
            assert waited is not None
            assert waited > 0
            others = {
                labels: value
                for (name, labels), value in samples.items()
                if name == "stemcast_consumer_lag_frames" and ("name", stalled_name) not in labels
            }
            assert list(others.values()) == [0], others

            # The lag stays current while the client stalls: it keeps waiting longer.
            time.sleep(1.0)
            later = scrape(service)
            assert lag(later, "frames", "client", stalled_name) == behind
            waited_later = lag(later, "seconds", "client", stalled_name)
            assert waited_later is not None
            assert waited_later >= waited + 0.9
        finally:
            stalled.leave()

        # A client that left has no lag any more.
        gone = wait_until(
            lambda: scrape(service),
            lambda now: lag(now, "frames", "client", stalled_name) is None,
        )
        assert gone[("stemcast_subscribers", (("channel", "data"),))] == 1


def _live_workers(pid: int) -> list[int]:
    """The conversion worker processes the daemon ``pid`` has spawned."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [
        child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def test_a_stalled_writer_falls_behind_and_is_back_at_zero_once_it_caught_up(
    tmp_path: Path,
) -> None:
    """A run cut short after 200 frames: the service waits the idle timeout before it ends
    the run, and the writer, stopped then let go mid-run, has caught up meanwhile."""
    written = 200
    with daemons(tmp_path) as start:
        service = start(
            "--output", str(tmp_path / "out"), "--convert", "emd", "--idle-timeout", "6"
        )
        simulator = simulate(tmp_path / "camera", "--fps", "50", "--interrupt-after", str(written))
        try:
            [run] = wait_until(
                lambda: call("GET", f"{service.http}/runs")[1]["runs"], lambda runs: len(runs) == 1
            )
            writer = f"{run['id']}/emd"
            wait_until(
                lambda: scrape(service),
                lambda now: lag(now, "frames", "writer", writer) is not None,
            )
            [worker] = wait_until(lambda: _live_workers(service.process.pid), lambda pids: pids)
            os.kill(worker, signal.SIGSTOP)
            try:
                stalled = wait_until(
                    lambda: scrape(service),
                    lambda now: (lag(now, "frames", "writer", writer) or 0) >= 40,
                )
                waited = lag(stalled, "seconds", "writer", writer)
                assert waited is not None
                assert waited > 0
                assert (
                    lag(stalled, "bytes", "writer", writer)
                    == (lag(stalled, "frames", "writer", writer) or 0) * FRAME_BYTES
                )
                # The follower does not wait for the writer.
                assert merlin(stalled, "stemcast_frames_ingested_total") >= 40
                later = wait_until(
                    lambda: scrape(service),
                    lambda now: (lag(now, "seconds", "writer", writer) or 0) >= waited + 0.5,
                )
                assert (lag(later, "frames", "writer", writer) or 0) >= 40
            finally:
                os.kill(worker, signal.SIGCONT)
            assert simulator.wait(60) == 0
            caught_up = wait_until(
                lambda: scrape(service),
                lambda now: (
                    merlin(now, "stemcast_frames_ingested_total") == written
                    and lag(now, "frames", "writer", writer) == 0
                ),
            )
            assert lag(caught_up, "seconds", "writer", writer) == 0
            assert lag(caught_up, "bytes", "writer", writer) == 0
        finally:
            simulator.kill()
            simulator.wait()
        # The run ends interrupted, its complete lines are converted; the writer is gone.
        wait_until(
            lambda: call("GET", f"{service.http}/jobs")[1]["jobs"],
            lambda jobs: [job["status"] for job in jobs] == ["done"],
            timeout_s=30,
        )
        assert lag(scrape(service), "frames", "writer", writer) is None
