"""The service's metrics, read back from the exposition Prometheus scrapes."""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from stemcast.errors import ParameterError
from stemcast.service.metrics import ConsumerLag, Metrics

Families = dict[str, tuple[str, list[Sample]]]


def scrape(metrics: Metrics) -> Families:
    """Name -> (type, samples) of every family in the text exposition."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        family.name: (family.type, family.samples)
        for family in text_string_to_metric_families(body.decode())
    }


def value(families: Families, sample: str, **labels: str) -> float | None:
    """The value of the sample with exactly these labels, None when absent."""
    for _, samples in families.values():
        for found in samples:
            if found.name == sample and found.labels == labels:
                return found.value
    return None


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


EXPECTED_FAMILIES = {
    "stemcast_frames_ingested": ("counter", ["detector"]),
    "stemcast_bytes_ingested": ("counter", ["detector"]),
    "stemcast_frames_published": ("counter", ["detector"]),
    "stemcast_bytes_published": ("counter", ["detector"]),
    "stemcast_preview_frames_dropped": ("counter", ["detector"]),
    "stemcast_tail_lag_bytes": ("gauge", ["detector"]),
    "stemcast_tail_lag_frames": ("gauge", ["detector"]),
    "stemcast_tail_lag_seconds": ("gauge", ["detector"]),
    "stemcast_decode_duration_seconds": ("histogram", ["detector"]),
    "stemcast_publish_duration_seconds": ("histogram", ["detector"]),
    "stemcast_runs": ("gauge", ["status"]),
    "stemcast_conversion_jobs": ("gauge", ["status"]),
    "stemcast_conversion_jobs_finished": ("counter", ["format", "status"]),
    "stemcast_conversion_duration_seconds": ("histogram", ["format"]),
    "stemcast_conversion_written_bytes": ("counter", ["format"]),
    "stemcast_registry_queue_depth": ("gauge", []),
    "stemcast_output_free_bytes": ("gauge", []),
    "stemcast_subscribers": ("gauge", ["channel"]),
    "stemcast_consumer_lag_frames": ("gauge", ["kind", "name"]),
    "stemcast_consumer_lag_bytes": ("gauge", ["kind", "name"]),
    "stemcast_consumer_lag_seconds": ("gauge", ["kind", "name"]),
    "stemcast_build_info": ("gauge", ["python", "version"]),
}


def test_every_metric_of_the_issue_is_exposed_with_its_type_and_labels() -> None:
    metrics = Metrics()
    metrics.tail_lag("run", "merlin", 1, 1, 1.0)
    metrics.bind_runs(lambda: {"complete": 1})
    metrics.bind_conversion_jobs(lambda: {"queued": 1})
    metrics.bind_registry_queue_depth(lambda: 0)
    metrics.bind_output_root(Path.cwd())
    metrics.bind_consumers(lambda: [ConsumerLag("client", "0a1b", 1, 2, 0.5)])
    families = scrape(metrics)
    for name, (kind, labels) in EXPECTED_FAMILIES.items():
        assert name in families, name
        assert families[name][0] == kind, name
        main = [s for s in families[name][1] if not s.name.endswith("_created")]
        assert main, f"{name} has no sample"
        assert {tuple(sorted(set(s.labels) - {"le"})) for s in main} == {tuple(labels)}, name


def test_counters_end_in_total_and_every_stemcast_metric_is_prefixed() -> None:
    body = Metrics().render()[0].decode()
    typed = [line.split()[2:4] for line in body.splitlines() if line.startswith("# TYPE")]
    for name, kind in typed:
        assert name.startswith(("stemcast_", "process_")), name
        if kind == "counter":
            assert name.endswith("_total"), name


def test_ingested_and_published_frames_and_bytes_add_up_per_detector() -> None:
    metrics = Metrics()
    metrics.ingested("merlin", 16, 16 * 65_920)
    metrics.ingested("merlin", 4, 4 * 65_920)
    metrics.ingested("tvips", 2, 2 * 131_072)
    metrics.published("merlin", 20, 20 * 65_536)
    families = scrape(metrics)
    assert value(families, "stemcast_frames_ingested_total", detector="merlin") == 20
    assert value(families, "stemcast_bytes_ingested_total", detector="merlin") == 20 * 65_920
    assert value(families, "stemcast_frames_ingested_total", detector="tvips") == 2
    assert value(families, "stemcast_frames_published_total", detector="merlin") == 20
    assert value(families, "stemcast_bytes_published_total", detector="merlin") == 20 * 65_536
    assert value(families, "stemcast_frames_published_total", detector="tvips") == 0


def test_series_of_known_detectors_formats_and_channels_exist_at_zero_before_any_event() -> None:
    families = scrape(Metrics(detectors=["merlin"], formats=["emd"], channels=["data"]))
    assert value(families, "stemcast_frames_ingested_total", detector="merlin") == 0
    assert value(families, "stemcast_preview_frames_dropped_total", detector="merlin") == 0
    assert value(families, "stemcast_decode_duration_seconds_count", detector="merlin") == 0
    assert value(families, "stemcast_conversion_written_bytes_total", format="emd") == 0
    assert (
        value(families, "stemcast_conversion_jobs_finished_total", format="emd", status="failed")
        == 0
    )
    assert value(families, "stemcast_subscribers", channel="data") == 0
    assert value(families, "stemcast_frames_ingested_total", detector="tvips") is None


def test_preview_drops_are_counted() -> None:
    metrics = Metrics()
    metrics.preview_dropped("tvips", 7)
    metrics.preview_dropped("tvips", 3)
    assert value(scrape(metrics), "stemcast_preview_frames_dropped_total", detector="tvips") == 10


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.ingested("merlin", -1, 0),
        lambda m: m.ingested("merlin", 1, -5),
        lambda m: m.published("merlin", -1, 0),
        lambda m: m.preview_dropped("merlin", -2),
        lambda m: m.tail_lag("run", "merlin", -1, 0, 0.0),
        lambda m: m.conversion_finished("emd", "done", 1.0, -1),
    ],
)
def test_negative_counts_are_refused_naming_the_parameter(
    call: Callable[[Metrics], None],
) -> None:
    metrics = Metrics()
    with pytest.raises(ParameterError, match=r"parameter '[a-z_]+'"):
        call(metrics)


def test_decode_latency_histogram_has_millisecond_buckets_and_counts_cumulatively() -> None:
    metrics = Metrics()
    for seconds in (0.0004, 0.003, 0.003, 0.2):
        metrics.decode_latency("merlin", seconds)
    metrics.publish_latency("merlin", 0.0008)
    families = scrape(metrics)
    buckets = {
        float(s.labels["le"]): s.value
        for s in families["stemcast_decode_duration_seconds"][1]
        if s.name.endswith("_bucket") and s.labels["detector"] == "merlin"
    }
    assert {0.0005, 0.001, 0.005, 0.01, 0.1}.issubset(buckets)
    assert buckets[0.0005] == 1
    assert buckets[0.001] == 1
    assert buckets[0.005] == 3
    assert buckets[0.1] == 3
    assert buckets[float("inf")] == 4
    assert value(families, "stemcast_decode_duration_seconds_count", detector="merlin") == 4
    assert value(families, "stemcast_decode_duration_seconds_sum", detector="merlin") == (
        pytest.approx(0.2064)
    )
    assert value(families, "stemcast_publish_duration_seconds_count", detector="merlin") == 1


def test_conversion_end_counts_the_job_its_duration_and_bytes() -> None:
    metrics = Metrics()
    metrics.conversion_finished("emd", "done", 42.0, 1_000_000)
    metrics.conversion_finished("emd", "failed", 3.0, 0)
    metrics.conversion_finished("blockfile", "done", 900.0, 5_000)
    families = scrape(metrics)
    assert (
        value(families, "stemcast_conversion_jobs_finished_total", format="emd", status="done") == 1
    )
    assert (
        value(families, "stemcast_conversion_jobs_finished_total", format="emd", status="failed")
        == 1
    )
    assert value(families, "stemcast_conversion_written_bytes_total", format="emd") == 1_000_000
    assert value(families, "stemcast_conversion_written_bytes_total", format="blockfile") == 5_000
    assert value(families, "stemcast_conversion_duration_seconds_count", format="emd") == 2
    assert value(families, "stemcast_conversion_duration_seconds_sum", format="emd") == 45.0
    # Conversions last seconds to minutes: 900 s falls between buckets, not in +Inf only.
    assert (
        value(
            families, "stemcast_conversion_duration_seconds_bucket", format="blockfile", le="600.0"
        )
        == 0
    )
    assert (
        value(
            families, "stemcast_conversion_duration_seconds_bucket", format="blockfile", le="1800.0"
        )
        == 1
    )


def test_tail_lag_sums_bytes_and_frames_and_keeps_the_longest_wait_per_detector() -> None:
    metrics = Metrics()
    metrics.tail_lag("/camera/a.mib", "merlin", 1000, 3, 0.5)
    metrics.tail_lag("/camera/b.mib", "merlin", 200, 1, 2.0)
    metrics.tail_lag("/camera/c_000.tvips", "tvips", 0, 0, 0.0)
    families = scrape(metrics)
    assert value(families, "stemcast_tail_lag_bytes", detector="merlin") == 1200
    assert value(families, "stemcast_tail_lag_frames", detector="merlin") == 4
    assert value(families, "stemcast_tail_lag_seconds", detector="merlin") == 2.0
    assert value(families, "stemcast_tail_lag_bytes", detector="tvips") == 0


def test_tail_lag_of_a_run_is_replaced_by_its_next_report_and_forgotten_when_it_ends() -> None:
    metrics = Metrics()
    metrics.tail_lag("a", "merlin", 1000, 3, 0.5)
    metrics.tail_lag("b", "merlin", 200, 1, 2.0)
    metrics.tail_lag("b", "merlin", 0, 0, 0.0)
    assert value(scrape(metrics), "stemcast_tail_lag_seconds", detector="merlin") == 0.5
    metrics.tail_finished("a")
    assert value(scrape(metrics), "stemcast_tail_lag_bytes", detector="merlin") == 0
    metrics.tail_finished("b")
    # No run followed: the detector is caught up.
    assert value(scrape(metrics), "stemcast_tail_lag_bytes", detector="merlin") == 0
    assert value(scrape(metrics), "stemcast_tail_lag_seconds", detector="merlin") == 0


def test_tail_lag_reports_from_threads_do_not_break_a_scrape() -> None:
    metrics = Metrics()
    stop = threading.Event()

    def report(worker: int) -> None:
        index = 0
        while not stop.is_set():
            metrics.tail_lag(f"{worker}-{index % 50}", "merlin", 1, 1, 0.1)
            metrics.tail_finished(f"{worker}-{(index + 25) % 50}")
            index += 1

    threads = [threading.Thread(target=report, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(50):
            families = scrape(metrics)
            frames = value(families, "stemcast_tail_lag_frames", detector="merlin")
            assert frames is None or 0 <= frames <= 100
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def test_bound_counts_are_read_at_each_scrape() -> None:
    metrics = Metrics()
    runs = {"following": 1}
    jobs = {"queued": 2, "running": 1}
    depth = [5]
    metrics.bind_runs(lambda: runs)
    metrics.bind_conversion_jobs(lambda: jobs)
    metrics.bind_registry_queue_depth(lambda: depth[0])
    families = scrape(metrics)
    assert value(families, "stemcast_runs", status="following") == 1
    assert value(families, "stemcast_conversion_jobs", status="queued") == 2
    assert value(families, "stemcast_registry_queue_depth") == 5
    runs.update(following=0, complete=3)
    jobs.update(queued=0, running=0, done=3)
    depth[0] = 0
    families = scrape(metrics)
    assert value(families, "stemcast_runs", status="complete") == 3
    assert value(families, "stemcast_runs", status="following") == 0
    assert value(families, "stemcast_conversion_jobs", status="done") == 3
    assert value(families, "stemcast_registry_queue_depth") == 0


def test_consumer_lags_are_read_at_each_scrape_and_gone_consumers_have_no_series() -> None:
    metrics = Metrics()
    consumers = [
        ConsumerLag("client", "0a1b", 249, 249 * 8192, 3.5),
        ConsumerLag("writer", "run-1/emd", 0, 0, 0.0),
    ]
    metrics.bind_consumers(lambda: consumers)
    families = scrape(metrics)
    assert value(families, "stemcast_consumer_lag_frames", kind="client", name="0a1b") == 249
    assert value(families, "stemcast_consumer_lag_bytes", kind="client", name="0a1b") == (
        249 * 8192
    )
    assert value(families, "stemcast_consumer_lag_seconds", kind="client", name="0a1b") == 3.5
    assert value(families, "stemcast_consumer_lag_frames", kind="writer", name="run-1/emd") == 0
    consumers[:] = consumers[1:]
    families = scrape(metrics)
    assert value(families, "stemcast_consumer_lag_frames", kind="client", name="0a1b") is None
    assert len(families["stemcast_consumer_lag_seconds"][1]) == 1


def test_unbound_scrape_time_gauges_have_no_sample() -> None:
    families = scrape(Metrics())
    assert families["stemcast_runs"][1] == []
    assert families["stemcast_consumer_lag_frames"][1] == []
    assert families["stemcast_registry_queue_depth"][1] == []
    assert families["stemcast_output_free_bytes"][1] == []


def test_a_failing_source_leaves_its_sample_out_and_the_rest_of_the_scrape_intact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> dict[str, int]:
        raise OSError("database is locked")

    def no_consumers() -> list[ConsumerLag]:
        raise RuntimeError("dictionary changed size during iteration")

    metrics = Metrics()
    metrics.bind_runs(broken)
    metrics.bind_consumers(no_consumers)
    metrics.bind_registry_queue_depth(lambda: 4)
    families = scrape(metrics)
    assert families["stemcast_runs"][1] == []
    assert families["stemcast_consumer_lag_frames"][1] == []
    assert value(families, "stemcast_registry_queue_depth") == 4
    assert "database is locked" in caplog.text


def test_output_free_bytes_is_the_space_left_to_unprivileged_users(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.bind_output_root(tmp_path)
    before = free_bytes(tmp_path)
    reported = value(scrape(metrics), "stemcast_output_free_bytes")
    after = free_bytes(tmp_path)
    assert reported is not None
    slack = 64 * 2**20  # other programs write to the same disk meanwhile
    assert min(before, after) - slack <= reported <= max(before, after) + slack


def test_output_free_bytes_is_absent_while_the_output_root_does_not_exist(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.bind_output_root(tmp_path / "not yet mounted")
    assert value(scrape(metrics), "stemcast_output_free_bytes") is None


def test_subscribers_follow_connections_and_disconnections_per_channel() -> None:
    metrics = Metrics()
    metrics.subscriber_connected("data")
    metrics.subscriber_connected("preview")
    metrics.subscriber_connected("preview")
    metrics.subscriber_disconnected("preview")
    families = scrape(metrics)
    assert value(families, "stemcast_subscribers", channel="data") == 1
    assert value(families, "stemcast_subscribers", channel="preview") == 1


def test_build_info_names_the_installed_version() -> None:
    families = scrape(Metrics())
    info = value(
        families,
        "stemcast_build_info",
        version=version("stemcast"),
        python=platform.python_version(),
    )
    assert info == 1


def test_two_services_in_one_process_count_separately() -> None:
    first, second = Metrics(), Metrics()
    first.ingested("merlin", 5, 50)
    second.ingested("merlin", 1, 10)
    assert value(scrape(first), "stemcast_frames_ingested_total", detector="merlin") == 5
    assert value(scrape(second), "stemcast_frames_ingested_total", detector="merlin") == 1


def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    metrics = Metrics()
    metrics.ingested("merlin", 2, 20)
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert 'stemcast_frames_ingested_total{detector="merlin"} 2.0' in text
