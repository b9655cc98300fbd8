"""Synthetic 4D-STEM data and a camera simulator, for demos, tests and benchmarks.

:func:`diffraction_patterns` draws patterns; :func:`simulate_mib` and :func:`simulate_tvips`
write them as a Merlin or TVIPS camera does, growing files at a chosen frame rate, as fast as
the fastest cameras: the frames of a run come from a :class:`PatternPool` encoded once, and
only the frame headers (sequence numbers, timestamps, rotator indices) are made per frame.

The specimen has a few round grains on a thin support. Over a grain the central disk dims and
Bragg spots light up, so a virtual bright-field image of the data shows the grains.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
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


def _mean_patterns(
    frame_shape: tuple[int, int], fractions: npt.NDArray[np.float64], dose: float
) -> npt.NDArray[np.float64]:
    """Mean counts of the patterns over ``fractions`` of grain material, ``(n, rows, cols)``."""
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
    fraction = fractions[:, np.newaxis, np.newaxis]
    means: npt.NDArray[np.float64] = dose * (
        disk * (1 - 0.6 * fraction) + spots * 3 * fraction + background
    )
    return means


def diffraction_patterns(
    scan_shape: tuple[int, int],
    frame_shape: tuple[int, int] = (256, 256),
    *,
    counter_depth: int = 12,
    batch_frames: int = 64,
    dose: float = 4.0,
    seed: int = 0,
) -> Iterator[npt.NDArray[np.uint32]]:
    """Yield batches of synthetic diffraction patterns in scan order, each drawn afresh.

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
    ceiling = (1 << counter_depth) - 1
    for start in range(0, grains.size, batch_frames):
        mean = _mean_patterns(frame_shape, grains[start : start + batch_frames], dose)
        counts = rng.poisson(mean).astype(np.uint32)
        yield np.minimum(counts, ceiling, out=counts)


class PatternPool:
    """The patterns of one simulated run: a few noisy draws of each pattern the scan shows.

    A camera's frames differ by their counting noise; drawing it afresh for every frame is
    far slower than the fastest cameras record. The pool draws each mean pattern of the
    specimen (over a grain, off it) a few times, and every scan position takes one of the
    draws of its pattern, chosen at random once: virtual images show the grains, frames
    next to each other differ, and writing a frame is writing a pattern already encoded.

    Parameters
    ----------
    scan_shape
        ``(x, y)`` scan size.
    frame_shape
        ``(rows, cols)`` of each pattern.
    counter_depth
        Counter depth in bits; counts are clipped to ``2**counter_depth - 1``.
    dose
        Mean counts per pixel inside the central disk.
    seed
        Seed of the random generator (the same seed gives the same run).

    Attributes
    ----------
    patterns
        ``(n, rows, cols)`` ``uint32`` counts.
    choice
        For each scan position in scan order, the index of its pattern.
    """

    #: Most bytes of ``uint32`` patterns drawn per run.
    BUDGET_BYTES = 64 * 2**20
    #: Most draws of each mean pattern.
    DRAWS = 16

    def __init__(
        self,
        scan_shape: tuple[int, int],
        frame_shape: tuple[int, int] = (256, 256),
        *,
        counter_depth: int = 12,
        dose: float = 4.0,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        grains = _grain_map(scan_shape, rng).ravel()
        levels, level_of = np.unique(grains, return_inverse=True)
        frame_bytes = 4 * frame_shape[0] * frame_shape[1]
        draws = max(1, min(self.DRAWS, self.BUDGET_BYTES // (len(levels) * frame_bytes)))
        means = np.repeat(_mean_patterns(frame_shape, levels, dose), draws, axis=0)
        counts = rng.poisson(means).astype(np.uint32)
        self.patterns = np.minimum(counts, (1 << counter_depth) - 1, out=counts)
        self.choice = level_of.astype(np.intp) * draws + rng.integers(0, draws, grains.size)


def _pooled_lines(
    pool: PatternPool,
    scan_shape: tuple[int, int],
    *,
    flyback_frames: int = 0,
    snake: bool = False,
    pattern_pool: int = 0,
) -> Iterator[npt.NDArray[np.intp]]:
    """Yield the pool index of each frame, scan line by scan line (see :func:`scan_frames`)."""
    width, height = scan_shape
    for number in range(height):
        source = number % pattern_pool if pattern_pool else number
        line = pool.choice[source * width : (source + 1) * width]
        if snake and number % 2:
            line = line[::-1]
        if flyback_frames:
            line = np.concatenate([line, np.repeat(line[-1:], flyback_frames)])
        yield line


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

    The frames are those :func:`simulate_mib` and :func:`simulate_tvips` write, drawn from a
    :class:`PatternPool`.

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
        Repeat the first this many scan lines over the whole scan (``0``: every line its
        own patterns).
    seed
        Seed of the random generator.

    Yields
    ------
    numpy.ndarray
        ``(x + flyback_frames, rows, cols)`` ``uint32`` counts, one scan line.
    """
    pool = PatternPool(scan_shape, frame_shape, counter_depth=counter_depth, seed=seed)
    lines = _pooled_lines(
        pool, scan_shape, flyback_frames=flyback_frames, snake=snake, pattern_pool=pattern_pool
    )
    for line in lines:
        yield pool.patterns[line]


def _parked(
    lines: Iterator[npt.NDArray[np.intp]], before: int, after: int
) -> Iterator[npt.NDArray[np.intp]]:
    """Add the frames a camera records while the beam waits at the first and last position."""
    last: npt.NDArray[np.intp] | None = None
    for line in lines:
        if last is None and before:
            yield np.repeat(line[:1], before)
        last = line
        yield line
    if last is not None and after:
        yield np.repeat(last[-1:], after)


#: Least seconds between two writes of a camera at a set frame rate: every frame due is
#: written at once, so that fast cameras are played with few calls.
_WRITE_INTERVAL_S = 0.001


def _record(
    lines: Iterator[npt.NDArray[np.intp]],
    write: Callable[[npt.NDArray[np.intp]], None],
    fps: float,
    flyback_s: float,
    limit: int | None,
) -> int:
    """Write the frames of ``lines`` on the camera's schedule; return how many were written.

    With ``fps`` 0 every line is written as soon as the last one was. Otherwise frame ``i``,
    in line ``n``, is due ``i / fps + n * flyback_s`` after the first, and every frame due is
    written at once, at most every :data:`_WRITE_INTERVAL_S`: the rate holds on average
    however fast the camera, and no frame is written before its time.
    """
    written = 0
    start: float | None = None
    for number, line in enumerate(lines):
        if limit is not None:
            line = line[: max(0, limit - written)]
        if fps <= 0:
            if len(line):
                write(line)
            written += len(line)
        else:
            first, done = written, 0
            # The clock starts with the first frame, as the camera's does.
            start = time.monotonic() if start is None else start
            line_start = start + number * flyback_s
            while done < len(line):
                now = time.monotonic()
                due = min(len(line), math.floor((now - line_start) * fps) + 1 - first)
                if due > done:
                    write(line[done:due])
                    written += due - done
                    done = due
                    wake = max(line_start + (first + done) / fps, now + _WRITE_INTERVAL_S)
                else:
                    wake = line_start + (first + done) / fps
                delay = wake - time.monotonic()
                if done < len(line) and delay > 0:
                    time.sleep(delay)
        if limit is not None and written >= limit:
            break
    return written


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
    pool = PatternPool(scan_shape, frame_shape, counter_depth=counter_depth, seed=seed)
    lines = _pooled_lines(
        pool, scan_shape, flyback_frames=flyback_frames, snake=snake, pattern_pool=pattern_pool
    )
    paths: list[Path] = []
    writer: MibWriter | None = None
    # The pool's patterns, encoded once for every file of the run.
    payloads: list[npt.NDArray[Any]] = []
    written = 0

    def next_file() -> MibWriter:
        nonlocal writer, start
        if writer is not None:
            writer.commit()
        stem = f"{name}{len(paths) + 1}" if frames_per_file else name
        path = folder / f"{stem}.mib"
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
        if not payloads:
            payloads.append(writer.payloads(pool.patterns))
        return writer

    def write(indices: npt.NDArray[np.intp]) -> None:
        nonlocal written
        done = 0
        while done < len(indices):
            current = writer
            if current is None or (frames_per_file and current.frames_written >= frames_per_file):
                current = next_file()
            room = frames_per_file - current.frames_written if frames_per_file else len(indices)
            part = indices[done : done + room]
            current.write_payloads(payloads[0], part)
            done += len(part)
            written += len(part)

    try:
        if interrupt_after is None or interrupt_after > 0:
            # Ready before the first frame, as the camera is once armed: the first frame is
            # written on time.
            next_file()
        _record(lines, write, fps, flyback_s, interrupt_after)
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
    pool = PatternPool(scan_shape, frame_shape, counter_depth=bits, seed=seed)
    lines = _pooled_lines(
        pool, scan_shape, flyback_frames=flyback_frames, snake=snake, pattern_pool=pattern_pool
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
    payloads = writer.payloads(pool.patterns)

    def write(indices: npt.NDArray[np.intp]) -> None:
        position = np.arange(writer.frames_written, writer.frames_written + len(indices))
        position -= frames_before_scan
        scanning = scan_engine & (position >= 0) & (position < positions)
        writer.write_payloads(
            payloads,
            indices,
            rotidx=np.where(scanning, position + 1, 0),
            scan_x=np.where(scanning, position % width, 0),
            scan_y=np.where(scanning, position // width, 0),
        )

    try:
        written = _record(
            _parked(lines, frames_before_scan, frames_after_scan), write, fps, 0.0, interrupt_after
        )
    finally:
        # Committed, not aborted, whatever stopped the run: like a camera that stops, the
        # simulator leaves the parts written so far.
        writer.commit()
    if interrupt_after is not None and written < frames_before_scan + positions + frames_after_scan:
        # The camera stopped while writing the next frame: half a record stays behind.
        with open(writer.paths[-1], "ab") as stream:
            stream.write(bytes(writer.layout.record_size // 2))
    return list(writer.paths)
