"""Virtual bright-field (VBF) throughput of the Merlin ``.mib`` readers.

Times, on a warm page cache, the sum over the signal axes of every frame (the virtual
bright-field image, ``data.sum(axis=(-2, -1))`` computed to a numpy array) of

* a 12-bit processed 256x256 Merlin file, read by stemcast (eager, lazy, and its
  ``virtual_image``, which sums the frames without keeping them), RosettaSciIO
  (eager and lazy) and LiberTEM, against the limit: the same bytes summed from the page
  cache (``np.memmap(file, uint64).sum()``);
* a RAW (``R64``) 1-bit file, read by stemcast (eager, lazy, ``virtual_image``) and
  LiberTEM, against its own limit (RosettaSciIO cannot read RAW), and against the floor of
  any reader that returns decoded pixels: writing and summing once, without decoding, the 8
  ``uint8`` pixels each stored byte becomes.

Every timed call goes from the file path to the numpy VBF image (opening the file, parsing
the headers, creating the dataset included), as a user would write it. All methods must give
the same VBF image, or the script fails.

Usage::

    python benchmarks/bench_mib.py [--size-gb 0.5] [--repeat 5] [--workdir DIR]

The test files are written once into ``--workdir`` (default ``benchmarks/data/``, ignored by
git) and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import math
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from machine import describe_machine
from stemcast.readers.mib import file_reader as stemcast_reader
from stemcast.readers.mib import virtual_image
from stemcast.writers.mib import MibWriter

FRAME = (256, 256)
HEADER_SIZE = 384
RECORD_12 = HEADER_SIZE + FRAME[0] * FRAME[1] * 2
RECORD_1RAW = HEADER_SIZE + FRAME[0] * FRAME[1] // 8


# --------------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------------


def _disk(radius: float) -> np.ndarray:
    rows, cols = np.indices(FRAME)
    centre = (FRAME[0] / 2 - 0.5, FRAME[1] / 2 - 0.5)
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) <= radius**2


def _transmission(scan: tuple[int, int]) -> np.ndarray:
    """A smooth 'sample' (0.3..1) over the scan, shape ``(y, x)``: a structured VBF image."""
    y, x = np.indices((scan[1], scan[0]), dtype=float)
    return 0.65 + 0.35 * np.sin(x / 5.0) * np.cos(y / 7.0)


def _scan_for(size_bytes: float, record: int, multiple: int = 1) -> tuple[int, int]:
    """A near-square scan ``(x, y)`` (x a multiple of 8) of at least ``size_bytes`` of records.

    With ``multiple``, the frame count is a multiple of it (x a multiple of ``multiple / 2``).
    """
    frames = max(math.ceil(size_bytes / record), 64)
    width = 8 * math.ceil(math.sqrt(frames) / 8)
    if multiple > 1:
        width = max(width // (multiple // 2), 1) * (multiple // 2)
        return width, 2 * math.ceil(frames / (2 * width))
    return width, math.ceil(frames / width)


def _writer(path: Path, scan: tuple[int, int], raw: bool, depth: int) -> MibWriter:
    return MibWriter(
        path,
        frame_shape=FRAME,
        counter_depth=depth,
        raw=raw,
        scan_shape=scan,
        frames_per_trigger=scan[0],
        hdr_scan_size=True,
        exposure_s=0.001,
    )


def make_12bit(path: Path, scan: tuple[int, int], seed: int = 1) -> None:
    """12-bit frames: Poisson counts of a bright disk modulated by the sample, plus background."""
    rng = np.random.default_rng(seed)
    disk = _disk(40.0).astype(float)
    trans = _transmission(scan).ravel()
    tmp = path.with_suffix(".mib.part")
    with _writer(tmp, scan, raw=False, depth=12) as writer:
        for start in range(0, trans.size, 64):
            scale = trans[start : start + 64, None, None]
            lam = 0.5 + 150.0 * disk[None] * scale
            frames = np.minimum(rng.poisson(lam), 4095).astype(np.uint16)
            writer.write(frames)
    os.replace(tmp, path)
    os.replace(tmp.with_suffix(".hdr"), path.with_suffix(".hdr"))


def make_1bit_raw(path: Path, scan: tuple[int, int], seed: int = 2) -> None:
    """RAW 1-bit frames: each pixel hit (1) with a probability from the same disk pattern."""
    rng = np.random.default_rng(seed)
    disk = _disk(40.0).astype(np.float32)
    trans = _transmission(scan).ravel().astype(np.float32)
    tmp = path.with_suffix(".mib.part")
    batch = 256
    with _writer(tmp, scan, raw=True, depth=1) as writer:
        for start in range(0, trans.size, batch):
            prob = 0.02 + 0.6 * disk[None] * trans[start : start + batch, None, None]
            frames = (rng.random(prob.shape, dtype=np.float32) < prob).astype(np.uint8)
            writer.write(frames)
    os.replace(tmp, path)
    os.replace(tmp.with_suffix(".hdr"), path.with_suffix(".hdr"))


def ensure_file(
    workdir: Path, name: str, scan: tuple[int, int], record: int, maker: Callable[..., None]
) -> Path:
    path = workdir / f"{name}_{scan[0]}x{scan[1]}.mib"
    expected = scan[0] * scan[1] * record
    if not (
        path.is_file() and path.stat().st_size == expected and path.with_suffix(".hdr").is_file()
    ):
        print(f"writing {path} ({expected / 1e9:.2f} GB) ...", flush=True)
        started = time.perf_counter()
        maker(path, scan)
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def warm(path: Path) -> None:
    """Read the whole file once so that it sits in the page cache."""
    with open(path, "rb", buffering=0) as stream:
        buffer = bytearray(64 * 2**20)
        while stream.readinto(buffer):
            pass


# --------------------------------------------------------------------------------------------
# Methods: each takes the path and returns the VBF image as a numpy array
# --------------------------------------------------------------------------------------------


def limit(path: Path) -> np.ndarray:
    """The same bytes summed from the page cache: the memory-bandwidth bound of any reader."""
    return np.asarray(np.memmap(path, dtype=np.uint64, mode="r").sum())


def decoded_floor(path: Path) -> None:
    """Write and sum, once, as many ``uint8`` pixels as the 1-bit RAW file decodes to.

    No decoding at all: every thread fills and sums its own cache-resident 16 MiB buffer
    (rows summed in ``uint16``, exact, then frames). Any reader that hands the user decoded
    pixels, and the user's sum over them, do at least this much work.
    """
    frames = path.stat().st_size // RECORD_1RAW
    frame_pixels = FRAME[0] * FRAME[1]
    per_block = 2**24 // frame_pixels
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    buffers = threading.local()

    def block(start: int) -> None:
        count = min(per_block, frames - start)
        if not hasattr(buffers, "pixels"):
            buffers.pixels = np.empty((per_block, *FRAME), dtype=np.uint8)
        pixels = buffers.pixels[:count]
        pixels.fill(1)
        rows = np.add.reduce(pixels, axis=2, dtype=np.uint16)
        np.add.reduce(rows, axis=1, dtype=np.uint32)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(block, range(0, frames, per_block)))


def stemcast_eager(path: Path) -> np.ndarray:
    data = stemcast_reader(path, lazy=False)[0]["data"]
    return np.asarray(data.sum(axis=(-2, -1)))


def stemcast_lazy(path: Path) -> np.ndarray:
    data = stemcast_reader(path, lazy=True)[0]["data"]
    return np.asarray(data.sum(axis=(-2, -1)).compute())


def stemcast_virtual_image(path: Path) -> np.ndarray:
    return np.asarray(virtual_image(path))


def rsciio_eager(path: Path) -> np.ndarray:
    from rsciio.quantumdetector import file_reader

    data = file_reader(str(path), lazy=False)[0]["data"]
    return np.asarray(data.sum(axis=(-2, -1)))


def rsciio_lazy(path: Path) -> np.ndarray:
    from rsciio.quantumdetector import file_reader

    data = file_reader(str(path), lazy=True)[0]["data"]
    return np.asarray(data.sum(axis=(-2, -1)).compute())


class LiberTEM:
    """LiberTEM ``SumSigUDF`` (sum over the signal axes per frame) with one executor.

    ``ctx.load`` (dataset creation) is part of the timed call, as opening the file is for
    the other readers; the context (executor start-up) is created once, outside the timing.
    """

    def __init__(self, executor: str, cpus: int) -> None:
        from libertem.api import Context

        self.executor = executor
        if executor in ("inline", "synchronous"):
            self.ctx = Context.make_with(executor)
        else:
            self.ctx = Context.make_with(executor, cpus=cpus)

    def load(self, path: Path, nav_shape: tuple[int, int]) -> Any:
        return self.ctx.load("mib", path=str(path), nav_shape=nav_shape)

    def run(self, dataset: Any) -> np.ndarray:
        from libertem.udf.sumsigudf import SumSigUDF

        result = self.ctx.run_udf(dataset=dataset, udf=SumSigUDF(), progress=False)
        return np.asarray(result["intensity"].data)

    def __call__(self, path: Path, nav_shape: tuple[int, int]) -> np.ndarray:
        return self.run(self.load(path, nav_shape))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ctx.close()


# --------------------------------------------------------------------------------------------
# Timing and report
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    method: str
    seconds: float | None
    best: float | None = None
    note: str = ""
    result: np.ndarray | None = None


def timed(function: Callable[[], np.ndarray], repeat: int) -> tuple[list[float], np.ndarray]:
    """Wall times of ``repeat`` calls after one untimed warm-up call, and the last result."""
    result = function()
    times = []
    for _ in range(repeat):
        del result
        gc.collect()
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return times, result


def run_method(name: str, function: Callable[[], np.ndarray], repeat: int) -> Row:
    try:
        times, result = timed(function, repeat)
    except Exception as error:  # a reader that cannot read the file shows up as n/a
        note = f"{type(error).__name__}: {str(error).splitlines()[0][:60] if str(error) else ''}"
        print(f"  {name:<36} n/a ({note})", flush=True)
        return Row(name, None, note=note)
    seconds = statistics.median(times)
    print(
        f"  {name:<36} {seconds:8.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times)})", flush=True
    )
    return Row(name, seconds, min(times), result=result)


def report(title: str, path: Path, rows: list[Row], limit_name: str, ref_name: str | None) -> None:
    size = path.stat().st_size
    by_name = {row.method: row for row in rows}
    limit_s = by_name[limit_name].seconds
    ref_s = by_name[ref_name].seconds if ref_name in by_name else None
    print()
    print(f"{title}: {path.name}, {size / 1e9:.3f} GB")
    header = (
        f"| {'method':<36} | {'seconds':>8} | {'min s':>8} | {'GB/s':>6} | {'x limit':>7} "
        f"| {'x LiberTEM':>10} |"
    )
    print(header)
    print("|" + "|".join("-" * len(part) for part in header.split("|")[1:-1]) + "|")
    for row in rows:
        if row.seconds is None:
            print(
                f"| {row.method:<36} | {'n/a':>8} | {'':>8} | {'':>6} | {'':>7} | {'':>10} |"
                f" {row.note}"
            )
            continue
        ratio_limit = row.seconds / limit_s if limit_s else float("nan")
        ratio_ref = f"{row.seconds / ref_s:10.2f}" if ref_s else f"{'n/a':>10}"
        print(
            f"| {row.method:<36} | {row.seconds:8.3f} | {row.best:8.3f} | "
            f"{size / row.seconds / 1e9:6.2f} | {ratio_limit:7.2f} | {ratio_ref} |"
        )
    print(
        f"seconds: median of the timed runs; x limit, x LiberTEM: median time divided by that "
        f"of the limit / of {ref_name or 'LiberTEM'} (lower is better)"
    )


def check_equal(rows: list[Row], skip: str) -> None:
    reference: tuple[str, np.ndarray] | None = None
    for row in rows:
        if row.result is None or row.method == skip:
            continue
        values = np.asarray(row.result)
        as_int = values.astype(np.int64)
        if values.dtype.kind == "f":
            assert np.array_equal(as_int, values), f"{row.method}: non-integer VBF values"
        if reference is None:
            reference = (row.method, as_int)
            continue
        assert as_int.shape == reference[1].shape, (
            f"{row.method}: VBF shape {as_int.shape} != {reference[1].shape} ({reference[0]})"
        )
        assert np.array_equal(as_int, reference[1]), (
            f"{row.method}: VBF differs from {reference[0]} "
            f"(max abs diff {np.abs(as_int - reference[1]).max()})"
        )
    assert reference is not None
    print(f"VBF check: all methods agree ({reference[1].shape}, total {reference[1].sum()})")


def libertem_rows(
    executors: list[str], cpus: int, path: Path, nav: tuple[int, int], repeat: int
) -> tuple[list[Row], str | None]:
    """One row per executor (``ctx.load`` + ``run_udf``), then ``run_udf`` alone for the best."""
    rows = []
    for executor in executors:
        name = f"LiberTEM ({executor})"
        try:
            engine = LiberTEM(executor, cpus)
        except Exception as error:
            rows.append(Row(name, None, note=f"{type(error).__name__}: {error}"))
            continue
        try:
            rows.append(run_method(name, functools.partial(engine, path, nav), repeat))
        finally:
            engine.close()
    timed_rows = [row for row in rows if row.seconds is not None]
    if not timed_rows:
        return rows, None
    best = min(timed_rows, key=lambda row: row.seconds or 0.0)
    executor = best.method[len("LiberTEM (") : -1]
    engine = LiberTEM(executor, cpus)
    try:
        dataset = engine.load(path, nav)
        only = run_method(
            f"LiberTEM ({executor}, run_udf only)", lambda: engine.run(dataset), repeat
        )
    finally:
        engine.close()
    only.note = "informative: dataset created before timing"
    rows.append(only)
    return rows, best.method


def bench_file(
    title: str,
    path: Path,
    nav: tuple[int, int],
    methods: list[tuple[str, Any]],
    executors: list[str],
    cpus: int,
    repeat: int,
    limit_target: float,
    floors: tuple[tuple[str, Any], ...] = (),
) -> None:
    warm(path)
    print(f"\n{title}: timing (median of {repeat}, warm page cache)", flush=True)
    rows = [run_method("limit: memmap uint64 sum", lambda: limit(path), repeat)]
    for name, floor in floors:
        rows.append(run_method(name, functools.partial(floor, path), repeat))
    for name, method in methods:
        rows.append(run_method(name, functools.partial(method, path), repeat))
    lt_rows, best = libertem_rows(executors, cpus, path, nav, repeat)
    rows += lt_rows
    report(title, path, rows, "limit: memmap uint64 sum", best)
    check_equal(rows, skip="limit: memmap uint64 sum")
    targets(rows, "limit: memmap uint64 sum", best, limit_target)


def targets(rows: list[Row], limit_name: str, ref_name: str | None, limit_target: float) -> None:
    """Print the stemcast rows against the targets of the issue."""
    by_name = {row.method: row for row in rows}
    limit_s = by_name[limit_name].seconds
    ref_s = by_name[ref_name].seconds if ref_name else None
    for row in rows:
        if not row.method.startswith("stemcast") or row.seconds is None or not limit_s:
            continue
        ratio = row.seconds / limit_s
        parts = [
            f"{ratio:.2f}x limit (target <= {limit_target}: "
            f"{'met' if ratio <= limit_target else 'MISSED'})"
        ]
        if ref_s:
            vs = row.seconds / ref_s
            parts.append(f"{vs:.2f}x LiberTEM (target <= 1: {'met' if vs <= 1 else 'MISSED'})")
        print(f"target check, {row.method}: " + ", ".join(parts))


#: The readers timed on every file, besides LiberTEM and the limit.
READERS = [
    ("stemcast eager", stemcast_eager),
    ("stemcast lazy", stemcast_lazy),
    ("stemcast virtual_image", stemcast_virtual_image),
    ("rosettasciio eager", rsciio_eager),
    ("rosettasciio lazy", rsciio_lazy),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-gb",
        type=float,
        default=0.5,
        help="minimum size of each test file in GB (default 0.5)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per method")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(__file__).resolve().parent / "data",
        help="where the test files are written and cached",
    )
    parser.add_argument(
        "--libertem",
        default="inline,threads,pipelined,dask",
        help="comma-separated LiberTEM executors to time ('' to skip)",
    )
    parser.add_argument("--only", choices=("12bit", "raw"), help="benchmark one file only")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    describe_machine(("numpy", "dask", "rsciio", "libertem", "numba", "stemcast"))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    executors = [item for item in args.libertem.split(",") if item]
    args.workdir.mkdir(parents=True, exist_ok=True)
    size = args.size_gb * 1e9

    if args.only in (None, "12bit"):
        scan = _scan_for(size, RECORD_12)
        path = ensure_file(args.workdir, "bench12", scan, RECORD_12, make_12bit)
        bench_file(
            "12-bit processed (U16) 256x256",
            path,
            (scan[1], scan[0]),
            READERS,
            executors,
            cpus or 1,
            args.repeat,
            2.5,
        )
    if args.only in (None, "raw"):
        # LiberTEM 0.16 reads RAW files only when their size is a multiple of 65536 bytes
        # (it computes the end of the data with the decoded frame size): 512 frames of 8576.
        scan = _scan_for(size, RECORD_1RAW, multiple=512)
        path = ensure_file(args.workdir, "bench1raw", scan, RECORD_1RAW, make_1bit_raw)
        bench_file(
            "RAW 1-bit (R64) 256x256",
            path,
            (scan[1], scan[0]),
            READERS,
            executors,
            cpus or 1,
            args.repeat,
            3.0,
            floors=(("floor: write + sum decoded pixels", decoded_floor),),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
