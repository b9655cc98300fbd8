"""Subscribe to a stemcast service: series events and frames as numpy arrays.

>>> from stemcast.client import Subscriber
>>> with Subscriber("tcp://127.0.0.1:5555") as frames:          # doctest: +SKIP
...     for event in frames:
...         if isinstance(event, Frame):
...             print(event.index, event.data.shape, event.nav_position)

The data channel (PUSH) gives every frame to one consumer: connect one subscriber (several
share the frames between them). The preview channel (PUB, ``preview=True``) gives a sample of
the frames to any number of viewers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from stemcast.protocol import FRAME, SERIES, SERIES_END, decode_header

__all__ = ["Event", "Frame", "SeriesEnd", "SeriesStart", "Subscriber"]


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
    preview
        Connect to a preview channel (SUB) instead of the data channel (PULL).
    timeout_s
        Give up waiting for a message after this long (:class:`TimeoutError`); ``None``
        waits for ever.
    hwm
        Receive high-water mark in messages.

    Attributes
    ----------
    dropped
        Messages the publisher's channel dropped before they reached this subscriber,
        counted from gaps in the channel's message numbers (only the preview channel drops).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        preview: bool = False,
        timeout_s: float | None = None,
        hwm: int = 1000,
    ) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB if preview else zmq.PULL)
        self.socket.rcvhwm = hwm
        self.socket.linger = 0
        if preview:
            self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(endpoint)
        self.timeout_ms = None if timeout_s is None else round(timeout_s * 1000)
        self.dropped = 0
        self._next_message: int | None = None

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
        """Close the socket."""
        self.socket.close()
        self.context.term()

    def receive(self) -> Event:
        """Wait for the next message and return it as an event.

        Returns
        -------
        SeriesStart, Frame or SeriesEnd
            The event.

        Raises
        ------
        TimeoutError
            When nothing arrives within ``timeout_s``.
        """
        if self.timeout_ms is not None and not self.socket.poll(self.timeout_ms):
            raise TimeoutError(f"nothing received for {self.timeout_ms / 1000:g} s")
        parts = self.socket.recv_multipart(copy=False)
        header = decode_header(parts[0].buffer)
        message = header.get("message")
        if isinstance(message, int):
            if self._next_message is not None and message > self._next_message:
                self.dropped += message - self._next_message
            self._next_message = message + 1
        htype = header["htype"]
        if htype == FRAME:
            data = np.frombuffer(parts[1].buffer, dtype=np.dtype(header["dtype"]))
            return Frame(header, data.reshape(header["shape"]))
        if htype == SERIES:
            return SeriesStart(header)
        if htype == SERIES_END:
            return SeriesEnd(header)
        raise ValueError(f"unknown message type {htype!r}")

    def __iter__(self) -> Iterator[Event]:
        """Yield events for ever (or until ``timeout_s`` passes without one)."""
        while True:
            yield self.receive()
