"""Publishing: the series catalog behind the data channel, and the PUB preview channel.

The follower of a run tells the publisher when its series starts, how far its frames can be
read, and when it ends; the publisher records that in the catalog, which the data channel
(:class:`~stemcast.service.live.dataserver.DataServer`) serves to each client at its own pace,
and samples frames for the preview channel. Nothing here waits for a consumer: the preview
channel (PUB) drops at its low high-water mark, and a per-series rate limit keeps it to what
a viewer can draw.

When the service exports metrics, the publisher counts the previews it drops and follows the
preview socket's connections through a ZeroMQ socket monitor; the data channel counts its
clients itself.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from stemcast.batch import FrameBatch
from stemcast.errors import StemcastError
from stemcast.protocol import FRAME, SERIES, SERIES_END, encode_header
from stemcast.service.live.catalog import Catalog, FrameFields, SeriesEntry
from stemcast.service.live.dataserver import DataServer
from stemcast.service.metrics import Metrics

__all__ = ["Publisher", "SeriesState"]

_logger = logging.getLogger(__name__)


class SeriesState:
    """What the publisher keeps per series: its id and the last preview time."""

    def __init__(self, series: str, fields: dict[str, Any]) -> None:
        self.series = series
        self.fields = fields
        self.frames_sent = 0
        self.last_preview = float("-inf")


class Publisher:
    """The catalog of series, the data channel that serves it, and the preview socket.

    Parameters
    ----------
    data_endpoint, preview_endpoint
        Bind addresses, e.g. ``tcp://127.0.0.1:5555`` (port 0 picks a free port; see
        :attr:`data_address`).
    data_credit
        Most messages in flight to one data client.
    data_credit_bytes
        Most bytes of frames in flight to one data client (at least one frame).
    preview_hwm
        High-water mark of the preview channel, in messages.
    preview_max_fps
        Most preview frames per second per series.
    client_timeout_s
        A data client silent for this long is forgotten.
    batch_bytes
        Most bytes of frames read back from the files at a time for one data client.
    metrics
        Where to count sent and dropped frames, send times and connected subscribers.

    Raises
    ------
    StemcastError
        When an endpoint cannot be bound (in use, not a valid address), naming the
        endpoint and the option that sets it.
    """

    def __init__(
        self,
        data_endpoint: str,
        preview_endpoint: str,
        *,
        data_credit: int = 128,
        data_credit_bytes: int = 32 * 2**20,
        preview_hwm: int = 2,
        preview_max_fps: float = 10.0,
        client_timeout_s: float = 30.0,
        batch_bytes: int = 8 * 2**20,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.catalog = Catalog()
        try:
            self.data = DataServer(
                data_endpoint,
                self.catalog,
                max_credit=data_credit,
                max_bytes_in_flight=data_credit_bytes,
                batch_bytes=batch_bytes,
                client_timeout_s=client_timeout_s,
                metrics=metrics,
            )
        except zmq.ZMQError as error:
            raise _bind_error("data", data_endpoint, error) from None
        self.context = zmq.Context()
        self.preview = self.context.socket(zmq.PUB)
        self.preview.sndhwm = preview_hwm
        self.preview.linger = 0
        try:
            self.preview.bind(preview_endpoint)
        except zmq.ZMQError as error:
            self.preview.close(linger=0)
            self.context.term()
            self.data.socket.close(linger=0)
            self.data.context.term()
            raise _bind_error("preview", preview_endpoint, error) from None
        self.preview_interval = 1.0 / preview_max_fps
        self.sequence = 0
        self.preview_messages = 0
        self._monitor: _ConnectionMonitor | None = None
        if metrics is not None:
            self._monitor = _ConnectionMonitor({"preview": self.preview}, metrics)

    @property
    def data_address(self) -> str:
        """The data channel's bound address (with the port chosen when 0 was asked)."""
        return self.data.address

    @property
    def preview_address(self) -> str:
        """The preview channel's bound address."""
        return str(self.preview.getsockopt_string(zmq.LAST_ENDPOINT))

    def start(self) -> None:
        """Start serving data clients (in the running event loop)."""
        self.data.start()

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

    def series(self, state: SeriesState, entry: SeriesEntry) -> None:
        """Announce a series: add it to the catalog, and say so on the preview channel.

        Parameters
        ----------
        state
            The series' preview state.
        entry
            Its catalog entry (header fields, run, frame positions).
        """
        self.catalog.add(entry)
        self._preview({"htype": SERIES, **entry.header, "first_frame": 0})

    def frames(
        self, state: SeriesState, entry: SeriesEntry, batch: FrameBatch, fields: FrameFields
    ) -> None:
        """Make the frames of a batch readable by the data clients; preview some of them.

        Parameters
        ----------
        state
            The series' preview state.
        entry
            Its catalog entry.
        batch
            The frames the follower has just read.
        fields
            Header fields of its frames (timestamps, exposure).
        """
        previewed = self._preview_first(state, entry, batch, fields)
        self.sequence += len(batch)
        state.frames_sent += len(batch)
        self.catalog.advance(entry, batch.stop, (batch, fields))
        if self.metrics is not None:
            detector = str(entry.header.get("detector", "unknown"))
            self.metrics.preview_dropped(detector, len(batch) - previewed)

    def preview_due(self, state: SeriesState) -> bool:
        """Whether the series' next frame would be previewed (its rate limit allows one)."""
        return time.monotonic() - state.last_preview >= self.preview_interval

    def _preview_first(
        self, state: SeriesState, entry: SeriesEntry, batch: FrameBatch, fields: FrameFields
    ) -> int:
        """Preview the batch's first frame if one is due; return how many frames went (0, 1)."""
        if not len(batch) or not self.preview_due(state):
            return 0
        # The first frame of the batch: batches come far more often than previews.
        state.last_preview = time.monotonic()
        header = {
            "htype": FRAME,
            "series": entry.series,
            "shape": entry.header["shape"],
            "dtype": entry.header["dtype"],
            "frame": batch.start,
            "sequence": self.sequence,
            "timestamp_ns": fields.timestamp(0),
            "exposure_ms": fields.exposure_ms,
            "nav_position": entry.position(batch.start),
        }
        return int(self._preview(header, batch.frames[0]))

    def wants_frames(self, entry: SeriesEntry, start: int) -> bool:
        """Whether a data client takes the frames of the batch starting at ``start`` as read.

        A client keeping up takes them from the batch the follower reads; otherwise the
        follower reads only the records' headers (and the frame of a preview due), and the
        clients behind read the frames back from the files when they get there.

        Parameters
        ----------
        entry
            The series' catalog entry.
        start
            The batch's first frame.

        Returns
        -------
        bool
            Whether to read the batch's frames.
        """
        return self.data.keeping_up(entry, start)

    def readable(
        self,
        state: SeriesState,
        entry: SeriesEntry,
        stop: int,
        count: int,
        preview: tuple[FrameBatch, FrameFields] | None = None,
    ) -> None:
        """Make frames up to ``stop`` readable without handing them out (nobody wants them now).

        Parameters
        ----------
        state
            The series' preview state.
        entry
            Its catalog entry.
        stop
            Frames of the series readable now.
        count
            Frames added (``stop`` minus those readable before).
        preview
            The first of them, read for a preview due, with its header fields.
        """
        previewed = 0 if preview is None else self._preview_first(state, entry, *preview)
        self.sequence += count
        state.frames_sent += count
        self.catalog.advance(entry, stop)
        if self.metrics is not None:
            detector = str(entry.header.get("detector", "unknown"))
            self.metrics.preview_dropped(detector, count - previewed)

    def series_end(self, state: SeriesState, entry: SeriesEntry, fields: dict[str, Any]) -> None:
        """Close a series in the catalog and on the preview channel.

        Parameters
        ----------
        state
            The series' preview state.
        entry
            Its catalog entry.
        fields
            Status, reason and scan shape.
        """
        end = {"frames": entry.frames, **fields}
        self.catalog.finish(entry, end)
        self._preview({"htype": SERIES_END, "series": entry.series, **end})

    async def close(self) -> None:
        """Close the data channel, the preview socket and the context."""
        await self.data.close()
        if self._monitor is not None:
            self._monitor.stop()
        self.preview.close(linger=0)
        self.context.term()


def _bind_error(channel: str, endpoint: str, error: zmq.ZMQError) -> StemcastError:
    """Say which endpoint could not be bound, why, and which option sets it."""
    option = f"{channel}_endpoint"
    flag = "--" + option.replace("_", "-")
    reason = zmq.strerror(error.errno) if error.errno is not None else str(error)
    return StemcastError(
        f"cannot bind the {channel} channel to {endpoint}: {reason}; choose another address "
        f"with {flag} (setting {option})"
    )


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
