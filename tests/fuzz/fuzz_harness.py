"""Run mutated inputs through guarded worker processes and collect the figures.

Each worker (:mod:`fuzz_worker`) is a child process with its address space limited; it reads
one input at a time. A worker that does not answer within ``hang_seconds`` is killed and its
input counted as a hang; a worker that dies (a crash in a C library, the kernel's OOM killer)
is counted as a crash; both are restarted. An input that takes more than ``slow_seconds`` is
a failure too.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fuzz_cases import KINDS, input_of, read_manifest

WORKER = Path(__file__).with_name("fuzz_worker.py")
#: Address space of a worker: no input may take a process past it.
MEMORY_LIMIT = 2**30
#: Outcomes that are failures (besides inputs slower than ``slow_seconds``).
FAILURES = ("escaped", "unnamed", "hang", "crash")


@dataclass
class Figures:
    """Outcomes of the inputs of one format class."""

    inputs: int = 0
    ok: int = 0
    refused: int = 0
    escaped: int = 0
    unnamed: int = 0
    hang: int = 0
    crash: int = 0
    slow: int = 0
    max_seconds: float = 0.0
    slowest: int | None = None


@dataclass
class Report:
    """Figures per format class, the failures, and the peak memory of any worker."""

    kinds: dict[str, Figures] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    peak_kib: int = 0
    peak_input: int | None = None
    wall_seconds: float = 0.0

    @property
    def inputs(self) -> int:
        """Inputs read in all."""
        return sum(figures.inputs for figures in self.kinds.values())

    def summary(self) -> str:
        """One line per format class, then the failures."""
        lines = [
            f"{'class':<10} {'inputs':>7} {'ok':>6} {'refused':>7} {'escaped':>7} "
            f"{'unnamed':>7} {'hangs':>5} {'crashes':>7} {'slow':>4} {'max s':>6} (input)"
        ]
        for kind, f in self.kinds.items():
            lines.append(
                f"{kind:<10} {f.inputs:>7} {f.ok:>6} {f.refused:>7} {f.escaped:>7} "
                f"{f.unnamed:>7} {f.hang:>5} {f.crash:>7} {f.slow:>4} {f.max_seconds:>6.2f} "
                f"({f.slowest})"
            )
        lines.append(
            f"peak resident memory of a worker: {self.peak_kib / 1024:.0f} MiB "
            f"(reached at input {self.peak_input}); "
            f"{self.inputs} inputs in {self.wall_seconds:.0f} s"
        )
        for failure in self.failures[:20]:
            lines.append(json.dumps(failure))
        return "\n".join(lines)


class _Worker:
    """One worker process and the input it is reading."""

    def __init__(self, seeds: Path, scratch: Path, memory_limit: int, log: IO[str] | None):
        self.command = [sys.executable, str(WORKER), str(seeds), str(scratch), str(memory_limit)]
        self.log = log
        self.number: int | None = None
        self.started = 0.0
        self.process = self._start()

    def _start(self) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",
        }
        return subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log or subprocess.DEVNULL,
            text=True,
            env=env,
        )

    @property
    def stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def send(self, number: int) -> None:
        assert self.process.stdin is not None
        self.number = number
        self.started = time.monotonic()
        self.process.stdin.write(f"{number}\n")
        self.process.stdin.flush()

    def restart(self, *, hung: bool = False) -> None:
        if hung and self.process.poll() is None:
            # The worker writes the stacks of its threads to the log before it is killed.
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
        self.stop()
        self.number = None
        self.process = self._start()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def run_campaign(
    seeds: Path,
    numbers: Iterable[int],
    *,
    workers: int = 2,
    memory_limit: int = MEMORY_LIMIT,
    hang_seconds: float = 20.0,
    slow_seconds: float = 5.0,
    log: IO[str] | None = None,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Read the inputs ``numbers`` of the seeds in ``seeds`` and return the figures.

    Parameters
    ----------
    seeds
        Folder holding the seed files and their manifest.
    numbers
        The inputs to read.
    workers
        Worker processes reading in parallel.
    memory_limit
        Address space of each worker in bytes.
    hang_seconds
        An input without an answer after this long is a hang.
    slow_seconds
        An input answered after this long is a failure.
    log
        Where the workers' standard error goes (discarded by default).
    progress
        Called with the report so far after every thousand inputs.

    Returns
    -------
    Report
        The figures.
    """
    manifest = read_manifest(seeds)
    report = Report({kind: Figures() for kind in KINDS if any(s.kind == kind for s in manifest)})
    memory = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="fuzz-", dir=memory if memory.is_dir() else None))
    pending: Iterator[int] = iter(numbers)
    pool = [_Worker(seeds, root / str(index), memory_limit, log) for index in range(workers)]
    selector = selectors.DefaultSelector()
    for worker in pool:
        selector.register(worker.stdout, selectors.EVENT_READ, worker)
    start = time.monotonic()

    def record(number: int, result: dict[str, Any]) -> None:
        item = input_of(manifest, number)
        figures = report.kinds[item.seed.kind]
        figures.inputs += 1
        kind = result["outcome"]
        setattr(figures, kind, getattr(figures, kind) + 1)
        seconds = result.get("seconds", 0.0)
        if seconds > figures.max_seconds:
            figures.max_seconds, figures.slowest = seconds, number
        if result.get("peak_kib", 0) > report.peak_kib:
            report.peak_kib, report.peak_input = result["peak_kib"], number
        if kind in FAILURES or seconds > slow_seconds:
            if seconds > slow_seconds:
                figures.slow += 1
            details = {k: v for k, v in result.items() if k not in ("number", "peak_kib")}
            report.failures.append(
                {"input": number, "seed": item.seed.name, "read": item.read, **details}
            )
        if progress is not None and report.inputs % 1000 == 0:
            report.wall_seconds = time.monotonic() - start
            progress(report)

    def replace(worker: _Worker, *, hung: bool = False) -> None:
        selector.unregister(worker.stdout)
        worker.restart(hung=hung)
        selector.register(worker.stdout, selectors.EVENT_READ, worker)

    def feed(worker: _Worker) -> bool:
        number = next(pending, None)
        if number is None:
            return False
        worker.send(number)
        return True

    try:
        active = [worker for worker in pool if feed(worker)]
        while active:
            for key, _ in selector.select(timeout=0.5):
                worker = key.data
                line = worker.stdout.readline()
                assert worker.number is not None
                if line:
                    record(worker.number, json.loads(line))
                else:
                    code = worker.process.wait()
                    record(worker.number, {"outcome": "crash", "exit_status": code})
                    replace(worker)
                worker.number = None
            now = time.monotonic()
            for worker in active:
                if worker.number is not None and now - worker.started > hang_seconds:
                    number = worker.number
                    replace(worker, hung=True)
                    record(number, {"outcome": "hang", "seconds": now - worker.started})
            active = [worker for worker in active if worker.number is not None or feed(worker)]
    finally:
        for worker in pool:
            worker.stop()
        selector.close()
        shutil.rmtree(root, ignore_errors=True)
    report.wall_seconds = time.monotonic() - start
    return report
