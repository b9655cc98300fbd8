"""A bad run fails alone; SIGTERM stops cleanly; the preview channel never slows the data."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from live import Daemon, Receiver, Series, daemons, wait_for

from stemcast.client import Frame, SeriesEnd, Subscriber
from stemcast.simulate import simulate_mib


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


def test_sigterm_finishes_the_batch_and_exits_cleanly(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon()
    writer = threading.Thread(
        target=simulate_mib,
        args=(tmp_path / "camera",),
        kwargs={"name": "long", "scan_shape": (40, 20), "frame_size": 32, "fps": 500},
    )
    writer.start()
    frames = 0
    with Subscriber(service.data, timeout_s=20) as subscriber:
        for event in subscriber:
            if isinstance(event, Frame):
                frames += 1
                if frames == 100:
                    service.process.send_signal(signal.SIGTERM)
            elif isinstance(event, SeriesEnd):
                end = event.header
                break
    assert service.process.wait(10) == 0
    writer.join()
    assert end["status"] == "interrupted"
    assert end["reason"] == "the service stopped"
    assert end["frames"] == frames
    assert 100 <= frames < 800
    assert "Traceback" not in service.log_text()


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
