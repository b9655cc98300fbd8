"""The data channel: every client gets every frame, at its own pace, from where it chooses.

One ZeroMQ ROUTER socket serves any number of DEALER clients. A client says where to start
(``live``, ``run`` or a position ``(series, frame)`` it saw last) and how many messages it
can take (its *credit*); it gives credit back as it consumes, and sends credit 0 now and then
to say it is still there. Each client has its own task, which reads the frames it is owed
back from the run's files (positional reads of whole records; a client that keeps up takes
them from the batch the follower has just read) and sends at most its credit: a slow client
only delays itself, and memory stays bounded by one batch per client however far behind it
is. A client that says it leaves, or stays silent for ``client_timeout_s``
(killed, cut off), is forgotten; when it speaks
again its message carries its position, so it goes on from there. After a restart of the
service, a position in a series that ended before it is found again in the registry and the
run's files (:attr:`DataServer.recall`), away from the loop that serves the other clients.

A client's position is ``(series, next)``: ``next`` counts the frames of the series and then
its end, so after the ``series_end`` of a series of ``n`` frames a client stands at
``(series, n + 1)`` and goes on with the series that started after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from stemcast.batch import BufferPool
from stemcast.errors import StemcastError
from stemcast.protocol import (
    CREDIT,
    ERROR,
    SERIES,
    SERIES_END,
    SUBSCRIBE,
    FrameHeaders,
    encode_header,
)
from stemcast.service.live.catalog import Behind, Catalog, SeriesEntry
from stemcast.service.metrics import Metrics

__all__ = ["DataServer", "Recall"]

#: Finds a series that is not in the catalog (it ended before the service started): its
#: rebuilt entry and the ids of the series that started after it, or ``None`` if unknown.
Recall = Callable[[str], Awaitable[tuple[SeriesEntry, list[str]] | None]]

_logger = logging.getLogger(__name__)

#: Largest message a client may send (its requests are small JSON objects).
_MAX_CLIENT_MESSAGE = 64 * 1024
#: pyzmq's send of one message part, below its Python layer: ``(socket, data, flags, copy,
#: track)``.
_send_part = zmq.backend.Socket.send
#: Seconds between two looks for clients that went silent.
_SWEEP_S = 0.5


@dataclass(eq=False)
class _Session:
    """One client: where it stands, what it may be sent, when it last spoke."""

    identity: bytes
    #: Messages it may be sent now; ``granted - credit`` are in flight.
    credit: int
    last_seen: float
    wake: asyncio.Event
    entry: SeriesEntry | None = None
    #: Waiting for the series that starts after this one (``None``: after the newest now).
    after: SeriesEntry | None = None
    #: Its credit when nothing is in flight: what it asked for, at most the server's most.
    granted: int = 0
    frame: int = 0
    announced: bool = False
    messages: int = 0
    frames_sent: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: Where this client's frames are read back from the files (reused once sent).
    buffers: BufferPool = field(default_factory=BufferPool, repr=False)


class DataServer:
    """Serve the catalog's series to data clients over a ROUTER socket.

    Parameters
    ----------
    endpoint
        Bind address, e.g. ``tcp://127.0.0.1:5555`` (port 0 picks a free port).
    catalog
        The series to serve.
    max_credit
        Most messages in flight to one client, whatever credit it asks for.
    max_bytes_in_flight
        Most bytes of frames in flight to one client, whatever its credit (at least one
        frame): its messages queued in ZeroMQ and unread by the client hold their frames'
        memory.
    batch_bytes
        Most bytes of frames read back from the files at a time for one client.
    client_timeout_s
        A client that sends nothing for this long is forgotten.
    metrics
        Where to count what is sent, and the clients connected.
    """

    def __init__(
        self,
        endpoint: str,
        catalog: Catalog,
        *,
        max_credit: int = 128,
        max_bytes_in_flight: int = 32 * 2**20,
        batch_bytes: int = 8 * 2**20,
        client_timeout_s: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.catalog = catalog
        self.max_credit = max_credit
        self.max_bytes_in_flight = max_bytes_in_flight
        self.batch_bytes = batch_bytes
        self.client_timeout_s = client_timeout_s
        self.metrics = metrics
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, _MAX_CLIENT_MESSAGE)
        # Credit bounds what is queued per client; the high-water mark only has to hold it.
        self.socket.sndhwm = 2 * max_credit + 16
        self.socket.linger = 0
        self.socket.bind(endpoint)
        # Frames are sent from this plain socket sharing the asyncio socket's ZeroMQ socket:
        # a batch of sends with no future per message (waiting only when ZeroMQ is full).
        self._sender: zmq.Socket[bytes] = zmq.Socket.shadow(self.socket.underlying)
        self.sessions: dict[bytes, _Session] = {}
        #: How to find a series that ended before the service started (set by the service).
        self.recall: Recall | None = None
        #: Clients whose position is being looked up by :attr:`recall`.
        self._recalling: dict[bytes, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def address(self) -> str:
        """The bound address (with the port chosen when 0 was asked)."""
        return str(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))

    def behind(self) -> dict[str, Behind]:
        """Return how far each client is behind, by client id (its ZeroMQ identity, in hex).

        Callable from any thread (a scrape): it reads a snapshot of the clients. Frames sent
        and not yet acknowledged count as had.

        Returns
        -------
        dict
            Client id to the frames it has not been sent yet, their bytes, and since when
            the oldest of them waits.
        """
        lags = {}
        for session in list(self.sessions.values()):
            entry, frame, after = session.entry, session.frame, session.after
            if entry is None and after is not None:
                # Waiting for the series that starts after ``after``: owed from its start.
                entry, frame = self.catalog.after(after), 0
                if entry is None:
                    lags[session.identity.hex()] = Behind(0, 0, None)
                    continue
            lags[session.identity.hex()] = self.catalog.behind(entry, frame)
        return lags

    def keeping_up(self, entry: SeriesEntry, frame: int) -> bool:
        """Whether a client would take frame ``frame`` of ``entry`` as soon as it is readable.

        Such a client is at most a batch behind it in that series, or waits for the series
        to start while ``frame`` is in its first batch.

        Parameters
        ----------
        entry
            The series.
        frame
            The first frame of a batch about to be read.

        Returns
        -------
        bool
            Whether any client is that close.
        """
        within = max(1, self.batch_bytes // max(1, entry.frame_bytes))
        for session in list(self.sessions.values()):
            if session.entry is entry and session.frame + within > frame:
                return True
            if session.entry is None and frame < within:
                return True
        return False

    def start(self) -> None:
        """Start taking clients (in the running event loop)."""
        self._tasks = [
            asyncio.create_task(self._receive(), name="data-receive"),
            asyncio.create_task(self._sweep(), name="data-sweep"),
        ]

    async def close(self) -> None:
        """Forget every client and close the socket."""
        for task in list(self._recalling.values()):
            task.cancel()
        await asyncio.gather(*self._recalling.values(), return_exceptions=True)
        for session in list(self.sessions.values()):
            await self._forget(session)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.socket.close(linger=0)
        self.context.term()

    # Requests -------------------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            try:
                identity, *parts = await self.socket.recv_multipart()
            except zmq.ZMQError as error:
                _logger.warning("data channel: cannot receive: %s", error)
                continue
            try:
                await self._request(identity, parts)
            except (ValueError, TypeError, KeyError) as error:
                _logger.warning("data channel: ignoring a client's message: %s", error)

    async def _request(self, identity: bytes, parts: list[bytes]) -> None:
        if len(parts) != 1:
            raise ValueError(f"{len(parts)} parts, not 1")
        request = json.loads(parts[0])
        if not isinstance(request, dict):
            raise ValueError("not a JSON object")
        kind = request.get("htype")
        credit = request.get("credit", 0)
        if not isinstance(credit, int) or isinstance(credit, bool) or credit < 0:
            raise ValueError(f"credit {credit!r} is not a count")
        session = self.sessions.get(identity)
        recalling = self._recalling.get(identity)
        if recalling is not None:
            if kind == CREDIT and not request.get("leave"):
                return  # Still being placed: its credit is taken once it is.
            recalling.cancel()
        if kind == CREDIT and request.get("leave"):
            if session is not None:
                _logger.info("data client %s: left", identity.hex())
                await self._forget(session)
            return
        if kind == SUBSCRIBE or (kind == CREDIT and (session is None or request.get("reset"))):
            start = request.get("position") if kind == CREDIT else request.get("start", "live")
            if session is not None:
                await self._forget(session)
            credit_given = credit if kind == SUBSCRIBE else None
            if self._needs_recall(start):
                task = asyncio.create_task(
                    self._recall_then_subscribe(identity, start, credit_given), name="data-recall"
                )
                self._recalling[identity] = task
                task.add_done_callback(lambda done: self._recalled(identity, done))
                return
            await self._subscribe(identity, start, credit_given)
            return
        if kind != CREDIT or session is None:
            raise ValueError(f"unknown request {kind!r}")
        session.last_seen = time.monotonic()
        session.credit = min(session.granted, session.credit + credit)
        session.wake.set()

    def _needs_recall(self, start: Any) -> bool:
        """Whether ``start`` is a position in a series the catalog does not hold."""
        return (
            self.recall is not None and _is_position(start) and self.catalog.find(start[0]) is None
        )

    async def _recall_then_subscribe(self, identity: bytes, start: Any, credit: int | None) -> None:
        """Find the series of a position that ended before the service started, then place."""
        assert self.recall is not None
        series = start[0]
        try:
            found = await self.recall(series)
        except (StemcastError, OSError) as error:
            _logger.warning("data client %s: cannot resume %s: %s", identity.hex(), series, error)
            await self._send(
                identity, {"htype": ERROR, "reason": f"series {series} cannot be resumed: {error}"}
            )
            return
        if found is not None and self.catalog.find(series) is None:
            self.catalog.restore(*found)
            _logger.info("series %s: ended before this start, found again", series)
        await self._subscribe(identity, start, credit)

    def _recalled(self, identity: bytes, task: asyncio.Task[None]) -> None:
        if self._recalling.get(identity) is task:
            del self._recalling[identity]
        if not task.cancelled() and task.exception() is not None:
            _logger.error("data client %s: not placed: %s", identity.hex(), task.exception())

    async def _subscribe(self, identity: bytes, start: Any, credit: int | None) -> None:
        granted = self.max_credit if credit is None else min(credit, self.max_credit)
        session = _Session(
            identity,
            credit=granted,
            last_seen=time.monotonic(),
            wake=self.catalog.listen(),
            granted=granted,
        )
        problem = self._place(session, start)
        if problem is not None:
            self.catalog.forget(session.wake)
            await self._send(identity, {"htype": ERROR, "reason": problem})
            return
        self.sessions[identity] = session
        session.task = asyncio.create_task(self._serve(session), name="data-client")
        if self.metrics is not None:
            self.metrics.subscriber_connected("data")
        _logger.info("data client %s: starts at %s", identity.hex(), start)

    def _place(self, session: _Session, start: Any) -> str | None:
        """Put a new client where it asked to start; return why it cannot be, or ``None``."""
        following = self.catalog.following()
        if start in ("live", "run", None):
            if not following:
                session.after = self.catalog.entries[-1] if self.catalog.entries else None
                return None
            if start == "run":
                session.entry, session.frame = following[0], 0
            else:
                session.entry = following[-1]
                session.frame = session.entry.frames
            return None
        if _is_position(start):
            entry = self.catalog.find(start[0])
            if entry is None:
                return f"series {start[0]} is not known to this service (any more)"
            session.entry, session.frame = entry, start[1]
            return None
        return f"start {start!r} is not 'live', 'run' or [series, frame]"

    async def _forget(self, session: _Session) -> None:
        if self.sessions.get(session.identity) is session:
            del self.sessions[session.identity]
            if self.metrics is not None:
                self.metrics.subscriber_disconnected("data")
        self.catalog.forget(session.wake)
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
            await asyncio.gather(session.task, return_exceptions=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            silent = time.monotonic() - self.client_timeout_s
            for session in list(self.sessions.values()):
                if session.last_seen < silent:
                    _logger.info("data client %s: silent, forgotten", session.identity.hex())
                    await self._forget(session)

    # Sending --------------------------------------------------------------------------------

    async def _send(self, identity: bytes, header: dict[str, Any], *data: Any) -> None:
        await self.socket.send_multipart([identity, encode_header(header), *data], copy=False)

    async def _serve(self, session: _Session) -> None:
        try:
            while True:
                if await self._step(session):
                    continue
                await session.wake.wait()
                session.wake.clear()
        except zmq.ZMQError as error:
            # ROUTER_MANDATORY: the client's connection is gone.
            _logger.info("data client %s: gone (%s)", session.identity.hex(), error)
            await self._forget(session)
        except (StemcastError, OSError) as error:
            _logger.error("data client %s: dropped: %s", session.identity.hex(), error)
            await self._forget(session)

    async def _step(self, session: _Session) -> bool:
        """Send what the client is owed and may take now; return whether anything went."""
        if session.entry is None:
            following = (
                self.catalog.after(session.after)
                if session.after is not None
                else (self.catalog.entries[0] if self.catalog.entries else None)
            )
            if following is None:
                return False
            session.entry, session.frame, session.announced = following, 0, False
        entry = session.entry
        if session.credit <= 0:
            return False
        if not session.announced:
            session.announced = True
            if entry.end is None or session.frame <= entry.frames:
                await self._message(
                    session, {"htype": SERIES, **entry.header, "first_frame": session.frame}
                )
                return True
            # Resumed after this series' end: nothing of it is owed, not even its start.
        if session.frame < entry.frames:
            room = self._room(session, entry)
            if room <= 0:
                return False
            try:
                await self._frames(session, entry, room)
            except (StemcastError, OSError) as error:
                if entry.end is None:
                    raise
                # The series ended and its files can no longer be read (deleted, corrupt):
                # the client gets its end, which says why it failed.
                _logger.warning(
                    "data client %s: frames %d-%d of series %s cannot be read: %s",
                    session.identity.hex(),
                    session.frame,
                    entry.frames - 1,
                    entry.series,
                    error,
                )
                session.frame = entry.frames
            return True
        if entry.end is not None and session.frame == entry.frames:
            await self._message(session, {"htype": SERIES_END, "series": entry.series, **entry.end})
            session.frame += 1
            return True
        if entry.end is not None:
            session.entry, session.after = None, entry
            return True
        return False

    async def _message(self, session: _Session, header: dict[str, Any], *data: Any) -> None:
        header["message"] = session.messages
        session.messages += 1
        session.credit -= 1
        await self._send(session.identity, header, *data)

    def _room(self, session: _Session, entry: SeriesEntry) -> int:
        """Frames of ``entry`` the client may be sent now: its credit, bounded in bytes.

        Every message in flight counts as a frame of this series (the series' own messages
        are small: the bound errs on the safe side); with nothing in flight, one frame
        always fits.
        """
        in_flight = session.granted - session.credit
        by_bytes = max(1, self.max_bytes_in_flight // max(1, entry.frame_bytes))
        return min(session.credit, by_bytes - in_flight)

    async def _frames(self, session: _Session, entry: SeriesEntry, room: int) -> None:
        """Send the client its next frames, at most a batch and ``room``."""
        per_frame = max(1, entry.frame_bytes)
        count = min(room, entry.frames - session.frame, max(1, self.batch_bytes // per_frame))
        started = time.perf_counter()
        # A client that keeps up takes the batch the follower has just read; one behind
        # reads its frames back from the files, into buffers of its own.
        recent = entry.recent_frames(session.frame, session.frame + count)
        if recent is None:
            recent = await asyncio.to_thread(
                entry.read, session.frame, session.frame + count, session.buffers
            )
        batch, fields = recent
        headers = FrameHeaders(
            {
                "series": entry.series,
                "shape": entry.header["shape"],
                "dtype": entry.header["dtype"],
                "exposure_ms": fields.exposure_ms,
            }
        )
        times = None if fields.times_ns is None else fields.times_ns.tolist()
        identity = session.identity
        for offset in range(len(batch)):
            frame = batch.start + offset
            header = headers.encode(
                frame,
                session.frames_sent,
                session.messages,
                None if times is None else times[offset],
                entry.position(frame),
            )
            # The pixels go without a copy: ZeroMQ holds the batch's buffer until sent.
            await self._deliver(identity, header, batch.frames[offset])
            session.messages += 1
            session.credit -= 1
            session.frames_sent += 1
        session.frame = batch.stop
        # Sends outside the asyncio socket consume its edge-triggered wake-ups: look at its
        # events again so that the client's next requests are received.
        self.socket.get(zmq.EVENTS)
        if self.metrics is not None:
            detector = str(entry.header.get("detector", "unknown"))
            self.metrics.publish_latency(detector, time.perf_counter() - started)
            self.metrics.published(detector, len(batch), batch.frames.nbytes)
        # Other clients, the followers and the requests go on between two batches.
        await asyncio.sleep(0)

    async def _deliver(self, identity: bytes, header: bytes, frame: Any) -> None:
        """Send a frame message at once if ZeroMQ takes it, else wait until it can.

        The parts go through pyzmq's C-level send: its Python layer (argument checks, a
        loop over the parts) cost more than half of each message's sending time. The first
        part is the only one that can find ZeroMQ full (a message goes whole or not at all).
        """
        sender = self._sender
        try:
            _send_part(sender, identity, zmq.SNDMORE | zmq.NOBLOCK, True, False)
        except zmq.Again:
            await self.socket.send_multipart([identity, header, frame], copy=False)
            return
        _send_part(sender, header, zmq.SNDMORE | zmq.NOBLOCK, True, False)
        _send_part(sender, frame, zmq.NOBLOCK, False, False)


def _is_position(start: Any) -> bool:
    """Whether a client's ``start`` is a position ``[series, frame]``."""
    return (
        isinstance(start, list)
        and len(start) == 2
        and isinstance(start[0], str)
        and isinstance(start[1], int)
        and not isinstance(start[1], bool)
        and start[1] >= 0
    )
