"""The daemon's /health, /ready and /metrics, read over real HTTP from a subprocess."""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import Daemon, Drain, call, daemons, wait_until
from prometheus_client.parser import text_string_to_metric_families

from stemcast.simulate import simulate_mib

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(service: Daemon) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The daemon's metrics as Prometheus' own parser reads them."""
    with _HTTP.open(f"{service.http}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(service: Daemon, name: str, **labels: str) -> float:
    return scrape(service)[(name, frozenset(labels.items()))]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Daemon]:
    (tmp_path / "out").mkdir()
    with daemons(tmp_path) as start:
        yield start("--output", str(tmp_path / "out"), "--convert", "emd")


def test_health_answers_while_alive(service: Daemon) -> None:
    assert call("GET", f"{service.http}/health") == (200, {"status": "alive"})


def test_ready_checks_folders_sockets_and_registry(service: Daemon, tmp_path: Path) -> None:
    status, body = call("GET", f"{service.http}/ready")
    assert status == 200
    assert body["ready"] is True
    checks = body["checks"]
    assert checks[f"watch {tmp_path / 'camera'}"]["ok"] is True
    assert checks[f"output {tmp_path / 'out'}"]["ok"] is True
    assert service.data in checks["sockets"]["detail"]
    assert checks["registry"]["ok"] is True
    # The output root disappears: the service is alive but no longer ready.
    shutil.rmtree(tmp_path / "out")
    status, body = call("GET", f"{service.http}/ready")
    assert status == 503
    assert body["ready"] is False
    assert body["checks"][f"output {tmp_path / 'out'}"]["ok"] is False
    assert "No such file" in body["checks"][f"output {tmp_path / 'out'}"]["detail"]
    assert call("GET", f"{service.http}/health")[0] == 200


def test_metrics_count_a_run_and_its_conversion(service: Daemon, tmp_path: Path) -> None:
    drain = Drain(service.data)
    try:
        [source] = simulate_mib(
            tmp_path / "camera", name="counted", scan_shape=(8, 4), frame_size=32,
            counter_depth=12, hdr_scan_size=True,
        )  # fmt: skip
        end = drain.end_of("counted.mib")
    finally:
        drain.close()
    assert end["status"] == "complete"
    output = tmp_path / "out" / "camera" / "counted.emd"
    wait_until(
        lambda: value(
            service, "stemcast_conversion_jobs_finished_total", format="emd", status="done"
        ),
        lambda count: count == 1,
    )
    merlin = {"detector": "merlin"}
    assert value(service, "stemcast_frames_ingested_total", **merlin) == 32
    assert value(service, "stemcast_bytes_ingested_total", **merlin) == source.stat().st_size
    assert value(service, "stemcast_frames_published_total", **merlin) == 32
    assert value(service, "stemcast_bytes_published_total", **merlin) == 32 * 32 * 32 * 2
    # One decode per batch; batches are bounded in bytes (4 MiB), so 32 small frames may be one.
    assert value(service, "stemcast_decode_duration_seconds_count", **merlin) >= 1
    # The run has ended: nothing is left to read.
    assert value(service, "stemcast_tail_lag_frames", **merlin) == 0
    assert value(service, "stemcast_tail_lag_bytes", **merlin) == 0
    assert value(service, "stemcast_runs", status="complete") == 1
    assert value(service, "stemcast_conversion_jobs", status="done") == 1
    assert value(service, "stemcast_registry_queue_depth") == 0
    assert (
        value(service, "stemcast_conversion_written_bytes_total", format="emd")
        == output.stat().st_size
    )
    assert value(service, "stemcast_conversion_duration_seconds_count", format="emd") == 1
    assert value(service, "stemcast_output_free_bytes") > 0
    assert value(service, "stemcast_subscribers", channel="data") == 0


def test_a_run_is_read_to_its_end_without_any_client(service: Daemon, tmp_path: Path) -> None:
    [source] = simulate_mib(
        tmp_path / "camera", name="alone", scan_shape=(16, 8), frame_size=32,
        counter_depth=12, hdr_scan_size=True,
    )  # fmt: skip
    merlin = {"detector": "merlin"}
    # No client is connected: the follower reads every frame anyway, at the camera's pace.
    wait_until(lambda: value(service, "stemcast_runs", status="complete"), lambda n: n == 1)
    assert value(service, "stemcast_frames_ingested_total", **merlin) == 128
    assert value(service, "stemcast_bytes_ingested_total", **merlin) == source.stat().st_size
    assert value(service, "stemcast_tail_lag_frames", **merlin) == 0
    assert value(service, "stemcast_tail_lag_seconds", **merlin) == 0
    assert value(service, "stemcast_subscribers", channel="data") == 0
    output = tmp_path / "out" / "camera" / "alone.emd"
    wait_until(lambda: output.exists(), lambda there: there)
