"""The publisher's counters: frames and bytes sent, previews dropped, subscribers connected."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import zmq
from prometheus_client.parser import text_string_to_metric_families

from stemcast.batch import FrameBatch
from stemcast.service.live.publisher import Publisher, SeriesState
from stemcast.service.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def subscribers(metrics: Metrics, channel: str) -> float:
    return samples(metrics)[("stemcast_subscribers", (("channel", channel),))]


def test_subscribers_follow_connections() -> None:
    metrics = Metrics()
    publisher = Publisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", metrics=metrics)
    context = zmq.Context()
    try:
        pulls = [context.socket(zmq.PULL) for _ in range(2)]
        for pull in pulls:
            pull.connect(publisher.data_address)
        viewer = context.socket(zmq.SUB)
        viewer.connect(publisher.preview_address)
        wait_for(lambda: subscribers(metrics, "data") == 2 and subscribers(metrics, "preview") == 1)
        pulls[0].close(linger=0)
        wait_for(lambda: subscribers(metrics, "data") == 1)
        pulls[1].close(linger=0)
        viewer.close(linger=0)
        wait_for(lambda: subscribers(metrics, "data") == 0 and subscribers(metrics, "preview") == 0)
    finally:
        publisher.close()
        context.term()


def test_sent_frames_bytes_and_dropped_previews_are_counted() -> None:
    metrics = Metrics()
    # One preview a day at most: every frame after the first of the series is left out.
    publisher = Publisher(
        "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", metrics=metrics, preview_max_fps=1 / 86400
    )
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.connect(publisher.data_address)
    frames = np.arange(10 * 8 * 8, dtype=np.uint16).reshape(10, 8, 8)
    state = SeriesState("s", {"detector": "merlin", "shape": [8, 8], "dtype": "<u2"})
    try:
        asyncio.run(publisher.frames(state, FrameBatch(0, frames, None), [{} for _ in range(10)]))
        for _ in range(10):
            pull.recv_multipart()
        values = samples(metrics)
        merlin = (("detector", "merlin"),)
        assert values[("stemcast_frames_published_total", merlin)] == 10
        assert values[("stemcast_bytes_published_total", merlin)] == 10 * 8 * 8 * 2
        assert values[("stemcast_preview_frames_dropped_total", merlin)] == 9
        assert values[("stemcast_publish_duration_seconds_count", merlin)] == 1
    finally:
        pull.close(linger=0)
        publisher.close()
        context.term()
