"""Fuzz the readers: many mutated inputs of every format, each read in a guarded worker.

The seeds are small valid files written by stemcast's own writers and simulator (Merlin runs
with their ``.hdr``, processed and RAW, TVIPS series, a blockfile, NCEM and Velox EMD files);
input ``n`` is seed ``n``'s format class in turn, mutated by a generator seeded with ``n``
(tests/fuzz/fuzz_mutations.py), and read in one of the ways of the public API (eager, lazy,
virtual image, navigator, ...). Each worker process is limited to 1 GiB of address space;
an input without an answer within 20 s is a hang.

Usage::

    python benchmarks/fuzz_readers.py [--count 100000] [--start 0] [--workers 2]
                                      [--save DIR] [--input N]

``--input N`` reads input ``N`` in this process and prints what it raised (with the whole
traceback), to reproduce a failure; ``--save DIR`` writes the files of every failing input
into ``DIR/N/``. The exit status is 1 when any input escaped the ``stemcast.errors`` family,
hung, crashed or took more than 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[1] / "tests" / "fuzz"
sys.path.insert(0, str(FUZZ))

from fuzz_cases import input_of, mutated_files, read_manifest  # noqa: E402
from fuzz_harness import Report, run_campaign  # noqa: E402
from fuzz_seeds import write_seeds  # noqa: E402
from fuzz_worker import read  # noqa: E402


def _reproduce(seeds: Path, number: int, scratch: Path) -> None:
    item = input_of(read_manifest(seeds), number)
    for name, content in mutated_files(seeds, item).items():
        (scratch / name).write_bytes(content)
    print(f"input {number}: seed {item.seed.name} ({item.seed.kind}), read mode {item.read}")
    try:
        read(scratch / item.seed.entry, item.read)
    except Exception:
        traceback.print_exc()
    else:
        print("read without error")


def _save(seeds: Path, report: Report, target: Path) -> None:
    manifest = read_manifest(seeds)
    for failure in report.failures:
        folder = target / str(failure["input"])
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in mutated_files(seeds, input_of(manifest, failure["input"])).items():
            (folder / name).write_bytes(content)
        (folder / "failure.json").write_text(json.dumps(failure, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs to read")
    parser.add_argument("--start", type=int, default=0, help="number of the first input")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--save", type=Path, help="write the files of failing inputs here")
    parser.add_argument("--input", type=int, help="read this one input here, with traceback")
    parser.add_argument("--log", type=Path, help="where the workers' standard error goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as folder:
        seeds = Path(folder)
        write_seeds(seeds)
        if args.input is not None:
            scratch = seeds / "input"
            scratch.mkdir()
            _reproduce(seeds, args.input, scratch)
            return 0
        log = open(args.log, "w") if args.log else None  # noqa: SIM115
        try:
            report = run_campaign(
                seeds,
                range(args.start, args.start + args.count),
                workers=args.workers,
                log=log,
                progress=lambda report: print(
                    f"{report.inputs} inputs, {len(report.failures)} failures, "
                    f"{report.wall_seconds:.0f} s",
                    flush=True,
                ),
            )
        finally:
            if log is not None:
                log.close()
        print(report.summary())
        if args.save is not None:
            _save(seeds, report, args.save)
    return 1 if report.failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
