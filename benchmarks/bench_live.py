"""The live path at the limit: camera simulator, data channel, follow path, readers, converters.

Each figure is measured against its limit in the same run, as production runs it (separate
processes on the same machine):

* **plain pyzmq** (``plain``): PUSH/PULL of the frames of the runs below (256 x 256
  ``uint16``, a small JSON header and the frame sent without a copy) from memory, process to
  process: the limit of the data channel. The pusher's CPU-seconds per GB are reported too.
* **simulator** (``simulator``): ``simulate_mib`` at ``--fps 0`` (a 12-bit 256 x 256 run, in
  a process of its own, timed from its first write to its last) against ``dd`` writing as
  many bytes of zeros into the same folder in blocks of 64 records.
* **camera rates** (``rates``): the simulator at the fastest cameras' frame rates (Merlin
  1-bit RAW 256 x 256 at 18 kHz, Merlin quad 12-bit 512 x 512 at 2 kHz, TVIPS 512 x 512
  16-bit at 2 kHz), with 0.5 ms fly-backs after each line for Merlin: the rate held, from
  the first write to the last, against the schedule; and, just before and just after it, a
  plain writer (``os.write`` of zeros) on the same schedule into the same folder: a folder
  that cannot take the bytes that fast holds back any writer.
* **data channel** (``drain``): ``stemcast serve`` drains a finished 0.5 GB run (it appears in
  the folder at once) into one :class:`stemcast.client.Subscriber`; then a second client
  reads the ended run back from its start (``catch-up``). CPU-seconds of the service (all its
  threads) and of the client per GB received. Then the bound of any server that reads its
  frames from the camera's files: a *file pusher* (:func:`file_pusher`), plain pyzmq PUSH of
  the run's frames read back and decoded as the service reads them, to a plain PULL.
* **follow path** (``follow``): the file pusher follows the simulator writing at full speed
  (the bound); then the simulator writes into the folder the service watches and one client
  receives every frame, without conversion and with the run converted live to EMD
  (``--convert emd``): at full speed (``--fps 0``, 1 GB), and at 2 kHz (a Merlin 256 x 256
  12-bit camera, 262 MB/s, 6000 frames). Lag: each frame's arrival at the client minus the
  end of the write that put it in the file (the simulator notes the time of each write; one
  clock, the machine's monotonic clock). Nothing may be lost.
* **latency** (``latency``): a writer thread appends one frame every millisecond; latency is
  its arrival minus the return of its ``write``.
* **readers** (``readers``): the virtual bright-field image of a 0.5 GB 12-bit Merlin file
  (``benchmarks/bench_mib.py``'s file): stemcast lazy (``file_reader(lazy=True)``, sum over
  the signal axes) and ``virtual_image`` against the page-cache limit (a memory-mapped
  ``uint64`` sum of the file) and LiberTEM (``SumSigUDF``, pipelined executor, its context
  made once per round).
* **conversion** (``convert``): ``stemcast convert RUN --to blockfile`` against the reference
  (``rsciio.quantumdetector.file_reader`` then ``rsciio.blockfile.file_writer``, eager and
  lazy), each a whole process (interpreter start and imports included) on a 0.3 GB 12-bit
  run in the page cache; ``sync`` before each.

``--repeat N`` runs every section N times, interleaved; the summary gives the median and the
range of each figure, and checks it against its goal. Every wait has a timeout.

Usage::

    python benchmarks/bench_live.py --all --repeat 5
    python benchmarks/bench_live.py [--sections plain,drain,...] [--repeat N] [--workdir DIR]

``--workdir`` (default: ``/dev/shm`` when it exists) holds the camera folders; ``--data``
(default ``benchmarks/data``) the cached files of the readers and conversion sections.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from machine import describe_machine
from stemcast.client import Frame, SeriesEnd, SeriesStart, Subscriber

FRAME_SHAPE = (256, 256)
FRAME_BYTES = 256 * 256 * 2
RECORD_BYTES = 384 + FRAME_BYTES
SECTIONS = ("plain", "simulator", "rates", "drain", "follow", "latency", "readers", "convert")
DEFAULT_SECTIONS = ("plain", "simulator", "rates", "drain", "follow", "latency")
_READY = re.compile(r"data (?P<data>tcp://\S+), preview \S+, http (?P<http>http://\S+)")


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A figure's goal: ``value >= at_least`` or ``value <= at_most`` (or both)."""

    text: str
    at_least: float | None = None
    at_most: float | None = None

    def met(self, value: float) -> bool:
        return (self.at_least is None or value >= self.at_least) and (
            self.at_most is None or value <= self.at_most
        )


class Figures:
    """Every measurement of every round, by name, with its unit and goal."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)
        self.units: dict[str, str] = {}
        self.goals: dict[str, Goal] = {}
        self.order: list[str] = []

    def add(self, name: str, value: float, unit: str, goal: Goal | None = None) -> None:
        if name not in self.units:
            self.order.append(name)
        self.values[name].append(value)
        self.units[name] = unit
        if goal is not None:
            self.goals[name] = goal
        print(f"  {name}: {value:.4g} {unit}", flush=True)

    def summary(self) -> None:
        print("\n| figure | unit | median | min | max | runs | goal | met |")
        print("|---|---|---:|---:|---:|---:|---|---|")
        for name in self.order:
            values = self.values[name]
            median = statistics.median(values)
            goal = self.goals.get(name)
            met = "" if goal is None else ("yes" if goal.met(median) else "**no**")
            print(
                f"| {name} | {self.units[name]} | {median:.4g} | {min(values):.4g} | "
                f"{max(values):.4g} | {len(values)} | {goal.text if goal else ''} | {met} |"
            )


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The process's next line of output, or an error after ``timeout_s``."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            process.kill()
            raise TimeoutError(f"no output from {process.args!r} within {timeout_s} s")
    return process.stdout.readline()


def stop(process: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """Terminate a process and wait for it, killing it if it does not stop in time."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


@contextlib.contextmanager
def service(
    folder: Path, work: Path, *options: str, timeout_s: float = 60.0
) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``stemcast serve`` watching ``folder``: the process, its data endpoint and HTTP URL."""
    command = [
        sys.executable, "-m", "stemcast.cli", "serve", "--quiet", "--watch", str(folder),
        "--data-endpoint", "tcp://127.0.0.1:0", "--preview-endpoint", "tcp://127.0.0.1:0",
        "--http", "127.0.0.1:0", "--registry", str(work / "registry.sqlite3"), *options,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        match = _READY.search(read_line(process, timeout_s))
        if match is None:
            raise RuntimeError("the service did not start")
        yield process, match["data"], match["http"]
    finally:
        stop(process)


# --------------------------------------------------------------------------------------------
# The camera: the simulator in a process of its own, noting when each write returned
# --------------------------------------------------------------------------------------------


def camera_child(spec: dict[str, Any]) -> None:
    """Run the simulator; write ``(time_ns, bytes)`` of every write and the pool time as JSON.

    The writers' gathered-write function is wrapped to note when each call began and ended
    (``time.monotonic_ns``, the clock the benchmark uses too).
    """
    import stemcast.formats.mib.writer as mib_writer
    import stemcast.formats.tvips.writer as tvips_writer
    from stemcast.simulate import simulate_mib, simulate_tvips

    writes: list[tuple[int, int, int]] = []
    original = mib_writer.write_all

    def noted(fd: int, buffers: Any) -> None:
        began = time.monotonic_ns()
        original(fd, buffers)
        writes.append((began, time.monotonic_ns(), sum(buffer.nbytes for buffer in buffers)))

    mib_writer.write_all = noted  # type: ignore[assignment]
    tvips_writer.write_all = noted  # type: ignore[assignment]
    options = dict(spec["options"])
    options["scan_shape"] = tuple(options["scan_shape"])
    started = time.monotonic_ns()
    if spec["format"] == "tvips":
        simulate_tvips(spec["folder"], **options)
    else:
        simulate_mib(spec["folder"], **options)
    finished = time.monotonic_ns()
    with open(spec["result"], "w") as stream:
        json.dump({"writes": writes, "started": started, "finished": finished}, stream)


@dataclass
class CameraRun:
    """What the simulator process did: its writes (began ns, ended ns, bytes)."""

    writes: np.ndarray
    started: int
    finished: int

    def frame_written_ns(self, record: int) -> np.ndarray:
        """When the write of each frame returned (writes of less than a record hold none)."""
        ends, sizes = self.writes[:, 1], self.writes[:, 2]
        frames = sizes // record
        return np.repeat(ends[frames > 0], frames[frames > 0])


def camera(
    folder: Path, fmt: str, options: dict[str, Any], timeout_s: float
) -> tuple[subprocess.Popen[str], Callable[[], CameraRun]]:
    """Start the camera process; return it and a function that waits for its result."""
    result = folder.parent / f".camera-{os.getpid()}-{time.monotonic_ns()}.json"
    spec = {"folder": str(folder), "format": fmt, "options": options, "result": str(result)}
    process = subprocess.Popen(
        [sys.executable, __file__, "--child-camera", json.dumps(spec)], text=True
    )

    def wait() -> CameraRun:
        process.wait(timeout_s)
        if process.returncode:
            raise RuntimeError(f"the camera process failed ({process.returncode})")
        data = json.loads(result.read_text())
        result.unlink()
        writes = np.array(data["writes"], dtype=np.int64).reshape(-1, 3)
        return CameraRun(writes, data["started"], data["finished"])

    return process, wait


def run_camera(folder: Path, fmt: str, options: dict[str, Any], timeout_s: float) -> CameraRun:
    process, wait = camera(folder, fmt, options, timeout_s)
    try:
        return wait()
    finally:
        stop(process)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

PLAIN_PUSHER = """
import json, sys, time
import numpy as np, zmq
frames = int(sys.argv[2])
pool = np.random.default_rng(0).integers(0, 4096, (64, 256, 256), dtype=np.uint16)
context = zmq.Context()
push = context.socket(zmq.PUSH)
push.sndhwm = 64
push.connect(sys.argv[1])
cpu = time.process_time()
for index in range(frames):
    header = json.dumps({"htype": "plain", "frame": index}).encode()
    push.send_multipart([header, pool[index % 64]], copy=False)
end = {"htype": "end", "cpu": time.process_time() - cpu}
push.send_multipart([json.dumps(end).encode()])
push.close(linger=-1)
# The frames were sent without a copy: the pool must outlive the context, whose end waits
# until every queued frame is sent. Left to the interpreter's exit, the pool could be freed
# while ZeroMQ's I/O thread still sends from it (EFAULT, "Bad address (src/tcp.cpp)").
context.term()
"""


def plain_pyzmq(frames: int, timeout_s: float) -> tuple[float, float, float]:
    """GB/s of plain PUSH/PULL from memory; the pusher's and the puller's CPU-seconds per GB."""
    return pull_frames([sys.executable, "-c", PLAIN_PUSHER], frames, timeout_s)


def file_pusher(spec: dict[str, Any]) -> None:
    """Plain pyzmq PUSH of a Merlin run's frames read from its file, as the service reads them.

    The least a service that serves frames from the camera's files must do: wait for complete
    records (one ``stat`` a millisecond while the file does not grow, as the service's
    follower), read them back in batches of the service's batch size into reused buffers,
    decode them (byte swap and row flip to the wire's orientation), take their timestamps,
    and send each with a small JSON header without a copy. No credit, no catalog, no event
    loop, no metrics: the bound that the data channel's own work is measured against.
    """
    from stemcast.batch import BufferPool
    from stemcast.service.live.tail import MibSource, NotReady

    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.sndhwm = 64
    push.connect(spec["endpoint"])
    path, frames = Path(spec["path"]), int(spec["frames"])
    step = max(1, int(spec["batch_bytes"]) // FRAME_BYTES)
    buffers = BufferPool()
    source: MibSource | None = None
    sent = 0
    cpu = time.process_time()
    while sent < frames:
        if source is None:
            with contextlib.suppress(FileNotFoundError, NotReady):
                source = MibSource.open(path)
            if source is None:
                time.sleep(0.001)
            continue
        if source.frames <= sent:
            time.sleep(0.001)
            if source.grew():
                source.refresh(rescan=False)
            continue
        stop = min(source.frames, sent + step, frames)
        batch = source.read(sent, stop, buffers)
        times = source.times_ns(batch.headers, sent)
        stamps = [None] * len(batch) if times is None else times.tolist()
        for offset in range(len(batch)):
            header = {"htype": "frame", "frame": sent + offset, "time_ns": stamps[offset]}
            push.send_multipart([json.dumps(header).encode(), batch.frames[offset]], copy=False)
        sent = stop
        del batch
    end = {"htype": "end", "cpu": time.process_time() - cpu}
    push.send_multipart([json.dumps(end).encode()])
    push.close(linger=-1)
    context.term()


def plain_from_file(
    path: Path, frames: int, timeout_s: float, camera_start: Callable[[], Any] | None = None
) -> tuple[float, float, float]:
    """:func:`file_pusher` on ``path`` (a finished run, or one ``camera_start`` begins to write).

    Returns GB/s received and the pusher's and the puller's CPU-seconds per GB.
    """
    from stemcast.service.config import ServiceSettings

    spec = {
        "path": str(path),
        "frames": frames,
        "batch_bytes": ServiceSettings.model_fields["batch_bytes"].default,
    }
    command = [sys.executable, __file__, "--child-file-pusher", json.dumps(spec)]
    return pull_frames(command, frames, timeout_s, camera_start)


def pull_frames(
    pusher: list[str],
    frames: int,
    timeout_s: float,
    started: Callable[[], Any] | None = None,
) -> tuple[float, float, float]:
    """Receive ``frames`` frames from the ``pusher`` command, given the endpoint to connect to.

    ``started`` is called once the pusher runs (to start a camera). Returns GB/s, from the
    first frame received to the last, and the pusher's and the puller's CPU-seconds per GB.
    """
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.linger = 0
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    if "--child-file-pusher" in pusher:
        spec = json.loads(pusher[-1])
        spec["endpoint"] = f"tcp://127.0.0.1:{port}"
        pusher = [*pusher[:-1], json.dumps(spec)]
    else:
        pusher = [*pusher, f"tcp://127.0.0.1:{port}", str(frames)]
    process = subprocess.Popen(pusher)
    first = last = 0.0
    received = 0
    pusher_cpu = 0.0
    own = time.process_time()
    try:
        if started is not None:
            started()
        while True:
            if not pull.poll(round(timeout_s * 1000)):
                raise TimeoutError(f"plain pyzmq: nothing received for {timeout_s} s")
            parts = pull.recv_multipart(copy=False)
            header = json.loads(parts[0].bytes)
            if header["htype"] == "end":
                pusher_cpu = header["cpu"]
                break
            np.frombuffer(parts[1].buffer, np.uint16)
            last = time.perf_counter()
            first = first or last
            received += 1
        own = time.process_time() - own
        process.wait(timeout_s)
    finally:
        stop(process)
        pull.close()
        context.term()
    if received != frames:
        raise RuntimeError(f"plain pyzmq: {received} of {frames} frames")
    gigabytes = frames * FRAME_BYTES / 1e9
    return (
        (received - 1) * FRAME_BYTES / (last - first) / 1e9,
        pusher_cpu / gigabytes,
        own / (gigabytes),
    )


def dd_rate(folder: Path, nbytes: int, block: int, timeout_s: float) -> float:
    """GB/s of ``dd`` writing ``nbytes`` of zeros into ``folder`` in blocks of ``block``."""
    target = folder / "dd.bin"
    count = max(1, nbytes // block)
    started = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", f"bs={block}", f"count={count}"],
        check=True,
        capture_output=True,
        timeout=timeout_s,
    )
    seconds = time.perf_counter() - started
    target.unlink()
    return count * block / seconds / 1e9


def write_rate(run: CameraRun) -> float:
    """GB/s of the camera from the start of its first write to the end of its last."""
    nbytes = int(run.writes[:, 2].sum())
    return nbytes / ((run.writes[-1, 1] - run.writes[0, 0]) / 1e9) / 1e9


def section_simulator(figures: Figures, work: Path, args: argparse.Namespace) -> None:
    folder = work / "alone"
    folder.mkdir(exist_ok=True)
    frames = args.simulator_frames
    width = 100
    options = {
        "name": "alone", "scan_shape": [width, frames // width], "frame_size": 256,
        "counter_depth": 12, "flyback_s": 0.0,
    }  # fmt: skip
    dd = dd_rate(folder, frames * RECORD_BYTES, 64 * RECORD_BYTES, args.timeout)
    run = run_camera(folder, "mib", options, args.timeout)
    simulator = write_rate(run)
    pool_s = (run.writes[0, 0] - run.started) / 1e9
    for path in folder.iterdir():
        path.unlink()
    figures.add("dd, 12-bit 256x256 records", dd, "GB/s")
    figures.add("simulator --fps 0, 12-bit 256x256", simulator, "GB/s")
    figures.add("simulator / dd", simulator / dd, "ratio", Goal(">= 0.9", at_least=0.9))
    figures.add("simulator pattern pool, before the first frame", pool_s, "s")


#: Cameras at their fastest: (name, format, options, frames).
CAMERAS = (
    (
        "Merlin 1-bit RAW 256x256 at 18 kHz",
        "mib",
        {"frame_size": 256, "counter_depth": 1, "raw": True, "fps": 18000.0},
        (256, 144),
    ),
    (
        "Merlin quad 12-bit 512x512 at 2 kHz",
        "mib",
        {"frame_size": 512, "counter_depth": 12, "quad": True, "fps": 2000.0},
        (32, 32),
    ),
    (
        "TVIPS 512x512 16-bit at 2 kHz",
        "tvips",
        {"frame_size": 512, "bits": 16, "fps": 2000.0},
        (32, 32),
    ),
)


def paced_plain_writer(
    path: Path, record_bytes: int, lines: int, per_line: int, fps: float, flyback_s: float
) -> float:
    """A plain writer on a camera's schedule: the rate held, against the schedule.

    The limit of the ``rates`` section: ``os.write`` of zeros from one buffer, frame ``i`` of
    line ``n`` due ``i / fps + n * flyback_s`` after the first, every frame due written at
    once, at most every millisecond (the simulator's schedule), into the same folder.
    """
    frames = lines * per_line
    block = memoryview(np.zeros(record_bytes * per_line, np.uint8))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    first_write = last_write = 0
    try:
        start = time.monotonic()
        for number in range(lines):
            first, done = number * per_line, 0
            line_start = start + number * flyback_s
            while done < per_line:
                now = time.monotonic()
                due = min(per_line, math.floor((now - line_start) * fps) + 1 - first)
                if due > done:
                    last_write = time.monotonic_ns()
                    first_write = first_write or last_write
                    os.write(fd, block[: (due - done) * record_bytes])
                    done = due
                    wake = max(line_start + (first + done) / fps, now + 0.001)
                else:
                    wake = line_start + (first + done) / fps
                delay = wake - time.monotonic()
                if done < per_line and delay > 0:
                    time.sleep(delay)
    finally:
        os.close(fd)
        path.unlink()
    planned = (frames - 1) / fps + (lines - 1) * flyback_s
    return planned / ((last_write - first_write) / 1e9)


def section_rates(figures: Figures, work: Path, args: argparse.Namespace) -> None:
    """The simulator at the cameras' rates, between two plain writers on the same schedule."""
    folder = work / "rates"
    folder.mkdir(exist_ok=True)
    for name, fmt, camera_options, scan in CAMERAS:
        options = {"name": "rate", "scan_shape": list(scan), **camera_options}
        flyback = 0.0005 if fmt == "mib" else 0.0
        if fmt == "mib":
            options["flyback_s"] = flyback
        fps = float(camera_options["fps"])
        frames = scan[0] * scan[1]
        side = int(camera_options["frame_size"])
        depth = int(camera_options.get("counter_depth", camera_options.get("bits", 16)))
        pixel_bytes = {1: 1 / 8, 6: 1, 8: 1, 12: 2, 16: 2, 24: 4}[depth]
        record = int(side * side * pixel_bytes) + (768 if fmt == "mib" else 192)
        # One line of the schedule per scan row (a TVIPS camera has no fly-back).
        plain = [paced_plain_writer(folder / "plain.bin", record, scan[1], scan[0], fps, flyback)]
        run = run_camera(folder, fmt, options, args.timeout)
        plain.append(
            paced_plain_writer(folder / "plain.bin", record, scan[1], scan[0], fps, flyback)
        )
        planned = (frames - 1) / fps + (scan[1] - 1) * flyback
        # The first write of a TVIPS series is its main header: time from the first frame.
        first = 1 if fmt == "tvips" else 0
        elapsed = (run.writes[-1, 0] - run.writes[first, 0]) / 1e9
        for path in folder.iterdir():
            path.unlink()
        held = planned / elapsed
        figures.add(f"rate held, {name}", held, "x set")
        figures.add(f"rate held by a plain writer, before and after, {name}", max(plain), "x set")
        # The goal is the simulator's: where a plain writer on the same schedule could not
        # hold the rate either, the folder could not take the bytes that fast.
        figures.add(
            f"rate held, {name}, / the plain writer's (at most 1)",
            min(held / max(plain), 1.0) if held < 0.99 else 1.0,
            "ratio",
            Goal(">= 0.99", at_least=0.99),
        )


def receive(subscriber: Subscriber, frames: int) -> tuple[str, np.ndarray, dict[str, Any]]:
    """One series: its id, each frame's arrival (monotonic ns) and its end header."""
    arrivals: list[int] = []
    series = ""
    for event in subscriber:
        now = time.monotonic_ns()
        if isinstance(event, SeriesStart):
            series = event.series
        elif isinstance(event, Frame):
            if event.series != series or event.index != len(arrivals):
                raise RuntimeError(f"frame {event.index} of {event.series} out of order")
            arrivals.append(now)
        elif isinstance(event, SeriesEnd):
            if event.header["frames"] != len(arrivals) or len(arrivals) != frames:
                raise RuntimeError(f"{len(arrivals)} of {frames} frames: {event.header}")
            return series, np.array(arrivals, dtype=np.int64), event.header
    raise AssertionError("unreachable: the subscriber iterates until it times out")


def rate_gbps(arrivals: np.ndarray) -> float:
    return (len(arrivals) - 1) * FRAME_BYTES / ((arrivals[-1] - arrivals[0]) / 1e9) / 1e9


def mib_options(name: str, frames: int, fps: float) -> dict[str, Any]:
    width = 100
    return {
        "name": name, "scan_shape": [width, frames // width], "frame_size": 256,
        "counter_depth": 12, "fps": fps, "flyback_s": 0.0, "hdr_scan_size": True,
    }  # fmt: skip


def section_drain(
    figures: Figures, work: Path, args: argparse.Namespace, plain: float | None
) -> None:
    """Drain a finished run into one client, then read it back with a second one."""
    folder, staging = work / "camera", work / "staging"
    folder.mkdir(exist_ok=True)
    staging.mkdir(exist_ok=True)
    frames = args.frames
    run_camera(staging, "mib", mib_options("drained", frames, 0.0), args.timeout)
    with service(folder, work) as (process, endpoint, _):
        with Subscriber(endpoint, start="run", timeout_s=args.timeout) as subscriber:
            before, own = cpu_seconds(process.pid), time.process_time()
            # The finished run appears at once, as a run copied into the folder does.
            shutil.copy(staging / "drained.hdr", folder / "drained.hdr")
            os.link(staging / "drained.mib", folder / "drained.mib")
            series, arrivals, _ = receive(subscriber, frames)
            drained = rate_gbps(arrivals)
            service_cpu = cpu_seconds(process.pid) - before
            client_cpu = time.process_time() - own
        gigabytes = frames * FRAME_BYTES / 1e9
        with Subscriber(endpoint, start=(series, 0), timeout_s=args.timeout) as late:
            before, own = cpu_seconds(process.pid), time.process_time()
            catch_up = rate_gbps(receive(late, frames)[1])
            late_service_cpu = cpu_seconds(process.pid) - before
            late_client_cpu = time.process_time() - own
    reading = read_back_cpu(staging / "drained.mib")
    bound, bound_pusher, bound_puller = plain_from_file(
        staging / "drained.mib", frames, args.timeout
    )
    for path in (*folder.iterdir(), *staging.iterdir()):
        path.unlink()
    figures.add("serve, draining a finished run", drained, "GB/s")
    if plain:
        figures.add(
            "serve draining / plain pyzmq", drained / plain, "ratio", Goal(">= 0.7", at_least=0.7)
        )
    figures.add("serve CPU while draining", service_cpu / gigabytes, "CPU s/GB")
    figures.add("client CPU while draining", client_cpu / gigabytes, "CPU s/GB")
    figures.add("serve, client catching up on the ended run", catch_up, "GB/s")
    if plain:
        figures.add("serve catching up / plain pyzmq", catch_up / plain, "ratio")
    figures.add("serve CPU while a client catches up", late_service_cpu / gigabytes, "CPU s/GB")
    figures.add("client CPU while catching up", late_client_cpu / gigabytes, "CPU s/GB")
    figures.add("reading back alone: positional reads + decoding", reading, "CPU s/GB")
    figures.add("plain pyzmq reading the run's file (file pusher)", bound, "GB/s")
    figures.add("file pusher CPU", bound_pusher, "CPU s/GB")
    figures.add("file pusher, puller CPU", bound_puller, "CPU s/GB")
    if plain:
        figures.add("file pusher / plain pyzmq", bound / plain, "ratio")
    figures.add("serve draining / file pusher", drained / bound, "ratio")


def read_back_cpu(path: Path) -> float:
    """CPU-seconds per GB of reading a run back as the data channel does, in this thread.

    Positional reads of batches of records into reused buffers and one decoding pass (byte
    swap and row flip): the work the service does for a client that plain pyzmq, sending
    from memory, does not.
    """
    from stemcast.batch import BufferPool
    from stemcast.service.live.tail import MibSource

    source = MibSource.open(path)
    buffers = BufferPool()
    step = 32
    started = time.thread_time()
    for first in range(0, source.frames, step):
        batch = source.read(first, min(first + step, source.frames), buffers)
        source.times_ns(batch.headers, first)
        del batch
    return (time.thread_time() - started) / (source.frames * FRAME_BYTES / 1e9)


def wait_for(path: Path, timeout_s: float) -> float:
    """Seconds until ``path`` exists (polled every 5 ms)."""
    started = time.monotonic()
    while not path.exists():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{path} not there after {timeout_s} s")
        time.sleep(0.005)
    return time.monotonic() - started


@dataclass
class Followed:
    """What following one run measured."""

    received: float  # GB/s
    lags: np.ndarray  # s, per frame
    simulator: float  # GB/s written
    lost: int
    emd_final: float  # s after the camera's last write
    cpu: dict[str, float]  # CPU-seconds per GB received, by process

    def lags_p(self, percent: float) -> float:
        return float(np.percentile(self.lags, percent))


def children_cpu(pid: int) -> float:
    """CPU seconds of the live child processes of ``pid`` (the conversion workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += cpu_seconds(int(entry))
    return total


def follow(
    work: Path, args: argparse.Namespace, name: str, frames: int, fps: float, convert: bool = True
) -> Followed:
    """The camera writes a run that a client receives, and that the service converts live to
    EMD when ``convert``."""
    import resource

    folder, output = work / "camera", work / "converted"
    folder.mkdir(exist_ok=True)
    options = ("--output", str(output), "--convert", "emd") if convert else ()
    with service(folder, work, *options) as (process, endpoint, _):
        with Subscriber(endpoint, start="run", timeout_s=args.timeout) as subscriber:
            before = (
                cpu_seconds(process.pid),
                children_cpu(process.pid),
                resource.getrusage(resource.RUSAGE_CHILDREN),
                time.process_time(),
            )
            camera_process, wait = camera(
                folder, "mib", mib_options(name, frames, fps), args.timeout
            )
            try:
                _, arrivals, end = receive(subscriber, frames)
                client = time.process_time() - before[3]
                run = wait()
            finally:
                stop(camera_process)
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            simulator_cpu = (
                usage.ru_utime + usage.ru_stime - before[2].ru_utime - before[2].ru_stime
            )
        written = run.frame_written_ns(RECORD_BYTES)
        lost = frames - min(len(arrivals), len(written), int(end["frames"]))
        final = math.nan
        if convert:
            wait_for(output / folder.name / f"{name}.emd", args.timeout)
            final = (time.monotonic_ns() - run.writes[-1, 1]) / 1e9
        served = cpu_seconds(process.pid) - before[0]
        converting = children_cpu(process.pid) - before[1]
    lags = (arrivals - written[: len(arrivals)]) / 1e9
    for path in folder.iterdir():
        path.unlink()
    shutil.rmtree(output, ignore_errors=True)
    gigabytes = frames * FRAME_BYTES / 1e9
    cpu = {
        "simulator": simulator_cpu / gigabytes,
        "service": served / gigabytes,
        "conversion workers": converting / gigabytes,
        "client": client / gigabytes,
    }
    return Followed(rate_gbps(arrivals), lags, write_rate(run), lost, final, cpu)


def follow_plain(work: Path, args: argparse.Namespace, frames: int) -> tuple[float, float]:
    """The file pusher follows the simulator at full speed: GB/s received, all CPU s/GB.

    The least any follower that reads the camera's file and sends every frame must do, with
    the simulator on the same cores: the bound of following at full speed.
    """
    import resource

    folder = work / "camera"
    folder.mkdir(exist_ok=True)
    cameras: list[tuple[subprocess.Popen[str], Callable[[], CameraRun]]] = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = time.process_time()

    def start_camera() -> None:
        cameras.append(camera(folder, "mib", mib_options("plain", frames, 0.0), args.timeout))

    try:
        rate, _, _ = plain_from_file(folder / "plain.mib", frames, args.timeout, start_camera)
        cameras[0][1]()
    finally:
        for process, _ in cameras:
            stop(process)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    for path in folder.iterdir():
        path.unlink()
    gigabytes = frames * FRAME_BYTES / 1e9
    # The children are the camera and the pusher; this process is the puller.
    return rate, (children + time.process_time() - own) / gigabytes


def section_follow(
    figures: Figures, work: Path, args: argparse.Namespace, ceiling: float | None
) -> None:
    bound, bound_cpu = follow_plain(work, args, args.follow_frames)
    figures.add("file pusher following the simulator at full speed", bound, "GB/s")
    figures.add("file pusher following, CPU of all", bound_cpu, "CPU s/GB")
    if ceiling:
        figures.add(
            "file pusher following / min(plain pyzmq, simulator alone)", bound / ceiling, "ratio"
        )
    alone = follow(work, args, "alone", args.follow_frames, 0.0, convert=False)
    figures.add("follow at full speed, no conversion, received", alone.received, "GB/s")
    if ceiling:
        figures.add(
            "follow at full speed, no conversion / min(plain pyzmq, simulator alone)",
            alone.received / ceiling,
            "ratio",
            Goal(">= 0.6", at_least=0.6),
        )
    figures.add(
        "follow at full speed, no conversion / file pusher", alone.received / bound, "ratio"
    )
    figures.add("follow at full speed, no conversion, lag p99", alone.lags_p(99), "s")
    figures.add("follow at full speed, no conversion, frames lost", alone.lost, "frames")
    for process, seconds in alone.cpu.items():
        if process != "conversion workers":
            figures.add(f"follow, no conversion, CPU of the {process}", seconds, "CPU s/GB")
    fast = follow(work, args, "fast", args.follow_frames, 0.0)
    p50, p99 = np.percentile(fast.lags, [50, 99])
    figures.add("follow at full speed + live EMD, received", fast.received, "GB/s")
    if ceiling:
        figures.add(
            "follow at full speed + live EMD / min(plain pyzmq, simulator alone)",
            fast.received / ceiling,
            "ratio",
        )
    figures.add("follow at full speed, simulator writing", fast.simulator, "GB/s")
    figures.add("follow at full speed, lag p50", p50, "s")
    figures.add("follow at full speed, lag p99", p99, "s")
    figures.add("follow at full speed, lag max", float(fast.lags.max()), "s")
    figures.add("follow at full speed, frames lost", fast.lost, "frames", Goal("0", at_most=0))
    figures.add("follow at full speed, EMD final after last write", fast.emd_final, "s")
    for process, seconds in fast.cpu.items():
        figures.add(f"follow at full speed, CPU of the {process}", seconds, "CPU s/GB")
    figures.add("follow at full speed, CPU of all", sum(fast.cpu.values()), "CPU s/GB")
    paced = follow(work, args, "paced", args.paced_frames, 2000.0)
    p50, p99 = np.percentile(paced.lags, [50, 99])
    figures.add("follow 2 kHz 12-bit 256x256 + live EMD, received", paced.received, "GB/s")
    figures.add("follow 2 kHz, lag p50", p50, "s")
    figures.add("follow 2 kHz, lag p99", p99, "s", Goal("< 0.5", at_most=0.5))
    figures.add("follow 2 kHz, lag max", float(paced.lags.max()), "s")
    figures.add("follow 2 kHz, frames lost", paced.lost, "frames", Goal("0", at_most=0))
    figures.add("follow 2 kHz, EMD final after last write", paced.emd_final, "s")
    for process, seconds in paced.cpu.items():
        figures.add(f"follow 2 kHz, CPU of the {process}", seconds, "CPU s/GB")


def paced_writer(path: Path, frames: int, fps: float, written: list[int]) -> None:
    """Write ``frames`` frames at ``fps``, noting when each write returned (monotonic ns)."""
    from stemcast.simulate import PatternPool
    from stemcast.writers.mib import MibWriter

    pool = PatternPool((8, 8), FRAME_SHAPE).patterns
    with MibWriter(path, scan_shape=(100, frames // 100), frame_interval_s=1 / fps) as writer:
        start = time.perf_counter()
        for index in range(frames):
            delay = start + index / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            writer.write(pool[index % len(pool)])
            written.append(time.monotonic_ns())


def section_latency(figures: Figures, work: Path, args: argparse.Namespace) -> None:
    folder = work / "camera"
    folder.mkdir(exist_ok=True)
    frames = args.latency_frames
    with (
        service(folder, work) as (_, endpoint, _),
        Subscriber(endpoint, start="run", timeout_s=args.timeout) as subscriber,
    ):
        written: list[int] = []
        thread = threading.Thread(
            target=paced_writer, args=(folder / "latency.mib", frames, 1000.0, written)
        )
        thread.start()
        try:
            arrivals = receive(subscriber, frames)[1]
        finally:
            thread.join(args.timeout)
    for path in folder.iterdir():
        path.unlink()
    latencies = (arrivals - np.array(written)) / 1e6
    p50, p99 = np.percentile(latencies, [50, 99])
    figures.add("latency at 1 kHz, p50", p50, "ms", Goal("< 5", at_most=5))
    figures.add("latency at 1 kHz, p99", p99, "ms", Goal("< 50", at_most=50))


def timed_median(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median seconds of ``repeat`` calls after one untimed call, and the last result."""
    result = function()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def section_readers(figures: Figures, args: argparse.Namespace) -> None:
    import bench_mib

    scan = bench_mib._scan_for(args.reader_gb * 1e9, bench_mib.RECORD_12)
    path = bench_mib.ensure_file(
        args.data, "bench12", scan, bench_mib.RECORD_12, bench_mib.make_12bit
    )
    bench_mib.warm(path)
    limit, _ = timed_median(lambda: bench_mib.limit(path), args.inner)
    lazy, image = timed_median(lambda: bench_mib.stemcast_lazy(path), args.inner)
    virtual, other = timed_median(lambda: bench_mib.stemcast_virtual_image(path), args.inner)
    engine = bench_mib.LiberTEM("pipelined", len(os.sched_getaffinity(0)))
    try:
        libertem, theirs = timed_median(lambda: engine(path, (scan[1], scan[0])), args.inner)
    finally:
        engine.close()
    if not (np.array_equal(image, other) and np.array_equal(image, theirs.astype(np.int64))):
        raise RuntimeError("the virtual images differ")
    figures.add("VBF limit: memory-mapped uint64 sum", limit, "s")
    figures.add("VBF stemcast lazy", lazy, "s")
    figures.add("VBF stemcast lazy / limit", lazy / limit, "x", Goal("<= 2", at_most=2.0))
    figures.add("VBF LiberTEM pipelined", libertem, "s")
    figures.add("VBF LiberTEM / stemcast lazy", libertem / lazy, "x", Goal(">= 1.2", at_least=1.2))
    figures.add("VBF stemcast virtual_image / limit", virtual / limit, "x")


OURS = "stemcast convert --to blockfile"
REFERENCE_CONVERT = """
import sys, warnings
warnings.filterwarnings("ignore")
from rsciio.blockfile import file_writer
from rsciio.quantumdetector import file_reader
lazy = sys.argv[3] == "lazy"
scan = (int(sys.argv[4]), int(sys.argv[5]))
signal = file_reader(sys.argv[1], lazy=lazy, navigation_shape=scan)[0]
signal["attributes"] = {"_lazy": lazy}
file_writer(sys.argv[2], signal, intensity_scaling="minmax", show_progressbar=False)
"""


def whole_process(command: list[str], timeout_s: float) -> float:
    subprocess.run(["sync"], check=True, timeout=timeout_s)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=timeout_s)
    return time.perf_counter() - started


def section_convert(figures: Figures, args: argparse.Namespace) -> None:
    from stemcast.readers.blockfile import file_reader as read_blockfile
    from stemcast.simulate import simulate_mib

    scan = (48, 48)
    source = args.data / "convert" / "run.mib"
    if not source.exists() or source.stat().st_size != scan[0] * scan[1] * RECORD_BYTES:
        source.parent.mkdir(parents=True, exist_ok=True)
        simulate_mib(
            source.parent, name="run", scan_shape=scan, frame_size=256, counter_depth=12,
            hdr_scan_size=True, flyback_s=0.0,
        )  # fmt: skip
    output = args.data / "convert" / "out"
    ours_path, reference_path = output / "run.blo", output / "reference.blo"
    times: dict[str, float] = {}
    commands = {
        OURS: [
            sys.executable, "-m", "stemcast.cli", "convert", str(source), "--to", "blockfile",
            "--output", str(output),
        ],
        "rsciio eager read + write": [
            sys.executable, "-c", REFERENCE_CONVERT, str(source), str(reference_path), "eager",
            str(scan[0]), str(scan[1]),
        ],
        "rsciio lazy read + write": [
            sys.executable, "-c", REFERENCE_CONVERT, str(source), str(reference_path), "lazy",
            str(scan[0]), str(scan[1]),
        ],
    }  # fmt: skip
    with open(source, "rb") as stream:
        while stream.read(2**24):
            pass
    # Both start from compiled modules, as installed packages do (an editable install run
    # with PYTHONDONTWRITEBYTECODE would compile stemcast's sources at every start).
    import stemcast

    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(stemcast.__file__).parent)],
        check=True, timeout=args.timeout,
    )  # fmt: skip
    for name, command in commands.items():
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        times[name] = whole_process(command, args.timeout)
        if name == OURS:
            converted = read_blockfile(ours_path)[0]["data"]
        else:
            np.testing.assert_array_equal(read_blockfile(reference_path)[0]["data"], converted)
    shutil.rmtree(output, ignore_errors=True)
    ours = times[OURS]
    # stemcast makes its output durable before renaming it into place; the reference does
    # not: writing as many bytes to that disk and flushing them is part of stemcast's time.
    output.mkdir(parents=True)
    size = scan[0] * scan[1] * 256 * 256
    started = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={output / 'flush.bin'}", "bs=8M", f"count={-(-size // 2**23)}",
         "conv=fsync"],
        check=True, capture_output=True, timeout=args.timeout,
    )  # fmt: skip
    flush = time.perf_counter() - started
    figures.add("convert: dd + fsync of the blockfile's bytes (output floor)", flush, "s")
    shutil.rmtree(output, ignore_errors=True)
    for name in commands:
        figures.add(f"convert to blockfile (whole process), {name}", times[name], "s")
    eager = times["rsciio eager read + write"] / ours
    lazy = times["rsciio lazy read + write"] / ours
    figures.add("convert: rsciio eager / stemcast", eager, "x", Goal(">= 5", at_least=5.0))
    figures.add("convert: rsciio lazy / stemcast", lazy, "x")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def one_round(figures: Figures, sections: list[str], args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-live-") as scratch:
        work = Path(scratch)
        plain = None
        if "plain" in sections:
            print("plain pyzmq", flush=True)
            plain, pusher_cpu, puller_cpu = plain_pyzmq(args.frames, args.timeout)
            figures.add("plain pyzmq PUSH/PULL from memory", plain, "GB/s")
            figures.add("plain pyzmq pusher CPU", pusher_cpu, "CPU s/GB")
            figures.add("plain pyzmq puller CPU", puller_cpu, "CPU s/GB")

        def ceiling() -> float | None:
            # Following cannot be faster than plain pyzmq nor than the simulator alone.
            alone = figures.values.get("simulator --fps 0, 12-bit 256x256")
            if plain is None or not alone or "simulator" not in sections:
                return None
            return min(plain, alone[-1])

        steps: list[tuple[str, Callable[[], None]]] = [
            ("simulator", lambda: section_simulator(figures, work, args)),
            ("rates", lambda: section_rates(figures, work, args)),
            ("drain", lambda: section_drain(figures, work, args, plain)),
            ("follow", lambda: section_follow(figures, work, args, ceiling())),
            ("latency", lambda: section_latency(figures, work, args)),
            ("readers", lambda: section_readers(figures, args)),
            ("convert", lambda: section_convert(figures, args)),
        ]
        for name, step in steps:
            if name in sections:
                print(name, flush=True)
                step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every section")
    parser.add_argument(
        "--sections", default=",".join(DEFAULT_SECTIONS), help=f"of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every section")
    parser.add_argument("--frames", type=int, default=4000, help="frames drained (0.5 GB)")
    parser.add_argument("--simulator-frames", type=int, default=8000)
    parser.add_argument("--follow-frames", type=int, default=8000)
    parser.add_argument("--paced-frames", type=int, default=6000)
    parser.add_argument("--latency-frames", type=int, default=3000)
    parser.add_argument("--reader-gb", type=float, default=0.5)
    parser.add_argument("--inner", type=int, default=3, help="timed calls per reader and round")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds of any wait")
    shm = Path("/dev/shm")
    parser.add_argument("--workdir", type=Path, default=shm if shm.is_dir() else None)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--child-camera", help=argparse.SUPPRESS)
    parser.add_argument("--child-file-pusher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_camera:
        camera_child(json.loads(args.child_camera))
        return
    if args.child_file_pusher:
        file_pusher(json.loads(args.child_file_pusher))
        return
    warnings.filterwarnings("ignore")
    sections = list(SECTIONS) if args.all else args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    args.data.mkdir(parents=True, exist_ok=True)
    describe_machine(("numpy", "zmq", "rsciio", "libertem", "stemcast"))
    print(f"libzmq {zmq.zmq_version()}, workdir {args.workdir}, sections {', '.join(sections)}")
    figures = Figures()
    for number in range(args.repeat):
        load = os.getloadavg()[0]
        print(f"\nround {number + 1} of {args.repeat} (load average {load:.2f})", flush=True)
        figures.add("load average at the start of the round", load, "")
        one_round(figures, sections, args)
    figures.summary()


if __name__ == "__main__":
    main()
