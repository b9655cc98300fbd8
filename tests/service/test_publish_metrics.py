"""The publisher's counters: frames and bytes sent, previews dropped, subscribers connected."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from prometheus_client.parser import text_string_to_metric_families

from stemcast.client import Frame, SeriesEnd, Subscriber
from stemcast.service.live.catalog import FrameFields, SeriesEntry
from stemcast.service.live.publisher import Publisher, SeriesState
from stemcast.service.live.tail import MibSource, series_fields
from stemcast.service.metrics import Metrics
from stemcast.writers.mib import MibWriter


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def subscribers(metrics: Metrics, channel: str) -> float:
    return samples(metrics)[("stemcast_subscribers", (("channel", channel),))]


def run_file(folder: Path, frames: np.ndarray) -> Path:
    path = folder / "run.mib"
    with MibWriter(path, frame_shape=frames.shape[1:], counter_depth=12) as writer:
        writer.write(frames)
    return path


def test_subscribers_follow_clients(tmp_path: Path) -> None:
    async def scenario() -> None:
        metrics = Metrics()
        publisher = Publisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", metrics=metrics)
        publisher.start()
        context = zmq.Context()
        clients = [Subscriber(publisher.data_address) for _ in range(2)]
        viewer = context.socket(zmq.SUB)
        viewer.connect(publisher.preview_address)
        try:
            await wait_for(
                lambda: subscribers(metrics, "data") == 2 and subscribers(metrics, "preview") == 1
            )
            clients[0].close()
            await wait_for(lambda: subscribers(metrics, "data") == 1)
            clients[1].close()
            viewer.close(linger=0)
            await wait_for(
                lambda: subscribers(metrics, "data") == 0 and subscribers(metrics, "preview") == 0
            )
        finally:
            await publisher.close()
            context.term()

    asyncio.run(scenario())


def test_sent_frames_bytes_and_dropped_previews_are_counted(tmp_path: Path) -> None:
    frames = np.arange(10 * 8 * 8, dtype=np.uint16).reshape(10, 8, 8)
    source = MibSource.open(run_file(tmp_path, frames))
    received: list[Any] = []

    def consume(endpoint: str) -> None:
        with Subscriber(endpoint, start=("s", 0), timeout_s=10) as subscriber:
            for event in subscriber:
                received.append(event)
                if isinstance(event, SeriesEnd):
                    return

    async def scenario() -> None:
        metrics = Metrics()
        # One preview a day at most: every frame after the first of the series is left out.
        publisher = Publisher(
            "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", metrics=metrics, preview_max_fps=1 / 86400
        )
        publisher.start()
        state = SeriesState("s", series_fields(source))
        entry = SeriesEntry("s", {"series": "s", **state.fields}, source, lambda _: None)
        try:
            publisher.series(state, entry)
            consumer = threading.Thread(target=consume, args=(publisher.data_address,))
            consumer.start()
            batch = source.read(0, 10)
            publisher.frames(state, entry, batch, FrameFields(times_ns=None, exposure_ms=None))
            publisher.series_end(state, entry, {"status": "complete"})
            await asyncio.to_thread(consumer.join, 10)
            values = samples(metrics)
            merlin = (("detector", "merlin"),)
            assert values[("stemcast_frames_published_total", merlin)] == 10
            assert values[("stemcast_bytes_published_total", merlin)] == 10 * 8 * 8 * 2
            assert values[("stemcast_preview_frames_dropped_total", merlin)] == 9
            assert values[("stemcast_publish_duration_seconds_count", merlin)] >= 1
        finally:
            await publisher.close()

    asyncio.run(scenario())
    shown = [event.data for event in received if isinstance(event, Frame)]
    # Merlin frames come flipped, as the readers return them.
    np.testing.assert_array_equal(np.stack(shown), frames[:, ::-1])
