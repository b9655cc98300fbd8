"""One open page of the viewer: what it asked for, and what it has been sent.

Each page has its own task that looks, at most :data:`UPDATES_PER_S` times a second, at what
the hub and the run view have: the runs list (at most once a second), the latest frame (the
frames in between are dropped; the next is sent once the page says it drew the last), and the
virtual image's values that the page does not have yet. It sends them in the page's own
time: a slow page, or a page whose connection stalls, delays only itself.

What a page may say (JSON text messages):

* ``{"type": "view", "run": ID}`` shows a run and keeps it (pinned); ``"run": null``
  follows the newest run.
* ``{"type": "detector", "detector": {...}}`` sets the virtual detector
  (:meth:`~stemcast.service.viewer.detectors.Detector.parse`).
* ``{"type": "drawn", "frame": N}`` says frame ``N`` is on the screen.
* ``{"type": "visible", "visible": false}`` says the page is hidden: it is sent no frames
  until it says it is visible again (its virtual image keeps filling).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy.typing as npt
from aiohttp import WSMsgType, web

from stemcast.errors import ParameterError
from stemcast.service.viewer.detectors import Detector
from stemcast.service.viewer.hub import ViewerHub
from stemcast.service.viewer.runview import RunView
from stemcast.service.viewer.wire import pack

__all__ = ["UPDATES_PER_S", "Page"]

_logger = logging.getLogger(__name__)

#: Most updates of a page per second (frame and virtual image).
UPDATES_PER_S = 10
#: Least seconds between two runs lists sent to a page.
_RUNS_INTERVAL_S = 1.0
#: A frame the page has not said it drew after this many seconds no longer holds the next.
_DRAWN_TIMEOUT_S = 2.0


class Page:
    """Serve one WebSocket of the viewer.

    Parameters
    ----------
    socket
        The prepared WebSocket.
    hub
        What the pages share.
    """

    def __init__(self, socket: web.WebSocketResponse, hub: ViewerHub) -> None:
        self.socket = socket
        self.hub = hub
        self.pinned: str | None = None
        self.series: str | None = None
        self.view: RunView | None = None
        self.detector: Detector | None = None
        self.visible = True
        self._asked: Any = None
        self._detector_asked = False
        self._runs_version = -1
        self._runs_sent = float("-inf")
        self._frame_sent = -1
        self._frame_sent_at = float("-inf")
        self._frame_drawn = True
        self._image_key: tuple[Any, ...] | None = None
        self._image_sent = 0
        self._error_sent: str | None = None
        self._told: Detector | None = None
        self._told_pinned = False

    async def serve(self) -> None:
        """Take the page's messages and send it updates until it closes."""
        self.hub.attach()
        sender = asyncio.create_task(self._send_updates(), name="viewer page")
        try:
            async for message in self.socket:
                if message.type is WSMsgType.TEXT:
                    await self._command(message.data)
                elif message.type is WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self.hub.detach()

    async def _command(self, text: str) -> None:
        try:
            command = json.loads(text)
            if not isinstance(command, dict):
                raise ParameterError("a message is a JSON object", parameter="message")
            kind = command.get("type")
            if kind == "view":
                run = command.get("run")
                if run is not None and not isinstance(run, str):
                    raise ParameterError("run must be a run id or null", parameter="run")
                self.pinned = run
            elif kind == "detector":
                self._asked, self._detector_asked = command.get("detector"), True
            elif kind == "visible":
                self.visible = command.get("visible") is not False
            elif kind == "drawn":
                if command.get("frame") == self._frame_sent:
                    self._frame_drawn = True
            else:
                raise ParameterError(f"unknown message type {kind!r}", parameter="type")
        except (ValueError, ParameterError) as error:
            await self.socket.send_str(json.dumps({"type": "error", "message": str(error)}))

    async def _send_updates(self) -> None:
        interval = 1.0 / UPDATES_PER_S
        try:
            await self.hub.listed()
            while not self.socket.closed:
                started = time.monotonic()
                await self._update()
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        except ConnectionError as error:
            _logger.debug("viewer page gone: %s", error)

    async def _update(self) -> None:
        now = time.monotonic()
        if self.hub.runs_version != self._runs_version and now - self._runs_sent >= (
            _RUNS_INTERVAL_S
        ):
            self._runs_version, self._runs_sent = self.hub.runs_version, now
            await self.socket.send_str(self.hub.runs_message)
        series = self.pinned or self.hub.newest()
        if series is None:
            return
        if series != self.series:
            await self._show(series)
        elif self.view is not None and (self.pinned is not None) != self._told_pinned:
            await self._tell_view(self.view)
        view = self.view
        if view is None:
            return
        if view.error is not None:
            await self._error(view.error)
            return
        if self._detector_asked:
            self._detector_asked = False
            try:
                self.detector = Detector.parse(self._asked, view.frame_shape)
            except ParameterError as error:
                await self._error(str(error))
        await self._send_frame(view, now)
        detector = self.detector or view.bright_field
        if detector is None:
            return
        if detector != self._told:
            self._told = detector
            await self.socket.send_str(
                json.dumps({"type": "detector", "detector": detector.describe()})
            )
        await self._send_image(view, detector)

    async def _show(self, series: str) -> None:
        """Start showing another run (the newest, or the one the page chose)."""
        self.series, self._error_sent = series, None
        self.view = view = await self.hub.view(series)
        self._frame_sent, self._frame_drawn, self._image_key, self._told = -1, True, None, None
        if view is None:
            await self._error(f"run {series} cannot be shown: its files cannot be read")
            return
        if self._asked is not None:
            try:
                self.detector = Detector.parse(self._asked, view.frame_shape)
            except ParameterError:
                self.detector = None
        await self._tell_view(view)

    async def _tell_view(self, view: RunView) -> None:
        """Say which run the page is shown, and whether it keeps it."""
        self._told_pinned = self.pinned is not None
        await self.socket.send_str(
            json.dumps(
                {
                    "type": "view",
                    "run": view.series,
                    "pinned": self._told_pinned,
                    "frame_shape": list(view.frame_shape),
                }
            )
        )

    async def _send_frame(self, view: RunView, now: float) -> None:
        latest = view.latest
        if latest is None or latest.index == self._frame_sent or not self.visible:
            return
        if not self._frame_drawn and now - self._frame_sent_at < _DRAWN_TIMEOUT_S:
            return
        self._frame_sent, self._frame_sent_at, self._frame_drawn = latest.index, now, False
        await self.socket.send_bytes(latest.message)

    async def _send_image(self, view: RunView, detector: Detector) -> None:
        accumulator = view.want(detector.measure)
        filled = accumulator.filled
        scan = view.scan()
        key = (view.series, detector, scan)
        reset = key != self._image_key
        if reset and filled == 0 and view.entry.frames > 0:
            return  # computed afresh: the page keeps what it shows until values arrive
        start = 0 if reset else self._image_sent
        if not reset and filled <= start:
            return
        values = detector.values(accumulator.sums, start, filled, view.frame_shape)
        arrays: dict[str, npt.NDArray[Any]] = {"values": values}
        if not view.in_order:
            arrays["positions"] = await asyncio.to_thread(view.positions, start, filled)
        header = {
            "type": "image",
            "run": view.series,
            "detector": detector.describe(),
            "reset": reset,
            "start": start,
            "filled": filled,
            "width": None if scan is None else scan[0],
            "height": None if scan is None else scan[1],
        }
        self._image_key, self._image_sent = key, filled
        await self.socket.send_bytes(pack(header, arrays))

    async def _error(self, message: str) -> None:
        if message != self._error_sent:
            self._error_sent = message
            await self.socket.send_str(json.dumps({"type": "error", "message": message}))
