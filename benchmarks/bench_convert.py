"""End-to-end conversion of a Merlin run to blockfile and EMD: stemcast against RosettaSciIO.

A 12-bit 256 x 256 Merlin run of at least ``--size-gb`` (default 1.07 GB: a 128 x 64 scan) is
converted to both targets, a blockfile with ``intensity_scaling="minmax"`` (``--scaling``)
and an NCEM EMD file, by

* ``stemcast``: :func:`stemcast.convert.run.convert_run` (what ``stemcast convert`` and
  the service run): one pass over the source in 16 MiB batches feeding both writers, plus
  the cheap first pass of ``"minmax"``; outputs fsynced and renamed into place;
* ``rosettasciio``: ``rsciio.quantumdetector.file_reader`` then ``rsciio.blockfile.file_writer``
  and ``rsciio.emd.file_writer``, eager (the whole run in memory) and lazy (dask arrays); the
  faster of the two is the reference. Its ``original_metadata`` is emptied before the EMD
  writer, which fails on the Merlin header keys (dots in names);
* ``cp`` of the source, plain and followed by ``sync`` of the copy: the limit.

Each method runs in a child process that reports its wall time (imports excluded) and its peak
resident memory (``VmHWM``, interpreter and imports included); ``sync`` and a warm page cache
before each run. Rounds interleave the methods (a slow spell of the disk hits them all) and
the median is shown. stemcast's and the reference's outputs must hold the same frames (and
blockfile navigators), or the script fails.

Usage::

    python benchmarks/bench_convert.py [--size-gb 1.07] [--repeat 3] [--scaling minmax]
                                       [--workdir DIR] [--skip METHOD,...]

The source is written once into ``--workdir`` (default ``benchmarks/data/``, ignored by git)
and reused. Timings on a shared machine are approximate.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bench_blockfile import make_source, peak_rss, warm
from machine import describe_machine

FRAME = 256
RECORD = 384 + FRAME * FRAME * 2  # 12-bit frames are stored as U16
WIDTH = 128


# --------------------------------------------------------------------------------------------
# Source
# --------------------------------------------------------------------------------------------


def ensure_source(workdir: Path, size_gb: float) -> tuple[Path, tuple[int, int]]:
    """The 12-bit run of at least ``size_gb``, a scan ``WIDTH`` frames wide."""
    frames = math.ceil(size_gb * 1e9 / RECORD)
    scan = (WIDTH, math.ceil(frames / WIDTH))
    path = workdir / f"convert_source12_{scan[0]}x{scan[1]}.mib"
    expected = scan[0] * scan[1] * RECORD
    if not (path.is_file() and path.stat().st_size == expected):
        print(f"writing {path} ({expected / 1e9:.3f} GB) ...", flush=True)
        started = time.perf_counter()
        make_source(path, scan)
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return path, scan


# --------------------------------------------------------------------------------------------
# Methods (each runs in a child process; ``dest`` is an empty folder)
# --------------------------------------------------------------------------------------------


def stemcast_convert(source: Path, dest: Path, scaling: str, scan: tuple[int, int]) -> None:
    from stemcast.convert.run import convert_run

    convert_run(
        source,
        ["blockfile", "emd"],
        dest,
        options={"blockfile": {"intensity_scaling": scaling}},
    )


def _rsciio(source: Path, dest: Path, scaling: str, scan: tuple[int, int], lazy: bool) -> None:
    from rsciio.blockfile import file_writer as write_blockfile
    from rsciio.emd import file_writer as write_emd
    from rsciio.quantumdetector import file_reader

    # Its reader does not read ScanX/ScanY from the .hdr: the scan is given, as a user would.
    signal = file_reader(str(source), lazy=lazy, navigation_shape=scan)[0]
    signal["attributes"] = {"_lazy": lazy}
    write_blockfile(
        str(dest / f"{source.stem}.blo"),
        signal,
        intensity_scaling=scaling,
        show_progressbar=False,
    )
    # The reference EMD writer fails on the Merlin header keys (dots in names); the EMD file
    # keeps only the microscope/sample/user/comments groups anyway.
    signal["original_metadata"] = {}
    signal["metadata"]["General"].setdefault("title", source.stem)
    write_emd(str(dest / f"{source.stem}.emd"), signal)


def rsciio_eager(source: Path, dest: Path, scaling: str, scan: tuple[int, int]) -> None:
    _rsciio(source, dest, scaling, scan, lazy=False)


def rsciio_lazy(source: Path, dest: Path, scaling: str, scan: tuple[int, int]) -> None:
    _rsciio(source, dest, scaling, scan, lazy=True)


def copy(source: Path, dest: Path, scaling: str, scan: tuple[int, int]) -> None:
    subprocess.run(["cp", str(source), str(dest)], check=True)


def copy_sync(source: Path, dest: Path, scaling: str, scan: tuple[int, int]) -> None:
    copy(source, dest, scaling, scan)
    subprocess.run(["sync", str(dest / source.name)], check=True)


OURS = "stemcast convert_run"
REFERENCES = ("rosettasciio eager", "rosettasciio lazy")
LIMIT, LIMIT_SYNC = "cp", "cp + sync"
#: What the reference methods import before the clock starts (import time is not work).
REFERENCE_MODULES = (
    "rsciio.quantumdetector",
    "rsciio.blockfile",
    "rsciio.emd",
    "skimage.exposure",
    "dask.array",
    "h5py",
)
#: name -> (function, modules imported before the clock starts)
METHODS: dict[str, tuple[Callable[[Path, Path, str, tuple[int, int]], None], tuple[str, ...]]] = {
    LIMIT: (copy, ()),
    LIMIT_SYNC: (copy_sync, ()),
    OURS: (
        stemcast_convert,
        (
            "stemcast.convert.run",
            "stemcast.writers.blockfile",
            "stemcast.writers.emd",
            "stemcast.readers.mib",
            "skimage.exposure",
            "h5py",
            "tqdm",
        ),
    ),
    "rosettasciio eager": (rsciio_eager, REFERENCE_MODULES),
    "rosettasciio lazy": (rsciio_lazy, REFERENCE_MODULES),
}


def child(method: str, source: Path, dest: Path, scaling: str, scan: tuple[int, int]) -> None:
    """Run one method; print its wall time and peak memory as JSON."""
    warnings.filterwarnings("ignore")
    function, modules = METHODS[method]
    for module in modules:
        importlib.import_module(module)
    started = time.perf_counter()
    function(source, dest, scaling, scan)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_bytes": peak_rss()}))


def out_dir(workdir: Path, method: str) -> Path:
    """The output folder of a method."""
    return workdir / f"convert_out_{method.replace(' + ', '_plus_').replace(' ', '_')}"


def run_child(
    method: str, source: Path, dest: Path, scaling: str, scan: tuple[int, int], timeout: float
) -> dict[str, Any]:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    subprocess.run(["sync"], check=True)
    warm(source)
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            method,
            str(source),
            str(dest),
            scaling,
            f"{scan[0]}x{scan[1]}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{method}: {last[:200]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# Checks and report
# --------------------------------------------------------------------------------------------


def same_outputs(ours: Path, theirs: Path, stem: str, scan: tuple[int, int]) -> None:
    """Both methods wrote the same frames (EMD, blockfile) and navigator, a line at a time."""
    from stemcast.readers.blockfile import file_reader, read_navigator

    with h5py.File(ours / f"{stem}.emd") as mine, h5py.File(theirs / f"{stem}.emd") as other:
        (data,) = (group["data"] for group in mine["signals"].values())
        (expected,) = (group["data"] for group in other["signals"].values())
        if data.shape != expected.shape:
            raise SystemExit(f"EMD shapes differ: {data.shape} vs {expected.shape}")
        for line in range(data.shape[-1]):
            if not np.array_equal(data[..., line], expected[..., line]):
                raise SystemExit(f"EMD files differ in scan line {line}")
    blo, ref = (
        file_reader(path / f"{stem}.blo", mmap_mode="r")[0]["data"] for path in (ours, theirs)
    )
    if blo.shape != (scan[1], scan[0], FRAME, FRAME) or blo.shape != ref.shape:
        raise SystemExit(f"blockfile shapes differ: {blo.shape} vs {ref.shape}")
    for line in range(0, scan[1], 8):
        if not np.array_equal(blo[line : line + 8], ref[line : line + 8]):
            raise SystemExit(f"blockfiles differ in scan lines {line}..{line + 7}")
    if not np.array_equal(
        read_navigator(ours / f"{stem}.blo"), read_navigator(theirs / f"{stem}.blo")
    ):
        raise SystemExit("blockfile navigators differ")
    print("  output check: same EMD frames, same blockfile frames and navigator")


def report(size: int, results: dict[str, dict[str, Any]]) -> None:
    limit = results[LIMIT]["seconds"]
    limit_sync = results[LIMIT_SYNC]["seconds"]
    timed = [name for name in REFERENCES if name in results]
    reference = min((results[name]["seconds"] for name in timed), default=None)
    print(f"\n| {'method':<20} | seconds | GB/s | peak MB | x cp | x cp+sync | reference / this |")
    print(f"|{'-' * 22}|--------:|-----:|--------:|-----:|----------:|-----------------:|")
    for name, row in results.items():
        seconds = row["seconds"]
        ratio = f"{reference / seconds:16.1f}" if reference else f"{'n/a':>16}"
        print(
            f"| {name:<20} | {seconds:7.2f} | {size / seconds / 1e9:4.2f} | "
            f"{row['peak_bytes'] / 1e6:7.0f} | {seconds / limit:4.1f} | "
            f"{seconds / limit_sync:9.2f} | {ratio} |"
        )
    ours = results[OURS]
    if reference is not None:
        speedup = reference / ours["seconds"]
        verdict = "met" if speedup >= 5 else "NOT met"
        print(f"target at least 5x faster than the reference: {verdict} ({speedup:.1f}x)")
    peak = ours["peak_bytes"] / 1e6
    print(f"target peak memory under 500 MB: {'met' if peak < 500 else 'NOT met'} ({peak:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.07, help="source size (1.07 GB)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median)")
    parser.add_argument("--scaling", default="minmax", help="blockfile intensity_scaling")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out")
    parser.add_argument("--child", nargs=5, metavar=("METHOD", "SOURCE", "DEST", "SCALING", "SCAN"))
    args = parser.parse_args()
    if args.child:
        method, source, dest, scaling, scan_text = args.child
        width, height = (int(size) for size in scan_text.split("x"))
        child(method, Path(source), Path(dest), scaling, (width, height))
        return

    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    describe_machine(("numpy", "h5py", "dask", "rsciio", "stemcast"))
    source, scan = ensure_source(workdir, args.size_gb)
    size = source.stat().st_size
    skipped = {name.strip() for name in args.skip.split(",") if name.strip()}
    methods = [name for name in METHODS if name not in skipped]
    print(
        f"\nMIB -> blockfile ({args.scaling!r}) + EMD: {source.name}, {size / 1e9:.3f} GB, "
        f"scan {scan[0]} x {scan[1]}, {args.repeat} rounds"
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    for _ in range(args.repeat):
        for name in list(runs):
            dest = out_dir(workdir, name)
            try:
                runs[name].append(run_child(name, source, dest, args.scaling, scan, args.timeout))
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"  {name}: failed ({error}); left out", flush=True)
                del runs[name]
    results: dict[str, dict[str, Any]] = {}
    for name, done in runs.items():
        times = [run["seconds"] for run in done]
        results[name] = {
            "seconds": statistics.median(times),
            "peak_bytes": max(run["peak_bytes"] for run in done),
        }
        print(
            f"  {name:<20} {results[name]['seconds']:7.2f} s  peak "
            f"{results[name]['peak_bytes'] / 1e6:6.0f} MB  (runs: "
            + ", ".join(f"{value:.2f}" for value in times)
            + ")",
            flush=True,
        )
    folder = {name: out_dir(workdir, name) for name in results}
    checked = [name for name in REFERENCES if name in results]
    if OURS in results and checked:
        same_outputs(folder[OURS], folder[checked[0]], source.stem, scan)
    if {OURS, LIMIT, LIMIT_SYNC} <= results.keys():
        report(size, results)
    for name in METHODS:
        shutil.rmtree(out_dir(workdir, name), ignore_errors=True)


if __name__ == "__main__":
    main()
