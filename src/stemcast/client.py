"""Subscribe to a stemcast service: series events and frames as numpy arrays.

>>> from stemcast.client import Subscriber
>>> with Subscriber("tcp://127.0.0.1:5555") as frames:          # doctest: +SKIP
...     for event in frames:
...         if isinstance(event, Frame):
...             print(event.index, event.data.shape, event.nav_position)

The data channel gives every frame to every subscriber, each at its own pace and from where
it chooses: the next frame (``start="live"``), the start of the runs being followed
(``start="run"``), or a position it saw last (``start=subscriber.position``), after which it
goes on with no gap and no duplicate, across reconnections and restarts of the service. The
preview channel (PUB, ``preview=True``) gives a sample of the frames to any number of viewers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from stemcast.protocol import (
    CREDIT,
    ERROR,
    FRAME,
    SERIES,
    SERIES_END,
    SUBSCRIBE,
    decode_header,
    encode_header,
)

__all__ = ["Event", "Frame", "SeriesEnd", "SeriesStart", "Start", "Subscriber", "SubscriptionError"]

#: Where a data subscriber starts: ``"live"``, ``"run"`` or a position ``(series, next)``.
Start = str | tuple[str, int]

#: Seconds between two "still here" messages of a subscriber that receives nothing.
_HEARTBEAT_S = 1.0


class SubscriptionError(Exception):
    """The service refused the subscription (e.g. a position in a series it does not know)."""


@dataclass(frozen=True, slots=True)
class SeriesStart:
    """A run has started: its ``stemcast-series-1.0`` header."""

    header: dict[str, Any]

    @property
    def series(self) -> str:
        """The series id."""
        return str(self.header["series"])


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: its ``stemcast-frame-1.0`` header and pixels (read-only, no copy)."""

    header: dict[str, Any]
    data: npt.NDArray[Any]

    @property
    def series(self) -> str:
        """The series id."""
        return str(self.header["series"])

    @property
    def index(self) -> int:
        """Index of the frame in its series."""
        return int(self.header["frame"])

    @property
    def nav_position(self) -> tuple[int, int] | None:
        """Scan position ``(x, y)``, once the scan shape is known."""
        position = self.header.get("nav_position")
        return None if position is None else (int(position[0]), int(position[1]))


@dataclass(frozen=True, slots=True)
class SeriesEnd:
    """A run has ended: its ``stemcast-series_end-1.0`` header (status, frames, scan shape)."""

    header: dict[str, Any]

    @property
    def series(self) -> str:
        """The series id."""
        return str(self.header["series"])

    @property
    def status(self) -> str:
        """``complete``, ``interrupted`` or ``failed``."""
        return str(self.header["status"])


Event = SeriesStart | Frame | SeriesEnd


class Subscriber:
    """Receive what a stemcast service publishes.

    Parameters
    ----------
    endpoint
        The service's data or preview endpoint, e.g. ``tcp://127.0.0.1:5555``.
    start
        Data channel only: ``"live"`` (from the next frame of the newest run being followed,
        or from the next run), ``"run"`` (from the first frame of the oldest run being
        followed), or a position ``(series, next)`` as :attr:`position` gave it.
    preview
        Connect to a preview channel (SUB) instead of the data channel.
    timeout_s
        Give up waiting for a message after this long (:class:`TimeoutError`); ``None``
        waits for ever.
    credit
        Data channel: most messages the service sends ahead of what was consumed (the
        service also bounds the bytes of frames in flight, ``data_credit_bytes``).
    hwm
        Preview channel: receive high-water mark in messages.

    Attributes
    ----------
    dropped
        Preview channel: messages the service dropped before they reached this subscriber,
        counted from gaps in the channel's message numbers.
    lost
        Data channel: frames the service announced but could no longer read from the run's
        files (deleted or damaged before this subscriber got to them).
    position
        Data channel: ``(series, next)`` to give as ``start`` to go on from here, or ``None``
        before the first series. ``next`` counts the frames of the series, then its end: after
        the ``SeriesEnd`` of a series of ``n`` frames it is ``n + 1``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        start: Start = "live",
        preview: bool = False,
        timeout_s: float | None = None,
        credit: int = 128,
        hwm: int = 1000,
    ) -> None:
        self.context = zmq.Context()
        self.preview = preview
        self.socket = self.context.socket(zmq.SUB if preview else zmq.DEALER)
        self.socket.linger = 0
        self.timeout_ms = None if timeout_s is None else round(timeout_s * 1000)
        self.dropped = 0
        self.lost = 0
        self.position: tuple[str, int] | None = None
        self._announced: str | None = None
        self._next_message: int | None = None
        self._credit = max(1, credit)
        self._consumed = 0
        self._spoke = time.monotonic()
        self._start: Any = None
        if preview:
            self.socket.rcvhwm = hwm
            self.socket.setsockopt(zmq.SUBSCRIBE, b"")
            self.socket.connect(endpoint)
            return
        self.socket.rcvhwm = 2 * self._credit + 16
        # A routing id of its own, so the service recognises this subscriber on a new
        # connection (a service restart) by the position it sends.
        self.socket.routing_id = os.urandom(16)
        self.socket.connect(endpoint)
        if isinstance(start, tuple):
            self.position = (str(start[0]), int(start[1]))
            wire: Any = [self.position[0], self.position[1]]
        elif start in ("live", "run"):
            wire = start
        else:
            raise ValueError(f"start {start!r} is not 'live', 'run' or (series, frame)")
        self._start = wire
        self._send({"htype": SUBSCRIBE, "start": wire, "credit": self._credit})

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Tell the service this subscriber leaves (data channel), and close the socket."""
        if not self.preview:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.send(encode_header({"htype": CREDIT, "credit": 0, "leave": True}))
        self.socket.close(linger=100)
        self.context.term()

    def _send(self, request: dict[str, Any]) -> None:
        self.socket.send(encode_header(request))
        self._spoke = time.monotonic()

    def _give_credit(self, *, reset: bool = False) -> None:
        # A service that forgot this subscriber (silent too long, or restarted) takes it
        # back from the position sent here; before the first series, from its start.
        position = self._start if self.position is None else list(self.position)
        request = {"htype": CREDIT, "credit": self._consumed, "position": position}
        if reset:
            request["reset"] = True
        self._send(request)
        self._consumed = 0

    def _wait(self) -> None:
        """Wait for a message, saying "still here" every second; honour ``timeout_s``."""
        waited = 0.0
        while True:
            if self.preview:
                step_ms = self.timeout_ms if self.timeout_ms is not None else -1
            else:
                step_ms = round(_HEARTBEAT_S * 1000)
                if self.timeout_ms is not None:
                    step_ms = min(step_ms, max(0, self.timeout_ms - round(waited * 1000)))
            if self.socket.poll(step_ms):
                return
            waited += step_ms / 1000
            if self.timeout_ms is not None and waited * 1000 >= self.timeout_ms:
                raise TimeoutError(f"nothing received for {self.timeout_ms / 1000:g} s")
            if not self.preview:
                self._give_credit()

    def receive(self) -> Event:
        """Wait for the next message and return it as an event.

        On the data channel, messages the service sent twice (after a reconnection) are
        skipped, so every frame is returned once, in order.

        Returns
        -------
        SeriesStart, Frame or SeriesEnd
            The event.

        Raises
        ------
        TimeoutError
            When nothing arrives within ``timeout_s``.
        SubscriptionError
            When the service refuses the subscription.
        """
        while True:
            event = self._receive_one()
            if event is not None:
                return event

    def _receive_one(self) -> Event | None:
        try:
            # Most messages are there already when the last one is consumed: no poll.
            parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if self._consumed and not self.preview:
                # Everything sent has been consumed: the service may be waiting for credit
                # (its bound in bytes can be below this subscriber's credit).
                self._give_credit()
            self._wait()
            parts = self.socket.recv_multipart(copy=False)
        header = decode_header(parts[0].bytes)
        htype = header["htype"]
        if htype == ERROR:
            raise SubscriptionError(str(header.get("reason")))
        if self.preview:
            message = header.get("message")
            if isinstance(message, int):
                if self._next_message is not None and message > self._next_message:
                    self.dropped += message - self._next_message
                self._next_message = message + 1
            return _event(header, parts)
        self._consumed += 1
        # The position moves first, so that the credit carries the position after this
        # message: a service that forgot this subscriber takes it back from there.
        event = self._in_order(header, parts)
        if self._consumed >= max(1, self._credit // 2) or (
            time.monotonic() - self._spoke >= _HEARTBEAT_S
        ):
            self._give_credit()
        return event

    def _in_order(self, header: dict[str, Any], parts: list[Any]) -> Event | None:
        """Return the event if it is the next one of the stream; skip repeats."""
        htype, series = header["htype"], str(header["series"])
        here = self.position
        if htype == SERIES:
            if here is None or here[0] != series:
                self.position = (series, int(header.get("first_frame", 0)))
            if self._announced == series:
                return None  # announced again after a reconnection
            self._announced = series
            return SeriesStart(header)
        if here is None or here[0] != series:
            return None
        expected = here[1]
        index = int(header["frame"]) if htype == FRAME else int(header["frames"])
        if index < expected:
            return None
        if htype == SERIES_END and index > expected:
            # The service could not read these frames back (the run's files were deleted
            # or damaged after it read them); the end says why the run failed.
            self.lost += index - expected
            expected = index
        elif index > expected:
            # A gap can only follow a lost message: ask again from where this subscriber is.
            self._give_credit(reset=True)
            return None
        self.position = (series, expected + 1)
        return _event(header, parts)

    def __iter__(self) -> Iterator[Event]:
        """Yield events for ever (or until ``timeout_s`` passes without one)."""
        while True:
            yield self.receive()


def _event(header: dict[str, Any], parts: list[Any]) -> Event:
    htype = header["htype"]
    if htype == FRAME:
        # A view of the message ZeroMQ received: no copy.
        data = np.frombuffer(parts[1].buffer, dtype=_dtype(header["dtype"]))
        return Frame(header, data.reshape(header["shape"]))
    if htype == SERIES:
        return SeriesStart(header)
    if htype == SERIES_END:
        return SeriesEnd(header)
    raise ValueError(f"unknown message type {htype!r}")


@functools.lru_cache(maxsize=64)
def _dtype(spelled: str) -> np.dtype[Any]:
    """Return the dtype a header spells (parsed once per spelling)."""
    return np.dtype(spelled)
