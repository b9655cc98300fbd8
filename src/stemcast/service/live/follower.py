"""Follow one run from its first complete record to its end, at the camera's pace.

The follower reads each batch of complete records as it appears (their headers for the scan
shape, the registry and the metrics; their frames too when a data client keeping up will take
them from the batch, or the first alone for a preview) and then makes it readable in the
catalog; it never waits for a consumer, since every consumer reads the frames back from the
files at its own pace.

A run ends by its data when the number of frames it holds is known: the ``.hdr`` count or
scan size, the configured scan shape, or a TVIPS rotator index dropping back to 0 after the
last position of its scan (that frame is the run's last). It ends ``complete`` as soon as its
last frame arrives. Otherwise it ends when its files stop growing for the idle timeout or the
next run starts in the same folder: ``complete`` (the reason says which), unless the scan is
visibly cut short (frames missing from a known count, a last scan line of a known width not
complete, a rotator index stopping within its scan, half a record at the end): then
``interrupted``. Files that turn out corrupt or vanish end it ``failed``, and so does any
other error while it is followed: the run gets its ``series_end`` and its registry row says
why, never a run left ``following`` while the service goes on. When a batch cannot be
decoded, it is read again frame by frame, so the frames before the bad one are published.
A ``.hdr`` the camera writes after the ``.mib`` appeared is taken when it parses (frame
count, scan shape). When the service
stops, a run that has not ended stays ``following`` in the registry, without a
``series_end``: the next start resumes it under the same series id (``resumed``), reading it
again from its files, so that its clients and its outputs continue where they were.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from stemcast.batch import BufferPool, FrameBatch
from stemcast.service.config import ServiceSettings
from stemcast.service.live.catalog import FrameFields, SeriesEntry
from stemcast.service.live.navigation import NavigationTracker
from stemcast.service.live.publisher import Publisher, SeriesState
from stemcast.service.live.reasons import describe
from stemcast.service.live.tail import FollowedRun, series_fields
from stemcast.service.metrics import Metrics
from stemcast.service.state.records import RunStatus
from stemcast.service.state.registry import Registry
from stemcast.shape import Evidence

if TYPE_CHECKING:
    from stemcast.service.jobs.live import LiveJob

__all__ = ["RunFollower"]

_logger = logging.getLogger(__name__)

#: Seconds between two writes of a run's frame count to the registry.
_RECORD_INTERVAL_S = 1.0

#: How many times a batch of frames a batch of headers alone is (see
#: ``RunFollower._batch_size``): 16 x 4 MiB of frames is 512 headers of 256 x 256 12-bit
#: frames, 192 KiB read.
HEADER_BATCHES = 16


@dataclass(frozen=True, slots=True)
class _Records:
    """Records the follower read: their headers, and their frames when someone wants them."""

    start: int
    headers: npt.NDArray[Any]
    batch: FrameBatch | None
    #: The first frame alone, read for a preview when the batch's frames were not.
    first: FrameBatch | None = None

    @property
    def stop(self) -> int:
        return self.start + len(self.headers)

    def cut(self, keep: int) -> _Records:
        """Keep only the first ``keep`` records."""
        batch = self.batch
        if batch is not None:
            batch = FrameBatch(batch.start, batch.frames[:keep], batch.headers[:keep])
        return _Records(self.start, self.headers[:keep], batch, self.first if keep else None)


class _Undecodable(Exception):
    """Frames ``start:stop`` could not be read or decoded; nothing of them was published."""

    def __init__(self, start: int, stop: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.start, self.stop, self.error = start, stop, error


class RunFollower:
    """The task that follows one run.

    Parameters
    ----------
    source
        The opened run.
    publisher
        Where its frames go.
    settings
        Intervals, batch size, timeouts, user scan shape.
    stopping
        Set when the service stops: the follower ends after its current batch.
    registry
        Where the run is recorded: when it starts, its frame count about once a second,
        how it ended.
    watch_root
        The watched folder the run was found in.
    started
        Awaited with the follower once the run is recorded, before its first frame is read:
        the service starts the run's live conversion there (setting :attr:`live`).
    metrics
        Where to count the frames and bytes of the run, the read-and-decode time of each batch,
        and how far the run's reading is behind the camera.
    """

    def __init__(
        self,
        source: FollowedRun,
        publisher: Publisher,
        settings: ServiceSettings,
        stopping: asyncio.Event,
        *,
        registry: Registry | None = None,
        watch_root: str | None = None,
        started: Callable[[RunFollower], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
        resume: str | None = None,
    ) -> None:
        self.source = source
        self.metrics = metrics
        #: ``(frames available, when first seen)`` for frames not yet published: the lag.
        self._arrivals: deque[tuple[int, float]] = deque()
        self._seen_frames = 0
        #: Whether the metrics were last told the run is caught up (no frame waiting).
        self._caught_up_reported = False
        self.publisher = publisher
        self.settings = settings
        self.stopping = stopping
        self.registry = registry
        self.watch_root = watch_root
        self.started = started
        self.resumed = resume is not None
        #: The run's live conversion, once :attr:`started` began it.
        self.live: LiveJob | None = None
        self.reason = ""
        #: The scan shape the frames fill, once the run has ended.
        self.filled: tuple[int, ...] | None = None
        self._recorded_at = time.monotonic()
        self.wake = asyncio.Event()
        self.superseded = asyncio.Event()
        self.published = 0
        self.status: RunStatus | None = None
        self._ahead: asyncio.Task[_Records] | None = None
        self._ahead_stop = 0
        #: Frames up to here are read one at a time: a batch before them failed to decode.
        self._one_by_one = 0
        self._announced = False
        #: Where batches are read: reused once the data clients have sent their frames.
        self._buffers = BufferPool()
        self.state = SeriesState(resume or str(uuid.uuid4()), series_fields(source))
        self._announcement = self._announces()
        self.navigation = self._tracker()
        header = {"series": self.state.series, **self.state.fields, **self._nav_fields()}
        self.entry = SeriesEntry(self.state.series, header, source, self.navigation.position)

    @property
    def path(self) -> str:
        """The run's first file."""
        return self.source.path

    def owns(self, path: str) -> bool:
        """Whether ``path`` is one of the run's files."""
        return path in self.source.files

    def supersede(self) -> None:
        """Tell the run that the next run has started: it ends once it has read what is there."""
        self.superseded.set()
        self.wake.set()

    def _announces(self) -> tuple[object, ...]:
        """Return what the acquisition announced (``.hdr``): frames, scan, frames per line."""
        source = self.source
        return source.frames_expected, source.hdr_shape, source.frames_per_line

    def _tracker(self) -> NavigationTracker:
        """Track the scan shape; announced values that make no scan are left out, told once."""
        settings, source = self.settings, self.source
        try:
            return NavigationTracker(
                user=settings.navigation_shape,
                hdr_shape=source.hdr_shape,
                frames_per_line=source.frames_per_line,
                frames_expected=source.frames_expected,
                timestamp_frames=settings.timestamp_frames,
            )
        except Exception as error:  # what a file announces must not stop its run
            _logger.warning(
                "run %s: what its .hdr announces is ignored: %s",
                self.state.series,
                describe(error, self.path),
            )
            return NavigationTracker(
                user=settings.navigation_shape, timestamp_frames=settings.timestamp_frames
            )

    def _nav_fields(self) -> dict[str, Any]:
        scan = self.navigation.scan
        if scan is None:
            return {"nav_shape": None, "nav_evidence": None}
        shape = list(scan.shape) if all(scan.shape) else None
        return {"nav_shape": shape, "nav_evidence": scan.evidence.value}

    async def run(self) -> RunStatus:
        """Follow the run to its end and announce the end.

        Any error while the run is followed ends it ``failed`` with the reason (never the
        service): the run gets its ``series_end`` and its registry row.

        Returns
        -------
        RunStatus
            How the run ended: complete, interrupted or failed.
        """
        try:
            await self._start()
            ended = await self._follow()
        except Exception as error:  # any failure ends this run, not the service
            ended = RunStatus.FAILED, self._failure(error)
            _logger.error("run %s failed: %s", self.state.series, ended[1])
        finally:
            if self._ahead is not None:
                self._ahead.cancel()
                await asyncio.gather(self._ahead, return_exceptions=True)
        if ended is None:
            await self._leave()
            return RunStatus.FOLLOWING
        await self._end(*ended)
        return ended[0]

    def _failure(self, error: Exception) -> str:
        """Why the run failed, in one bounded line that names its file (and frame)."""
        if isinstance(error, _Undecodable):
            return f"{describe(error.error, self.path)} (frame {error.start})"
        return describe(error, self.path)

    async def _start(self) -> None:
        """Record the run, start its live conversion, and announce its series."""
        _logger.info(
            "run %s: %s %s (%s, %s frames of %s)",
            self.state.series,
            "resuming" if self.resumed else "following",
            self.path,
            self.source.detector,
            self.source.frames_expected or "an unknown number of",
            "x".join(map(str, self.source.frame_shape)),
        )
        if self.registry is not None and self.resumed:
            await asyncio.to_thread(
                self.registry.update_run, self.state.series, sources=self.source.files
            )
        elif self.registry is not None:
            fields = self.state.fields
            await asyncio.to_thread(
                self.registry.add_run,
                self.state.series,
                path=self.path,
                detector=fields["detector"],
                sources=fields["sources"],
                frame_shape=fields["shape"],
                dtype=fields["dtype"],
                frames_expected=fields["frames_expected"],
                watch_root=self.watch_root,
            )
        if self.started is not None:
            await self.started(self)
        self._report_lag()
        self._announce()

    def _announce(self) -> None:
        """Announce the series (once)."""
        if not self._announced:
            self._announced = True
            self.publisher.series(self.state, self.entry)

    async def _follow(self) -> tuple[RunStatus, str] | None:
        """Read the run to its end: how it ended, or ``None`` when the service stops first."""
        settings = self.settings
        navigation = self.navigation
        last_growth = last_rescan = time.monotonic()
        final_look = False
        while True:
            available = self.source.frames
            if navigation.frames_expected is not None:
                available = min(available, navigation.frames_expected)
            if self.published < available:
                try:
                    await self._publish(available)
                except _Undecodable as failed:
                    await self._narrow(failed)
                    continue
                last_growth = time.monotonic()
                final_look = False
                expected = navigation.frames_expected
                if expected is not None and self.published >= expected:
                    return RunStatus.COMPLETE, navigation.complete_reason
                if self.stopping.is_set():
                    return None
                continue
            if self.stopping.is_set():
                return None
            now = time.monotonic()
            idle = now - last_growth >= settings.idle_timeout_s
            if final_look and (idle or self.superseded.is_set()):
                return await self._stopped()
            if idle or self.superseded.is_set():
                final_look = True
            else:
                await self._nap(settings.tail_interval_s)
            rescan = final_look or now - last_rescan >= settings.rescan_interval_s
            if rescan:
                last_rescan = now
            # A look at a run whose last file did not change is one stat, here; the reads go
            # to a thread. On a network share (polling) even a stat can block: a thread too.
            if rescan or settings.polling or self.source.grew():
                await asyncio.to_thread(self.source.refresh, rescan=rescan)
            self._report_lag()
            if rescan and self._announces() != self._announcement:
                await self._late_hdr()
                expected = navigation.frames_expected
                if expected is not None and self.published >= expected:
                    return RunStatus.COMPLETE, navigation.complete_reason

    async def _narrow(self, failed: _Undecodable) -> None:
        """Read a batch that failed again frame by frame; a frame that fails alone ends the run.

        Raises
        ------
        _Undecodable
            When the frame was read alone: the run fails, after the frames before it were
            published.
        """
        if self._ahead is not None:
            self._ahead.cancel()
            await asyncio.gather(self._ahead, return_exceptions=True)
            self._ahead = None
        if failed.stop - failed.start <= 1:
            raise failed
        _logger.warning(
            "run %s: frames %d:%d cannot be decoded together (%s): reading them one by one",
            self.state.series,
            failed.start,
            failed.stop,
            describe(failed.error, self.path),
        )
        self._one_by_one = failed.stop

    async def _late_hdr(self) -> None:
        """Take what a ``.hdr`` that parsed after the run started announces."""
        self._announcement = self._announces()
        source, navigation = self.source, self.navigation
        try:
            changed = navigation.announce(
                hdr_shape=source.hdr_shape,
                frames_per_line=source.frames_per_line,
                frames_expected=source.frames_expected,
            )
        except Exception as error:  # what a file announces must not stop its run
            _logger.warning(
                "run %s: what its .hdr announces is ignored: %s",
                self.state.series,
                describe(error, self.path),
            )
            return
        self.entry.header.update(frames_expected=source.frames_expected, metadata=source.metadata())
        _logger.info(
            "run %s: its .hdr was read at frame %d: %s frames expected",
            self.state.series,
            self.published,
            navigation.frames_expected or "an unknown number of",
        )
        if changed:
            if self.live is not None:
                self.live.advance(self.published, navigation.scan)
            await self._shape_found()

    async def _nap(self, seconds: float) -> None:
        """Wait until woken (the run's files changed) or ``seconds`` passed.

        A timer that sets the wake-up event, rather than ``asyncio.wait_for`` (a task and a
        timeout per call), since a followed run waits this way every millisecond.
        """
        if not self.wake.is_set():
            timer = asyncio.get_running_loop().call_later(seconds, self.wake.set)
            try:
                await self.wake.wait()
            finally:
                timer.cancel()
        self.wake.clear()

    async def _stopped(self) -> tuple[RunStatus, str]:
        """How a run whose files stopped growing (or whose next run started) ended."""
        if self.superseded.is_set():
            why = "the next run started"
        else:
            why = f"files stopped growing for {self.settings.idle_timeout_s:g} s"
        expected = self.navigation.frames_expected
        if expected is not None:
            return RunStatus.INTERRUPTED, f"{why} after {self.published} of {expected} frames"
        short = self.navigation.cut_short(self.published)
        if short is None and await asyncio.to_thread(self.source.trailing_bytes) > 0:
            short = "its last record was left half written"
        if short is not None:
            return RunStatus.INTERRUPTED, f"{why}; the scan was cut short: {short}"
        return RunStatus.COMPLETE, why

    def _read(self, start: int, stop: int) -> asyncio.Task[_Records]:
        # The frames are read only if a data client would take them from this batch (the
        # others read them back from the files), the first alone for a preview due.
        frames = self.publisher.wants_frames(self.entry, start)
        preview = not frames and self.publisher.preview_due(self.state)
        read = functools.partial(self._read_timed, start, stop, frames=frames, preview=preview)
        return asyncio.ensure_future(asyncio.to_thread(read))

    def _read_timed(self, start: int, stop: int, *, frames: bool, preview: bool) -> _Records:
        """Read records ``start:stop`` (their headers only unless ``frames``), timing it."""
        began = time.perf_counter()
        if frames:
            batch = self.source.read(start, stop, self._buffers)
            records = _Records(start, batch.headers, batch)
        else:
            first = self.source.read(start, start + 1, self._buffers) if preview else None
            records = _Records(start, self.source.read_headers(start, stop), None, first)
        if self.metrics is not None:
            detector = self.source.detector
            self.metrics.decode_latency(detector, time.perf_counter() - began)
        return records

    def _report_lag(self) -> None:
        """Tell the metrics how many complete frames wait, and since when the oldest does."""
        if self.metrics is None:
            return
        available = self.source.frames
        now = time.monotonic()
        if available > self._seen_frames:
            self._arrivals.append((available, now))
            self._seen_frames = available
        while self._arrivals and self._arrivals[0][0] <= self.published:
            self._arrivals.popleft()
        behind = max(0, available - self.published)
        if behind == 0 and self._caught_up_reported:
            return  # nothing new to say, and a caught-up run is looked at every millisecond
        self._caught_up_reported = behind == 0
        since = self._arrivals[0][1] if self._arrivals else None
        self.metrics.tail_lag(
            self.state.series,
            self.source.detector,
            behind * self.source.record_size,
            behind,
            0.0 if since is None else now - since,
            since=since,
        )

    def _batch_size(self, start: int) -> int:
        """Count the records to read at once from ``start``: frames, or headers only.

        When no data client takes the frames as they are read (a run that appeared whole,
        clients behind), only the headers are read, and in batches
        :data:`HEADER_BATCHES` times as long: each batch costs its bookkeeping (timestamps,
        scan shape, metrics, the catalog) whatever its length.
        """
        if start < self._one_by_one:
            return 1
        rows, cols = self.source.frame_shape
        frame_bytes = max(1, rows * cols * self.source.dtype.itemsize)
        size = max(1, self.settings.batch_bytes // frame_bytes)
        if not self.publisher.wants_frames(self.entry, start):
            size *= HEADER_BATCHES
        return size

    async def _publish(self, available: int) -> None:
        """Publish the next batch while the one after it is read and decoded in a thread."""
        self._report_lag()
        start = self.published
        stop = (
            self._ahead_stop
            if self._ahead is not None
            else min(available, start + self._batch_size(start))
        )
        reading = self._ahead or self._read(start, stop)
        self._ahead = None
        try:
            records = await reading
            following = min(available, records.stop + self._batch_size(records.stop))
            headers = records.headers
            times = self.source.times_ns(headers, start)
            fields = self.source.header_fields(headers)
            exposure = self.source.exposure_ms(headers)
        except Exception as error:  # decoding a file's bytes can fail in any way
            raise _Undecodable(start, stop, error) from error
        if records.stop < following:
            self._ahead, self._ahead_stop = self._read(records.stop, following), following
        evidence = times if self.source.timestamps_show_lines else None
        found = self.navigation.add(evidence, fields)
        expected = self.navigation.frames_expected
        if expected is not None and records.stop > expected:
            # The scan ended within the batch (its rotator index dropped): the rest is not
            # part of the run.
            records = records.cut(max(0, expected - records.start))
            times = None if times is None else times[: len(records.headers)]
        count = len(records.headers)
        if self.metrics is not None:
            self.metrics.ingested(self.source.detector, count, count * self.source.record_size)
        frame_fields = FrameFields(times, exposure)
        if records.batch is None:
            first = None if records.first is None else (records.first, frame_fields[:1])
            self.publisher.readable(self.state, self.entry, records.stop, count, first)
        else:
            self.publisher.frames(self.state, self.entry, records.batch, frame_fields)
        self.published = records.stop
        scan = self.navigation.scan
        if self.live is not None:
            # A scan found from the rotator index need not be the frames in order (frames
            # before the scan, positions repeated or skipped): the conversion finds its grid.
            rotator = scan is not None and scan.evidence is Evidence.ROTATOR
            self.live.advance(self.published, None if rotator else scan)
        if found:
            await self._shape_found()
        now = time.monotonic()
        if self.registry is not None and now - self._recorded_at >= _RECORD_INTERVAL_S:
            await asyncio.to_thread(
                self.registry.update_run, self.state.series, frames=self.published
            )
            self._recorded_at = now

    async def _shape_found(self) -> None:
        """Show the scan shape found mid-run in the series header and the registry."""
        scan = self.navigation.scan
        if scan is None:
            return
        fields = self._nav_fields()
        self.entry.header.update(fields)
        _logger.info(
            "run %s: scan %s from %s (%s)",
            self.state.series,
            "x".join(str(size or "?") for size in scan.shape),
            scan.evidence.value,
            scan.detail,
        )
        if self.registry is not None:
            await asyncio.to_thread(
                self.registry.update_run,
                self.state.series,
                nav_shape=fields["nav_shape"],
                nav_shape_intended=fields["nav_shape"],
                nav_evidence=scan.evidence.value,
                nav_detail=scan.detail,
            )

    async def _leave(self) -> None:
        """Leave a run that has not ended ``following``, for the next start to resume."""
        if self.metrics is not None:
            self.metrics.tail_finished(self.state.series)
        if self.registry is not None:
            await asyncio.to_thread(
                self.registry.update_run,
                self.state.series,
                frames=self.published,
                sources=self.source.files,
            )
        _logger.info(
            "run %s: left at frame %d as the service stops; the next start resumes it",
            self.state.series,
            self.published,
        )

    async def _end(self, status: RunStatus, reason: str) -> None:
        self.status, self.reason = status, reason
        self._announce()
        if self.metrics is not None:
            self.metrics.tail_finished(self.state.series)
        scan, filled = self.navigation.final(self.published)
        self.filled = filled
        fields = {
            "status": status.value,
            "reason": reason,
            "nav_shape": list(filled),
            "nav_shape_intended": list(scan.shape),
            "nav_evidence": scan.evidence.value,
            "nav_detail": scan.detail,
            "sources": self.source.files,
        }
        if self.registry is not None:
            await asyncio.to_thread(
                self.registry.update_run,
                self.state.series,
                frames=self.published,
                status=status,
                reason=reason,
                sources=self.source.files,
                nav_shape=list(filled),
                nav_shape_intended=list(scan.shape),
                nav_evidence=scan.evidence.value,
                nav_detail=scan.detail,
            )
        if self.live is not None:
            # The conversion finds the grid of a rotator scan in the files itself.
            shown = None if scan.evidence is Evidence.ROTATOR else filled
            self.live.finish(status.value, self.published, shown, reason)
        self.publisher.series_end(self.state, self.entry, fields)
        _logger.info(
            "run %s %s: %s, %d frames, scan %s from %s (%s)",
            self.state.series,
            status.value,
            reason,
            self.published,
            "x".join(map(str, filled)),
            scan.evidence.value,
            scan.detail,
        )
