"""Helpers of the TVIPS tests: signal dictionaries, reference calls, result comparison, and
synthetic camera recordings with realistic rotator indices and frame counters.

The recordings model a free-running camera (one frame every ``camera_ms``) and a scan engine
that dwells ``dwell_ms`` on each position, as the format specification describes the rotator
index: the 1-based position of the beam at the time of the frame, 0 while not scanning.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stemcast.writers.tvips import TvipsWriter

rsciio_tvips = pytest.importorskip("rsciio.tvips")


@contextmanager
def machine_time_zone(zone: str) -> Iterator[None]:
    """Run with the process time zone set to ``zone`` (the reference reads local time)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def axes_for(
    shape: tuple[int, ...],
    *,
    nav_names: tuple[str, ...] | None = None,
    nav_units: str = "nm",
    nav_scale: float = 1.0,
    sig_units: str = "1/nm",
    sig_scale: float = 1.0,
    sig_offset: float = 0.0,
) -> list[dict[str, Any]]:
    """Axes of a signal dictionary: navigation axes then two signal axes (dy, dx)."""
    nav = len(shape) - 2
    names = nav_names or (("time",) if nav == 1 else ("",) * (nav - 2) + ("y", "x"))
    axes = [
        {
            "name": name,
            "size": size,
            "scale": nav_scale,
            "offset": 0.0,
            "units": nav_units,
            "navigate": True,
            "index_in_array": index,
        }
        for index, (name, size) in enumerate(zip(names, shape[:nav], strict=True))
    ]
    for index, name in ((nav, "dy"), (nav + 1, "dx")):
        axes.append(
            {
                "name": name,
                "size": shape[index],
                "scale": sig_scale,
                "offset": sig_offset,
                "units": sig_units,
                "navigate": False,
                "index_in_array": index,
            }
        )
    return axes


def signal_dict(
    data: Any,
    *,
    metadata: dict[str, Any] | None = None,
    shape: tuple[int, ...] | None = None,
    **axis_options: Any,
) -> dict[str, Any]:
    """A signal dictionary as HyperSpy passes it to writers (``attributes`` for the reference).

    ``shape`` gives the axes of data without a shape (an iterator of frames).
    """
    return {
        "data": data,
        "axes": axes_for(shape or tuple(data.shape), **axis_options),
        "metadata": metadata or {},
        "original_metadata": {},
        "attributes": {"_lazy": not isinstance(data, np.ndarray)},
    }


def ref_read(path: Path | str, **kwargs: Any) -> dict[str, Any]:
    """The reference reader's single result, warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = rsciio_tvips.file_reader(str(path), **kwargs)
    assert len(result) == 1
    return result[0]  # type: ignore[no-any-return]


def ref_write(path: Path | str, signal: dict[str, Any], **kwargs: Any) -> None:
    """Write with the reference writer, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rsciio_tvips.file_writer(str(path), signal, show_progressbar=False, **kwargs)


def assert_same_read(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    """Our reader's result equals the reference's: data, axes, metadata, main header.

    Allowed differences: the time-axis scale (the reference subtracts two epoch times in
    float64, which is off by up to 2e-7 s), milliseconds in ``General.time`` (the reference
    drops them), and Python numbers where the reference has numpy scalars (equal values).
    """
    our_data, ref_data = ours["data"], ref["data"]
    assert hasattr(our_data, "dask") == hasattr(ref_data, "dask")
    assert our_data.shape == ref_data.shape
    assert our_data.dtype == ref_data.dtype
    np.testing.assert_array_equal(np.asarray(our_data), np.asarray(ref_data))
    assert len(ours["axes"]) == len(ref["axes"])
    for axis, expected in zip(ours["axes"], ref["axes"], strict=True):
        assert axis.keys() == expected.keys()
        for key, value in expected.items():
            if key == "scale" and axis["name"] == "time":
                assert axis[key] == pytest.approx(float(value), abs=1e-6)
            else:
                assert axis[key] == value, (axis, expected)
    our_meta = {**ours["metadata"], "General": dict(ours["metadata"]["General"])}
    ref_meta = {**ref["metadata"], "General": dict(ref["metadata"]["General"])}
    assert our_meta["General"].pop("time")[:8] == ref_meta["General"].pop("time")
    assert our_meta == ref_meta
    assert ours["original_metadata"]["tvips_header"] == dict(
        ref["original_metadata"]["tvips_header"]
    )


# --------------------------------------------------------------------------------------------
# Synthetic recordings
# --------------------------------------------------------------------------------------------


@dataclass
class Recording:
    """Frame headers of a synthetic recording, one entry per frame in the file."""

    rotidx: np.ndarray
    num: np.ndarray
    scan_x: np.ndarray
    scan_y: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.rotidx.size)


def camera_recording(
    scan: tuple[int, int],
    *,
    scans: int = 1,
    camera_ms: float = 1.0,
    dwell_ms: float = 1.0,
    lead_frames: int = 7,
    gap_frames: int = 5,
    tail_frames: int = 6,
    interrupt_at: float | None = None,
    drop: float = 0.0,
    counter_start: int = 1000,
    seed: int = 0,
) -> Recording:
    """Headers of a camera recording ``scans`` scans of ``scan = (y, x)`` positions.

    The camera runs ``lead_frames`` before the first scan, ``gap_frames`` between scans and
    ``tail_frames`` after the last (rotator index 0). ``interrupt_at`` (a fraction) stops the
    last scan early; ``drop`` is the fraction of frames the camera loses (absent from the
    file, visible as gaps of the frame counter). The scan clock jitters by 2 % of a dwell.
    """
    rng = np.random.default_rng(seed)
    height, width = scan
    positions = height * width
    scan_ms = positions * dwell_ms
    # Scans start half a dwell after a frame, so that in step the clock jitter does not move
    # frames across position boundaries.
    starts = [
        (lead_frames - 0.5) * camera_ms + k * (scan_ms + gap_frames * camera_ms)
        for k in range(scans)
    ]
    end = starts[-1] + scan_ms * (interrupt_at if interrupt_at is not None else 1.0)
    total = math.ceil((end + tail_frames * camera_ms) / camera_ms)
    if interrupt_at is not None:
        total = math.ceil(end / camera_ms)
    times = np.arange(total) * camera_ms + rng.normal(0, 0.02 * dwell_ms, total)
    rotidx = np.zeros(total, dtype=np.int64)
    for start in starts:
        inside = (times >= start) & (times < start + scan_ms)
        rotidx[inside] = np.floor((times[inside] - start) / dwell_ms).astype(np.int64) + 1
    rotidx = np.minimum(rotidx, positions)
    if interrupt_at is not None:
        rotidx[times >= end] = 0
    num = counter_start + np.arange(total, dtype=np.int64)
    keep = rng.random(total) >= drop
    rotidx, num = rotidx[keep], num[keep]
    position = np.maximum(rotidx - 1, 0)
    return Recording(
        rotidx.astype(np.uint32),
        num.astype(np.uint32),
        np.where(rotidx > 0, position % width, 0).astype(np.float32),
        np.where(rotidx > 0, position // width, 0).astype(np.float32),
    )


def write_recording(
    path: Path,
    recording: Recording,
    *,
    frame_shape: tuple[int, int] = (4, 4),
    extra: int = 0,
    scan_positions: bool = False,
    max_file_size: int | None = None,
) -> np.ndarray:
    """Write a recording; frame ``i`` of the file has all pixels ``i``. Returns the frames."""
    frames = np.broadcast_to(
        np.arange(recording.frames, dtype=np.uint16)[:, None, None],
        (recording.frames, *frame_shape),
    )
    fields: dict[str, Any] = {"rotidx": recording.rotidx, "num": recording.num}
    if scan_positions:
        fields.update(scan_x=recording.scan_x, scan_y=recording.scan_y)
    with TvipsWriter(
        path,
        frame_shape,
        np.uint16,
        frame_header_extra_bytes=extra,
        max_file_size=max_file_size,
        frame_fields={"mode": 2},
    ) as writer:
        writer.write(frames, **fields)
    return np.asarray(frames)
