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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stemcast.batch import FrameBatch
from stemcast.service.live.tail import FollowedRun

__all__ = ["Catalog", "FrameMeta", "SeriesEntry"]

#: Header fields of each frame of a batch: timestamp, exposure and scan position.
FrameMeta = list[dict[str, Any]]


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
    recent: tuple[FrameBatch, FrameMeta] | None = field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        """Whether the series has ended (its ``series_end`` can be sent)."""
        return self.end is not None

    def read(self, start: int, stop: int) -> tuple[FrameBatch, FrameMeta]:
        """Read frames ``start:stop`` back from the files, with their header fields (blocks).

        Parameters
        ----------
        start, stop
            Frame range, within :attr:`frames`.

        Returns
        -------
        tuple
            The decoded batch and the header fields of each of its frames.
        """
        batch = self.source.read(start, stop)
        times = self.source.times_ns(batch)
        exposure = self.source.exposure_ms(batch)
        meta = [
            {
                "timestamp_ns": None if times is None else int(times[offset]),
                "exposure_ms": exposure,
                "nav_position": self.position(start + offset),
            }
            for offset in range(len(batch))
        ]
        return batch, meta

    def recent_frames(self, start: int, stop: int) -> tuple[FrameBatch, FrameMeta] | None:
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
        batch, meta = self.recent
        if not batch.start <= start < batch.stop:
            return None
        low, high = start - batch.start, min(stop, batch.stop) - batch.start
        return FrameBatch(start, batch.frames[low:high], batch.headers[low:high]), meta[low:high]


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
        self, entry: SeriesEntry, frames: int, recent: tuple[FrameBatch, FrameMeta] | None = None
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
            frames: consumers that keep up take their frames from it.
        """
        if recent is not None:
            entry.recent = recent
        if frames > entry.frames:
            entry.frames = frames
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
