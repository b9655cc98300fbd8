"""TVIPS series rolling over several parts, followed live by the daemon, and how they end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live import Daemon, Drain, Receiver, call, daemons, wait_until
from rsciio.blockfile import file_reader as read_blockfile
from rsciio.emd import file_reader as read_emd
from rsciio.tvips import file_reader as read_tvips

from stemcast.convert.run import convert_run
from stemcast.readers.tvips import TvipsSeries, file_reader
from stemcast.simulate import simulate_tvips

#: Seconds within which a run whose end its data tell has ended after the camera's last
#: frame, while the idle timeout is a minute: generous for a loaded two-core machine.
PROMPT_S = 5.0
TOKEN = "tvips-tests-token"


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
    assert series.end["reason"] == (
        "files stopped growing for 0.5 s; the scan was cut short: "
        "the scan positions stop within a line, at x = 2 of 5"
    )
    assert len(series.frames) == series.end["frames"] == 13
    offline = TvipsSeries.open(paths[0])
    np.testing.assert_array_equal(np.stack(series.frames), offline.read_frames(range(13)))


def test_a_scan_ends_complete_when_its_rotator_index_drops(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "60")
    receiver = Receiver(service.data)
    paths = simulate_tvips(
        tmp_path / "camera", name="scan", scan_shape=(32, 32), frame_size=32, fps=1000,
        frames_after_scan=5,
    )  # fmt: skip
    written = time.monotonic()
    [series] = receiver.series(1, timeout_s=PROMPT_S)
    assert time.monotonic() - written < PROMPT_S
    assert series.end is not None
    assert series.end["status"] == "complete"
    assert series.end["reason"] == (
        "the rotator index reached the last of the 1024 scan positions and dropped to 0 at "
        "frame 1024"
    )
    # The scan's 1024 frames and the one where the index drops; the 4 after it are not the run's.
    assert series.end["frames"] == len(series.frames) == 1025
    np.testing.assert_array_equal(
        np.stack(series.frames), TvipsSeries.open(paths[0]).read_frames(range(1025))
    )
    assert series.end["nav_shape"] == [32, 32]
    assert series.end["nav_evidence"] == "rotator"
    # Frames published before the index dropped carry no position: the scan was not known yet.
    positions = [header["nav_position"] for header in series.headers]
    assert all(positions[i] in (None, [i % 32, i // 32]) for i in range(1024))
    assert positions[1024] is None
    # A client reading the run back from its start gets every position.
    late = Receiver(service.data, start=(series.end["series"], 0))
    [again] = late.series(1)
    expected = [[i % 32, i // 32] for i in range(1024)] + [None]
    assert [header["nav_position"] for header in again.headers] == expected
    assert service.http is not None
    status, run = call("GET", f"{service.http}/runs/{series.end['series']}")
    assert status == 200
    assert run["status"] == "complete"
    assert run["frames"] == 1025
    assert run["nav_shape"] == [32, 32]


def test_without_scan_engine_a_series_ends_complete_when_it_stops_growing(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    receiver = Receiver(service.data)
    simulate_tvips(
        tmp_path / "camera", name="plain", scan_shape=(6, 6), frame_size=32, scan_engine=False
    )
    written = time.monotonic()
    [series] = receiver.series(1)
    assert time.monotonic() - written >= 1.0
    assert series.end is not None
    assert series.end["status"] == "complete"
    assert series.end["reason"] == "files stopped growing for 1 s"
    assert series.end["frames"] == len(series.frames) == 36
    assert series.end["nav_shape"] == [36]
    assert series.end["nav_evidence"] == "none"


def test_a_configured_shape_ends_a_series_at_its_last_position(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "60", "--navigation-shape", "6x6")
    receiver = Receiver(service.data)
    simulate_tvips(
        tmp_path / "camera", name="told", scan_shape=(6, 6), frame_size=32, scan_engine=False,
        frames_after_scan=4, fps=200,
    )  # fmt: skip
    written = time.monotonic()
    [series] = receiver.series(1, timeout_s=PROMPT_S)
    assert time.monotonic() - written < PROMPT_S
    assert series.end is not None
    assert series.end["status"] == "complete"
    assert series.end["reason"] == (
        "all 36 frames of the scan: navigation shape (6, 6) given by the user"
    )
    assert series.end["frames"] == len(series.frames) == 36
    assert series.end["nav_shape"] == [6, 6]
    assert series.end["nav_evidence"] == "user"


def converted(service: Daemon, run_id: str) -> dict[str, Any]:
    """Wait for the one conversion job of a run to end; return it."""

    def jobs() -> list[dict[str, Any]]:
        assert service.http is not None
        status, run = call("GET", f"{service.http}/runs/{run_id}")
        assert status == 200
        found: list[dict[str, Any]] = run["jobs"]
        return found

    [job] = wait_until(
        jobs,
        lambda found: len(found) == 1 and found[0]["status"] in ("done", "failed", "cancelled"),
        30.0,
    )
    return job


@pytest.mark.parametrize("before", [0, 5], ids=["scan-from-frame-0", "frames-before-scan"])
def test_a_rotator_scan_converted_live_equals_the_offline_conversion(
    daemon: Callable[..., Daemon], tmp_path: Path, before: int
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    service = daemon(
        "--idle-timeout", "60", "--output", str(tmp_path / "out"), "--convert", "emd",
        "--token-file", str(tmp_path / "token"),
    )  # fmt: skip
    drain = Drain(service.data)
    try:
        paths = simulate_tvips(
            tmp_path / "camera", name="live", scan_shape=(32, 32), frame_size=32,
            frames_before_scan=before, frames_after_scan=3,
        )  # fmt: skip
        end = drain.end_of("live_000.tvips")
    finally:
        drain.close()
    assert end["status"] == "complete"
    assert end["frames"] == before + 1025
    job = converted(service, end["series"])
    assert job["status"] == "done", job
    assert job["navigation_shape"] == [32, 32]
    live = np.asarray(read_emd(job["outputs"]["emd"])[0]["data"])
    # The scan starts at frame ``before`` (the simulator's parameters); rosettasciio reads it
    # with that start and shape (its automatic mode cannot read an index that drops to 0).
    [reference] = read_tvips(str(paths[0]), scan_shape=(32, 32), scan_start_frame=before)
    np.testing.assert_array_equal(live, reference["data"])
    offline = convert_run(paths[0], "emd,blockfile", tmp_path / "offline")
    np.testing.assert_array_equal(live, read_emd(offline.outputs["emd"])[0]["data"])
    # A conversion asked for later finds the same grid.
    assert service.http is not None
    url = f"{service.http}/runs/{end['series']}/convert"
    status, asked = call("POST", url, {"targets": ["blockfile"]}, token=TOKEN)
    assert status == 202, asked
    done = wait_until(
        lambda: call("GET", f"{service.http}/jobs/{asked['id']}")[1],
        lambda job: job["status"] in ("done", "failed", "cancelled"),
        30.0,
    )
    assert done["status"] == "done", done
    np.testing.assert_array_equal(
        read_blockfile(done["outputs"]["blockfile"])[0]["data"],
        read_blockfile(offline.outputs["blockfile"])[0]["data"],
    )
