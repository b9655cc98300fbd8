"""ZeroMQ publishing: a lossless PUSH data channel and a throttled PUB preview channel.

The data channel's send waits when its high-water mark is reached, which stops the run's
tailer: the file on disk is the buffer, so a slow consumer costs latency, never frames. Its
sends happen in a worker thread, a batch at a time, with plain blocking sends: the event loop
never waits on a full queue, and the round trip through the event loop that awaiting each
send with ``zmq.asyncio`` costs is paid once per batch instead of once per frame. The
preview channel never waits: PUB drops at its (low) high-water mark, and a per-series rate
limit keeps it to what a viewer can draw.

When the service exports metrics, the publisher counts what it sends and drops, times each
batch's send, and follows the connections of both sockets through ZeroMQ socket monitors
(accepted minus disconnected TCP peers: the subscribers ZeroMQ can see).

Frame buffers go to the data channel without a copy (``copy=False``): each batch is a fresh
array that nothing writes to again, and pyzmq keeps a reference to it until libzmq has sent
it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from stemcast.batch import FrameBatch
from stemcast.protocol import FRAME, SERIES, SERIES_END, encode_header
from stemcast.service.metrics import Metrics

__all__ = ["Publisher", "PublisherClosed", "SeriesState"]

#: How often (ms) a send blocked on a full data channel checks whether the service stops.
_SEND_TIMEOUT_MS = 100


class PublisherClosed(Exception):
    """The service stopped while a send waited for a consumer."""


_logger = logging.getLogger(__name__)


class SeriesState:
    """What the publisher keeps per series: its id and the last preview time."""

    def __init__(self, series: str, fields: dict[str, Any]) -> None:
        self.series = series
        self.fields = fields
        self.frames_sent = 0
        self.last_preview = float("-inf")


class Publisher:
    """The two sockets of the service and their counters.

    Parameters
    ----------
    data_endpoint, preview_endpoint
        Bind addresses, e.g. ``tcp://127.0.0.1:5555`` (port 0 picks a free port; see
        :attr:`data_address`).
    data_hwm, preview_hwm
        High-water marks in messages.
    preview_max_fps
        Most preview frames per second per series.
    metrics
        Where to count sent and dropped frames, send times and connected subscribers.
    """

    def __init__(
        self,
        data_endpoint: str,
        preview_endpoint: str,
        *,
        data_hwm: int = 64,
        preview_hwm: int = 2,
        preview_max_fps: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.context = zmq.Context()
        self.data = self.context.socket(zmq.PUSH)
        self.data.sndhwm = data_hwm
        self.data.sndtimeo = _SEND_TIMEOUT_MS
        self.data.linger = 0
        self._order = asyncio.Lock()
        self._sending = threading.Lock()
        self._closing = threading.Event()
        self.preview = self.context.socket(zmq.PUB)
        self.preview.sndhwm = preview_hwm
        self.preview.linger = 0
        self.data.bind(data_endpoint)
        self.preview.bind(preview_endpoint)
        self.preview_interval = 1.0 / preview_max_fps
        self.sequence = 0
        self.data_messages = 0
        self.preview_messages = 0
        self._monitor: _ConnectionMonitor | None = None
        if metrics is not None:
            self._monitor = _ConnectionMonitor(
                {"data": self.data, "preview": self.preview}, metrics
            )

    @property
    def data_address(self) -> str:
        """The data channel's bound address (with the port chosen when 0 was asked)."""
        return str(self.data.getsockopt_string(zmq.LAST_ENDPOINT))

    @property
    def preview_address(self) -> str:
        """The preview channel's bound address."""
        return str(self.preview.getsockopt_string(zmq.LAST_ENDPOINT))

    async def _data(self, messages: list[tuple[dict[str, Any], Any]]) -> None:
        """Send messages (header, frame or ``None``) in order from a thread, numbering them."""
        async with self._order:
            encoded = []
            for header, frame in messages:
                header["message"] = self.data_messages
                self.data_messages += 1
                first = encode_header(header)
                encoded.append([first] if frame is None else [first, frame])
            await asyncio.to_thread(self._send_blocking, encoded)

    def _send_blocking(self, messages: list[list[Any]]) -> None:
        with self._sending:
            for parts in messages:
                while True:
                    try:
                        self.data.send_multipart(parts, copy=False)
                        break
                    except zmq.Again:
                        if self._closing.is_set():
                            raise PublisherClosed("no consumer took the data") from None

    def _preview(self, header: dict[str, Any], *parts: Any) -> bool:
        """Send a message on the preview channel if it has room; return whether it went."""
        header["message"] = self.preview_messages
        self.preview_messages += 1
        try:
            self.preview.send_multipart([encode_header(header), *parts], flags=zmq.NOBLOCK)
        except zmq.Again:
            _logger.debug("preview message %d dropped", header["message"])
            return False
        return True

    async def series(self, state: SeriesState, nav: dict[str, Any]) -> None:
        """Announce a series on both channels.

        Parameters
        ----------
        state
            The series.
        nav
            ``nav_shape`` and ``nav_evidence`` known at the start (``None`` when unknown).
        """
        header = {"htype": SERIES, "series": state.series, **state.fields, **nav}
        self._preview(dict(header))
        await self._data([(header, None)])

    async def frames(
        self,
        state: SeriesState,
        batch: FrameBatch,
        per_frame: list[dict[str, Any]],
    ) -> None:
        """Publish the frames of a batch: every one on the data channel, some as previews.

        Parameters
        ----------
        state
            The series they belong to.
        batch
            Decoded frames.
        per_frame
            Header fields of each frame (timestamp, exposure, scan position).
        """
        frames = batch.frames
        common = {
            "htype": FRAME,
            "series": state.series,
            "shape": state.fields["shape"],
            "dtype": state.fields["dtype"],
        }
        messages = []
        previewed = 0
        for offset, extra in enumerate(per_frame):
            header = {**common, "frame": batch.start + offset, "sequence": self.sequence, **extra}
            self.sequence += 1
            frame = frames[offset]
            now = time.monotonic()
            if now - state.last_preview >= self.preview_interval:
                state.last_preview = now
                previewed += self._preview(dict(header), frame)
            messages.append((header, frame))
        started = time.perf_counter()
        await self._data(messages)
        state.frames_sent += len(per_frame)
        if self.metrics is not None:
            detector = str(state.fields.get("detector", "unknown"))
            self.metrics.publish_latency(detector, time.perf_counter() - started)
            self.metrics.published(detector, len(per_frame), frames[: len(per_frame)].nbytes)
            self.metrics.preview_dropped(detector, len(per_frame) - previewed)

    async def series_end(self, state: SeriesState, fields: dict[str, Any]) -> None:
        """Close a series on both channels.

        Parameters
        ----------
        state
            The series.
        fields
            Status, reason and scan shape.
        """
        header = {
            "htype": SERIES_END,
            "series": state.series,
            "frames": state.frames_sent,
            **fields,
        }
        self._preview(dict(header))
        await self._data([(header, None)])

    def stop_waiting(self) -> None:
        """Make sends blocked on an absent consumer give up (:class:`PublisherClosed`)."""
        self._closing.set()

    def close(self, linger_s: float = 0.0) -> None:
        """Close both sockets and the context.

        Parameters
        ----------
        linger_s
            Time given to the data channel to deliver what is queued; previews are dropped.
        """
        self.stop_waiting()
        if self._monitor is not None:
            self._monitor.stop()
        with self._sending:
            self.data.close(linger=round(linger_s * 1000))
        self.preview.close(linger=0)
        self.context.term()


class _ConnectionMonitor:
    """Count the peers connected to each socket from ZeroMQ's monitor events, in a thread."""

    _EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
    _POLL_MS = 100

    def __init__(self, sockets: dict[str, zmq.Socket[bytes]], metrics: Metrics) -> None:
        self._sockets = list(sockets.values())
        self._monitors = {
            channel: socket.get_monitor_socket(self._EVENTS) for channel, socket in sockets.items()
        }
        self._metrics = metrics
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zmq-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        channels = {}
        for channel, monitor in self._monitors.items():
            poller.register(monitor, zmq.POLLIN)
            channels[monitor] = channel
        while not self._stopping.is_set():
            for monitor, _ in poller.poll(self._POLL_MS):
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_ACCEPTED:
                    self._metrics.subscriber_connected(channels[monitor])
                elif event == zmq.EVENT_DISCONNECTED:
                    self._metrics.subscriber_disconnected(channels[monitor])

    def stop(self) -> None:
        """End the thread and close the monitor sockets."""
        self._stopping.set()
        self._thread.join()
        for socket in self._sockets:
            socket.disable_monitor()
        for monitor in self._monitors.values():
            monitor.close(linger=0)
