"""How far a consumer is behind the catalog: frames, bytes, and since when the oldest waits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from stemcast.service.live.catalog import Behind, Catalog, SeriesEntry
from stemcast.service.live.tail import MibSource
from stemcast.writers.mib import MibWriter

#: 8 x 8 frames of 12-bit counters, decoded to 16-bit pixels.
FRAME_BYTES = 8 * 8 * 2


@pytest.fixture
def source(tmp_path: Path) -> MibSource:
    path = tmp_path / "run.mib"
    with MibWriter(path, frame_shape=(8, 8), counter_depth=12) as writer:
        writer.write(np.zeros((4, 8, 8), dtype=np.uint16))
    return MibSource.open(path)


def entry(source: MibSource, series: str) -> SeriesEntry:
    return SeriesEntry(series, {"series": series}, source, lambda _: None)


def grown(item: SeriesEntry, *steps: tuple[int, float]) -> SeriesEntry:
    """``item`` with frames made readable in ``(frames, at)`` steps."""
    for frames, at in steps:
        item.readable(frames, at)
        item.frames = frames
    return item


def test_each_frame_is_readable_from_the_step_that_reached_it(source: MibSource) -> None:
    item = grown(entry(source, "a"), (10, 100.0), (30, 101.0))
    assert item.readable_since(0) == 100.0
    assert item.readable_since(9) == 100.0
    assert item.readable_since(10) == 101.0
    assert item.readable_since(29) == 101.0
    assert item.readable_since(30) is None


def test_steps_within_a_twentieth_of_a_second_are_kept_as_one(source: MibSource) -> None:
    item = grown(entry(source, "a"), (10, 100.0), (30, 100.01), (40, 100.2))
    # Frames 10 to 29 are said readable 10 ms early; frame 30 starts a step of its own.
    assert item.readable_since(29) == 100.0
    assert item.readable_since(30) == 100.2


def test_a_consumer_is_behind_by_the_frames_it_has_not_had(source: MibSource) -> None:
    item = grown(entry(source, "a"), (10, 100.0), (30, 101.0))
    assert item.behind(5) == Behind(25, 25 * FRAME_BYTES, 100.0)
    assert item.behind(10) == Behind(20, 20 * FRAME_BYTES, 101.0)
    assert item.behind(30) == Behind(0, 0, None)
    # Past the last frame (its series_end sent): caught up.
    assert item.behind(31) == Behind(0, 0, None)
    assert item.behind(5).seconds(103.5) == 3.5
    assert item.behind(30).seconds(103.5) == 0.0


def test_a_consumer_is_behind_by_its_series_and_every_later_one(source: MibSource) -> None:
    catalog = Catalog()
    first = grown(entry(source, "a"), (40, 100.0))
    second = grown(entry(source, "b"), (20, 105.0))
    catalog.add(first)
    catalog.finish(first, {"status": "complete"})
    catalog.add(second)
    assert catalog.behind(first, 35) == Behind(25, 25 * FRAME_BYTES, 100.0)
    # Done with the first series: only the second one's frames wait.
    assert catalog.behind(first, 41) == Behind(20, 20 * FRAME_BYTES, 105.0)
    assert catalog.behind(second, 20) == Behind(0, 0, None)
    # Before its first series, a consumer owes them all.
    assert catalog.behind(None, 0) == Behind(60, 60 * FRAME_BYTES, 100.0)
    # A series the catalog dropped: its own frames only.
    dropped = grown(entry(source, "c"), (8, 90.0))
    assert catalog.behind(dropped, 0) == Behind(8, 8 * FRAME_BYTES, 90.0)


def test_frames_the_catalog_advances_are_readable_from_then(source: MibSource) -> None:
    catalog = Catalog()
    item = entry(source, "a")
    catalog.add(item)
    before = time.monotonic()
    catalog.advance(item, 4)
    after = time.monotonic()
    since = item.readable_since(0)
    assert since is not None
    assert before <= since <= after
    assert item.behind(0).frames == 4
