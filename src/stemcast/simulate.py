"""Synthetic 4D-STEM data and a camera simulator, for demos, tests and benchmarks.

:func:`diffraction_patterns` draws patterns; :func:`simulate_mib` and :func:`simulate_tvips`
write them as a Merlin or TVIPS camera does, growing files at a chosen frame rate.

The specimen has a few round grains on a thin support. Over a grain the central disk dims and
Bragg spots light up, so a virtual bright-field image of the data shows the grains.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.errors import ParameterError


def _grain_map(scan_shape: tuple[int, int], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Fraction of grain material at each scan position, shape ``(y, x)``."""
    width, height = scan_shape
    ys, xs = np.mgrid[0:height, 0:width]
    grains = np.zeros((height, width))
    for _ in range(max(3, (width * height) // 256)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.08, 0.2) * min(width, height)
        grains = np.maximum(grains, ((ys - cy) ** 2 + (xs - cx) ** 2 < radius**2).astype(float))
    return grains


def diffraction_patterns(
    scan_shape: tuple[int, int],
    frame_shape: tuple[int, int] = (256, 256),
    *,
    counter_depth: int = 12,
    batch_frames: int = 64,
    dose: float = 4.0,
    seed: int = 0,
) -> Iterator[npt.NDArray[np.uint32]]:
    """Yield batches of synthetic diffraction patterns in scan order.

    Parameters
    ----------
    scan_shape
        ``(x, y)`` scan size.
    frame_shape
        ``(rows, cols)`` of each pattern.
    counter_depth
        Counter depth in bits; counts are clipped to ``2**counter_depth - 1``.
    batch_frames
        Frames per yielded batch.
    dose
        Mean counts per pixel inside the central disk.
    seed
        Seed of the random generator (the same seed gives the same data).

    Yields
    ------
    numpy.ndarray
        ``(n, rows, cols)`` ``uint32`` counts.
    """
    rng = np.random.default_rng(seed)
    grains = _grain_map(scan_shape, rng).ravel()
    rows, cols = frame_shape
    ys, xs = np.mgrid[0:rows, 0:cols]
    centre_y, centre_x = rows / 2, cols / 2
    scale = min(rows, cols) / 256
    distance = np.hypot(ys - centre_y, xs - centre_x)
    disk = (distance < 20 * scale).astype(np.float64)
    spots = np.zeros(frame_shape)
    for angle in np.arange(6) * np.pi / 3:
        sy = centre_y + 60 * scale * np.sin(angle)
        sx = centre_x + 60 * scale * np.cos(angle)
        spots += np.exp(-((ys - sy) ** 2 + (xs - sx) ** 2) / (2 * (4 * scale) ** 2))
    background = 0.02 * np.exp(-distance / (80 * scale))
    ceiling = (1 << counter_depth) - 1
    for start in range(0, grains.size, batch_frames):
        fraction = grains[start : start + batch_frames, np.newaxis, np.newaxis]
        mean = dose * (disk * (1 - 0.6 * fraction) + spots * 3 * fraction + background)
        counts = rng.poisson(mean).astype(np.uint32)
        yield np.minimum(counts, ceiling, out=counts)


def scan_frames(
    scan_shape: tuple[int, int],
    frame_shape: tuple[int, int] = (256, 256),
    *,
    counter_depth: int = 12,
    flyback_frames: int = 0,
    snake: bool = False,
    pattern_pool: int = 0,
    seed: int = 0,
) -> Iterator[npt.NDArray[np.uint32]]:
    """Yield the frames of a scan line by line, in the order a camera records them.

    Parameters
    ----------
    scan_shape
        ``(x, y)`` scan size.
    frame_shape
        ``(rows, cols)`` of each pattern.
    counter_depth
        Counter depth in bits.
    flyback_frames
        Frames recorded at the end of each line while the beam flies back (they repeat the
        line's last pattern); a line then has ``x + flyback_frames`` frames.
    snake
        Serpentine scan: every other line is scanned right to left.
    pattern_pool
        Draw only this many lines of patterns and repeat them (``0``: draw every line), for
        simulating fast cameras faster than patterns can be drawn.
    seed
        Seed of the random generator.

    Yields
    ------
    numpy.ndarray
        ``(x + flyback_frames, rows, cols)`` ``uint32`` counts, one scan line.
    """
    width, height = scan_shape
    lines = diffraction_patterns(
        scan_shape, frame_shape, counter_depth=counter_depth, batch_frames=width, seed=seed
    )
    pool: list[npt.NDArray[np.uint32]] = []
    for number in range(height):
        if pattern_pool and len(pool) >= pattern_pool:
            line = pool[number % len(pool)]
        else:
            line = next(lines)
            if pattern_pool:
                pool.append(line)
        if snake and number % 2:
            line = line[::-1]
        if flyback_frames:
            line = np.concatenate([line, np.repeat(line[-1:], flyback_frames, axis=0)])
        yield line


def _prefetched(lines: Iterator[npt.NDArray[np.uint32]]) -> Iterator[npt.NDArray[np.uint32]]:
    """Draw the next scan lines in a thread while the current one is written on time."""
    ahead: queue.Queue[npt.NDArray[np.uint32] | None] = queue.Queue(maxsize=2)
    done = threading.Event()

    def draw() -> None:
        try:
            for line in lines:
                while not done.is_set():
                    with contextlib.suppress(queue.Full):
                        ahead.put(line, timeout=0.1)
                        break
        finally:
            with contextlib.suppress(queue.Full):
                ahead.put(None, timeout=1.0)

    worker = threading.Thread(target=draw, name="stemcast-simulate-draw", daemon=True)
    worker.start()
    try:
        while (line := ahead.get()) is not None:
            yield line
    finally:
        done.set()
        worker.join()


def _parked(
    lines: Iterator[npt.NDArray[np.uint32]], before: int, after: int
) -> Iterator[npt.NDArray[np.uint32]]:
    """Add the frames a camera records while the beam waits at the first and last position."""
    last: npt.NDArray[np.uint32] | None = None
    for line in lines:
        if last is None and before:
            yield np.repeat(line[:1], before, axis=0)
        last = line
        yield line
    if last is not None and after:
        yield np.repeat(last[-1:], after, axis=0)


def _paced(
    lines: Iterator[npt.NDArray[np.uint32]], fps: float, flyback_s: float, limit: int | None
) -> Iterator[npt.NDArray[np.uint32]]:
    """Cut scan lines into write batches, sleeping to keep ``fps`` (whole lines when 0)."""
    if fps > 0:
        lines = _prefetched(lines)
    start: float | None = None
    written = 0
    for number, line in enumerate(lines):
        # The clock starts with the first line drawn, as the camera's with its first frame.
        start = time.monotonic() if start is None else start
        if limit is not None:
            line = line[: max(0, limit - written)]
        if fps <= 0:
            if len(line):
                yield line
            written += len(line)
        else:
            for frame in line:
                delay = start + written / fps + number * flyback_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                yield frame[np.newaxis]
                written += 1
        if limit is not None and written >= limit:
            return


def simulate_mib(
    directory: str | os.PathLike[str],
    *,
    name: str = "scan",
    scan_shape: tuple[int, int] = (16, 16),
    frame_size: int | None = None,
    counter_depth: int = 12,
    quad: bool = False,
    raw: bool = False,
    fps: float = 0.0,
    interrupt_after: int | None = None,
    frames_per_file: int | None = None,
    flyback_s: float = 0.0005,
    flyback_frames: int = 0,
    snake: bool = False,
    hdr_scan_size: bool = False,
    pattern_pool: int = 0,
    seed: int = 0,
    start_time: datetime | None = None,
) -> list[Path]:
    """Write a Merlin acquisition as the camera does: ``.hdr`` first, then growing ``.mib``.

    Parameters
    ----------
    directory
        Where to write.
    name
        File name without extension; a run split over files is ``NAME1.mib``, ``NAME2.mib``...
    scan_shape
        ``(x, y)`` scan size (without fly-back frames).
    frame_size
        Frame side in pixels; by default 256 for a single chip, 512 for a quad (its only
        width).
    counter_depth
        1, 6, 12 or 24 bits.
    quad, raw
        2x2 chip assembly; RAW (``R64``) payloads.
    fps
        Frames per second, ``0`` for as fast as possible.
    interrupt_after
        Stop after this many frames, in the middle of the next frame's record.
    frames_per_file
        Start a new file after this many frames (a multiple of the line length keeps the
        fly-back gaps of later files in place).
    flyback_s
        Extra time after each line, in the timestamps and, with ``fps``, in the writing.
    flyback_frames, snake, pattern_pool, seed
        See :func:`scan_frames`.
    hdr_scan_size
        Write ``ScanX``/``ScanY`` to the ``.hdr`` (Merlin software 1.5 and later).
    start_time
        Timestamp of the first frame; defaults to the time the first file is opened.

    Returns
    -------
    list of pathlib.Path
        The ``.mib`` files written.
    """
    from stemcast.formats.mib.writer import MibWriter

    folder = Path(directory)
    width = scan_shape[0] + flyback_frames
    total = width * scan_shape[1]
    interval = 1.0 / fps if fps > 0 else 0.001
    start = start_time
    side = frame_size if frame_size is not None else 512 if quad else 256
    frame_shape = (side, side)
    common: dict[str, Any] = {
        "frame_shape": frame_shape,
        "counter_depth": counter_depth,
        "quad": quad,
        "raw": raw,
        "exposure_s": interval * 0.9,
        "frame_interval_s": interval,
        "scan_shape": (width, scan_shape[1]),
        "flyback_s": flyback_s,
    }
    lines = scan_frames(
        scan_shape,
        frame_shape,
        counter_depth=counter_depth,
        flyback_frames=flyback_frames,
        snake=snake,
        pattern_pool=pattern_pool,
        seed=seed,
    )
    paths: list[Path] = []
    writer: MibWriter | None = None
    written = 0
    try:
        for batch in _paced(lines, fps, flyback_s, interrupt_after):
            done = 0
            while done < len(batch):
                if writer is None or (frames_per_file and writer.frames_written >= frames_per_file):
                    if writer is not None:
                        writer.commit()
                    path = folder / (
                        f"{name}{len(paths) + 1}.mib" if frames_per_file else f"{name}.mib"
                    )
                    start = start or datetime.now(UTC)
                    offset = written * interval + (written // width) * flyback_s
                    writer = MibWriter(
                        path,
                        **common,
                        frames_expected=total,
                        hdr_scan_size=hdr_scan_size,
                        start_time=start + timedelta(seconds=offset),
                        write_hdr=not paths,
                        first_sequence=written + 1,
                    )
                    paths.append(path)
                room = frames_per_file - writer.frames_written if frames_per_file else len(batch)
                part = batch[done : done + room]
                writer.write(part)
                done += len(part)
                written += len(part)
        if interrupt_after is not None and writer is not None and written < total:
            # The camera stopped while writing the next frame: half a record stays behind.
            blank = np.zeros(frame_shape, np.uint32)
            writer.write_partial(blank, writer.layout.record_size // 2)
    finally:
        # Committed, not aborted, whatever stopped the run: like a camera that stops, the
        # simulator leaves the frames written so far (an interrupted run is what the live
        # service and the converters must handle).
        if writer is not None:
            writer.commit()
    return paths


def simulate_tvips(
    directory: str | os.PathLike[str],
    *,
    name: str = "scan",
    scan_shape: tuple[int, int] = (16, 16),
    frame_size: int = 256,
    bits: int = 16,
    fps: float = 0.0,
    interrupt_after: int | None = None,
    max_file_size: int | None = None,
    flyback_frames: int = 0,
    snake: bool = False,
    pattern_pool: int = 0,
    seed: int = 0,
    scan_engine: bool = True,
    frames_before_scan: int = 0,
    frames_after_scan: int = 0,
    start_time: datetime | None = None,
) -> list[Path]:
    """Write a rolling TVIPS series as the camera does: ``NAME_000.tvips``, ``_001``, ...

    The frame headers (version 2, with room for scan positions) carry the rotator index of
    each scan position and the position itself, as a TVIPS scan engine reports them: the
    1-based position during the scan, 0 before and after it.

    Parameters
    ----------
    directory
        Where to write.
    name
        Series name.
    scan_shape
        ``(x, y)`` scan size (without fly-back frames).
    frame_size
        Frame side in pixels.
    bits
        8 or 16 bits per pixel.
    fps
        Frames per second, ``0`` for as fast as possible.
    interrupt_after
        Stop after this many frames, in the middle of the next frame's record.
    max_file_size
        Start a new part when a file would grow beyond this many bytes.
    flyback_frames, snake, pattern_pool, seed
        See :func:`scan_frames`.
    scan_engine
        Whether a scan engine reports the scan in the frame headers; without one the rotator
        index and scan positions are 0 in every frame.
    frames_before_scan, frames_after_scan
        Frames recorded before the scan starts and after it ends, with the beam at the first
        and the last position (they repeat its pattern).
    start_time
        Timestamp of the first frame; defaults to now.

    Returns
    -------
    list of pathlib.Path
        The parts written (``interrupt_after`` counts the frames before the scan too).
    """
    from stemcast.formats.tvips.run import EXTENSION, part_path
    from stemcast.formats.tvips.writer import TvipsWriter

    if bits not in (8, 16):
        raise ParameterError(f"{bits}: TVIPS cameras write 8 or 16 bits", parameter="bits")
    for value, parameter in (
        (frames_before_scan, "frames_before_scan"),
        (frames_after_scan, "frames_after_scan"),
    ):
        if value < 0:
            raise ParameterError(f"{value} is negative", parameter=parameter)
    width = scan_shape[0] + flyback_frames
    positions = width * scan_shape[1]
    frame_shape = (frame_size, frame_size)
    lines = scan_frames(
        scan_shape,
        frame_shape,
        counter_depth=bits,
        flyback_frames=flyback_frames,
        snake=snake,
        pattern_pool=pattern_pool,
        seed=seed,
    )
    dtype = np.uint8 if bits == 8 else np.uint16
    writer = TvipsWriter(
        part_path(Path(directory) / name, EXTENSION, 0),
        frame_shape,
        dtype,
        frame_header_extra_bytes=16,
        max_file_size=max_file_size,
        frame_interval_s=1.0 / fps if fps > 0 else 0.001,
        scan_shape=(scan_shape[1], width),
        start_time=start_time or datetime.now(UTC),
    )
    frames = _parked(lines, frames_before_scan, frames_after_scan)
    written = 0
    try:
        for batch in _paced(frames, fps, 0.0, interrupt_after):
            position = np.arange(written, written + len(batch)) - frames_before_scan
            scanning = scan_engine & (position >= 0) & (position < positions)
            writer.write(
                batch.astype(dtype),
                rotidx=np.where(scanning, position + 1, 0),
                scan_x=np.where(scanning, position % width, 0),
                scan_y=np.where(scanning, position // width, 0),
            )
            written += len(batch)
    finally:
        # Committed, not aborted, whatever stopped the run: like a camera that stops, the
        # simulator leaves the parts written so far.
        writer.commit()
    if interrupt_after is not None and written < frames_before_scan + positions + frames_after_scan:
        # The camera stopped while writing the next frame: half a record stays behind.
        with open(writer.paths[-1], "ab") as stream:
            stream.write(bytes(writer.layout.record_size // 2))
    return list(writer.paths)
