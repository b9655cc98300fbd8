"""A WebSocket client that does what the viewer's page does, for tests and the benchmark.

It keeps the runs list, the run shown, the detector the service says it uses, the frames it
got (acknowledging each as drawn, as the page does) and the virtual image, filled position
by position from the ``image`` messages (docs/viewer.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np


def unpack(message: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Decode a binary message: its header and its arrays."""
    (length,) = struct.unpack_from("<I", message)
    header = json.loads(message[4 : 4 + length])
    arrays = {}
    offset = 4 + length
    for described in header["arrays"]:
        dtype = np.dtype(described["dtype"])
        arrays[described["name"]] = np.frombuffer(message, dtype, described["length"], offset)
        size = described["length"] * dtype.itemsize
        offset += size + (-size % 8)
    return header, arrays


class Page:
    """One viewer page, without a browser."""

    def __init__(self, http: str, *, origin: str | None = None) -> None:
        self.url = http.replace("http://", "ws://") + "/viewer/ws"
        self.origin = origin
        self.runs: list[dict[str, Any]] = []
        self.view: dict[str, Any] | None = None
        self.detector: dict[str, Any] | None = None
        self.frames: list[dict[str, Any]] = []
        self.pixels: np.ndarray | None = None
        self.image: dict[str, Any] | None = None
        self.errors: list[str] = []
        #: The close code once the service closed the socket.
        self.closed: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Page:
        self._session = aiohttp.ClientSession()
        headers = {} if self.origin is None else {"Origin": self.origin}
        try:
            self._socket = await self._session.ws_connect(self.url, headers=headers)
        except BaseException:
            await self._session.close()
            raise
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        assert self._session is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        if self._socket is not None:
            await self._socket.close()
        await self._session.close()

    async def send(self, message: dict[str, Any]) -> None:
        assert self._socket is not None
        await self._socket.send_str(json.dumps(message))

    async def wait(self, condition: Callable[[Page], Any], timeout_s: float = 20.0) -> None:
        """Wait until ``condition(self)`` holds."""
        deadline = time.monotonic() + timeout_s
        while not condition(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"condition not met in {timeout_s} s: view {self.view}, detector "
                    f"{self.detector}, image {self.image_summary()}, errors {self.errors}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def image_summary(self) -> dict[str, Any] | None:
        if self.image is None:
            return None
        return {key: value for key, value in self.image.items() if key != "values"}

    def image_values(self) -> np.ndarray:
        """The virtual image ``(height, width)``, as ``virtualImage()`` lays it out."""
        assert self.image is not None
        width, height = self.image["width"], self.image["height"]
        if width is None:
            width, height = self.image["filled"], 1
        return self.image["values"][: width * height].reshape(height, width)

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            if message.type is aiohttp.WSMsgType.TEXT:
                self._text(json.loads(message.data))
            elif message.type is aiohttp.WSMsgType.BINARY:
                await self._binary(*unpack(message.data))
            self._changed.set()
        self.closed = self._socket.close_code
        self._changed.set()

    def _text(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "runs":
            self.runs = message["runs"]
        elif kind == "view":
            if self.view is None or message["run"] != self.view["run"]:
                self.image, self.frames = None, []
            self.view = message
        elif kind == "detector":
            self.detector = message["detector"]
        elif kind == "error":
            self.errors.append(message["message"])

    async def _binary(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if self.view is None or header["run"] != self.view["run"]:
            return
        if header["type"] == "frame":
            self.frames.append({**header, "received_ms": time.time() * 1e3})
            self.pixels = arrays["pixels"].reshape(header["shape"])
            await self.send({"type": "drawn", "frame": header["index"]})
            return
        image = self.image
        if header["reset"] or image is None:
            image = self.image = {
                "detector": header["detector"],
                "width": header["width"],
                "height": header["height"],
                "values": np.full(0, np.nan),
                "filled": 0,
            }
        size = image["width"] * image["height"] if image["width"] else header["filled"]
        if len(image["values"]) < size:
            grown = np.full(size, np.nan)
            grown[: len(image["values"])] = image["values"]
            image["values"] = grown
        values = arrays["values"]
        places = arrays.get("positions")
        if places is None:
            places = np.arange(header["start"], header["start"] + len(values))
        keep = (places >= 0) & (places < len(image["values"]))
        image["values"][places[keep]] = values[keep]
        image["filled"] = header["filled"]
