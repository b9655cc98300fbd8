"""Fuzz worker: reads mutated inputs with the public API, one JSON line of outcome per input.

Usage (by :mod:`fuzz_harness`)::

    python fuzz_worker.py SEED_DIR SCRATCH_DIR MEMORY_LIMIT_BYTES

Input numbers arrive on standard input, one per line. For each, the worker writes the input's
files into ``SCRATCH_DIR``, reads them as its read mode says (``stemcast.load`` eager or lazy,
the virtual image of a Merlin run, a blockfile's navigator, ...), computes frame sums of what
it got so that every byte is read, and answers with the outcome: ``ok``, ``refused`` (a
``stemcast.errors`` exception naming the file), ``unnamed`` (one that does not) or
``escaped`` (any other exception), the seconds taken and the peak resident memory so far.
The address space is limited (``RLIMIT_AS``): an allocation past the limit fails, and that
failure escapes the family.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import resource
import shutil
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, TextIO

import dask
import numpy as np
from fuzz_cases import Input, Seed, input_of, mutated_files, read_manifest

import stemcast
from stemcast.errors import StemcastError
from stemcast.readers.blockfile import read_navigator
from stemcast.readers.mib import virtual_image

#: Keyword arguments of ``stemcast.load`` per read mode.
LOAD_OPTIONS: dict[str, dict[str, Any]] = {
    "load": {},
    "lazy": {"lazy": True},
    "auto": {"scan_shape": "auto"},
    "frames": {"sum_frames": False},
}


def _sums(data: Any) -> list[Any]:
    """Frame sums and the scan sum of ``data``, the reductions users run first."""
    if data.dtype.kind not in "biuf" or data.ndim == 0:
        return [data]
    sums = [data.sum(axis=(-2, -1)) if data.ndim >= 2 else data.sum()]
    if data.ndim > 2:
        sums.append(data.sum(axis=tuple(range(data.ndim - 2))))
    return sums


def touch(data: Any) -> None:
    """Read every value of ``data`` (numpy, memory map or dask array)."""
    if hasattr(data, "dask"):
        dask.compute(*_sums(data))
    else:
        for value in _sums(data):
            np.asarray(value)


def read(entry: Path, mode: str) -> None:
    """Read ``entry`` with the public API in read mode ``mode``."""
    if mode == "virtual":
        touch(virtual_image(entry))
    elif mode == "navigator":
        touch(read_navigator(entry))
    else:
        for signal in stemcast.load(entry, **LOAD_OPTIONS[mode]):
            touch(signal["data"])


def _write(scratch: Path, files: dict[str, bytes]) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name, content in files.items():
        (scratch / name).write_bytes(content)


def outcome(item: Input, error: Exception | None) -> dict[str, Any]:
    """Classify the result of reading ``item``."""
    if error is None:
        return {"outcome": "ok"}
    message = str(error)
    if isinstance(error, StemcastError):
        named = any(name in message for name in item.seed.files)
        return {"outcome": "refused" if named else "unnamed", "message": message[:300]}
    return {
        "outcome": "escaped",
        "type": type(error).__name__,
        "message": message[:300],
        "traceback": "".join(traceback.format_exception(error)[-4:])[-1500:],
    }


def run(directory: Path, seeds: list[Seed], scratch: Path, number: int) -> dict[str, Any]:
    """Build input ``number``, read it and report the outcome."""
    item = input_of(seeds, number)
    _write(scratch, mutated_files(directory, item))
    start = time.perf_counter()
    error: Exception | None = None
    try:
        read(scratch / item.seed.entry, item.read)
    except Exception as caught:
        error = caught
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"number": number, **outcome(item, error), "seconds": seconds, "peak_kib": peak_kib}


def serve(directory: Path, scratch: Path, results: TextIO) -> None:
    """Answer every input number of standard input."""
    seeds = read_manifest(directory)
    for line in sys.stdin:
        result = run(directory, seeds, scratch, int(line))
        results.write(json.dumps(result) + "\n")
        results.flush()


def main() -> None:
    """Entry point: ``SEED_DIR SCRATCH_DIR MEMORY_LIMIT_BYTES``."""
    directory, scratch, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    # Results go to a private copy of stdout; anything the libraries print goes to stderr.
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # The harness asks for the stacks of a worker it is about to kill as hung.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    dask.config.set(scheduler="synchronous")
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    serve(directory, scratch, results)


if __name__ == "__main__":
    main()
