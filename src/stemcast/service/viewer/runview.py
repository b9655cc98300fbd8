"""One run as the viewer's pages see it: its latest frame and its virtual images.

A :class:`RunView` is one more consumer of a run's follower, with its own position per
measure: it takes the frames from the batch the follower has just read when it keeps up, and
reads them back from the run's files otherwise, so the follower never waits for it. Its
work (sums per frame, the latest frame's message) is done once per run, in the viewer's own
thread, whatever the number of pages showing the run; the pages only pick up the results.

A measure asked for later than the run's first frame (a person drew a new detector) is
computed over every frame so far from the files, in steps of :data:`_FILE_STEP_BYTES`, while
the measures already up to date keep following the run between the steps.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.batch import FrameBatch
from stemcast.errors import StemcastError
from stemcast.service.live.catalog import FrameFields, SeriesEntry
from stemcast.service.viewer.detectors import Detector, Measure, Sums, batch_sums, file_sums
from stemcast.service.viewer.wire import pack

__all__ = ["LatestFrame", "RunView"]

_logger = logging.getLogger(__name__)

#: Seconds a measure no page shows is kept (a person switching back gets it at once).
_UNUSED_S = 20.0
#: Most bytes of frames read back from the files in one step of a measure catching up.
_FILE_STEP_BYTES = 256 * 2**20
#: Frames the bright-field disk is looked for in (their sum is less noisy than one frame).
_DISK_FRAMES = 8


class LatestFrame:
    """The newest frame of a run; its message is built once, when a page first wants it.

    Parameters
    ----------
    series
        The run.
    batch, fields
        A batch whose first frame is the newest (a view of the batch the follower read, or
        read back from the files), and the header fields of its frames.
    """

    def __init__(self, series: str, batch: FrameBatch, fields: FrameFields) -> None:
        self.index = batch.start
        self._series = series
        self._pixels = batch.frames[0]
        stamp = fields.timestamp(0)
        self._timestamp_ms = None if stamp is None else stamp / 1e6

    @functools.cached_property
    def message(self) -> bytes:
        """The binary ``frame`` message (:func:`~stemcast.service.viewer.wire.pack`)."""
        header = {
            "type": "frame",
            "run": self._series,
            "index": self.index,
            "timestamp_ms": self._timestamp_ms,
            "shape": list(self._pixels.shape),
        }
        return pack(header, {"pixels": self._pixels})


class Accumulator:
    """The per-frame sums of one measure over the frames of a run so far.

    Parameters
    ----------
    measure
        What is summed.
    """

    def __init__(self, measure: Measure) -> None:
        self.measure = measure
        self._sums: Sums = {name: np.empty(0) for name in measure.columns}
        #: Frames summed: the measure's position in the run.
        self.filled = 0
        #: ``time.monotonic()`` when a page last asked for it.
        self.used = time.monotonic()

    @property
    def sums(self) -> Sums:
        """The sums of the frames so far (views)."""
        return {name: values[: self.filled] for name, values in self._sums.items()}

    def extend(self, sums: Sums) -> None:
        """Append the sums of the frames that follow :attr:`filled`."""
        count = len(sums["total"])
        for name, values in self._sums.items():
            if self.filled + count > len(values):
                grown = np.empty(max(2 * len(values), self.filled + count, 1024))
                grown[: self.filled] = values[: self.filled]
                self._sums[name] = values = grown
            values[self.filled : self.filled + count] = sums[name]
        self.filled += count


class RunView:
    """The latest frame and the sums of the measures pages show, for one run.

    Parameters
    ----------
    entry
        The run's catalog entry (or one made from its files for a run that ended before
        the service started).
    wake
        Set whenever the run may have grown (an event of the catalog).
    executor
        The viewer's thread: every read and sum runs there, never in the event loop nor in
        the threads of the follower and the data channel.
    forget
        Called with ``wake`` when the view closes (the catalog stops setting it).
    """

    def __init__(
        self,
        entry: SeriesEntry,
        wake: asyncio.Event,
        executor: Executor,
        forget: Any = None,
    ) -> None:
        self.entry = entry
        self.accumulators: dict[Measure, Accumulator] = {}
        self.latest: LatestFrame | None = None
        #: The detector pages show unless they draw another: the bright-field disk found in
        #: the first frames (``None`` until the run has them).
        self.bright_field: Detector | None = None
        #: Why the run cannot be shown any more (its files went), else ``None``.
        self.error: str | None = None
        #: ``time.monotonic()`` when a page last looked at the run.
        self.used = time.monotonic()
        self._wake = wake
        self._executor = executor
        self._forget = forget
        self._task = asyncio.create_task(self._run(), name=f"viewer {entry.series}")

    @property
    def series(self) -> str:
        """The run's series id."""
        return self.entry.series

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of its frames."""
        rows, cols = self.entry.source.frame_shape
        return rows, cols

    def want(self, measure: Measure) -> Accumulator:
        """Return the accumulator of ``measure``, starting it if no page asked for it yet."""
        now = time.monotonic()
        self.used = now
        accumulator = self.accumulators.get(measure)
        if accumulator is None:
            accumulator = self.accumulators[measure] = Accumulator(measure)
            self._wake.set()
        accumulator.used = now
        return accumulator

    def scan(self) -> tuple[int, int] | None:
        """Return the scan ``(x, y)`` the frames fill, once known (at the end: lines filled)."""
        fields = self.entry.end if self.entry.end is not None else self.entry.header
        shape = fields.get("nav_shape")
        if shape and len(shape) == 2 and all(shape):
            return int(shape[0]), int(shape[1])
        return None

    @property
    def in_order(self) -> bool:
        """Whether frame ``i`` lies at scan position ``i`` (all but a TVIPS rotator scan)."""
        fields = self.entry.end if self.entry.end is not None else self.entry.header
        return self.scan() is None or fields.get("nav_evidence") != "rotator"

    def positions(self, start: int, stop: int) -> npt.NDArray[np.int32]:
        """Scan positions (``y * width + x``, -1 for none) of frames ``start:stop``.

        For a scan whose frames are not :attr:`in_order`; one call per frame (blocks a
        while for many frames).
        """
        scan = self.scan()
        width = 0 if scan is None else scan[0]
        places = [self.entry.position(frame) for frame in range(start, stop)]
        return np.array(
            [-1 if place is None else place[1] * width + place[0] for place in places],
            dtype=np.int32,
        )

    async def close(self) -> None:
        """Stop following the run."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._forget is not None:
            self._forget(self._wake)

    async def _run(self) -> None:
        try:
            while True:
                if not await self._step():
                    await self._wake.wait()
                    self._wake.clear()
        except (StemcastError, OSError) as error:
            self.error = f"cannot read the run any more: {error}"
            _logger.warning("viewer: run %s: %s", self.series, self.error)

    async def _step(self) -> bool:
        """Do the most urgent work there is; return whether there was any."""
        target = self.entry.frames
        worked = False
        if target and (self.latest is None or self.latest.index < target - 1):
            # Kept, not sent: the pages take the newest when their time comes.
            newest = self.entry.recent_frames(target - 1, target)
            if newest is None:
                newest = await self._in_thread(self.entry.read, target - 1, target)
            self.latest = LatestFrame(self.series, *newest)
            worked = True
        if self.bright_field is None and (target >= _DISK_FRAMES or (target and self.entry.ended)):
            self.bright_field = await self._in_thread(self._find_disk, min(target, _DISK_FRAMES))
            worked = True
        now = time.monotonic()
        for measure, accumulator in list(self.accumulators.items()):
            if now - accumulator.used > _UNUSED_S:
                del self.accumulators[measure]
        behind = [item for item in self.accumulators.values() if item.filled < target]
        if not behind:
            return worked
        # The measures most up to date first: following the run is cheap and keeps the
        # images live; a measure computed afresh then takes its next step from the files.
        start = max(item.filled for item in behind)
        group = [item for item in behind if item.filled == start]
        sums = await self._in_thread(self._sums, start, target, [item.measure for item in group])
        for item in group:
            if item.filled == start:
                item.extend(sums[item.measure])
        return True

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _find_disk(self, count: int) -> Detector:
        """Find the bright-field disk in the first frames (in the viewer's thread)."""
        frames = self.entry.source.read(0, count).frames
        return Detector.bright_field(frames) or Detector.default(self.frame_shape)

    def _sums(self, start: int, target: int, measures: list[Measure]) -> dict[Measure, Sums]:
        """Sum the next frames from ``start`` for ``measures`` (in the viewer's thread)."""
        recent = self.entry.recent_frames(start, target)
        if recent is not None:
            return batch_sums(recent[0].frames, measures)
        step = max(1, _FILE_STEP_BYTES // max(1, self.entry.frame_bytes))
        stop = min(target, start + step)
        return file_sums(self.entry.source, start, stop, measures, threads=1)
