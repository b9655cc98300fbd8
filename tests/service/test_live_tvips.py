"""TVIPS series rolling over several parts, followed live by the daemon."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from live import Daemon, Receiver, daemons

from stemcast.readers.tvips import TvipsSeries, file_reader
from stemcast.simulate import simulate_tvips


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


@pytest.mark.parametrize("bits", [8, 16])
def test_a_rolling_series_arrives_bit_identical_in_order_once(
    daemon: Callable[..., Daemon], tmp_path: Path, bits: int
) -> None:
    service = daemon("--idle-timeout", "0.5")
    receiver = Receiver(service.data)
    record = 76 + 48 * 48 * bits // 8
    paths = simulate_tvips(
        tmp_path / "camera", name="roll", scan_shape=(6, 6), frame_size=48, bits=bits,
        max_file_size=256 + 9 * record, fps=300,
    )  # fmt: skip
    assert len(paths) >= 4
    [series] = receiver.series(1)
    expected = np.asarray(file_reader(paths[0])[0]["data"]).reshape(-1, 48, 48)
    assert [header["frame"] for header in series.headers] == list(range(36))
    received = np.stack(series.frames)
    assert received.dtype == expected.dtype
    np.testing.assert_array_equal(received, expected)
    assert series.end is not None
    assert series.end["frames"] == 36
    assert series.end["sources"] == [str(path) for path in paths]
    assert series.end["nav_shape"] == [6, 6]
    assert series.end["nav_evidence"] == "rotator"


def test_an_interrupted_series_publishes_its_complete_records(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "0.5")
    receiver = Receiver(service.data)
    paths = simulate_tvips(
        tmp_path / "camera", name="cut", scan_shape=(5, 5), frame_size=32, interrupt_after=13
    )
    [series] = receiver.series(1)
    assert series.end is not None
    assert series.end["status"] == "interrupted"
    assert len(series.frames) == series.end["frames"] == 13
    offline = TvipsSeries.open(paths[0])
    np.testing.assert_array_equal(np.stack(series.frames), offline.read_frames(range(13)))
