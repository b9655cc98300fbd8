"""How a run ends: by its data when its scan is known, else when its files stop growing.

The rules of a run's end (docs/service.md, "How a run ends") on the evidence alone, then on
Merlin runs followed by the daemon (a subprocess). TVIPS runs followed by the daemon are in
test_live_tvips.py.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live import Daemon, Receiver, call, daemons, wait_until

from stemcast.client import SeriesStart, Subscriber
from stemcast.readers.mib import file_reader
from stemcast.service.live.navigation import NavigationTracker
from stemcast.shape import Evidence
from stemcast.simulate import simulate_mib

#: Seconds within which a run whose end its data tell has ended after the camera's last
#: frame, while the idle timeout is a minute: generous for a loaded two-core machine.
PROMPT_S = 5.0


def rotator_fields(rotator: list[int], width: int | None = None) -> dict[str, np.ndarray]:
    """TVIPS frame header fields of frames with these rotator indices (1-based scan
    positions, 0 when not scanning); with ``width``, the scan positions too."""
    index = np.asarray(rotator, dtype=np.int64)
    fields = {"rotator": index, "counters": np.arange(index.size, dtype=np.int64)}
    if width is not None:
        position = np.maximum(index - 1, 0)
        fields["scan_x"] = position % width
        fields["scan_y"] = position // width
    return fields


def take(tracker: NavigationTracker, fields: dict[str, np.ndarray], batch: int) -> list[bool]:
    """Give the fields to ``tracker`` in batches of ``batch`` frames; what each add said."""
    size = len(fields["rotator"])
    return [
        tracker.add(None, {name: values[start : start + batch] for name, values in fields.items()})
        for start in range(0, size, batch)
    ]


def test_a_rotator_index_dropping_to_zero_ends_the_run_at_that_frame() -> None:
    # Two frames before a 3 x 3 scan, then the index drops to 0 at frame 11.
    fields = rotator_fields([0, 0, *range(1, 10), 0, 0, 0])
    tracker = NavigationTracker()
    assert take(tracker, fields, 4) == [False, False, True, False]
    assert tracker.frames_expected == 12
    assert tracker.scan is not None
    assert tracker.scan.shape == (3, 3)
    assert tracker.scan.evidence is Evidence.ROTATOR
    assert "last of the 9 scan positions" in tracker.complete_reason
    # Frame k of the scan is at position k - 2; the frames around the scan are at none.
    assert [tracker.position(frame) for frame in range(12)] == [
        None, None, [0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1], [0, 2], [1, 2], [2, 2], None,
    ]  # fmt: skip


def test_a_repeated_position_is_shown_by_its_first_frame() -> None:
    # A camera faster than the scan: positions 1 and 2 of a 2 x 2 scan are recorded twice.
    tracker = NavigationTracker()
    assert take(tracker, rotator_fields([1, 1, 2, 2, 3, 4, 0]), 7) == [True]
    assert tracker.frames_expected == 7
    assert [tracker.position(frame) for frame in range(7)] == [
        [0, 0], None, [1, 0], None, [0, 1], [1, 1], None,
    ]  # fmt: skip


def test_a_drop_within_the_scan_does_not_end_the_run() -> None:
    tracker = NavigationTracker()
    # 7 positions, then 0: not a square, and no scan positions in the headers.
    assert not any(take(tracker, rotator_fields([1, 2, 3, 4, 5, 6, 7, 0]), 3))
    # A 3-wide scan stopped within its third line.
    wide = NavigationTracker()
    assert not any(take(wide, rotator_fields([1, 2, 3, 4, 5, 6, 7, 0], width=3), 8))
    assert tracker.frames_expected is None
    assert wide.frames_expected is None
    assert wide.cut_short(8) == "the scan positions stop within a line, at x = 0 of 3"


def test_a_scan_that_starts_again_is_followed_on() -> None:
    tracker = NavigationTracker()
    # The scan of 4 positions restarts: the recording repeats the scan.
    assert not any(take(tracker, rotator_fields([1, 2, 3, 4, 1, 2, 3, 4]), 3))
    assert tracker.frames_expected is None
    assert tracker.cut_short(8) is None
    scan, filled = tracker.final(8)
    assert scan.shape == filled == (2, 2, 2)
    # Stopped within its second scan: cut short.
    assert tracker.cut_short(6) == "the rotator index stopped at scan position 2 of 4"


def test_without_a_scan_nothing_shows_a_run_cut_short() -> None:
    no_engine = NavigationTracker()
    take(no_engine, rotator_fields([0] * 7), 7)
    assert no_engine.cut_short(7) is None
    assert no_engine.final(7)[1] == (7,)
    merlin = NavigationTracker()
    assert merlin.cut_short(7) is None


def test_a_known_shape_gives_the_frame_count() -> None:
    configured = NavigationTracker(user=(4, 3))
    assert configured.frames_expected == 12
    assert configured.complete_reason == (
        "all 12 frames of the scan: navigation shape (4, 3) given by the user"
    )
    assert configured.cut_short(10) == "its last scan line has 2 of its 4 frames"
    announced = NavigationTracker(hdr_shape=(4, 3), frames_expected=12)
    assert announced.frames_expected == 12
    assert announced.complete_reason == "all 12 frames announced by the .hdr"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


def offline(path: Path, **kwargs: object) -> np.ndarray:
    return np.asarray(file_reader(path, **kwargs)[0]["data"])


def test_a_merlin_run_of_known_shape_ends_complete_at_its_last_frame(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "60")
    receiver = Receiver(service.data)
    [path] = simulate_mib(
        tmp_path / "camera", name="known", scan_shape=(16, 16), frame_size=32,
        hdr_scan_size=True, fps=1000,
    )  # fmt: skip
    written = time.monotonic()
    [series] = receiver.series(1, timeout_s=PROMPT_S)
    assert time.monotonic() - written < PROMPT_S
    assert series.end is not None
    assert series.end["status"] == "complete"
    assert series.end["reason"] == "all 256 frames announced by the .hdr"
    assert series.end["frames"] == len(series.frames) == 256
    np.testing.assert_array_equal(np.stack(series.frames), offline(path).reshape(256, 32, 32))
    assert service.http is not None
    status, run = call("GET", f"{service.http}/runs/{series.end['series']}")
    assert status == 200
    assert run["status"] == "complete"
    assert run["nav_shape"] == [16, 16]


def test_a_merlin_run_cut_short_mid_line_ends_interrupted(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    receiver = Receiver(service.data)
    simulate_mib(
        tmp_path / "camera", name="cut", scan_shape=(8, 8), frame_size=32, interrupt_after=20,
        hdr_scan_size=True,
    )  # fmt: skip
    [series] = receiver.series(1)
    assert series.end is not None
    assert series.end["status"] == "interrupted"
    assert series.end["reason"] == "files stopped growing for 1 s after 20 of 64 frames"
    assert series.end["nav_shape"] == [8, 2]


def arrive_without_hdr(tmp_path: Path, name: str, **options: Any) -> Path:
    """Simulate a Merlin run elsewhere, drop its ``.hdr`` and move the ``.mib`` in place."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    [path] = simulate_mib(staging, name=name, frame_size=32, **options)
    path.with_suffix(".hdr").unlink()
    target = tmp_path / "camera" / path.name
    os.replace(path, target)
    return target


def test_a_merlin_run_without_hdr_cut_mid_line_ends_interrupted(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    receiver = Receiver(service.data)
    arrive_without_hdr(tmp_path, "cut", scan_shape=(8, 8), interrupt_after=20)
    [series] = receiver.series(1)
    assert series.end is not None
    assert series.end["status"] == "interrupted"
    assert series.end["reason"] == (
        "files stopped growing for 1 s; the scan was cut short: "
        "its last scan line has 4 of its 8 frames"
    )
    assert series.end["frames"] == 20
    assert series.end["nav_shape"] == [8, 2]
    assert series.end["nav_evidence"] == "timestamps"


def test_a_merlin_run_without_hdr_that_stops_growing_ends_complete(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    receiver = Receiver(service.data)
    path = arrive_without_hdr(tmp_path, "whole", scan_shape=(8, 6))
    [series] = receiver.series(1)
    assert series.end is not None
    assert series.end["status"] == "complete"
    assert series.end["reason"] == "files stopped growing for 1 s"
    assert series.end["frames"] == 48
    assert series.end["nav_shape"] == [8, 6]
    assert series.end["nav_evidence"] == "timestamps"
    np.testing.assert_array_equal(np.stack(series.frames), offline(path).reshape(48, 32, 32))


def test_a_shape_found_mid_run_is_shown_while_the_run_is_followed(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "60")
    assert service.http is not None
    camera = threading.Thread(
        target=simulate_mib,
        args=(tmp_path / "camera",),
        kwargs={"name": "slow", "scan_shape": (10, 30), "frame_size": 32, "fps": 100},
    )
    camera.start()
    try:
        # The .hdr has the frame count but no scan size: the width is seen in the timestamps.
        [run] = wait_until(
            lambda: call("GET", f"{service.http}/runs")[1]["runs"],
            lambda runs: len(runs) == 1 and runs[0]["nav_evidence"] == "timestamps",
        )
        assert run["status"] == "following"
        assert run["nav_shape"] == [10, 30]
        # A client joining now gets the shape in the series header.
        late = Subscriber(service.data, start="run", timeout_s=20)
        with late:
            start = late.receive()
        assert isinstance(start, SeriesStart)
        assert start.header["nav_shape"] == [10, 30]
        assert start.header["nav_evidence"] == "timestamps"
    finally:
        camera.join()
