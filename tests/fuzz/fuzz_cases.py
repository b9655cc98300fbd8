"""The inputs of a fuzz campaign: seeds, and input number -> (seed, read mode, mutated files).

Input ``n`` of a campaign is fully determined by ``n`` and the seed files, so a failure is
reproduced from its number alone (``benchmarks/fuzz_readers.py --input N``).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fuzz_mutations import mutate

MANIFEST = "seeds.json"

#: Format classes of the fuzz figures, in report order.
KINDS = ("MIB", "RAW MIB", "TVIPS", "blockfile", "EMD NCEM", "EMD Velox")


@dataclass(frozen=True)
class Seed:
    """One valid input and how it is read.

    Attributes
    ----------
    name
        Unique name (also the stem of its files).
    kind
        Format class, one of :data:`KINDS`.
    entry
        The file given to the reader.
    files
        Every file of the input (the entry, an ``.hdr``, further parts).
    targets
        The files mutations apply to, with the byte ranges ``[start, stop)`` that carry
        structure.
    reads
        Read modes of the worker (``"load"``, ``"lazy"``, ...), taken in turn.
    """

    name: str
    kind: str
    entry: str
    files: tuple[str, ...]
    targets: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    reads: tuple[str, ...] = ("load", "lazy")


def write_manifest(directory: Path, seeds: list[Seed]) -> None:
    """Describe ``seeds`` in the manifest of ``directory``."""
    (directory / MANIFEST).write_text(json.dumps([asdict(seed) for seed in seeds], indent=1))


def read_manifest(directory: Path) -> list[Seed]:
    """The seeds described by the manifest of ``directory``."""
    seeds = []
    for entry in json.loads((directory / MANIFEST).read_text()):
        targets = {
            name: [(start, stop) for start, stop in ranges]
            for name, ranges in entry["targets"].items()
        }
        seeds.append(
            Seed(
                entry["name"],
                entry["kind"],
                entry["entry"],
                tuple(entry["files"]),
                targets,
                tuple(entry["reads"]),
            )
        )
    return seeds


@dataclass(frozen=True)
class Input:
    """One mutated input: its number, seed and read mode."""

    number: int
    seed: Seed
    read: str


def input_of(seeds: list[Seed], number: int) -> Input:
    """Input ``number``: format classes in turn, then their seeds, then their read modes."""
    kinds = [kind for kind in KINDS if any(seed.kind == kind for seed in seeds)]
    kind = kinds[number % len(kinds)]
    of_kind = [seed for seed in seeds if seed.kind == kind]
    turn = number // len(kinds)
    seed = of_kind[turn % len(of_kind)]
    read = seed.reads[(turn // len(of_kind)) % len(seed.reads)]
    return Input(number, seed, read)


def mutated_files(directory: Path, item: Input) -> dict[str, bytes]:
    """The files of ``item``: its seed's files from ``directory``, one of them mutated."""
    files = {name: (directory / name).read_bytes() for name in item.seed.files}
    return mutate(files, item.seed.targets, random.Random(item.number))
