"""A bad run fails alone; a restart resumes the run; the preview channel never slows the data."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from live import Daemon, Receiver, Series, call, daemons, wait_for, wait_until

from stemcast.client import Frame, SeriesEnd, SeriesStart, Subscriber, SubscriptionError
from stemcast.simulate import simulate_mib


def read_mib(path: Path) -> np.ndarray:
    """A simulated 40 x 20 scan as rosettasciio reads it."""
    from rsciio.quantumdetector import file_reader

    [signal_dict] = file_reader(str(path), navigation_shape=(40, 20))
    return np.asarray(signal_dict["data"])


def read_emd(path: Path) -> np.ndarray:
    from rsciio.emd import file_reader

    [signal_dict] = file_reader(str(path))
    return np.asarray(signal_dict["data"])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


def test_corrupt_and_vanishing_runs_fail_while_others_go_on(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "60")
    receiver = Receiver(service.data)
    camera = tmp_path / "camera"
    (camera / "garbage.mib").write_bytes(np.random.default_rng(0).bytes(5000))
    [gone] = simulate_mib(camera, name="gone", scan_shape=(8, 8), frame_size=32, interrupt_after=9)
    wait_for(lambda: "following " + str(gone) in service.log_text())
    gone.unlink()
    simulate_mib(camera, name="good", scan_shape=(4, 4), frame_size=32)
    vanished, good = receiver.series(2)
    assert vanished.end is not None
    assert good.end is not None
    assert vanished.end["status"] == "failed"
    assert "gone.mib" in vanished.end["reason"]
    assert good.end["status"] == "complete"
    assert len(good.frames) == 16
    assert service.process.poll() is None
    log = service.log_text()
    assert "garbage.mib" in log
    assert "failed" in log


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restarted_service_resumes_the_run_for_its_clients_and_outputs(
    daemon: Callable[..., Daemon], tmp_path: Path, stop: signal.Signals
) -> None:
    flags = ("--output", str(tmp_path / "out"), "--convert", "emd")
    service = daemon(*flags)
    camera = tmp_path / "camera"
    writer = threading.Thread(
        target=simulate_mib,
        args=(camera,),
        kwargs={"name": "long", "scan_shape": (40, 20), "frame_size": 32, "fps": 200},
    )
    writer.start()
    indices: list[int] = []
    frames: list[np.ndarray] = []

    def keep(subscriber: Subscriber, until: int | None) -> dict[str, Any] | None:
        for event in subscriber:
            if isinstance(event, Frame):
                indices.append(event.index)
                frames.append(event.data.copy())
                if len(indices) == until:
                    return None
            elif isinstance(event, SeriesEnd):
                return event.header
        return None

    with Subscriber(service.data, start="run", timeout_s=20) as subscriber:
        keep(subscriber, until=100)
        service.process.send_signal(stop)
        position = subscriber.position
    assert position is not None
    assert position[1] == 100
    assert service.process.wait(10) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    if stop == signal.SIGTERM:
        log = service.log_text()
        assert "Traceback" not in log
        assert "the next start resumes it" in log
    restarted = daemon(*flags)
    with Subscriber(restarted.data, start=position, timeout_s=20) as subscriber:
        end = keep(subscriber, until=None)
    writer.join()
    assert end is not None
    assert end["series"] == position[0]
    assert (end["status"], end["frames"]) == ("complete", 800)
    assert indices == list(range(800))
    source = camera / "long.mib"
    expected = read_mib(source)
    np.testing.assert_array_equal(np.stack(frames), expected.reshape(800, 32, 32))
    assert restarted.http is not None
    run = wait_until(
        lambda: call("GET", f"{restarted.http}/runs/{position[0]}")[1],
        lambda run: [job["status"] for job in run["jobs"]] == ["done"],
    )
    assert run["status"] == "complete"
    output = tmp_path / "out" / "camera" / "long.emd"
    np.testing.assert_array_equal(read_emd(output), expected)
    assert sorted(os.listdir(output.parent)) == ["long.emd"]


def test_a_client_resumes_in_a_run_that_ended_before_a_restart(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    camera = tmp_path / "camera"
    with Subscriber(service.data, start="live", timeout_s=20) as subscriber:
        simulate_mib(camera, name="first", scan_shape=(40, 20), frame_size=32)
        for event in subscriber:
            if isinstance(event, Frame) and event.index == 99:
                break
        position = subscriber.position
    assert position is not None
    assert position[1] == 100
    assert service.http is not None
    wait_until(
        lambda: call("GET", f"{service.http}/runs/{position[0]}")[1],
        lambda run: run["status"] == "complete",
    )
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(10) == 0
    restarted = daemon()
    indices: list[int] = []
    frames: list[np.ndarray] = []
    ends: list[dict[str, Any]] = []
    starts: list[dict[str, Any]] = []
    with Subscriber(restarted.data, start=position, timeout_s=20) as subscriber:
        for event in subscriber:
            if isinstance(event, SeriesStart):
                starts.append(event.header)
            elif isinstance(event, Frame) and event.series == position[0]:
                indices.append(event.index)
                frames.append(event.data.copy())
            elif isinstance(event, SeriesEnd):
                ends.append(event.header)
                if len(ends) == 2:
                    break
                # A run recorded after the restart follows the resumed one.
                simulate_mib(camera, name="second", scan_shape=(4, 4), frame_size=32)
    assert starts[0]["series"] == position[0]
    assert starts[0]["shape"] == [32, 32]
    assert indices == list(range(100, 800))
    expected = read_mib(camera / "first.mib").reshape(800, 32, 32)
    np.testing.assert_array_equal(np.stack(frames), expected[100:])
    first, second = ends
    assert (first["series"], first["status"], first["frames"]) == (position[0], "complete", 800)
    assert first["nav_shape"] == [40, 20]
    assert second["series"] != position[0]
    assert (second["status"], second["frames"]) == ("complete", 16)


def test_a_position_in_a_run_whose_files_are_gone_is_refused_clearly(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    camera = tmp_path / "camera"
    with Subscriber(service.data, start="live", timeout_s=20) as subscriber:
        simulate_mib(camera, name="gone", scan_shape=(4, 4), frame_size=32)
        for event in subscriber:
            if isinstance(event, SeriesEnd):
                break
        position = subscriber.position
    assert position is not None
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(10) == 0
    (camera / "gone.mib").unlink()
    restarted = daemon()
    with (
        Subscriber(restarted.data, start=(position[0], 3), timeout_s=20) as subscriber,
        pytest.raises(SubscriptionError, match=r"cannot be resumed.*gone\.mib"),
    ):
        subscriber.receive()
    assert restarted.process.poll() is None


def test_a_stalled_preview_subscriber_never_slows_the_data_channel(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    receiver = Receiver(service.data)
    context = zmq.Context()
    stalled = context.socket(zmq.SUB)
    stalled.rcvhwm = 1
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(service.preview)
    viewer = Subscriber(service.preview, preview=True, timeout_s=20)
    try:
        time.sleep(0.3)
        results: list[Series] = []
        consumer = threading.Thread(target=lambda: results.extend(receiver.series(1)))
        consumer.start()
        simulate_mib(tmp_path / "camera", name="big", scan_shape=(40, 25), frame_size=64, fps=1000)
        consumer.join(30)
        [series] = results
        assert len(series.frames) == 1000
        shown = []
        while True:
            event = viewer.receive()
            if isinstance(event, Frame):
                shown.append(event.header["sequence"])
            elif isinstance(event, SeriesEnd):
                break
        # About 10 previews a second out of 1000 frames a second, each usable alone.
        assert 3 <= len(shown) <= 40
        assert shown == sorted(shown)
    finally:
        viewer.close()
        stalled.close(linger=0)
        context.term()


def test_files_present_before_start_are_left_alone_if_old(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    camera = tmp_path / "camera"
    camera.mkdir()
    [old] = simulate_mib(camera, name="old", scan_shape=(4, 4), frame_size=32)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    service = daemon()
    receiver = Receiver(service.data)
    simulate_mib(camera, name="new", scan_shape=(4, 4), frame_size=32)
    [series] = receiver.series(1)
    assert series.start["sources"] == [str(camera / "new.mib")]


def test_a_run_without_a_client_ends_and_sigterm_exits_at_once(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    simulate_mib(tmp_path / "camera", name="unread", scan_shape=(8, 8), frame_size=32)
    # Nobody subscribes: the run is read to its end all the same.
    wait_for(lambda: "complete: all 64 frames" in service.log_text())
    started = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - started < 5
    log = service.log_text()
    assert "did not finish in time" not in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_memory_stays_bounded_for_a_large_run(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    indices: list[int] = []

    def count() -> None:
        with Subscriber(service.data, timeout_s=120) as subscriber:
            for event in subscriber:
                if isinstance(event, Frame):
                    indices.append(event.index)
                elif isinstance(event, SeriesEnd):
                    return

    consumer = threading.Thread(target=count)
    consumer.start()
    # 6000 frames of 256 x 256 12-bit pixels: 790 MB of records.
    simulate_mib(
        tmp_path / "camera", name="large", scan_shape=(100, 60), frame_size=256, pattern_pool=2
    )
    consumer.join(120)
    assert indices == list(range(6000))
    status = Path(f"/proc/{service.process.pid}/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    assert peak_kb < 300_000, f"peak resident memory {peak_kb} kB"
