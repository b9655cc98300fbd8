"""Seed files for fuzzing the readers, written by stemcast's own writers and simulator.

Each seed is a small valid acquisition of one format class: a Merlin run with its ``.hdr``
(processed and RAW), a TVIPS series of several parts, a blockfile, an NCEM EMD file and a
Velox EMD file (written from the format specification by the tests' Velox helper). A seed
lists its files, the files that get mutated, the file given to the reader, the byte ranges
that carry structure (headers, HDF5 metadata: most mutations land there, since changing pixel
values tests nothing) and the ways the public API reads it.

A JSON manifest next to the seeds describes them for the fuzz workers.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from fuzz_cases import Seed, write_manifest

from stemcast.formats.blockfile.spec import VBF_OFFSET
from stemcast.formats.emd.writer import file_writer as write_emd
from stemcast.formats.mib.spec import parse_header_size
from stemcast.formats.mib.writer import MibWriter
from stemcast.formats.tvips.spec import MAIN_HEADER_SIZE, parse_main_header
from stemcast.simulate import simulate_mib, simulate_tvips
from stemcast.writers.blockfile import file_writer as write_blockfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from readers.emd_support import Detector, random_cube, write_velox

START = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def _mib_ranges(path: Path) -> list[tuple[int, int]]:
    """The frame header of every record of a ``.mib`` file."""
    data = path.read_bytes()
    header = parse_header_size(data[:32], path=path)
    record = data.index(b"MQ1,", 1) if data.count(b"MQ1,") > 1 else len(data)
    return [(start, start + header) for start in range(0, len(data), record)]


def _whole(path: Path) -> list[tuple[int, int]]:
    return [(0, path.stat().st_size)]


def _mib_seed(directory: Path, name: str, kind: str, **options: Any) -> Seed:
    paths = simulate_mib(directory, name=name, start_time=START, **options)
    files = [path.name for path in paths]
    targets = {path.name: _mib_ranges(path) for path in paths}
    hdr = paths[0].with_suffix(".hdr")
    if hdr.exists():
        files.append(hdr.name)
        targets[hdr.name] = _whole(hdr)
    return Seed(name, kind, files[0], tuple(files), targets, ("load", "lazy", "virtual"))


def _raw_seed(directory: Path, name: str, depth: int, rows: int, frames: int) -> Seed:
    """RAW single-chip frames of a row ROI (RAW frames are one chip, 256 pixels, wide)."""
    path = directory / f"{name}.mib"
    pattern = np.arange(frames * rows * 256, dtype=np.uint64) % (1 << min(depth, 12))
    with MibWriter(
        path,
        frame_shape=(rows, 256),
        counter_depth=depth,
        raw=True,
        scan_shape=(frames, 1),
        hdr_scan_size=True,
        start_time=START,
    ) as writer:
        writer.write(pattern.astype(np.uint32).reshape(frames, rows, 256))
    hdr = path.with_suffix(".hdr")
    targets = {path.name: _mib_ranges(path), hdr.name: _whole(hdr)}
    return Seed(
        name, "RAW MIB", path.name, (path.name, hdr.name), targets, ("load", "lazy", "virtual")
    )


def _tvips_seed(directory: Path, name: str, **options: Any) -> Seed:
    paths = simulate_tvips(directory, name=name, start_time=START, **options)
    main = parse_main_header(paths[0].read_bytes()[:MAIN_HEADER_SIZE])
    header = main.frameheaderbytes
    record = header + main.dimx * main.dimy * main.bitsperpixel // 8
    targets: dict[str, list[tuple[int, int]]] = {}
    for index, path in enumerate(paths):
        # The main header, then the frame header at the start of every record.
        first = MAIN_HEADER_SIZE if index == 0 else 0
        ranges = [(0, MAIN_HEADER_SIZE)] if index == 0 else []
        ranges += [(at, at + header) for at in range(first, path.stat().st_size, record)]
        targets[path.name] = ranges
    files = tuple(path.name for path in paths)
    return Seed(name, "TVIPS", files[0], files, targets, ("load", "lazy", "auto"))


def _blockfile_seed(directory: Path, name: str, nav: tuple[int, int], size: int) -> Seed:
    path = directory / f"{name}.blo"
    rng = np.random.default_rng(len(name))
    data = rng.integers(0, 256, (*nav, size, size), dtype=np.uint8)
    write_blockfile(path, {"data": data}, show_progressbar=False)
    record = 6 + size * size
    start = path.stat().st_size - nav[0] * nav[1] * record
    ranges = [(0, 512), (VBF_OFFSET, start)]
    ranges += [(offset, offset + 6) for offset in range(start, path.stat().st_size, record)]
    reads = ("load", "lazy", "navigator")
    return Seed(name, "blockfile", path.name, (path.name,), {path.name: ranges}, reads)


def _hdf5_metadata_ranges(path: Path) -> list[tuple[int, int]]:
    """Every byte of an HDF5 file that does not hold dataset values: the file's structure."""
    size = path.stat().st_size
    stored: list[tuple[int, int]] = []

    def note(_: str, node: Any) -> None:
        if not isinstance(node, h5py.Dataset):
            return
        if node.chunks is None:
            offset = node.id.get_offset()
            if offset is not None:
                stored.append((offset, offset + node.id.get_storage_size()))
            return
        for index in range(node.id.get_num_chunks()):
            chunk = node.id.get_chunk_info(index)
            stored.append((chunk.byte_offset, chunk.byte_offset + chunk.size))

    with h5py.File(path, "r") as file:
        file.visititems(note)
    ranges, position = [], 0
    for start, stop in sorted(stored):
        if start > position:
            ranges.append((position, start))
        position = max(position, stop)
    if position < size:
        ranges.append((position, size))
    return ranges


def _ncem_seed(directory: Path, name: str, **options: Any) -> Seed:
    path = directory / f"{name}.emd"
    rng = np.random.default_rng(7)
    data = rng.integers(0, 1000, (3, 4, 8, 8), dtype=np.uint16)
    axes = [
        {"name": axis, "units": units, "scale": 0.5, "offset": 1.0, "size": size, "navigate": nav}
        for axis, units, size, nav in (
            ("y", "nm", 3, True),
            ("x", "nm", 4, True),
            ("ky", "1/nm", 8, False),
            ("kx", "1/nm", 8, False),
        )
    ]
    signal = {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": name}},
        "original_metadata": {"microscope": {"voltage": 300}},
    }
    write_emd(path, signal, **options)
    return Seed(name, "EMD NCEM", path.name, (path.name,), {path.name: _hdf5_metadata_ranges(path)})


def _velox_seed(directory: Path, name: str) -> Seed:
    path = directory / f"{name}.emd"
    write_velox(path, [Detector("SuperXG21", random_cube((2, 3, 4, 16), seed=3, mean=0.5))])
    return Seed(
        name,
        "EMD Velox",
        path.name,
        (path.name,),
        {path.name: _hdf5_metadata_ranges(path)},
        ("load", "lazy", "frames"),
    )


def write_seeds(directory: Path) -> list[Seed]:
    """Write the seeds and their manifest into ``directory``.

    Parameters
    ----------
    directory
        An empty folder.

    Returns
    -------
    list of Seed
        The seeds, in the manifest's order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    seeds = [
        _mib_seed(directory, "mib12", "MIB", scan_shape=(4, 3), frame_size=16, hdr_scan_size=True),
        _mib_seed(directory, "mib1", "MIB", scan_shape=(3, 2), frame_size=16, counter_depth=1),
        _mib_seed(
            directory,
            "split",
            "MIB",
            scan_shape=(4, 2),
            frame_size=8,
            counter_depth=6,
            frames_per_file=4,
        ),
        _mib_seed(directory, "cut", "MIB", scan_shape=(4, 2), frame_size=8, interrupt_after=5),
        _raw_seed(directory, "raw1", 1, 8, 4),
        _raw_seed(directory, "raw12", 12, 2, 3),
        _raw_seed(directory, "raw24", 24, 2, 2),
        _tvips_seed(directory, "tv16", scan_shape=(4, 3), frame_size=8, max_file_size=1500),
        _tvips_seed(directory, "tv8", scan_shape=(3, 2), frame_size=8, bits=8),
        _blockfile_seed(directory, "blo", (3, 4), 8),
        _ncem_seed(directory, "ncem"),
        _ncem_seed(directory, "ncemgz", compression="gzip", shuffle=True),
        _velox_seed(directory, "velox"),
    ]
    write_manifest(directory, seeds)
    return seeds
