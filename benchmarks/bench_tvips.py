"""Write and lazy-read throughput of rolling TVIPS series: stemcast against RosettaSciIO.

A 4D-STEM scan of 256x256 ``uint16`` diffraction patterns (``stemcast.simulate``), at least
``--size-gb`` of records, is held in memory as a numpy array, then

* written as a split series (``_000``, ``_001``, ... capped at ``--max-file-size``) from a
  HyperSpy-style signal dictionary by ``stemcast.writers.tvips.file_writer`` and by
  ``rsciio.tvips.file_writer``; limits: ``cp`` of the same files, and ``cp`` followed by an
  fsync of the copies (stemcast's writer fsyncs before it renames, the reference does not);
* read lazily with ``scan_shape=(y, x)`` to a virtual bright-field image (the sum of every
  frame, ``data.sum(axis=(-2, -1)).compute()``) by both readers; limit: ``numpy.fromfile`` of
  every part (the raw read of the same bytes, no decoding, no sum).

Every timed call goes from the path (or the in-memory signal) to the result, warm page cache,
median of ``--repeat`` runs after one untimed run. Dirty pages are flushed (``os.sync``)
outside the timings. The script checks that both writers' files read back to the data and
that all readers give the same image.

Usage::

    python benchmarks/bench_tvips.py [--size-gb 0.5] [--repeat 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from machine import describe_machine
from stemcast.readers.tvips import file_reader as stemcast_reader
from stemcast.simulate import diffraction_patterns
from stemcast.writers.tvips import file_writer as stemcast_writer

FRAME = (256, 256)
RECORD = 60 + FRAME[0] * FRAME[1] * 2
WIDTH = 64


def make_signal(size_bytes: float) -> dict[str, Any]:
    """A scan of synthetic diffraction patterns as a signal dictionary (numpy data)."""
    frames = max(math.ceil(size_bytes / RECORD), WIDTH)
    height = math.ceil(frames / WIDTH)
    data = np.empty((height * WIDTH, *FRAME), np.uint16)
    start = 0
    for batch in diffraction_patterns((WIDTH, height), FRAME, batch_frames=256, seed=1):
        data[start : start + len(batch)] = batch
        start += len(batch)
    data = data.reshape(height, WIDTH, *FRAME)
    axes = [
        {
            "name": name,
            "size": size,
            "scale": scale,
            "offset": 0.0,
            "units": units,
            "navigate": index < 2,
            "index_in_array": index,
        }
        for index, (name, size, scale, units) in enumerate(
            [
                ("y", height, 1.0, "nm"),
                ("x", WIDTH, 1.0, "nm"),
                ("dy", FRAME[0], 1.0, "1/nm"),
                ("dx", FRAME[1], 1.0, "1/nm"),
            ]
        )
    ]
    metadata = {
        "General": {"date": "2024-05-06", "time": "07:08:09", "time_zone": "UTC"},
        "Acquisition_instrument": {"TEM": {"beam_energy": 200.0, "camera_length": 80.0}},
    }
    return {
        "data": data,
        "axes": axes,
        "metadata": metadata,
        "original_metadata": {},
        "attributes": {"_lazy": False},
    }


def parts(directory: Path, base: str) -> list[Path]:
    return sorted(directory.glob(f"{base}_[0-9][0-9][0-9].tvips"))


def warm(paths: list[Path]) -> None:
    """Read the files once so that they sit in the page cache."""
    buffer = bytearray(64 * 2**20)
    for path in paths:
        with open(path, "rb", buffering=0) as stream:
            while stream.readinto(buffer):
                pass


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def write_stemcast(directory: Path, signal: dict[str, Any], max_file_size: int) -> None:
    stemcast_writer(
        directory / "ours.tvips", signal, max_file_size=max_file_size, show_progressbar=False
    )


def write_rsciio(directory: Path, signal: dict[str, Any], max_file_size: int) -> None:
    from rsciio.tvips import file_writer

    file_writer(
        str(directory / "ref.tvips"), signal, max_file_size=max_file_size, show_progressbar=False
    )


def copy(sources: list[Path], directory: Path, fsync: bool) -> None:
    """``cp`` the files into ``directory/cp``, then optionally fsync the copies."""
    subprocess.run(["cp", *map(str, sources), str(directory / "cp")], check=True)
    if fsync:
        for path in (directory / "cp").iterdir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def raw_read(paths: list[Path]) -> np.ndarray:
    """The limit of any reader: every byte of the series from the page cache, no decoding."""
    return np.asarray([np.fromfile(path, dtype=np.uint8).size for path in paths])


def vbf_stemcast(first: Path, scan: tuple[int, int]) -> np.ndarray:
    data = stemcast_reader(first, lazy=True, scan_shape=scan)[0]["data"]
    return np.asarray(data.sum(axis=(-2, -1)).compute())


def vbf_rsciio(first: Path, scan: tuple[int, int]) -> np.ndarray:
    from rsciio.tvips import file_reader

    data = file_reader(str(first), lazy=True, scan_shape=scan)[0]["data"]
    return np.asarray(data.sum(axis=(-2, -1)).compute())


# --------------------------------------------------------------------------------------------
# Timing and report
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    method: str
    seconds: float
    result: Any = None


def timed(function: Callable[[], Any], repeat: int, after: Callable[[], None]) -> Row:
    """Median wall time of ``repeat`` calls after one untimed call; ``after`` runs untimed."""
    result = function()
    after()
    times = []
    for _ in range(repeat):
        del result
        gc.collect()
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
        after()
    return Row("", statistics.median(times), result)


def report(title: str, size: int, rows: list[Row], limit: str, reference: str) -> None:
    by_name = {row.method: row.seconds for row in rows}
    print(f"\n{title}: {size / 1e9:.3f} GB")
    print(f"| {'method':<38} | {'seconds':>7} | {'GB/s':>5} | {'x limit':>7} | {'x rsciio':>8} |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 7}|{'-' * 9}|{'-' * 10}|")
    for row in rows:
        print(
            f"| {row.method:<38} | {row.seconds:7.3f} | {size / row.seconds / 1e9:5.2f} | "
            f"{row.seconds / by_name[limit]:7.2f} | {row.seconds / by_name[reference]:8.2f} |"
        )
    print(
        f"(x limit: time / time of '{limit}'; x rsciio: time / time of '{reference}'; "
        "lower is better)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-gb", type=float, default=0.5, help="minimum size of the series in GB (default 0.5)"
    )
    parser.add_argument(
        "--max-file-size",
        type=int,
        default=128 * 2**20,
        help="size cap of each part in bytes (default 128 MiB)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per method")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the series are written (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    describe_machine(("numpy", "dask", "rsciio", "stemcast"))

    print(f"making a {args.size_gb} GB scan of synthetic diffraction patterns ...", flush=True)
    signal = make_signal(args.size_gb * 1e9)
    data = signal["data"]
    scan = data.shape[:2]
    print(f"scan {scan}, frames {FRAME}, {data.nbytes / 1e9:.3f} GB of pixels", flush=True)

    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=".")))
        else:
            directory = args.workdir
            directory.mkdir(parents=True, exist_ok=True)
        (directory / "cp").mkdir(exist_ok=True)

        def flush() -> None:
            os.sync()

        # Write ----------------------------------------------------------------------------
        print(
            f"\nwrite: timing (median of {args.repeat}, split at {args.max_file_size} B)",
            flush=True,
        )
        rows = []
        for name, write in (
            ("stemcast file_writer", write_stemcast),
            ("rsciio file_writer", write_rsciio),
        ):
            row = timed(
                lambda write=write: write(directory, signal, args.max_file_size), args.repeat, flush
            )
            row.method = name
            rows.append(row)
            print(f"  {name:<38} {row.seconds:7.3f} s", flush=True)
        ours, reference = parts(directory, "ours"), parts(directory, "ref")
        sizes = [path.stat().st_size for path in ours]
        assert sizes == [path.stat().st_size for path in reference], "split differs"
        warm(ours)
        for name, fsync in (
            ("limit: cp of the same files", False),
            ("limit: cp + fsync of the copies", True),
        ):
            row = timed(lambda fsync=fsync: copy(ours, directory, fsync), args.repeat, flush)
            row.method = name
            rows.append(row)
            print(f"  {name:<38} {row.seconds:7.3f} s", flush=True)
        report("write", sum(sizes), rows, "limit: cp of the same files", "rsciio file_writer")
        shutil.rmtree(directory / "cp")

        # Read -----------------------------------------------------------------------------
        print(
            f"\nlazy read to a VBF image: timing (median of {args.repeat}, warm page cache)",
            flush=True,
        )
        warm(ours + reference)
        rows = []
        for name, method, first in (
            ("limit: numpy.fromfile of every part", None, None),
            ("stemcast file_reader(lazy=True)", vbf_stemcast, ours[0]),
            ("rsciio file_reader(lazy=True)", vbf_rsciio, ours[0]),
            ("stemcast, reference-written files", vbf_stemcast, reference[0]),
        ):
            if method is None:
                row = timed(lambda: raw_read(ours), args.repeat, lambda: None)
            else:
                row = timed(
                    lambda method=method, first=first: method(first, scan),
                    args.repeat,
                    lambda: None,
                )
            row.method = name
            rows.append(row)
            print(f"  {name:<38} {row.seconds:7.3f} s", flush=True)
        report(
            "lazy read (VBF)",
            sum(sizes),
            rows,
            "limit: numpy.fromfile of every part",
            "rsciio file_reader(lazy=True)",
        )
        expected = data.sum(axis=(-2, -1), dtype=np.uint64)
        for row in rows[1:]:
            assert np.array_equal(row.result, expected), f"{row.method}: wrong VBF image"
        print(f"VBF check: every reader gives the image of the data written ({expected.shape})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
