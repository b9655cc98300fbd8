"""Merlin (12-bit) to NanoMegas blockfile conversion: stemcast against RosettaSciIO and ``cp``.

Converts a 12-bit 256x256 Merlin ``.mib`` run of at least ``--size-gb`` (default 0.5 GB) to a
``.blo`` file with ``intensity_scaling="dtype"`` and ``"minmax"``, with

* stemcast ``convert_mib`` (reads the run a batch at a time, flips rows as the readers do,
  scales, writes; ``"minmax"`` adds a first pass for the minimum and maximum);
* stemcast ``mib.file_reader(lazy=True)`` then ``blockfile.file_writer`` (the library path);
* RosettaSciIO ``quantumdetector.file_reader`` then ``blockfile.file_writer`` (the reference;
  eager, as its writer does not take lazy data; the lazy combination is tried and reported);

and, as the limit, ``cp`` of the source file (plain, and followed by ``sync`` of the copy,
since stemcast fsyncs its output before renaming it into place).

Every method runs in a fresh child process, timed from the call (imports done), on a warm page
cache; the child's peak memory is its peak resident set size (``VmHWM`` of
``/proc/self/status``, which unlike ``ru_maxrss`` does not inherit the parent's size across
``exec``; interpreter and the method's own imports included). Dirty pages are flushed
(``sync``) before each run. All outputs of one scaling must hold the same frames and
navigator, or the script fails.

Usage::

    python benchmarks/bench_blockfile.py [--size-gb 0.5] [--repeat 1] [--workdir DIR]

The source file is written once into ``--workdir`` (default ``benchmarks/data/``, ignored by
git) and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from machine import describe_machine

FRAME = 256
RECORD = 384 + FRAME * FRAME * 2  # 12-bit frames are stored as U16
WIDTH = 64
SCALINGS = ("dtype", "minmax")


# --------------------------------------------------------------------------------------------
# Source data
# --------------------------------------------------------------------------------------------


def scan_for(size_bytes: float) -> tuple[int, int]:
    """``(x, y)`` scan of width 64 holding at least ``size_bytes`` of records."""
    frames = math.ceil(size_bytes / RECORD)
    return WIDTH, math.ceil(frames / WIDTH)


def make_source(path: Path, scan: tuple[int, int]) -> None:
    """A 12-bit run: a bright central disk with Poisson noise, one scan line per write."""
    from stemcast.writers.mib import MibWriter

    rng = np.random.default_rng(0)
    rows, cols = np.indices((FRAME, FRAME))
    disk = ((rows - 127.5) ** 2 + (cols - 127.5) ** 2 <= 40**2).astype(np.float64)
    mean = 20 + 2000 * disk
    tmp = path.with_name(path.name + ".partial")
    with MibWriter(
        tmp, frame_shape=(FRAME, FRAME), counter_depth=12, scan_shape=scan, hdr_scan_size=True
    ) as writer:
        for _ in range(scan[1]):
            line = rng.poisson(mean, size=(scan[0], FRAME, FRAME))
            writer.write(np.minimum(line, 4095).astype(np.uint16))
    os.replace(tmp, path)
    os.replace(tmp.with_suffix(".hdr"), path.with_suffix(".hdr"))


def ensure_source(workdir: Path, size_gb: float) -> tuple[Path, tuple[int, int]]:
    scan = scan_for(size_gb * 1e9)
    path = workdir / f"blo_source12_{scan[0]}x{scan[1]}.mib"
    expected = scan[0] * scan[1] * RECORD
    if not (path.is_file() and path.stat().st_size == expected):
        print(f"writing {path} ({expected / 1e9:.3f} GB) ...", flush=True)
        started = time.perf_counter()
        make_source(path, scan)
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return path, scan


def warm(path: Path) -> None:
    """Read the whole file once so that it sits in the page cache."""
    with open(path, "rb", buffering=0) as stream:
        buffer = bytearray(8 * 2**20)
        while stream.readinto(buffer):
            pass


# --------------------------------------------------------------------------------------------
# Methods (run in the child process)
# --------------------------------------------------------------------------------------------


def stemcast_convert(source: Path, dest: Path, scan: tuple[int, int], scaling: str) -> None:
    from stemcast.writers.blockfile import convert_mib

    convert_mib(source, dest, navigation_shape=scan, intensity_scaling=scaling)


def stemcast_two_steps(source: Path, dest: Path, scan: tuple[int, int], scaling: str) -> None:
    from stemcast.readers.mib import file_reader
    from stemcast.writers.blockfile import file_writer

    signal = file_reader(source, lazy=True, navigation_shape=scan)[0]
    file_writer(dest, signal, intensity_scaling=scaling, show_progressbar=False)


def _rsciio(source: Path, dest: Path, scan: tuple[int, int], scaling: str, lazy: bool) -> None:
    from rsciio.blockfile import file_writer
    from rsciio.quantumdetector import file_reader

    signal = file_reader(str(source), lazy=lazy, navigation_shape=scan)[0]
    signal["attributes"] = {"_lazy": lazy}
    file_writer(str(dest), signal, intensity_scaling=scaling, show_progressbar=False)


def rsciio_eager(source: Path, dest: Path, scan: tuple[int, int], scaling: str) -> None:
    _rsciio(source, dest, scan, scaling, lazy=False)


def rsciio_lazy(source: Path, dest: Path, scan: tuple[int, int], scaling: str) -> None:
    _rsciio(source, dest, scan, scaling, lazy=True)


def copy(source: Path, dest: Path, scan: tuple[int, int], scaling: str) -> None:
    subprocess.run(["cp", str(source), str(dest)], check=True)


def copy_sync(source: Path, dest: Path, scan: tuple[int, int], scaling: str) -> None:
    subprocess.run(["cp", str(source), str(dest)], check=True)
    subprocess.run(["sync", str(dest)], check=True)


#: name -> (function, modules it imports, imported before the timing starts)
METHODS: dict[str, tuple[Callable[[Path, Path, tuple[int, int], str], None], tuple[str, ...]]] = {
    "cp": (copy, ()),
    "cp + sync": (copy_sync, ()),
    "stemcast convert_mib": (
        stemcast_convert,
        ("stemcast.writers.blockfile", "stemcast.readers.mib", "skimage.exposure", "tqdm"),
    ),
    "stemcast file_reader(lazy) + file_writer": (
        stemcast_two_steps,
        (
            "stemcast.writers.blockfile",
            "stemcast.readers.mib",
            "skimage.exposure",
            "tqdm",
            "dask.array",
        ),
    ),
    "rosettasciio file_reader + file_writer": (
        rsciio_eager,
        ("rsciio.blockfile", "rsciio.quantumdetector", "skimage.exposure", "dask.array"),
    ),
    "rosettasciio lazy file_reader + file_writer": (
        rsciio_lazy,
        ("rsciio.blockfile", "rsciio.quantumdetector", "skimage.exposure", "dask.array"),
    ),
}
LIMIT, LIMIT_SYNC = "cp", "cp + sync"
OURS, REFERENCE = "stemcast convert_mib", "rosettasciio file_reader + file_writer"


def child(method: str, source: Path, dest: Path, scan: tuple[int, int], scaling: str) -> None:
    """Run one method and print its wall time and peak memory as JSON."""
    warnings.filterwarnings("ignore")
    function, modules = METHODS[method]
    for module in modules:
        importlib.import_module(module)
    started = time.perf_counter()
    function(source, dest, scan, scaling)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_bytes": peak_rss()}))


def peak_rss() -> int:
    """Peak resident set size of this process in bytes."""
    with contextlib.suppress(OSError), open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# --------------------------------------------------------------------------------------------
# Timing and report (parent process)
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    method: str
    seconds: float | None = None
    peak_bytes: int | None = None
    note: str = ""


def run_child(
    method: str, source: Path, dest: Path, scan: tuple[int, int], scaling: str, timeout: float
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--source",
        str(source),
        "--dest",
        str(dest),
        "--scan",
        f"{scan[0]}x{scan[1]}",
        "--scaling",
        scaling,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(last[:100])
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(
    method: str,
    source: Path,
    outdir: Path,
    scan: tuple[int, int],
    scaling: str,
    repeat: int,
    timeout: float,
) -> tuple[Row, Path | None]:
    dest = outdir / f"{method.split()[0]}-{abs(hash(method)) % 10**6}-{scaling}.out"
    seconds, peaks = [], []
    for _ in range(repeat):
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        os.sync()
        warm(source)
        try:
            result = run_child(method, source, dest, scan, scaling, timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            note = f"n/a ({type(error).__name__}: {error})"
            print(f"  {method:<44} {note}", flush=True)
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            return Row(method, note=note), None
        seconds.append(result["seconds"])
        peaks.append(result["peak_bytes"])
    row = Row(method, statistics.median(seconds), max(peaks))
    print(
        f"  {method:<44} {row.seconds:8.2f} s   peak {row.peak_bytes / 2**20:7.0f} MiB",
        flush=True,
    )
    return row, dest


def check_outputs(outputs: dict[str, Path], scan: tuple[int, int]) -> None:
    """Every blockfile written for one scaling holds the same frames and navigator."""
    from stemcast.readers.blockfile import file_reader, read_navigator

    reference: tuple[str, Any, Any] | None = None
    for method, path in outputs.items():
        data = file_reader(path, mmap_mode="r")[0]["data"]
        assert data.shape == (scan[1], scan[0], FRAME, FRAME), (method, data.shape)
        navigator = read_navigator(path)
        if reference is None:
            reference = (method, data, navigator)
            continue
        name, first, first_navigator = reference
        for start in range(0, scan[1], 8):  # compare a few lines at a time
            assert np.array_equal(data[start : start + 8], first[start : start + 8]), (
                f"{method}: frames differ from {name} in lines {start}..{start + 7}"
            )
        assert np.array_equal(navigator, first_navigator), f"{method}: navigator differs"
    if reference is not None:
        print(f"  output check: {len(outputs)} files hold identical frames and navigators")


def report(size: int, scaling: str, rows: list[Row]) -> None:
    by_name = {row.method: row for row in rows}
    limit, limit_sync = by_name[LIMIT].seconds, by_name[LIMIT_SYNC].seconds
    reference = by_name[REFERENCE].seconds if REFERENCE in by_name else None
    print(f"\nintensity_scaling={scaling!r}: {size / 1e9:.3f} GB source")
    print(
        f"| {'method':<44} | {'seconds':>7} | {'GB/s':>5} | {'peak MiB':>8} | "
        f"{'x cp':>5} | {'x cp+sync':>9} | {'reference / this':>16} |"
    )
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 7}|{'-' * 10}|{'-' * 7}|{'-' * 11}|{'-' * 18}|")
    for row in rows:
        if row.seconds is None:
            print(
                f"| {row.method:<44} | {'n/a':>7} | {'':>5} | {'':>8} | {'':>5} | {'':>9} | "
                f"{'':>16} |  {row.note}"
            )
            continue
        peak = f"{row.peak_bytes / 2**20:8.0f}" if row.peak_bytes else f"{'':>8}"
        speedup = f"{reference / row.seconds:16.1f}" if reference else f"{'n/a':>16}"
        print(
            f"| {row.method:<44} | {row.seconds:7.2f} | {size / row.seconds / 1e9:5.2f} | "
            f"{peak} | {row.seconds / limit:5.2f} | {row.seconds / limit_sync:9.2f} | {speedup} |"
        )
    ours = by_name[OURS]
    if ours.seconds is None:
        print("targets: stemcast failed")
        return
    checks = [
        (
            "at least 5x faster than the reference",
            reference is not None and reference / ours.seconds >= 5,
            f"{reference / ours.seconds:.1f}x" if reference else "reference n/a",
        ),
        (
            "within 3x of cp",
            ours.seconds / limit <= 3,
            f"{ours.seconds / limit:.2f}x cp, {ours.seconds / limit_sync:.2f}x cp + sync",
        ),
        (
            "peak memory under 500 MB",
            (ours.peak_bytes or 0) < 500e6,
            f"{(ours.peak_bytes or 0) / 1e6:.0f} MB",
        ),
    ]
    for name, ok, value in checks:
        print(f"target {name}: {'met' if ok else 'NOT met'} ({value})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.5, help="source size (default 0.5)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method (median)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(__file__).resolve().parent / "data",
        help="where the source and the outputs are written",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scan", help=argparse.SUPPRESS)
    parser.add_argument("--scaling", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        x, y = (int(part) for part in args.scan.split("x"))
        child(args.child, args.source, args.dest, (x, y), args.scaling)
        return 0

    describe_machine(("numpy", "dask", "skimage", "rsciio", "stemcast"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    source, scan = ensure_source(args.workdir, args.size_gb)
    size = source.stat().st_size
    print(
        f"source: {source.name}, {size / 1e9:.3f} GB, scan {scan[0]} x {scan[1]}, "
        f"{FRAME}x{FRAME} 12-bit frames"
    )
    outdir = args.workdir / "blockfile-outputs"
    outdir.mkdir(exist_ok=True)
    skip = {item.strip() for item in args.skip.split(",") if item.strip()}
    try:
        for scaling in SCALINGS:
            print(f"\nintensity_scaling={scaling!r} (median of {args.repeat}, warm cache)")
            rows, outputs = [], {}
            for method in METHODS:
                if method in skip:
                    continue
                row, dest = measure(
                    method, source, outdir, scan, scaling, args.repeat, args.timeout
                )
                rows.append(row)
                if dest is not None and not method.startswith("cp"):
                    outputs[method] = dest
            check_outputs(outputs, scan)
            report(size, scaling, rows)
            for path in outdir.iterdir():
                path.unlink()
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    print("\nTimes are wall-clock on a shared machine; treat them as approximate.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
