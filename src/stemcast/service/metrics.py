"""Prometheus metrics of the service, served at ``/metrics`` by the control HTTP server.

Each :class:`Metrics` owns its own registry, so several services in one process never share
(or clash over) a time series. Names follow the Prometheus conventions: a ``stemcast_``
prefix, base units (bytes, seconds) in the name, ``_total`` on counters.

The service reports events with intention-named methods (:meth:`Metrics.ingested`,
:meth:`Metrics.conversion_finished`, ...). Values that another component already knows (runs
and jobs by status in the registry, its queue depth, free space of the output root) are read
when Prometheus scrapes, from callables given to the ``bind_*`` methods, so they are never
stale and cost nothing between scrapes.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stemcast import __version__
from stemcast.errors import ParameterError
from stemcast.service.state.records import JobStatus

__all__ = ["BATCH_BUCKETS_S", "CONVERSION_BUCKETS_S", "ConsumerLag", "Metrics"]

_logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Histogram buckets (s) for decoding or publishing one batch of frames: from a tenth of a
#: millisecond (a few small frames) to seconds (a large batch behind a slow consumer).
BATCH_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

#: Histogram buckets (s) for one conversion job: a small scan takes a second, a large 4D
#: dataset tens of minutes.
CONVERSION_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

#: How a conversion job can end: its series exist from the start.
_JOB_ENDINGS = tuple(status.value for status in JobStatus if status.ended)


@dataclass(frozen=True)
class _Lag:
    """How far the tailer of one run is behind the camera."""

    detector: str
    bytes_behind: int
    frames_behind: int
    seconds_behind: float
    #: ``time.monotonic()`` when the oldest unread data was first seen, if any: the wait
    #: then keeps growing between reports (a tailer blocked on a slow consumer reports
    #: nothing).
    since: float | None = None

    def seconds(self, now: float) -> float:
        """Return the wait at ``now``."""
        if self.since is None:
            return self.seconds_behind
        return max(self.seconds_behind, now - self.since)


@dataclass(frozen=True)
class ConsumerLag:
    """How far one consumer of the runs is behind what the service has read of them.

    Attributes
    ----------
    kind
        ``client`` (a data-channel client) or ``writer`` (a live conversion's output).
    name
        Which one: the client's id, or ``<series>/<target>`` for a writer.
    frames
        Frames read by the service that the consumer has not had.
    nbytes
        Their bytes (decoded pixels).
    seconds
        How long the oldest of them has waited (0 when caught up).
    """

    kind: str
    name: str
    frames: int
    nbytes: int
    seconds: float


def _count(value: int, parameter: str) -> int:
    if value < 0:
        raise ParameterError(f"a count cannot be negative, got {value}", parameter=parameter)
    return value


class Metrics:
    """The service's metrics, in a registry of their own.

    Every metric is an attribute (``frames_ingested``, ``decode_duration``, ...) for code
    that needs the ``prometheus_client`` object itself; the service calls the methods.

    Parameters
    ----------
    detectors, formats, channels, job_endings
        Label values whose series exist from the start, at zero: Prometheus cannot see the
        first increase of a series that appears with it, so a first run, conversion or
        failure would otherwise go unnoticed by ``rate()`` and alerts.
    """

    def __init__(
        self,
        *,
        detectors: Iterable[str] = ("merlin", "tvips"),
        formats: Iterable[str] = ("emd", "blockfile"),
        channels: Iterable[str] = ("data", "preview"),
        job_endings: Iterable[str] = _JOB_ENDINGS,
    ) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.frames_ingested = Counter(
            "stemcast_frames_ingested_total",
            "Frames read and decoded from the camera's files.",
            ["detector"],
            registry=registry,
        )
        self.bytes_ingested = Counter(
            "stemcast_bytes_ingested_total",
            "Bytes read from the camera's files (frame headers and pixels).",
            ["detector"],
            registry=registry,
        )
        self.frames_published = Counter(
            "stemcast_frames_published_total",
            "Frames sent on the lossless data channel.",
            ["detector"],
            registry=registry,
        )
        self.bytes_published = Counter(
            "stemcast_bytes_published_total",
            "Bytes of frame data sent on the lossless data channel.",
            ["detector"],
            registry=registry,
        )
        self.preview_frames_dropped = Counter(
            "stemcast_preview_frames_dropped_total",
            "Frames not sent on the preview channel (rate limit or full queue).",
            ["detector"],
            registry=registry,
        )
        self.decode_duration = Histogram(
            "stemcast_decode_duration_seconds",
            "Time to read and decode one batch of frames.",
            ["detector"],
            buckets=BATCH_BUCKETS_S,
            registry=registry,
        )
        self.publish_duration = Histogram(
            "stemcast_publish_duration_seconds",
            "Time to read one batch of frames back from the files and hand it to one data client.",
            ["detector"],
            buckets=BATCH_BUCKETS_S,
            registry=registry,
        )
        self.conversion_jobs_finished = Counter(
            "stemcast_conversion_jobs_finished_total",
            "Conversion jobs that ended, by output format and final status.",
            ["format", "status"],
            registry=registry,
        )
        self.conversion_duration = Histogram(
            "stemcast_conversion_duration_seconds",
            "Time from the start of a conversion job to its end.",
            ["format"],
            buckets=CONVERSION_BUCKETS_S,
            registry=registry,
        )
        self.conversion_written_bytes = Counter(
            "stemcast_conversion_written_bytes_total",
            "Bytes of converted files written.",
            ["format"],
            registry=registry,
        )
        self.subscribers = Gauge(
            "stemcast_subscribers",
            "Clients of a channel: data clients being served, preview connections open.",
            ["channel"],
            registry=registry,
        )
        self.build_info = Info(
            "stemcast_build", "Versions of the running service.", registry=registry
        )
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self._scraped = _ScrapeTimeMetrics(tuple(detectors))
        registry.register(self._scraped)
        ProcessCollector(registry=registry)
        self._start_at_zero(tuple(detectors), tuple(formats), tuple(channels), tuple(job_endings))

    def _start_at_zero(
        self,
        detectors: tuple[str, ...],
        formats: tuple[str, ...],
        channels: tuple[str, ...],
        job_endings: tuple[str, ...],
    ) -> None:
        by_detector = (
            self.frames_ingested,
            self.bytes_ingested,
            self.frames_published,
            self.bytes_published,
            self.preview_frames_dropped,
            self.decode_duration,
            self.publish_duration,
        )
        for metric in by_detector:
            for detector in detectors:
                metric.labels(detector)
        for fmt in formats:
            self.conversion_duration.labels(fmt)
            self.conversion_written_bytes.labels(fmt)
            for status in job_endings:
                self.conversion_jobs_finished.labels(fmt, status)
        for channel in channels:
            self.subscribers.labels(channel)

    def ingested(self, detector: str, frames: int, nbytes: int) -> None:
        """Count frames read and decoded from a run's files.

        Parameters
        ----------
        detector
            The camera (``merlin``, ``tvips``).
        frames
            Frames in the batch.
        nbytes
            Bytes read for them from the files (headers and pixels).

        Raises
        ------
        ParameterError
            When a count is negative.
        """
        self.frames_ingested.labels(detector).inc(_count(frames, "frames"))
        self.bytes_ingested.labels(detector).inc(_count(nbytes, "nbytes"))

    def published(self, detector: str, frames: int, nbytes: int) -> None:
        """Count frames sent on the data channel.

        Parameters
        ----------
        detector
            The camera.
        frames
            Frames sent.
        nbytes
            Bytes of frame data sent.

        Raises
        ------
        ParameterError
            When a count is negative.
        """
        self.frames_published.labels(detector).inc(_count(frames, "frames"))
        self.bytes_published.labels(detector).inc(_count(nbytes, "nbytes"))

    def preview_dropped(self, detector: str, frames: int) -> None:
        """Count frames left out of the preview channel.

        Parameters
        ----------
        detector
            The camera.
        frames
            Frames not previewed.

        Raises
        ------
        ParameterError
            When the count is negative.
        """
        self.preview_frames_dropped.labels(detector).inc(_count(frames, "frames"))

    def decode_latency(self, detector: str, seconds: float) -> None:
        """Record the time taken to read and decode one batch.

        Parameters
        ----------
        detector
            The camera.
        seconds
            Duration of the read and decode.
        """
        self.decode_duration.labels(detector).observe(seconds)

    def publish_latency(self, detector: str, seconds: float) -> None:
        """Record the time taken to read one batch back and hand it to one data client.

        Parameters
        ----------
        detector
            The camera.
        seconds
            Duration of the read and the send.
        """
        self.publish_duration.labels(detector).observe(seconds)

    def tail_lag(
        self,
        run: str,
        detector: str,
        bytes_behind: int,
        frames_behind: int,
        seconds_behind: float,
        *,
        since: float | None = None,
    ) -> None:
        """Record how far a run's tailer is behind the camera.

        Runs are not labels (a label per run would create a time series per acquisition):
        the lag is exported per detector, summing bytes and frames over the runs being
        followed and taking the largest delay.

        Parameters
        ----------
        run
            Identifies the run until :meth:`tail_finished` (its path or series id).
        detector
            The camera.
        bytes_behind
            Bytes written by the camera and not yet read.
        frames_behind
            Complete frames written and not yet published.
        seconds_behind
            How long the oldest unread data has waited (0 when caught up).
        since
            ``time.monotonic()`` when the oldest unread data was first seen: the wait is then
            measured when scraped, so it keeps growing while the tailer is blocked.

        Raises
        ------
        ParameterError
            When a count is negative.
        """
        lag = _Lag(
            detector,
            _count(bytes_behind, "bytes_behind"),
            _count(frames_behind, "frames_behind"),
            seconds_behind,
            since,
        )
        self._scraped.set_lag(run, lag)

    def tail_finished(self, run: str) -> None:
        """Forget the lag of a run that ended.

        Parameters
        ----------
        run
            The identifier given to :meth:`tail_lag`.
        """
        self._scraped.set_lag(run, None)

    def conversion_finished(self, fmt: str, status: str, seconds: float, nbytes: int) -> None:
        """Count a conversion job that ended.

        Parameters
        ----------
        fmt
            The output format (``emd``, ``blockfile``).
        status
            Its final status (``done``, ``failed``, ``cancelled``, ...).
        seconds
            Time from its start to its end.
        nbytes
            Bytes of the file it wrote (0 when it wrote none).

        Raises
        ------
        ParameterError
            When ``nbytes`` is negative.
        """
        self.conversion_jobs_finished.labels(fmt, status).inc()
        self.conversion_duration.labels(fmt).observe(seconds)
        self.conversion_written_bytes.labels(fmt).inc(_count(nbytes, "nbytes"))

    def subscriber_connected(self, channel: str) -> None:
        """Count a client of a channel (a data client placed, a preview connection accepted).

        Parameters
        ----------
        channel
            ``data`` or ``preview``.
        """
        self.subscribers.labels(channel).inc()

    def subscriber_disconnected(self, channel: str) -> None:
        """Count a connection of a channel that closed.

        Parameters
        ----------
        channel
            ``data`` or ``preview``.
        """
        self.subscribers.labels(channel).dec()

    def bind_runs(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Read the number of runs by status when scraped.

        Parameters
        ----------
        counts
            Returns ``{status: runs}`` (e.g. from the registry).
        """
        self._scraped.runs = counts

    def bind_conversion_jobs(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Read the number of conversion jobs by current status when scraped.

        Parameters
        ----------
        counts
            Returns ``{status: jobs}``.
        """
        self._scraped.conversion_jobs = counts

    def bind_registry_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read the number of registry operations waiting when scraped.

        Parameters
        ----------
        depth
            Returns the number of operations waiting.
        """
        self._scraped.registry_queue_depth = depth

    def bind_output_root(self, path: str | os.PathLike[str]) -> None:
        """Report the free space of the folder conversions write to, measured when scraped.

        Parameters
        ----------
        path
            The output root.
        """
        self._scraped.output_root = Path(path)

    def bind_consumers(self, lags: Callable[[], Iterable[ConsumerLag]]) -> None:
        """Read how far each consumer (data client, live writer) is behind when scraped.

        Measured at each scrape, the lag keeps growing while a consumer stalls, and a
        consumer that has gone has no series any more.

        Parameters
        ----------
        lags
            Returns the lag of every consumer there is now.
        """
        self._scraped.consumers = lags

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """Encode every metric for a scrape.

        The callables given to the ``bind_*`` methods are called here, in the caller's
        thread; one that fails leaves its samples out (and logs why) instead of failing the
        scrape.

        Parameters
        ----------
        accept
            The request's ``Accept`` header: OpenMetrics when it asks for it, else the
            Prometheus text format.

        Returns
        -------
        body : bytes
            The exposition.
        content_type : str
            Its ``Content-Type`` (with a charset: give it to aiohttp as a header, not as
            ``content_type=``).
        """
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class _ScrapeTimeMetrics(Collector):
    """Gauges whose values are read when Prometheus scrapes."""

    def __init__(self, detectors: tuple[str, ...]) -> None:
        self.detectors = detectors
        self.runs: Callable[[], Mapping[str, int]] | None = None
        self.conversion_jobs: Callable[[], Mapping[str, int]] | None = None
        self.registry_queue_depth: Callable[[], int] | None = None
        self.output_root: Path | None = None
        self.consumers: Callable[[], Iterable[ConsumerLag]] | None = None
        self._lags: dict[str, _Lag] = {}
        self._lock = threading.Lock()

    def set_lag(self, run: str, lag: _Lag | None) -> None:
        """Record (or, with ``None``, forget) the lag of a run; callable from any thread."""
        with self._lock:
            if lag is None:
                self._lags.pop(run, None)
            else:
                self._lags[run] = lag

    def describe(self) -> Iterator[Metric]:
        """Families without samples: names for the registry, no callable is called."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """Families with the current values."""
        families = self._families()
        runs, jobs, lag_bytes, lag_frames, lag_seconds, depth, free, *consumer = families
        _by_status(runs, self.runs)
        _by_status(jobs, self.conversion_jobs)
        if self.registry_queue_depth is not None:
            value = _read(self.registry_queue_depth, "registry queue depth")
            if value is not None:
                depth.add_metric([], value)
        root = self.output_root
        if root is not None:
            usage = _read(lambda: shutil.disk_usage(root), "free space of the output root")
            if usage is not None:
                free.add_metric([], usage.free)
        for detector, (nbytes, frames, seconds) in sorted(self._lag_by_detector().items()):
            lag_bytes.add_metric([detector], nbytes)
            lag_frames.add_metric([detector], frames)
            lag_seconds.add_metric([detector], seconds)
        self._consumer_lags(*consumer)
        return iter(families)

    def _consumer_lags(
        self,
        frames: GaugeMetricFamily,
        nbytes: GaugeMetricFamily,
        seconds: GaugeMetricFamily,
    ) -> None:
        if self.consumers is None:
            return
        consumers = self.consumers
        lags = _read(lambda: list(consumers()), "lag of the consumers") or []
        for lag in sorted(lags, key=lambda lag: (lag.kind, lag.name)):
            labels = [lag.kind, lag.name]
            frames.add_metric(labels, lag.frames)
            nbytes.add_metric(labels, lag.nbytes)
            seconds.add_metric(labels, lag.seconds)

    def _lag_by_detector(self) -> dict[str, tuple[int, int, float]]:
        now = time.monotonic()
        with self._lock:
            lags = list(self._lags.values())
        # Known detectors are caught up (0) when none of their runs is followed.
        totals: dict[str, tuple[int, int, float]] = dict.fromkeys(self.detectors, (0, 0, 0.0))
        for lag in lags:
            nbytes, frames, seconds = totals.get(lag.detector, (0, 0, 0.0))
            totals[lag.detector] = (
                nbytes + lag.bytes_behind,
                frames + lag.frames_behind,
                max(seconds, lag.seconds(now)),
            )
        return totals

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("stemcast_runs", "Runs known, by status.", labels=["status"]),
            GaugeMetricFamily(
                "stemcast_conversion_jobs",
                "Conversion jobs by current status.",
                labels=["status"],
            ),
            GaugeMetricFamily(
                "stemcast_tail_lag_bytes",
                "Bytes written by the camera and not yet read, summed over the runs followed.",
                labels=["detector"],
            ),
            GaugeMetricFamily(
                "stemcast_tail_lag_frames",
                "Complete frames written and not yet published, summed over the runs followed.",
                labels=["detector"],
            ),
            GaugeMetricFamily(
                "stemcast_tail_lag_seconds",
                "Age of the oldest unread data, the largest over the runs followed.",
                labels=["detector"],
            ),
            GaugeMetricFamily(
                "stemcast_registry_queue_depth",
                "Conversion jobs queued in the registry, waiting for a worker.",
            ),
            GaugeMetricFamily(
                "stemcast_output_free_bytes", "Free space available to stemcast in the output root."
            ),
            GaugeMetricFamily(
                "stemcast_consumer_lag_frames",
                "Frames read from the camera's files that a consumer has not had yet "
                "(kind: client or writer).",
                labels=["kind", "name"],
            ),
            GaugeMetricFamily(
                "stemcast_consumer_lag_bytes",
                "Bytes of the frames a consumer has not had yet (decoded pixels).",
                labels=["kind", "name"],
            ),
            GaugeMetricFamily(
                "stemcast_consumer_lag_seconds",
                "How long the oldest frame a consumer has not had has been readable.",
                labels=["kind", "name"],
            ),
        )


def _by_status(family: GaugeMetricFamily, counts: Callable[[], Mapping[str, int]] | None) -> None:
    if counts is None:
        return
    values = _read(counts, family.name)
    for status, count in sorted((values or {}).items()):
        family.add_metric([status], count)


def _read(source: Callable[[], _T], what: str) -> _T | None:
    """Call ``source``; a failure leaves its sample out instead of failing the whole scrape."""
    try:
        return source()
    except Exception as error:
        _logger.warning("metrics: could not read the %s: %s", what, error)
        return None
