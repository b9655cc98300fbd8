"""The series the service knows, in the order they started, and how far each can be read.

The follower of a run advances its entry as it reads the camera's records; every consumer
(each data client, the live writers) keeps its own position and reads the frames back from
the run's files when it wants them. The files are the buffer: apart from the batch the
follower has just read (which the consumers keeping up take without reading it again), no
frame is held here, so a consumer that falls behind costs memory only for the batch it is
reading.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from stemcast.batch import BufferPool, FrameBatch
from stemcast.service.live.tail import FollowedRun

__all__ = ["Behind", "Catalog", "FrameFields", "SeriesEntry"]


@dataclass(frozen=True, slots=True)
class FrameFields:
    """The header fields of a batch's frames that their records give.

    Attributes
    ----------
    times_ns
        Acquisition time of each frame in ns since the epoch, ``None`` when the records have
        none.
    exposure_ms
        Exposure of the frames, if known.
    """

    times_ns: npt.NDArray[np.int64] | None
    exposure_ms: float | None

    def __getitem__(self, frames: slice) -> FrameFields:
        """Return the fields of a slice of the batch's frames."""
        times = None if self.times_ns is None else self.times_ns[frames]
        return FrameFields(times, self.exposure_ms)

    def timestamp(self, offset: int) -> int | None:
        """Acquisition time of frame ``offset`` of the batch, if known."""
        return None if self.times_ns is None else int(self.times_ns[offset])


#: Seconds within which frames made readable are recorded as one step (they are then said
#: readable from the first of them): at most this many more seconds of lag, and at most
#: ``1 / _READABLE_STEP_S`` steps kept per second of acquisition.
_READABLE_STEP_S = 0.05


class Behind(NamedTuple):
    """How far a consumer is behind what the service can read of a run.

    Attributes
    ----------
    frames
        Frames readable that the consumer has not had.
    nbytes
        Their decoded size (the pixels, as the data channel sends them).
    since
        ``time.monotonic()`` when the oldest of them became readable, ``None`` when caught up.
    """

    frames: int
    nbytes: int
    since: float | None

    def seconds(self, now: float) -> float:
        """How long the oldest frame not had has waited at ``now`` (0 when caught up)."""
        return 0.0 if self.since is None else max(0.0, now - self.since)


@dataclass(eq=False)
class SeriesEntry:
    """One series: its header, the frames that can be read, and its end once it ended.

    Attributes
    ----------
    series
        The series id.
    header
        The fields of its ``stemcast-series-1.0`` header (without ``htype``).
    frames
        Frames that can be read (the follower has read and checked them).
    end
        The fields of its ``stemcast-series_end-1.0`` header once it ended, else ``None``.
    recent
        The batch the follower read last and the header fields of its frames, while the
        series is followed.
    """

    series: str
    header: dict[str, Any]
    source: FollowedRun
    position: Callable[[int], list[int] | None]
    frames: int = 0
    end: dict[str, Any] | None = None
    #: Steps of :attr:`frames` and the ``time.monotonic()`` each was reached, for the lag of
    #: the consumers (appended in the event loop, read by scrapes in other threads).
    _steps: array[int] = field(default_factory=lambda: array("q"), init=False, repr=False)
    _step_times: array[float] = field(default_factory=lambda: array("d"), init=False, repr=False)
    recent: tuple[FrameBatch, FrameFields] | None = field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        """Whether the series has ended (its ``series_end`` can be sent)."""
        return self.end is not None

    @property
    def frame_bytes(self) -> int:
        """Bytes of one decoded frame."""
        rows, cols = self.source.frame_shape
        return rows * cols * self.source.dtype.itemsize

    def readable(self, frames: int, now: float) -> None:
        """Record that frames up to ``frames`` became readable at ``now`` (``monotonic()``)."""
        if self._step_times and now - self._step_times[-1] < _READABLE_STEP_S:
            self._steps[-1] = frames
        else:
            self._steps.append(frames)
            self._step_times.append(now)

    def readable_since(self, frame: int) -> float | None:
        """Return when frame ``frame`` became readable (``monotonic()``), ``None`` if not yet."""
        known = min(len(self._steps), len(self._step_times))
        step = bisect.bisect_right(self._steps, frame, 0, known)
        return self._step_times[step] if step < known else None

    def behind(self, frame: int) -> Behind:
        """Return how far a consumer whose next frame is ``frame`` is behind this series.

        Parameters
        ----------
        frame
            The consumer's next frame (its position; past :attr:`frames` counts as caught up).

        Returns
        -------
        Behind
            Frames readable from ``frame`` on, their bytes, and since when the first waits.
        """
        frames = max(0, self.frames - frame)
        since = self.readable_since(frame) if frames else None
        return Behind(frames, frames * self.frame_bytes, since)

    def read(
        self, start: int, stop: int, buffers: BufferPool | None = None
    ) -> tuple[FrameBatch, FrameFields]:
        """Read frames ``start:stop`` back from the files, with their header fields (blocks).

        Parameters
        ----------
        start, stop
            Frame range, within :attr:`frames`.
        buffers
            Where to read them (see :meth:`FollowedRun.read`).

        Returns
        -------
        tuple
            The decoded batch and the header fields of its frames.
        """
        batch = self.source.read(start, stop, buffers)
        headers = batch.headers
        times = self.source.times_ns(headers, start)
        return batch, FrameFields(times, self.source.exposure_ms(headers))

    def recent_frames(self, start: int, stop: int) -> tuple[FrameBatch, FrameFields] | None:
        """Frames from ``start`` to at most ``stop`` out of :attr:`recent`, if it holds ``start``.

        Parameters
        ----------
        start, stop
            Frame range wanted.

        Returns
        -------
        tuple or None
            The frames (views of the recent batch, fewer than asked when it ends before
            ``stop``) and their header fields as the follower gave them; ``None`` when
            ``start`` is not in the recent batch.
        """
        if self.recent is None:
            return None
        batch, fields = self.recent
        if not batch.start <= start < batch.stop:
            return None
        low, high = start - batch.start, min(stop, batch.stop) - batch.start
        return FrameBatch(start, batch.frames[low:high], batch.headers[low:high]), fields[low:high]


class Catalog:
    """The series in start order, with one wake-up for every consumer when anything moves.

    Parameters
    ----------
    keep
        Series kept once ended, oldest dropped first (clients resume within them).
    """

    def __init__(self, keep: int = 1000) -> None:
        self.entries: list[SeriesEntry] = []
        self._keep = keep
        self._listeners: set[asyncio.Event] = set()

    def listen(self) -> asyncio.Event:
        """Return an event set whenever a series starts, grows or ends."""
        event = asyncio.Event()
        self._listeners.add(event)
        return event

    def forget(self, event: asyncio.Event) -> None:
        """Stop setting ``event``."""
        self._listeners.discard(event)

    def _changed(self) -> None:
        for event in self._listeners:
            event.set()

    def add(self, entry: SeriesEntry) -> None:
        """Append a series that has started."""
        self.entries.append(entry)
        ended = [item for item in self.entries if item.ended]
        for old in ended[: max(0, len(ended) - self._keep)]:
            self.entries.remove(old)
        self._changed()

    def advance(
        self, entry: SeriesEntry, frames: int, recent: tuple[FrameBatch, FrameFields] | None = None
    ) -> None:
        """Make frames up to ``frames`` of ``entry`` readable.

        Parameters
        ----------
        entry
            The series.
        frames
            Frames that can be read now.
        recent
            The batch just read that ends at ``frames``, with the header fields of its
            frames: consumers that keep up take their frames from it (``None``: nobody
            takes them now, the consumers read them back from the files).
        """
        entry.recent = recent
        if frames > entry.frames:
            entry.readable(frames, time.monotonic())
            entry.frames = frames
            self._changed()

    def restore(self, entry: SeriesEntry, later: Collection[str]) -> None:
        """Put back a series that ended before the service started, in its start order.

        Parameters
        ----------
        entry
            The ended series, rebuilt from the registry.
        later
            The ids of the series that started after it: it goes before the first of them.
        """
        index = next(
            (at for at, item in enumerate(self.entries) if item.series in later),
            len(self.entries),
        )
        self.entries.insert(index, entry)
        self._changed()

    def finish(self, entry: SeriesEntry, end: dict[str, Any]) -> None:
        """Mark ``entry`` ended, with the fields of its ``series_end``."""
        entry.end = end
        entry.recent = None
        self._changed()

    def find(self, series: str) -> SeriesEntry | None:
        """Return the entry of ``series``, if the catalog holds it."""
        return next((entry for entry in self.entries if entry.series == series), None)

    def after(self, entry: SeriesEntry) -> SeriesEntry | None:
        """Return the series that started after ``entry``, if one has."""
        try:
            index = self.entries.index(entry)
        except ValueError:
            return None
        return self.entries[index + 1] if index + 1 < len(self.entries) else None

    def following(self) -> list[SeriesEntry]:
        """Return the series that have not ended, oldest first."""
        return [entry for entry in self.entries if not entry.ended]

    def behind(self, entry: SeriesEntry | None, frame: int) -> Behind:
        """Return how far a consumer of every series in turn is behind.

        Callable from any thread (a scrape): it reads a snapshot of the entries.

        Parameters
        ----------
        entry
            The series the consumer stands in; ``None`` before it has one (it then starts
            with the oldest series).
        frame
            Its next frame in ``entry``.

        Returns
        -------
        Behind
            The frames it has not had in ``entry`` and in every series that started after
            it, their bytes, and since when the oldest of them waits.
        """
        entries = list(self.entries)
        if entry is None:
            owed = [(item, 0) for item in entries]
        else:
            later = entries[entries.index(entry) + 1 :] if entry in entries else []
            owed = [(entry, frame), *((item, 0) for item in later)]
        frames = nbytes = 0
        since: float | None = None
        for item, start in owed:
            part = item.behind(start)
            frames += part.frames
            nbytes += part.nbytes
            if since is None:
                since = part.since
        return Behind(frames, nbytes, since)
