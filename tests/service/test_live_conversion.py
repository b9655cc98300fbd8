"""Outputs are written while the camera writes, final right after its last frame.

No data client is connected in these tests: conversion and metrics never wait for one.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live import Daemon, call, daemons, wait_until
from prometheus_client.parser import text_string_to_metric_families

from stemcast.simulate import simulate_mib

#: How soon after the camera's last frame both outputs must be final in this suite. The
#: target is 1 s (benchmarks/bench_live_convert.py measures it on a quiet machine); the
#: margin absorbs the other tests sharing a 2-core runner.
FINAL_WITHIN_S = 3.0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


def read(path: Path, **kwargs: Any) -> np.ndarray:
    """The data of a file as rosettasciio reads it."""
    if path.suffix == ".emd":
        from rsciio.emd import file_reader
    elif path.suffix == ".blo":
        from rsciio.blockfile import file_reader
    else:
        from rsciio.quantumdetector import file_reader
    [signal_dict] = file_reader(str(path), **kwargs)
    return np.asarray(signal_dict["data"])


def metric(service: Daemon, name: str) -> float:
    """The sum of a metric's samples on the service's ``/metrics`` page."""
    assert service.http is not None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{service.http}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_a_run_is_written_while_acquired_and_final_right_after_its_last_frame(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    out = tmp_path / "out" / "camera"
    service = daemon("--output", str(tmp_path / "out"), "--convert", "emd,blockfile")
    assert service.http is not None
    progress: list[dict[str, Any]] = []
    done = threading.Event()

    def watch_jobs() -> None:
        while not done.is_set():
            status, jobs = call("GET", f"{service.http}/jobs")
            if status == 200:
                progress.extend(job["progress"] for job in jobs["jobs"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_jobs)
    watcher.start()
    try:
        [source] = simulate_mib(
            tmp_path / "camera", name="scan", scan_shape=(32, 32), frame_size=256,
            counter_depth=12, fps=500, pattern_pool=4,
        )  # fmt: skip
        returned = time.monotonic()
        outputs = [out / "scan.emd", out / "scan.blo"]
        wait_until(lambda: all(path.exists() for path in outputs), bool, timeout_s=30)
        final_after = time.monotonic() - returned
    finally:
        done.set()
        watcher.join()
    assert final_after < FINAL_WITHIN_S
    # GET /jobs showed the job's progress while the camera was still writing.
    assert any(0 < entry["frames_done"] < 1024 for entry in progress)
    assert sorted(os.listdir(out)) == ["scan.blo", "scan.emd"]

    expected = read(source, navigation_shape=(32, 32))
    assert expected.shape == (32, 32, 256, 256)
    np.testing.assert_array_equal(read(out / "scan.emd"), expected)
    # Blockfile default for 12-bit data: the run's range to 0..255, as the reference scales
    # (skimage's rescale_intensity, docs/blockfile.md), through a table of every value.
    from skimage.exposure import rescale_intensity

    values = np.arange(2**16, dtype=np.uint16)
    table = rescale_intensity(
        values, in_range=(int(expected.min()), int(expected.max())), out_range=np.uint8
    )
    np.testing.assert_array_equal(read(out / "scan.blo"), table[expected])

    assert metric(service, "stemcast_frames_ingested_total") == 1024
    [job] = call("GET", f"{service.http}/jobs")[1]["jobs"]
    assert job["status"] == "done"
    assert job["progress"] == {"frames_done": 1024, "frames_total": 1024, "fraction": 1.0}
