"""Mutated files of every format, read in guarded workers: only stemcast errors, no hang.

Seeds written by stemcast's writers and simulator are mutated (tests/fuzz/fuzz_mutations.py)
and read through the public API (eager, lazy, virtual image, navigator, ...) by worker
processes limited to 1 GiB of address space. Every input must read or be refused with a
``stemcast.errors`` exception naming its file, within 5 s; a worker that stops answering
(20 s) or dies is a failure. ``benchmarks/fuzz_readers.py --input N`` reproduces input N.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fuzz_harness import MEMORY_LIMIT, Report, run_campaign
from fuzz_seeds import write_seeds

#: Inputs of the default run, and of the slow run (which starts where the default ends).
QUICK_INPUTS = 3_600
SLOW_INPUTS = 12_000


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    write_seeds(folder)
    return folder


def _check(report: Report) -> None:
    failures = "\n".join(
        json.dumps(failure)
        + f"\n  reproduce: python benchmarks/fuzz_readers.py --input {failure['input']}"
        for failure in report.failures[:10]
    )
    assert not report.failures, f"{len(report.failures)} inputs failed:\n{failures}"
    assert all(figures.inputs > 0 for figures in report.kinds.values()), report.summary()
    assert report.peak_kib * 1024 < MEMORY_LIMIT


def test_seeds_read_without_error(seeds: Path) -> None:
    from fuzz_cases import read_manifest
    from fuzz_worker import read

    for seed in read_manifest(seeds):
        for mode in seed.reads:
            read(seeds / seed.entry, mode)


def test_mutated_inputs_raise_only_stemcast_errors(seeds: Path) -> None:
    _check(run_campaign(seeds, range(QUICK_INPUTS)))


@pytest.mark.slow
def test_more_mutated_inputs_raise_only_stemcast_errors(seeds: Path) -> None:
    _check(run_campaign(seeds, range(QUICK_INPUTS, QUICK_INPUTS + SLOW_INPUTS)))
