"""MIB -> EMD conversion and Velox spectrum-stream decoding, stemcast against the reference.

Conversion: a 12-bit 256x256 Merlin run of at least ``--size-gb`` (0.5 GB) is converted to
an NCEM EMD file by

* ``stemcast``: ``MibRun.batches`` (bounded memory) -> rows flipped per batch (the
  orientation of the reference's reader) -> :class:`stemcast.writers.emd.EmdWriter`, which
  writes each pattern as one chunk and fsyncs the file before renaming it into place;
* ``rosettasciio``: ``rsciio.quantumdetector.file_reader`` + ``rsciio.emd.file_writer``, as a
  user would call them;
* ``cp`` (the limit: the same bytes copied), with and without an fsync of the copy.

Each method runs in a child process that reports its wall time and peak resident memory
(``VmHWM``, the interpreter and its imports included). Both EMD files must hold the same
frames (compared chunk-row by chunk-row) or the script fails.

Decoding: a Velox file with one EDS spectrum stream of ``--events`` X-ray events (100 million)
over 20 frames of a 256x256 scan is read with ``select_type="spectrum_image"`` by both
readers, which must count the same events.

Usage::

    python benchmarks/bench_emd.py [--size-gb 0.5] [--events 1e8] [--workdir DIR]
                                   [--skip-reference]

The inputs are written once into ``--workdir`` (default ``benchmarks/data/``, ignored by git)
and reused. Timings on a shared machine are approximate.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from machine import describe_machine

FRAME = (256, 256)
RECORD = 384 + FRAME[0] * FRAME[1] * 2
GATE = 0xFFFF
SI_SCAN = (256, 256)
CHANNELS = 4096


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_mib(path: Path, scan: tuple[int, int], seed: int = 1) -> None:
    """12-bit frames: Poisson counts of a bright disk over a weak background."""
    from tqdm import tqdm

    from stemcast.writers.mib import MibWriter

    rng = np.random.default_rng(seed)
    rows, cols = np.indices(FRAME)
    disk = ((rows - 127.5) ** 2 + (cols - 127.5) ** 2 <= 40.0**2).astype(float)
    tmp = path.with_suffix(".mib.part")
    frames = scan[0] * scan[1]
    with MibWriter(
        tmp,
        frame_shape=FRAME,
        counter_depth=12,
        scan_shape=scan,
        frames_per_trigger=scan[0],
        hdr_scan_size=True,
    ) as writer:
        for start in tqdm(range(0, frames, 64), desc="writing MIB", unit="batch"):
            count = min(64, frames - start)
            lam = 0.5 + 150.0 * disk[None] * rng.uniform(0.3, 1.0, (count, 1, 1))
            writer.write(np.minimum(rng.poisson(lam), 4095).astype(np.uint16))
    os.replace(tmp, path)
    os.replace(tmp.with_suffix(".hdr"), path.with_suffix(".hdr"))


def ensure_mib(workdir: Path, size_gb: float) -> Path:
    frames = max(math.ceil(size_gb * 1e9 / RECORD), 64)
    side = 8 * math.ceil(math.sqrt(frames) / 8)
    scan = (side, math.ceil(frames / side))
    path = workdir / f"emd_source_{scan[0]}x{scan[1]}.mib"
    if not (path.is_file() and path.stat().st_size == scan[0] * scan[1] * RECORD):
        make_mib(path, scan)
    return path


def _json_dataset(group: h5py.Group, name: str, value: Any) -> None:
    group.create_dataset(
        name,
        data=np.array([json.dumps(value).encode()], dtype=object),
        dtype=h5py.string_dtype("ascii"),
    )


def _metadata_dataset(group: h5py.Group, document: dict[str, Any]) -> None:
    table = np.zeros((60000, 1), dtype=np.uint8)
    raw = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    table[: raw.size, 0] = raw
    group.create_dataset("Metadata", data=table)


def make_velox(path: Path, events: int, seed: int = 2) -> None:
    """A Velox 11 file with one spectrum stream of ``events`` events over 20 frames."""
    rng = np.random.default_rng(seed)
    frames = 20
    pixels = SI_SCAN[0] * SI_SCAN[1] * frames
    counts = rng.poisson(events / pixels, pixels)
    total = int(counts.sum())
    stream = np.full(total + pixels, GATE, dtype=np.uint16)
    is_event = np.ones(stream.size, dtype=bool)
    ends = np.cumsum(counts) + np.arange(pixels)
    is_event[ends] = False
    stream[is_event] = rng.integers(0, CHANNELS, total, dtype=np.uint16)
    del is_event
    per_frame = SI_SCAN[0] * SI_SCAN[1]
    table = np.array([0, *(ends[per_frame * k - 1] + 1 for k in range(1, frames))], np.uint64)
    metadata = {
        "BinaryResult": {
            "Detector": "SuperXG21",
            "PixelSize": {"width": "1e-9", "height": "1e-9"},
            "PixelUnitX": "m",
            "Offset": {"x": "0", "y": "0"},
        },
        "Detectors": {
            "Detector-1": {"DetectorName": "SuperXG21", "Dispersion": "10", "OffsetEnergy": "0"}
        },
        "Scan": {"FrameTime": "1.0"},
        "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1709189884"}},
        "Optics": {"AccelerationVoltage": "300000"},
        "Instrument": {"InstrumentClass": "Titan"},
    }
    tmp = path.with_suffix(".part")
    with h5py.File(tmp, "w") as file:
        _json_dataset(file, "Version", {"version": "11", "format": "Velox"})
        image = file.create_group("Data/Image/00000000000000000000000000000001")
        image.create_dataset("Data", data=np.zeros((*SI_SCAN, 1), np.uint16), chunks=True)
        _metadata_dataset(image, metadata)
        settings = file.create_group("Data/SpectrumImage/00000000000000000000000000000002")
        _json_dataset(
            settings,
            "SpectrumImageSettings",
            {"startFramePosition": "1", "endFramePosition": str(frames)},
        )
        reference = "/SharedProperties/ImageSeriesDataReference/00000000000000000000000000000004"
        _json_dataset(
            file,
            "Displays/ImageDisplay/00000000000000000000000000000005",
            {"data": reference, "id": "HAADF"},
        )
        _json_dataset(file, reference, {"dataPath": "/Data/Image/00000000000000000000000000000001"})
        group = file.create_group("Data/SpectrumStream/00000000000000000000000000000003")
        group.create_dataset("Data", data=stream[:, None], chunks=(8192, 1))
        group["FrameLocationTable"] = table[:, None]
        _json_dataset(
            group,
            "AcquisitionSettings",
            {"bincount": str(CHANNELS), "StreamEncoding": "uint16"},
        )
        _metadata_dataset(group, metadata)
    os.replace(tmp, path)


def ensure_velox(workdir: Path, events: int) -> Path:
    path = workdir / f"emd_stream_{events}.emd"
    if not path.is_file():
        print(f"writing {path.name} ...", flush=True)
        make_velox(path, events)
    return path


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as stream:
        buffer = bytearray(64 * 2**20)
        while stream.readinto(buffer):
            pass


# --------------------------------------------------------------------------------------------
# Methods (each runs in a child process)
# --------------------------------------------------------------------------------------------


def convert_stemcast(source: Path, target: Path) -> None:
    """MIB run -> EMD through the streaming writer, one batch of frames at a time."""
    from stemcast.readers.mib import MIBProperties, MibRun, parse_hdr_file, scan_shape_of
    from stemcast.writers.emd import EmdWriter

    run = MibRun.open(source)
    hdr = source.with_suffix(".hdr")
    scan = scan_shape_of(
        MIBProperties.from_path(source), parse_hdr_file(hdr) if hdr.is_file() else None, None
    ).shape
    shape = (*reversed(scan), *run.layout.frame_shape)
    axes = [{"name": "", "units": "", "scale": 1.0, "offset": 0.0, "size": size} for size in shape]
    with EmdWriter(
        target,
        run.layout.frame_shape,
        run.layout.dtype,
        scan_shape=scan,
        axes=axes,
        metadata={"General": {"title": ""}, "Signal": {"signal_type": "electron_diffraction"}},
    ) as writer:
        for batch in run.batches(batch_frames=64):  # oriented as the readers return frames
            writer.write(batch)


def convert_rsciio(source: Path, target: Path) -> None:
    from rsciio.emd import file_writer
    from rsciio.quantumdetector import file_reader

    signal = file_reader(str(source))[0]
    # The reference writer fails on the Merlin header keys (dots in names); the EMD file
    # keeps only the microscope/sample/user/comments groups anyway.
    signal["original_metadata"] = {}
    signal["metadata"]["General"].setdefault("title", "")
    file_writer(str(target), signal)


def copy(source: Path, target: Path) -> None:
    subprocess.run(["cp", str(source), str(target)], check=True)


def copy_fsync(source: Path, target: Path) -> None:
    copy(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def decode_stemcast(source: Path, _: Path) -> None:
    from stemcast.readers.emd import file_reader

    (signal,) = file_reader(source, select_type="spectrum_image")
    print(json.dumps({"events": int(signal["data"].sum(dtype=np.int64))}), file=sys.stderr)


def decode_rsciio(source: Path, _: Path) -> None:
    from rsciio.emd import file_reader

    (signal,) = file_reader(str(source), select_type="spectrum_image")
    print(json.dumps({"events": int(signal["data"].sum(dtype=np.int64))}), file=sys.stderr)


METHODS: dict[str, Callable[[Path, Path], None]] = {
    "stemcast": convert_stemcast,
    "rosettasciio": convert_rsciio,
    "cp": copy,
    "cp+fsync": copy_fsync,
    "decode-stemcast": decode_stemcast,
    "decode-rosettasciio": decode_rsciio,
}
#: Modules imported before the clock starts: import time is not conversion time.
IMPORTS = {
    "stemcast": ["stemcast.readers.mib", "stemcast.writers.emd"],
    "rosettasciio": ["rsciio.quantumdetector", "rsciio.emd"],
    "cp": [],
    "cp+fsync": [],
    "decode-stemcast": ["stemcast.readers.emd"],
    "decode-rosettasciio": ["rsciio.emd"],
}


def peak_mb() -> float:
    """Peak resident memory of this process (``VmHWM``; ``ru_maxrss`` survives the exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, source: Path, target: Path) -> None:
    for module in IMPORTS[method]:
        importlib.import_module(module)
    started = time.perf_counter()
    METHODS[method](source, target)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb()}))


def run_child(method: str, source: Path, target: Path) -> dict[str, Any]:
    target.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)
    done = subprocess.run(
        [sys.executable, __file__, "--child", method, str(source), str(target)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for line in done.stderr.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


# --------------------------------------------------------------------------------------------
# Checks and report
# --------------------------------------------------------------------------------------------


def _data(file: h5py.File) -> h5py.Dataset:
    (group,) = file["signals"].values()
    return group["data"]


def same_frames(ours: Path, reference: Path) -> None:
    """Compare the stored arrays row by row of the outermost scan axis (bounded memory)."""
    with h5py.File(ours) as mine, h5py.File(reference) as theirs:
        data, expected = _data(mine), _data(theirs)
        if data.shape != expected.shape:
            raise SystemExit(f"shapes differ: {data.shape} vs {expected.shape}")
        for row in range(data.shape[-1]):
            if not np.array_equal(data[..., row], expected[..., row]):
                raise SystemExit(f"EMD files differ in scan row {row}")
        print(
            f"  same frames, stored {data.shape}: stemcast {data.dtype.str} chunks {data.chunks}, "
            f"rosettasciio {expected.dtype.str} chunks {expected.chunks}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.5)
    parser.add_argument("--events", type=float, default=1e8)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (median)")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "SOURCE", "TARGET"))
    args = parser.parse_args()
    if args.child:
        method, source, target = args.child
        child(method, Path(source), Path(target))
        return

    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    describe_machine(("numpy", "h5py", "rsciio", "stemcast"))
    mib = ensure_mib(workdir, args.size_gb)
    size = mib.stat().st_size
    warm(mib)
    print(f"\nMIB -> EMD: {mib.name}, {size / 1e9:.3f} GB")
    methods = ["cp", "cp+fsync", "stemcast"]
    if not args.skip_reference:
        methods.append("rosettasciio")
    # Rounds interleave the methods, so that a slow spell of the disk hits all of them.
    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    for _ in range(args.repeat):
        for method in methods:
            target = workdir / f"emd_out_{method}.emd"
            runs[method].append(run_child(method, mib, target))
    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        times = sorted(run["seconds"] for run in runs[method])
        results[method] = {
            "seconds": float(np.median(times)),
            "peak_mb": max(run["peak_mb"] for run in runs[method]),
        }
        rate = size / results[method]["seconds"] / 1e9
        print(
            f"  {method:<14} {results[method]['seconds']:7.2f} s  {rate:5.2f} GB/s  "
            f"peak {results[method]['peak_mb']:6.0f} MB  (runs: "
            + ", ".join(f"{value:.2f}" for value in times)
            + ")",
            flush=True,
        )
    if not args.skip_reference:
        same_frames(workdir / "emd_out_stemcast.emd", workdir / "emd_out_rosettasciio.emd")
    ours = results["stemcast"]["seconds"]
    print(f"  stemcast / cp:        {ours / results['cp']['seconds']:5.2f}x the time")
    print(f"  stemcast / cp+fsync:  {ours / results['cp+fsync']['seconds']:5.2f}x the time")
    if "rosettasciio" in results:
        print(
            f"  rosettasciio / stemcast: {results['rosettasciio']['seconds'] / ours:5.2f}x faster"
        )
    for method in methods:
        (workdir / f"emd_out_{method}.emd").unlink(missing_ok=True)

    events = int(args.events)
    velox = ensure_velox(workdir, events)
    warm(velox)
    print(f"\nVelox spectrum stream -> (256, 256, 4096) cube: {velox.name}")
    decoders = ["decode-stemcast"] + ([] if args.skip_reference else ["decode-rosettasciio"])
    decoded = {method: run_child(method, velox, workdir / "unused") for method in decoders}
    for method, row in decoded.items():
        print(
            f"  {method.removeprefix('decode-'):<14} {row['seconds']:7.2f} s for "
            f"{row['events']:,} events ({row['events'] / row['seconds'] / 1e6:.0f} M events/s), "
            f"peak {row['peak_mb']:.0f} MB"
        )
    if len({row["events"] for row in decoded.values()}) > 1:
        raise SystemExit("decoded event counts differ")
    if "decode-rosettasciio" in decoded:
        ratio = decoded["decode-rosettasciio"]["seconds"] / decoded["decode-stemcast"]["seconds"]
        print(f"  rosettasciio / stemcast: {ratio:5.2f}x faster")
    shutil.rmtree(workdir / "unused", ignore_errors=True)


if __name__ == "__main__":
    main()
