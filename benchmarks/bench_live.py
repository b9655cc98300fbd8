"""Live service throughput and latency: simulator -> ``stemcast serve`` -> data client.

Three processes, as in production: the camera simulator (``stemcast simulate``) writes a
12-bit 256x256 Merlin run into a folder, the service (``stemcast serve``, a subprocess) follows
the growing file and serves every frame on its data channel (ROUTER, credit flow control),
and this script receives them with :class:`stemcast.client.Subscriber`, checking that every
frame arrives, in order, once.

* **Throughput**: the simulator writes ``--frames`` frames as fast as it can (a pool of
  patterns, so that drawing random patterns is not what is timed); frames/s and GB/s from
  the first to the last frame received, while the three processes share the machine. Then
  the same finished file appears again under a new name and the service drains it from the
  page cache: the service's own ceiling. Then a new client asks for the first run again from
  its start, after it ended: every frame is read back from the file (a client catching up).
  The limit, in the same run: plain pyzmq PUSH/PULL of the same number of 256x256
  ``uint16`` frames from memory (a subprocess pushing a small header and the frame buffer,
  zero-copy), received the same way.
* **The writers' ceilings**: before the service starts, the same number of frame-sized
  records of zeros is appended to a file in 8 MiB blocks (the fastest any writer can fill
  this folder), and the simulator writes the same run in this process into a folder nobody
  watches. Following the simulator cannot be faster than either, whatever the service does;
  ``--workdir /dev/shm`` puts the folders on a RAM-backed file system.
* **Latency**: a writer thread appends one frame every millisecond (1 kHz) with
  :class:`stemcast.writers.mib.MibWriter` and notes when each ``write`` returned; latency is
  the receive time minus that time (same clock), percentiles over ``--latency-frames``.

Usage::

    python benchmarks/bench_live.py [--frames 5000] [--latency-frames 3000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from stemcast.client import Frame, SeriesEnd, SeriesStart, Subscriber

FRAME_SHAPE = (256, 256)
FRAME_BYTES = 256 * 256 * 2
_READY = re.compile(r"data (?P<data>tcp://\S+), preview")


def start_service(directory: Path, registry: Path) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable, "-m", "stemcast.cli", "serve", "--quiet", "--watch", str(directory),
        "--data-endpoint", "tcp://127.0.0.1:0", "--preview-endpoint", "tcp://127.0.0.1:0",
        "--http", "127.0.0.1:0", "--registry", str(registry),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    match = _READY.search(process.stdout.readline())
    assert match is not None, "the service did not start"
    return process, match["data"]


def simulate(directory: Path, name: str, frames: int, fps: float) -> subprocess.Popen[str]:
    width = 100
    command = [
        sys.executable, "-m", "stemcast.cli", "simulate", str(directory), "--name", name,
        "--scan", f"{width}x{frames // width}", "--frame-size", "256", "--depth", "12",
        "--fps", str(fps), "--pattern-pool", "4", "--flyback", "0",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, text=True)


def write_limit(directory: Path, frames: int) -> float:
    """Frames/s of the plainest possible writer: 8 MiB blocks of zeros appended to a file.

    No camera, simulator or service can write frames into this folder faster than this.
    """
    block = bytes(8 * 2**20)
    total = frames * (FRAME_BYTES + 384)
    path = directory / "zeros.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(0, total, len(block)):
            os.write(fd, block)
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return frames / seconds


def simulator_alone(directory: Path, frames: int) -> float:
    """Frames/s the simulator writes with nobody reading: the ceiling of following it."""
    from stemcast.simulate import simulate_mib

    start = time.perf_counter()
    simulate_mib(
        directory, name="alone", scan_shape=(100, frames // 100), frame_size=256,
        counter_depth=12, pattern_pool=4, flyback_s=0,
    )  # fmt: skip
    return frames / (time.perf_counter() - start)


def receive(subscriber: Subscriber, frames: int) -> tuple[str, list[int]]:
    """Receive one series, checking order and count; return its id and the receive times (ns)."""
    arrivals: list[int] = []
    series = ""
    for event in subscriber:
        now = time.perf_counter_ns()
        if isinstance(event, SeriesStart):
            series = event.series
        elif isinstance(event, Frame):
            assert event.series == series
            assert event.index == len(arrivals), (event.index, len(arrivals))
            assert event.data.nbytes == FRAME_BYTES
            arrivals.append(now)
        elif isinstance(event, SeriesEnd):
            assert event.header["frames"] == len(arrivals) == frames, (event.header, len(arrivals))
            return series, arrivals
    raise AssertionError("unreachable: the subscriber iterates until it times out")


def rate(arrivals: list[int]) -> float:
    return (len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) / 1e9)


def paced_writer(path: Path, frames: int, fps: float, written: list[int]) -> None:
    """Write ``frames`` frames at ``fps``, noting when each write returned (ns)."""
    from stemcast.simulate import diffraction_patterns
    from stemcast.writers.mib import MibWriter

    pool = next(diffraction_patterns((8, 8), FRAME_SHAPE, batch_frames=64))
    with MibWriter(path, scan_shape=(100, frames // 100), frame_interval_s=1 / fps) as writer:
        start = time.perf_counter()
        for index in range(frames):
            delay = start + index / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            writer.write(pool[index % len(pool)])
            written.append(time.perf_counter_ns())


PLAIN_PUSHER = """
import sys, json, numpy as np, zmq
frames = int(sys.argv[2])
pool = np.random.default_rng(0).integers(0, 4096, (64, 256, 256), dtype=np.uint16)
push = zmq.Context().socket(zmq.PUSH)
push.sndhwm = 64
push.connect(sys.argv[1])
for index in range(frames):
    header = json.dumps({"htype": "plain", "frame": index}).encode()
    push.send_multipart([header, pool[index % 64]], copy=False)
push.send_multipart([b'{"htype": "end"}'])
push.close(linger=-1)
"""


def plain_pyzmq(frames: int) -> float:
    """Frames/s of plain pyzmq PUSH/PULL of frames from memory, process to process."""
    context = zmq.Context.instance()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    pusher = subprocess.Popen(
        [sys.executable, "-c", PLAIN_PUSHER, f"tcp://127.0.0.1:{port}", str(frames)]
    )
    first = last = 0.0
    received = 0
    while True:
        parts = pull.recv_multipart(copy=False)
        if json.loads(bytes(parts[0].buffer))["htype"] == "end":
            break
        last = time.perf_counter()
        first = first or last
        received += 1
    pusher.wait()
    pull.close()
    assert received == frames
    return (received - 1) / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--latency-frames", type=int, default=3000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-live-") as scratch:
        folder = Path(scratch) / "camera"
        folder.mkdir()
        (Path(scratch) / "alone").mkdir()
        limit_fps = write_limit(Path(scratch) / "alone", args.frames)
        alone_fps = simulator_alone(Path(scratch) / "alone", args.frames)
        service, endpoint = start_service(folder, Path(scratch) / "registry.sqlite3")
        subscriber = Subscriber(endpoint, start="run", timeout_s=60)
        try:
            writer = simulate(folder, "fast", args.frames, 0)
            series, arrivals = receive(subscriber, args.frames)
            live_fps = rate(arrivals)
            writer.wait()
            shutil.copy(folder / "fast.hdr", folder / "again.hdr")
            os.link(folder / "fast.mib", folder / "again.mib")
            drain_fps = rate(receive(subscriber, args.frames)[1])
            with Subscriber(endpoint, start=(series, 0), timeout_s=60) as late:
                catch_up_fps = rate(receive(late, args.frames)[1])
            written: list[int] = []
            thread = threading.Thread(
                target=paced_writer,
                args=(folder / "paced.mib", args.latency_frames, 1000.0, written),
            )
            thread.start()
            arrivals = receive(subscriber, args.latency_frames)[1]
            thread.join()
            latencies = (np.array(arrivals) - np.array(written)) / 1e6
        finally:
            subscriber.close()
            service.terminate()
            service.wait(30)
    plain_fps = plain_pyzmq(args.frames)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, Python {platform.python_version()}, pyzmq {zmq.__version__}")
    print(f"{'':40}{'frames/s':>10}{'GB/s':>8}")
    for name, fps in (
        ("write limit (zeros in 8 MiB blocks)", limit_fps),
        ("simulator alone (nobody reading)", alone_fps),
        ("stemcast serve, following simulator", live_fps),
        ("stemcast serve, draining the file", drain_fps),
        ("stemcast serve, client catching up", catch_up_fps),
        ("plain pyzmq PUSH/PULL (memory)", plain_fps),
    ):
        print(f"{name:40}{fps:10.0f}{fps * FRAME_BYTES / 1e9:8.2f}")
    print(
        f"ratio to plain pyzmq: {live_fps / plain_fps:.0%} following the simulator, "
        f"{drain_fps / plain_fps:.0%} draining, {catch_up_fps / plain_fps:.0%} catching up; "
        f"the simulator alone writes at {alone_fps / plain_fps:.0%} of plain pyzmq, and the "
        f"service follows it at {live_fps / alone_fps:.0%} of that; plain writes into this "
        f"folder reach {limit_fps / plain_fps:.0%} of plain pyzmq"
    )
    print(
        f"latency at 1 kHz ({len(latencies)} frames): p50 {p50:.2f} ms, p90 {p90:.2f} ms, "
        f"p99 {p99:.2f} ms, max {latencies.max():.2f} ms"
    )


if __name__ == "__main__":
    main()
