"""Wire protocol: the JSON headers of the three message kinds (see docs/protocol.md).

Every message is multipart; its first part is a UTF-8 JSON object whose ``htype`` names the
kind and version. A frame message has a second part: the frame's pixels, C order, in the
byte order its ``dtype`` spells out (little-endian: the native order of the machines the
cameras feed). Every frame header repeats what is needed to use the frame alone (shape,
dtype, series, scan shape when known), so a subscriber that joins late can still draw it.
The ``status`` of a ``series_end`` header is ``complete``, ``interrupted`` or ``failed``.

Two counters let a preview subscriber count losses: ``sequence`` numbers every frame the
service publishes, over all series, and ``message`` the messages of the channel, so a gap in
``message`` is a message the channel dropped, while a gap in ``sequence`` alone is a frame the
rate limit skipped. On the data channel both count what was sent to one client since it
subscribed (no gaps); a frame is identified by its ``series`` and ``frame`` on both channels.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = [
    "CREDIT",
    "ERROR",
    "FRAME",
    "SERIES",
    "SERIES_END",
    "SUBSCRIBE",
    "FrameHeaders",
    "decode_header",
    "encode_header",
    "wire_dtype",
]

SERIES = "stemcast-series-1.0"
FRAME = "stemcast-frame-1.0"
SERIES_END = "stemcast-series_end-1.0"
#: The service refuses a data client's request (an unknown series to resume from, say).
ERROR = "stemcast-error-1.0"
HTYPES = (SERIES, FRAME, SERIES_END, ERROR)

#: Data client to service: where to start, and the first credit (messages it can take).
SUBSCRIBE = "stemcast-subscribe-1.0"
#: Data client to service: more credit (0: I am still here), and the client's position.
CREDIT = "stemcast-credit-1.0"


def wire_dtype(dtype: np.dtype[Any]) -> str:
    """Spell a dtype with an explicit byte order, e.g. ``<u2`` (``|u1`` for single bytes).

    Parameters
    ----------
    dtype
        A native-endian dtype.

    Returns
    -------
    str
        The numpy type string, which names the byte order.
    """
    return np.dtype(dtype).newbyteorder("=").str


def encode_header(header: dict[str, Any]) -> bytes:
    """Serialise a header to compact UTF-8 JSON.

    Parameters
    ----------
    header
        A header with an ``htype`` of this protocol.

    Returns
    -------
    bytes
        The first message part.
    """
    return json.dumps(header, separators=(",", ":")).encode()


class FrameHeaders:
    """Encode the ``stemcast-frame-1.0`` headers of one series' frames quickly.

    The fields every frame of a batch shares (series, shape, dtype, exposure) are encoded
    once; each frame's header is then that prefix and its own numbers, formatted as bytes.
    The result is the JSON :func:`encode_header` gives for the same fields.

    Parameters
    ----------
    common
        The shared fields (without ``htype``): ``series``, ``shape``, ``dtype``,
        ``exposure_ms``.
    """

    def __init__(self, common: dict[str, Any]) -> None:
        self._prefix = encode_header({"htype": FRAME, **common})[:-1] + b',"frame":'

    def encode(
        self,
        frame: int,
        sequence: int,
        message: int,
        timestamp_ns: int | None,
        nav_position: list[int] | None,
    ) -> bytes:
        """Return the header of one frame.

        Parameters
        ----------
        frame, sequence, message
            The frame's index in its series, and the frame and message counters.
        timestamp_ns
            Acquisition time in ns since the epoch, if known.
        nav_position
            Scan position ``[x, y]``, if known.

        Returns
        -------
        bytes
            The first message part.
        """
        stamp = b"null" if timestamp_ns is None else b"%d" % timestamp_ns
        position = b"null" if nav_position is None else b"[%d,%d]" % tuple(nav_position)
        return b'%s%d,"sequence":%d,"message":%d,"timestamp_ns":%s,"nav_position":%s}' % (
            self._prefix,
            frame,
            sequence,
            message,
            stamp,
            position,
        )


def decode_header(part: bytes | memoryview) -> dict[str, Any]:
    """Parse the first part of a message and check its ``htype``.

    Parameters
    ----------
    part
        The JSON header part.

    Returns
    -------
    dict
        The header.

    Raises
    ------
    ValueError
        When the part is not a JSON object of a known ``htype``.
    """
    header = json.loads(bytes(part))
    if not isinstance(header, dict) or header.get("htype") not in HTYPES:
        raise ValueError(f"not a stemcast message header: {bytes(part)[:80]!r}")
    return header
