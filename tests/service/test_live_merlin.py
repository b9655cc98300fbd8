"""Merlin runs followed live by the daemon (a subprocess) arrive bit-identical, in order, once."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from live import Daemon, Receiver, daemons

from stemcast.client import Frame, SeriesEnd, Subscriber
from stemcast.readers.mib import MibRun, file_reader
from stemcast.simulate import simulate_mib


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


def offline(path: Path) -> np.ndarray:
    """Frames as the offline reader returns them (lazy: native-endian, like the wire)."""
    data = file_reader(path, lazy=True)[0]["data"].compute()
    return np.asarray(data).reshape(-1, *data.shape[-2:])


@pytest.mark.parametrize(
    ("depth", "quad", "raw", "frame_size"),
    [
        (1, False, False, 64),
        (6, False, False, 64),
        (12, False, False, 64),
        (24, False, False, 64),
        (12, True, False, 512),
        (1, False, True, 64),
        (6, False, True, 64),
        (12, False, True, 64),
        (24, False, True, 256),
        (6, True, True, 512),
    ],
)
def test_every_frame_arrives_bit_identical_in_order_once(
    daemon: Callable[..., Daemon],
    tmp_path: Path,
    depth: int,
    quad: bool,
    raw: bool,
    frame_size: int,
) -> None:
    service = daemon()
    receiver = Receiver(service.data)
    scan = (4, 3) if quad else (8, 6)
    [path] = simulate_mib(
        tmp_path / "camera",
        name="run",
        scan_shape=scan,
        frame_size=frame_size,
        counter_depth=depth,
        quad=quad,
        raw=raw,
        hdr_scan_size=True,
    )
    [series] = receiver.series(1)
    expected = offline(path)
    assert [header["frame"] for header in series.headers] == list(range(len(expected)))
    received = np.stack(series.frames)
    assert received.dtype == expected.dtype
    np.testing.assert_array_equal(received, expected)
    assert series.start["dtype"] == expected.dtype.newbyteorder("=").str
    assert series.start["nav_shape"] == list(scan)
    assert series.end is not None
    assert series.end["status"] == "complete"
    assert series.end["frames"] == len(expected)
    assert series.end["nav_shape"] == list(scan)
    assert series.end["nav_evidence"] == "hdr"
    sequences = [header["sequence"] for header in series.headers]
    assert sequences == list(range(sequences[0], sequences[0] + len(expected)))


def test_a_run_split_over_files_is_one_series(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    receiver = Receiver(service.data)
    paths = simulate_mib(
        tmp_path / "camera", name="split", scan_shape=(8, 6), frame_size=64, frames_per_file=16
    )
    assert len(paths) == 3
    [series] = receiver.series(1)
    np.testing.assert_array_equal(np.stack(series.frames), offline(paths[0]))
    assert series.end is not None
    assert series.end["status"] == "complete"
    assert series.end["sources"] == [str(path) for path in paths]


def test_scan_width_is_inferred_live_from_fly_back_gaps(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    receiver = Receiver(service.data)
    simulate_mib(tmp_path / "camera", name="ts", scan_shape=(10, 7), frame_size=32, fps=400)
    [series] = receiver.series(1)
    assert series.start["nav_shape"] is None
    positions = [header["nav_position"] for header in series.headers]
    # Known once two fly-backs have been seen, then on every frame.
    assert positions[-1] == [9, 6]
    known = [index for index, position in enumerate(positions) if position is not None]
    assert known == list(range(known[0], 70))
    assert all(positions[i] == [i % 10, i // 10] for i in known)
    assert known[0] <= 40
    assert series.end is not None
    assert series.end["nav_shape"] == [10, 7]
    assert series.end["nav_evidence"] == "timestamps"


def test_an_interrupted_run_ends_interrupted_with_complete_lines(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "0.5")
    receiver = Receiver(service.data)
    [path] = simulate_mib(
        tmp_path / "camera",
        name="cut",
        scan_shape=(8, 8),
        frame_size=64,
        interrupt_after=20,
        hdr_scan_size=True,
    )
    [series] = receiver.series(1)
    assert series.end is not None
    assert series.end["status"] == "interrupted"
    assert series.end["reason"] == "files stopped growing for 0.5 s after 20 of 64 frames"
    # Only complete records: the half-written 21st frame never leaves.
    assert series.end["frames"] == len(series.frames) == 20
    assert series.end["nav_shape"] == [8, 2]
    assert series.end["nav_shape_intended"] == [8, 8]
    np.testing.assert_array_equal(np.stack(series.frames)[:16], offline(path))


def test_the_next_run_ends_the_previous_one(daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    service = daemon("--idle-timeout", "60")
    receiver = Receiver(service.data)
    simulate_mib(
        tmp_path / "camera", name="a", scan_shape=(8, 8), frame_size=32, interrupt_after=30
    )
    simulate_mib(tmp_path / "camera", name="b", scan_shape=(4, 4), frame_size=32)
    first, second = receiver.series(2, timeout_s=20)
    assert first.end is not None
    assert second.end is not None
    assert first.end["status"] == "interrupted"
    assert "next run started" in first.end["reason"]
    assert len(first.frames) == 30
    assert second.end["status"] == "complete"
    assert len(second.frames) == 16


def test_polling_mode_finds_and_follows_runs(daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    service = daemon("--polling")
    receiver = Receiver(service.data)
    [path] = simulate_mib(tmp_path / "camera", name="share", scan_shape=(6, 5), frame_size=32)
    [series] = receiver.series(1)
    assert series.end is not None
    assert series.end["status"] == "complete"
    np.testing.assert_array_equal(np.stack(series.frames), offline(path))


@pytest.mark.slow
def test_a_full_size_quad_raw_run_at_1_khz_arrives_bit_identical(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    digests: list[bytes] = []
    positions: list[list[int] | None] = []
    ends: list[dict[str, object]] = []

    def consume() -> None:
        with Subscriber(service.data, timeout_s=60) as subscriber:
            for event in subscriber:
                if isinstance(event, Frame):
                    digests.append(hashlib.blake2b(event.data.tobytes()).digest())
                    positions.append(event.header["nav_position"])
                elif isinstance(event, SeriesEnd):
                    ends.append(event.header)
                    return

    consumer = threading.Thread(target=consume)
    consumer.start()
    [path] = simulate_mib(
        tmp_path / "camera", name="quad", scan_shape=(32, 24), frame_size=512, quad=True,
        raw=True, counter_depth=12, fps=1000, pattern_pool=3,
    )  # fmt: skip
    consumer.join(60)
    run = MibRun.open(path)
    offline_digests = []
    for batch in run.batches(batch_frames=64):  # oriented as file_reader returns frames
        offline_digests += [hashlib.blake2b(frame.tobytes()).digest() for frame in batch.frames]
    assert digests == offline_digests
    assert ends[0]["nav_shape"] == [32, 24]
    assert ends[0]["nav_evidence"] == "timestamps"
    assert positions[-1] == [31, 23]
