"""The data channel of the daemon (a subprocess): every client gets every frame, at its own
pace, from where it chooses, and none of them holds back another, the conversions or the
service's memory. Expected frames are what rosettasciio reads from the simulator's files."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live import Daemon, Receiver, call, daemons, wait_for, wait_until
from rsciio.quantumdetector import file_reader as read_mib

from stemcast.client import Frame, SeriesEnd, Start, Subscriber
from stemcast.formats.mib.writer import MibWriter
from stemcast.protocol import CREDIT, SUBSCRIBE
from stemcast.simulate import diffraction_patterns, simulate_mib

DOCS = Path(__file__).parents[2] / "docs"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


def expected_frames(path: Path, scan: tuple[int, int]) -> np.ndarray:
    """The frames of a run as rosettasciio reads them, in acquisition order."""
    [signal_dict] = read_mib(str(path), navigation_shape=scan)
    data = np.asarray(signal_dict["data"])
    return data.reshape(-1, *data.shape[-2:])


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


class Client:
    """A data client in a thread that keeps every frame and when the series ended.

    ``delay_s`` is spent after each frame, as a client that processes frames slowly does.
    """

    def __init__(self, endpoint: str, *, start: Start = "run", delay_s: float = 0.0) -> None:
        self.indices: list[int] = []
        self.frames: list[np.ndarray] = []
        self.end: dict[str, Any] | None = None
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self._delay_s = delay_s
        self._subscriber = Subscriber(endpoint, start=start, timeout_s=60)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._subscriber as subscriber:
                for event in subscriber:
                    if isinstance(event, Frame):
                        self.frames.append(event.data.copy())
                        self.indices.append(event.index)
                        if self._delay_s:
                            time.sleep(self._delay_s)
                    elif isinstance(event, SeriesEnd):
                        self.ended_at = time.monotonic()
                        self.end = event.header
                        return
        except BaseException as error:  # reported by join()
            self.error = error

    def join(self, timeout_s: float = 60.0) -> None:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        assert not self._thread.is_alive(), f"{len(self.indices)} frames in {timeout_s} s"


def test_a_slow_and_a_fast_client_get_every_frame_and_delay_nothing(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--output", str(tmp_path / "out"), "--convert", "emd")
    fast = Client(service.data)
    slow = Client(service.data, delay_s=0.02)
    scan = (16, 16)
    [path] = simulate_mib(
        tmp_path / "camera", name="paced", scan_shape=scan, frame_size=256, fps=500,
        hdr_scan_size=True,
    )  # fmt: skip
    written = time.monotonic()
    output = tmp_path / "out" / "camera" / "paced.emd"
    wait_for(output.exists, timeout_s=30)
    slow_when_converted = len(slow.indices)
    fast.join()
    slow.join()
    assert fast.ended_at is not None
    assert fast.ended_at - written < 1.0, f"series_end {fast.ended_at - written:.2f} s late"
    # 20 ms a frame: the slow client needs 5 s for the run; the conversion did not wait.
    assert slow_when_converted < 128, f"the slow client had {slow_when_converted} frames"
    expected = expected_frames(path, scan)
    for client in (fast, slow):
        assert client.indices == list(range(len(expected)))
        np.testing.assert_array_equal(np.stack(client.frames), expected)
        assert client.end is not None
        assert client.end["status"] == "complete"
        assert client.end["frames"] == len(expected)


def test_a_client_killed_midway_resumes_from_its_position_file(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    other = Receiver(service.data)
    position = tmp_path / "position"
    command = [
        sys.executable, "-m", "stemcast.cli", "subscribe", service.data, "--from", "run",
        "--position-file", str(position), "--json", "--series", "1", "--timeout", "30",
    ]  # fmt: skip

    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    wait_for(lambda: subscribed(service) == 2, timeout_s=30)
    scan = (32, 24)
    camera = threading.Thread(
        target=simulate_mib,
        args=(tmp_path / "camera",),
        kwargs={"name": "killed", "scan_shape": scan, "frame_size": 64, "fps": 400},
    )
    camera.start()
    printed: list[dict[str, Any]] = []
    for line in first.stdout:
        printed.append(json.loads(line))
        if sum(header["htype"] == "stemcast-frame-1.0" for header in printed) == 300:
            first.send_signal(signal.SIGKILL)
            break
    printed += [json.loads(line) for line in first.stdout]
    assert first.wait(10) == -signal.SIGKILL
    series, saved = position.read_text().strip().rpartition(":")[::2]
    saved_frame = int(saved)
    before = [header["frame"] for header in printed if header["htype"] == "stemcast-frame-1.0"]
    # The position is saved after each event is printed: a kill between the two prints
    # that event again after the restart, as the position says it was not done.
    assert before in (list(range(saved_frame)), list(range(saved_frame + 1)))
    assert printed[0]["htype"] == "stemcast-series-1.0"
    assert printed[0]["series"] == series

    second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    camera.join()
    after = [json.loads(line) for line in second.stdout.splitlines()]
    assert after[0]["htype"] == "stemcast-series-1.0"
    assert after[0]["first_frame"] == saved_frame
    frames = [header["frame"] for header in after if header["htype"] == "stemcast-frame-1.0"]
    total = scan[0] * scan[1]
    assert list(range(saved_frame)) + frames == list(range(total))
    assert after[-1]["htype"] == "stemcast-series_end-1.0"
    assert after[-1]["frames"] == total
    assert position.read_text().strip() == f"{series}:{total + 1}"
    # Started again after the end, it is owed nothing of the run, not even its start.
    third = subprocess.run(
        [*command[:-1], "2"], capture_output=True, text=True, timeout=60, check=False
    )
    assert third.returncode == 1
    assert third.stdout == ""
    # Nothing was taken away from the other client.
    [whole] = other.series(1)
    assert [header["frame"] for header in whole.headers] == list(range(total))


def test_a_client_joining_midway_from_the_run_start_gets_the_whole_run(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    early = Client(service.data)
    scan = (16, 24)
    camera = threading.Thread(
        target=simulate_mib,
        args=(tmp_path / "camera",),
        kwargs={"name": "joined", "scan_shape": scan, "frame_size": 64, "fps": 200},
    )
    camera.start()
    wait_until(lambda: len(early.indices), lambda frames: frames >= 100, timeout_s=30)
    assert camera.is_alive(), "the run ended before the second client joined"
    late = Client(service.data, start="run")
    camera.join()
    early.join()
    late.join()
    expected = expected_frames(tmp_path / "camera" / "joined.mib", scan)
    assert late.indices == list(range(len(expected)))
    np.testing.assert_array_equal(np.stack(late.frames), expected)
    assert late.end is not None
    assert late.end["frames"] == len(expected)


def test_a_stalled_client_costs_the_service_no_memory(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    assert service.http is not None
    stalled = Subscriber(service.data, start="run", timeout_s=60)
    # 4,096 frames of 256 x 256 uint16 pixels: 512 MiB, written as fast as possible.
    scan = (64, 64)
    simulate_mib(
        tmp_path / "camera", name="stalled", scan_shape=scan, frame_size=256, counter_depth=12,
        hdr_scan_size=True, pattern_pool=2,
    )  # fmt: skip
    wait_until(
        lambda: call("GET", f"{service.http}/runs")[1],
        lambda body: any(run["status"] == "complete" for run in body["runs"]),
        timeout_s=120,
    )
    peak_kb = peak_rss_kb(service.process.pid)
    assert peak_kb < 300_000, f"peak resident memory {peak_kb} kB"
    # The stalled client goes on: every frame is read back from the file.
    indices: list[int] = []
    with stalled:
        for event in stalled:
            if isinstance(event, Frame):
                indices.append(event.index)
            elif isinstance(event, SeriesEnd):
                break
    assert indices == list(range(scan[0] * scan[1]))
    peak_kb = peak_rss_kb(service.process.pid)
    assert peak_kb < 300_000, f"peak resident memory {peak_kb} kB after the catch-up"


def paced_latencies(endpoint: str, path: Path, frames: int, fps: float) -> np.ndarray:
    """Write a run at ``fps`` while a client keeps up; each frame's latency in ms, from the
    return of the ``write`` of its record to its arrival at the client."""
    pool = next(diffraction_patterns((8, 8), (256, 256), batch_frames=64))
    written: list[int] = []

    def write() -> None:
        with MibWriter(path, scan_shape=(100, frames // 100), frame_interval_s=1 / fps) as writer:
            start = time.perf_counter()
            for index in range(frames):
                delay = start + index / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                writer.write(pool[index % len(pool)])
                written.append(time.perf_counter_ns())

    arrivals: list[int] = []
    with Subscriber(endpoint, start="run", timeout_s=30) as subscriber:
        camera = threading.Thread(target=write)
        camera.start()
        for event in subscriber:
            if isinstance(event, Frame):
                arrivals.append(time.perf_counter_ns())
                assert event.index == len(arrivals) - 1
            elif isinstance(event, SeriesEnd):
                break
        camera.join()
    return (np.array(arrivals) - np.array(written)) / 1e6


def test_a_client_keeping_up_at_1_khz_gets_frames_within_milliseconds(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    # A measurement spoiled by other work on a shared machine is made again, at most twice;
    # benchmarks/bench_live.py measures the figures precisely.
    measured = []
    for attempt in range(3):
        latencies = paced_latencies(
            service.data, tmp_path / "camera" / f"paced{attempt}.mib", frames=3000, fps=1000.0
        )
        p50, p99 = np.percentile(latencies, [50, 99])
        measured.append(f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        if p50 < 5.0 and p99 < 50.0:
            return
    raise AssertionError(f"latency at 1 kHz above p50 5 ms or p99 50 ms: {measured}")


@pytest.mark.parametrize("taken", [0, 10])
def test_a_client_that_stops_answering_is_forgotten_and_others_go_on(
    daemon: Callable[..., Daemon], tmp_path: Path, taken: int
) -> None:
    config = tmp_path / "stemcast.toml"
    config.write_text("client_timeout_s = 1.0\n")
    service = daemon("--config", str(config))
    other = Receiver(service.data)
    scan = (16, 16)
    camera = threading.Thread(
        target=simulate_mib,
        args=(tmp_path / "camera",),
        kwargs={"name": "silent", "scan_shape": scan, "frame_size": 64, "fps": 200},
    )
    camera.start()
    # The run is being followed: the client below subscribes from its start.
    wait_until(
        lambda: sum(len(series.frames) for series in other.found.values()),
        lambda frames: frames > 0,
    )
    stopping = Subscriber(service.data, start="run", timeout_s=30)
    identity = stopping.socket.routing_id.hex()
    indices: list[int] = []
    while len(indices) < taken:
        event = stopping.receive()
        if isinstance(event, Frame):
            indices.append(event.index)
    # It stops answering (no credit, no heartbeat) with frames waiting in its socket, but
    # stays connected: after 1 s the service forgets it, and says so.
    wait_for(lambda: f"data client {identity}: silent, forgotten" in service.log_text())
    wait_until(lambda: data_clients(service), lambda clients: clients == 1.0)
    camera.join()
    [series] = other.series(1)
    expected = expected_frames(tmp_path / "camera" / "silent.mib", scan)
    np.testing.assert_array_equal(np.stack(series.frames), expected)
    # When it speaks again it goes on from its position, after the run has ended.
    with stopping:
        for event in stopping:
            if isinstance(event, Frame):
                indices.append(event.index)
            elif isinstance(event, SeriesEnd):
                break
    assert indices == list(range(len(expected)))


def subscribed(service: Daemon) -> int:
    """How many data clients have subscribed to the daemon so far."""
    return len(re.findall(r"data client \w+: starts at", service.log_text()))


def data_clients(service: Daemon) -> float:
    """The daemon's gauge of connected data clients."""
    from urllib.request import ProxyHandler, build_opener

    with build_opener(ProxyHandler({})).open(f"{service.http}/metrics", timeout=10) as response:
        body = response.read().decode()
    match = re.search(r'^stemcast_subscribers\{channel="data"\} (\S+)$', body, re.M)
    assert match is not None, "no stemcast_subscribers gauge"
    return float(match[1])


def test_the_plain_pyzmq_client_of_the_protocol_docs_gets_every_frame(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    text = (DOCS / "protocol.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    [client] = [block for block in blocks if "zmq.DEALER" in block]
    assert len(client.splitlines()) <= 30
    service = daemon()
    script = tmp_path / "client.py"
    script.write_text(client.replace("tcp://127.0.0.1:5555", service.data))
    process = subprocess.Popen(
        [sys.executable, "-u", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scan = (12, 10)
    try:
        wait_for(lambda: subscribed(service) == 1, timeout_s=30)
        [path] = simulate_mib(
            tmp_path / "camera", name="plain", scan_shape=scan, frame_size=64, fps=500
        )
        expected = expected_frames(path, scan)
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.split())
            if lines[-1][0] == "stemcast-series_end-1.0":
                break
    finally:
        process.kill()
        _, errors = process.communicate(timeout=10)
    assert not errors
    frames = [line for line in lines if line[0] == "frame"]
    assert [int(line[1]) for line in frames] == list(range(len(expected)))
    assert [int(line[2]) for line in frames] == [int(frame.sum()) for frame in expected]
    assert lines[-1][1:] == ["complete", str(len(expected))]


def test_a_malformed_position_file_is_refused_naming_it(tmp_path: Path) -> None:
    position = tmp_path / "position"
    position.write_text("not a position\n")
    result = subprocess.run(
        [sys.executable, "-m", "stemcast.cli", "subscribe", "tcp://127.0.0.1:9",
         "--position-file", str(position)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert str(position) in result.stderr
    assert "SERIES:FRAME" in result.stderr


def test_frames_in_flight_to_a_client_are_bounded_in_bytes_whatever_its_credit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zmq

    # 64 x 64 frames of 12-bit counts, sent as uint16: 8 KiB each; room for 5 of them.
    frame_bytes = 64 * 64 * 2
    bound = 5
    monkeypatch.setenv("STEMCAST_DATA_CREDIT_BYTES", str(bound * frame_bytes))
    with daemons(tmp_path) as start:
        service = start()
        assert service.http is not None
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        socket.connect(service.data)
        try:
            socket.send(json.dumps({"htype": SUBSCRIBE, "start": "run", "credit": 100}).encode())
            simulate_mib(
                tmp_path / "camera", name="bounded", scan_shape=(8, 8), frame_size=64,
                counter_depth=12, hdr_scan_size=True,
            )  # fmt: skip
            wait_until(
                lambda: call("GET", f"{service.http}/runs")[1],
                lambda body: any(run["status"] == "complete" for run in body["runs"]),
            )

            def frames_received(seconds: float) -> list[int]:
                """Frame indices received within ``seconds``, giving no credit back."""
                indices: list[int] = []
                deadline = time.monotonic() + seconds
                while socket.poll(max(1, round((deadline - time.monotonic()) * 1000))):
                    header = json.loads(socket.recv_multipart()[0])
                    if header["htype"] == "stemcast-frame-1.0":
                        indices.append(header["frame"])
                return indices

            # A credit of 100 messages, but at most 5 frames' bytes before credit comes back.
            first = frames_received(1.0)
            assert 1 <= len(first) <= bound, first
            assert first == list(range(len(first)))
            socket.send(json.dumps({"htype": CREDIT, "credit": len(first) + 1}).encode())
            second = frames_received(1.0)
            assert 1 <= len(second) <= bound, second
            assert second == list(range(len(first), len(first) + len(second)))
        finally:
            socket.close()
            context.term()


def test_a_client_whose_credit_exceeds_the_bound_in_bytes_gets_every_frame_without_stalls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = (16, 16)
    # Two 64 x 64 uint16 frames in flight at most, against the subscriber's credit of 128:
    # it must give credit back as soon as it has read what it got.
    monkeypatch.setenv("STEMCAST_DATA_CREDIT_BYTES", str(2 * 64 * 64 * 2))
    with daemons(tmp_path) as start:
        service = start()
        client = Client(service.data)
        simulate_mib(
            tmp_path / "camera", name="small", scan_shape=scan, frame_size=64, counter_depth=12,
            hdr_scan_size=True,
        )  # fmt: skip
        began = time.monotonic()
        client.join(60)
    assert client.indices == list(range(scan[0] * scan[1]))
    # A client giving credit only after half its credit (64 messages) or its 1 s heartbeat
    # would wait a second for every two frames: 128 s.
    assert client.ended_at is not None
    assert client.ended_at - began < 20
    expected = expected_frames(tmp_path / "camera" / "small.mib", scan)
    np.testing.assert_array_equal(np.stack(client.frames), expected)
