"""The daemon: discovery, one follower per run, the publisher, conversions, the HTTP API.

At start-up the service opens its registry, resumes the runs its predecessor was following
when it stopped or was killed (same series id, read again from their files; a run whose
files are gone is marked abandoned), leaves alone every file of a run that has already ended
(a restart never re-publishes a run; another file under its name is a new run), and takes
up the conversion jobs left unfinished. Nothing a file or folder holds stops the service: a
file that cannot be opened is told once and left out, a run that fails ends ``failed``.
Each run with automatic conversion targets is converted while it is acquired (a live job,
:mod:`stemcast.service.jobs.live`). SIGTERM stops the HTTP API, stops the conversions (a
running one is cancelled and stays queued for the next start), lets each run finish its
batch and leaves the runs that have not ended ``following``, and closes the registry. The
registry is SQLite: every call to it from here runs in a worker thread, never in the event
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stemcast.errors import StemcastError
from stemcast.formats.runs import run_kind
from stemcast.formats.tvips.run import first_part, is_tvips
from stemcast.service.config import ServiceSettings, http_bind_address
from stemcast.service.jobs.manager import JobManager
from stemcast.service.live.catalog import SeriesEntry
from stemcast.service.live.discovery import (
    GONE,
    FileIdentity,
    Found,
    WatchFolders,
    head_digest,
    watch,
)
from stemcast.service.live.follower import RunFollower
from stemcast.service.live.lag import consumer_lags
from stemcast.service.live.publisher import Publisher
from stemcast.service.live.reasons import describe
from stemcast.service.live.recall import recall_series
from stemcast.service.live.tail import MibSource, NotReady, open_source, stem_of
from stemcast.service.metrics import Metrics
from stemcast.service.state.records import JobStatus, RunRecord, RunStatus
from stemcast.service.state.registry import Registry

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Service", "serve", "start_http"]

_logger = logging.getLogger(__name__)


@dataclass
class _Waiting:
    """A run file not yet long enough to open, and since when it has not changed."""

    found: Found
    since: float
    told: bool = False


class Service:
    """Runs found in the watched directories, each followed by its own task.

    Parameters
    ----------
    settings
        The service settings.
    publisher
        The bound sockets.
    registry
        Where runs and jobs are recorded.
    jobs
        The conversion jobs.
    token
        The bearer token of the HTTP API's mutating calls; ``None`` turns them off.
    metrics
        The service's Prometheus metrics (served at ``/metrics``).
    finished
        The files of the runs that ended before (:meth:`Registry.finished_paths`): not
        followed again, unless a new file takes the name of one.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        publisher: Publisher,
        registry: Registry,
        jobs: JobManager,
        token: str | None = None,
        metrics: Metrics | None = None,
        finished: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.publisher = publisher
        self.registry = registry
        self.jobs = jobs
        self.token = token
        #: ``http://HOST:PORT`` of the HTTP API once it listens.
        self.http_address: str | None = None
        self.stopping = asyncio.Event()
        self.followers: dict[str, RunFollower] = {}
        self.tasks: set[asyncio.Task[object]] = set()
        self.folders = WatchFolders(settings.watch)
        #: Files not to open again, with what each was when last looked at (``None``: a
        #: run that ended before this start, not looked at yet). Another file under the
        #: same name (a new inode, a smaller size, another start) is a new run.
        self.seen: dict[str, FileIdentity | None] = dict.fromkeys(finished)
        self.pending: dict[str, _Waiting] = {}
        publisher.data.recall = self.recall

    async def recall(self, series: str) -> tuple[SeriesEntry, list[str]] | None:
        """Find a series that ended before this start, for a data client resuming in it.

        Parameters
        ----------
        series
            The series id the client's position names.

        Returns
        -------
        tuple or None
            Its catalog entry rebuilt from the registry and its files, and the ids of the
            runs recorded after it; ``None`` when the registry has no ended run of that id.

        Raises
        ------
        StemcastError, OSError
            When its files no longer hold what it published.
        """
        record = await asyncio.to_thread(self.registry.run, series)
        if record is None or record["status"] in (RunStatus.FOLLOWING, RunStatus.ABANDONED):
            return None
        entry = await asyncio.to_thread(recall_series, record, self.settings)
        later = await asyncio.to_thread(self.registry.runs_after, series)
        return entry, later

    def stop(self) -> None:
        """Ask every run to finish its current batch, and discovery to end."""
        if not self.stopping.is_set():
            _logger.info("stopping: finishing the current batch of each run")
            self.stopping.set()

    async def consider(self, found: list[Found], *, startup: bool = False) -> None:
        """Look at run files that appeared or changed.

        Parameters
        ----------
        found
            Run files, oldest first.
        startup
            The first listing: files older than ``existing_max_age_s`` are left alone (one
            line says how many).
        """
        listed = {item.path for item in found}
        waiting = [self.pending[path].found for path in sorted(self.pending) if path not in listed]
        old = 0
        for item in [*waiting, *found]:
            path = item.path
            owner = self._owner(path)
            if owner is not None:
                owner.wake.set()
                continue
            if run_kind(path) is None or self.stopping.is_set():
                continue  # a later part of a TVIPS series: its run finds it
            if path in self.seen:
                if await self._still_ended(item):
                    continue
                _logger.info("%s: another file under the name of a run that ended: a new run", path)
                del self.seen[path]
            if startup and time.time() - item.mtime > self.settings.existing_max_age_s:
                self.seen[path] = item.identity
                old += 1
                continue
            try:
                await self._open(path, found=item)
            except Exception as error:  # one file never stops the others, nor the service
                self.seen[path] = item.identity
                _logger.error("not followed: %s", describe(error, path))
                _logger.debug("not followed: %s", path, exc_info=error)
        if old:
            _logger.info(
                "left alone %d run file%s last changed over %g s before the start "
                "(existing_max_age_s); POST /convert converts them",
                old,
                "" if old == 1 else "s",
                self.settings.existing_max_age_s,
            )

    async def _still_ended(self, item: Found) -> bool:
        """Whether ``item`` is still the file of a run that ended, not another file."""
        known = self.seen[item.path]
        if known is None:
            self.seen[item.path] = item.identity
            return True
        same = known.same_file(item.identity)
        if same is None:
            try:
                same = await asyncio.to_thread(head_digest, item.path) == known.head
            except OSError:
                return True  # gone again: the next look tells
            if same:
                self.seen[item.path] = replace(item.identity, head=known.head)
        return same

    def _owner(self, path: str) -> RunFollower | None:
        """Return the run followed that ``path`` is a file of (a TVIPS part it has not found)."""
        first = os.fspath(first_part(path)) if is_tvips(path) else None
        return next(
            (run for run in self.followers.values() if run.owns(path) or run.path == first), None
        )

    def _wait(self, found: Found, why: str) -> None:
        """Keep a file too short to open for the next look; say once if it stays so."""
        waiting = self.pending.get(found.path)
        now = time.monotonic()
        if waiting is None or waiting.found.identity != found.identity:
            self.pending[found.path] = _Waiting(found, now)
            return
        idle = self.settings.idle_timeout_s
        if not waiting.told and now - waiting.since >= idle:
            waiting.told = True
            _logger.warning(
                "%s: not followed yet: %s, and it has not changed for %g s (idle_timeout_s)",
                found.path,
                why,
                idle,
            )

    async def resume(self, runs: Iterable[RunRecord]) -> None:
        """Follow again the runs the previous process was following when it stopped.

        Parameters
        ----------
        runs
            The runs the registry has ``following``, oldest first.
        """
        for run in runs:
            await self._open(run["path"], resume=run["id"])

    async def _open(
        self, path: str, *, found: Found | None = None, resume: str | None = None
    ) -> None:
        """Open the run whose first file is ``path`` and follow it.

        Parameters
        ----------
        path
            The run's first file.
        found
            What discovery found (``None`` for a run resumed from the registry).
        resume
            The id of the run resumed.
        """
        limit = self.settings.max_frame_bytes
        try:
            source = await asyncio.to_thread(open_source, path, max_frame_bytes=limit)
        except NotReady as why:
            if found is not None:
                self._wait(found, str(why))
            elif resume is not None:
                await self._abandon(resume, f"its first file no longer holds a run: {why}")
            return
        except FileNotFoundError:
            self.pending.pop(path, None)
            if resume is not None:
                await self._abandon(resume, "its files are gone")
            return
        except Exception as error:  # a file that cannot be opened never stops the service
            reason = describe(error, path)
            self.pending.pop(path, None)
            self.seen[path] = None if found is None else found.identity
            _logger.error("not followed: %s", reason)
            if resume is not None:
                await self._abandon(resume, f"cannot be resumed: {reason}")
            return
        self.pending.pop(path, None)
        self.seen[path] = None if found is None else found.identity
        if isinstance(source, MibSource) and source.first_sequence > 1 and self._continues(path):
            return
        directory = os.path.dirname(path)
        for run in self.followers.values():
            if os.path.dirname(run.path) == directory:
                run.supersede()
        root = self.watch_root(path)
        follower = RunFollower(
            source,
            self.publisher,
            self.settings,
            self.stopping,
            registry=self.registry,
            watch_root=None if root is None else str(root),
            started=self._convert_live,
            metrics=self.metrics,
            resume=resume,
        )
        self.followers[path] = follower
        task: asyncio.Task[object] = asyncio.create_task(self._follow(follower), name=path)
        self.tasks.add(task)
        task.add_done_callback(lambda done: self._finished(path, done))

    async def _follow(self, follower: RunFollower) -> RunStatus:
        """Follow a run; then remember what its files were, to tell a new file of the name."""
        status = await follower.run()
        identities = await asyncio.to_thread(_identities, follower.source.files)
        self.seen.update(identities)
        return status

    def _continues(self, path: str) -> bool:
        """Whether ``path`` is a later file of a Merlin run being followed."""
        return any(
            isinstance(run.source, MibSource) and stem_of(run.path) == stem_of(path)
            for run in self.followers.values()
        )

    def watch_root(self, path: str | os.PathLike[str]) -> Path | None:
        """Return the watched folder that holds the file ``path``, if one does."""
        folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        return next(
            (root for root in self.settings.watch if os.path.realpath(root) == folder), None
        )

    def roots(self) -> list[str]:
        """Return the folders whose runs may be converted on request (resolved)."""
        folders = [*self.settings.watch, *self.settings.input_roots]
        return list(dict.fromkeys(os.path.realpath(folder) for folder in folders))

    def following(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a file of a run the service is following now."""
        real = os.path.realpath(path)
        return any(
            real in {os.path.realpath(name) for name in (run.path, *run.source.files)}
            for run in self.followers.values()
        )

    async def _abandon(self, run_id: str, reason: str) -> None:
        _logger.warning("run %s abandoned: %s", run_id, reason)
        await asyncio.to_thread(
            self.registry.update_run, run_id, status=RunStatus.ABANDONED, reason=reason
        )

    async def _convert_live(self, follower: RunFollower) -> None:
        """Start converting a run while it is acquired, if automatic conversion applies."""
        if self.settings.output is None:
            return
        source = follower.source
        targets, options = self.settings.conversion_for(
            source.detector, os.path.dirname(follower.path)
        )
        if not targets:
            return
        try:
            follower.live = await self.jobs.start_live(
                follower.path,
                targets,
                options,
                run_id=follower.state.series,
                relative_to=follower.watch_root,
            )
        except (StemcastError, OSError) as error:
            _logger.error("run %s: no conversion: %s", follower.state.series, error)

    def _finished(self, path: str, task: asyncio.Task[object]) -> None:
        self.tasks.discard(task)
        follower = self.followers.pop(path)
        for name in follower.source.files:
            self.seen.setdefault(name, None)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            _logger.error("run %s: %s", follower.state.series, describe(error, path))

    async def discover(self, ready: Callable[[], None]) -> None:
        """Follow new runs until the service stops; call ``ready`` after the first listing."""
        settings = self.settings
        # What the files of the runs that ended before are, before anything can replace them.
        folders = {os.path.abspath(folder) for folder in settings.watch}
        ended = [
            path
            for path, known in self.seen.items()
            if known is None and os.path.dirname(os.path.abspath(path)) in folders
        ]
        self.seen.update(await asyncio.to_thread(_identities, ended))
        first = True
        async for found in watch(
            self.folders,
            polling=settings.polling,
            poll_interval_s=settings.poll_interval_s,
            stop=self.stopping,
        ):
            await self.consider(found, startup=first)
            if first:
                first = False
                ready()

    async def drain(self) -> None:
        """Wait for the runs to finish their batch, then cancel those that cannot."""
        if not self.tasks:
            return
        _, late = await asyncio.wait(set(self.tasks), timeout=self.settings.shutdown_timeout_s)
        for task in late:
            _logger.warning("run %s did not finish in time: cancelled", task.get_name())
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


def _identities(paths: Iterable[str]) -> dict[str, FileIdentity | None]:
    """Return what each file is now; a file that is gone is :data:`GONE` (any file differs)."""
    found: dict[str, FileIdentity | None] = {}
    for path in paths:
        try:
            found[path] = FileIdentity.of(path, head=True)
        except OSError:
            found[path] = GONE
    return found


async def serve(settings: ServiceSettings, ready: Callable[[Service], None] | None = None) -> None:
    """Run the service until SIGTERM or SIGINT.

    Parameters
    ----------
    settings
        The settings (watched directories, endpoints, intervals, conversions, HTTP API).
    ready
        Called with the service once discovery is running: its ``publisher`` has the bound
        addresses, its ``http_address`` the API's, its ``stop()`` ends it as SIGTERM does.
    """
    if not settings.watch:
        raise StemcastError("no directory to watch: give --watch DIR or set 'watch'")
    token = settings.api_token()
    registry = await asyncio.to_thread(Registry, settings.registry_path())
    try:
        await _serve(settings, registry, token, ready)
    finally:
        await asyncio.to_thread(registry.close)
    _logger.info("stopped")


async def _serve(
    settings: ServiceSettings,
    registry: Registry,
    token: str | None,
    ready: Callable[[Service], None] | None,
) -> None:
    # Called when /metrics is scraped, which renders in a worker thread.
    metrics = Metrics()
    metrics.bind_runs(registry.count_runs)
    metrics.bind_conversion_jobs(registry.count_jobs)
    metrics.bind_registry_queue_depth(lambda: registry.count_jobs()[JobStatus.QUEUED])
    if settings.output is not None:
        metrics.bind_output_root(settings.output)
    async with contextlib.AsyncExitStack() as stack:
        resumed = await asyncio.to_thread(registry.runs, status=RunStatus.FOLLOWING)
        resumed.reverse()
        jobs = JobManager(settings, registry, metrics)
        await jobs.start(resumed={run["id"] for run in resumed})
        stack.push_async_callback(jobs.stop)
        publisher = Publisher(
            settings.data_endpoint,
            settings.preview_endpoint,
            data_credit=settings.data_credit,
            data_credit_bytes=settings.data_credit_bytes,
            preview_hwm=settings.preview_hwm,
            preview_max_fps=settings.preview_max_fps,
            client_timeout_s=settings.client_timeout_s,
            batch_bytes=settings.batch_bytes,
            metrics=metrics,
        )
        stack.push_async_callback(publisher.close)
        publisher.start()
        metrics.bind_consumers(
            lambda: consumer_lags(
                publisher.data,
                (
                    (job["run_id"], job["targets"], live.written)
                    for job, live in jobs.live_jobs()
                    if job["run_id"] is not None
                ),
            )
        )
        finished = await asyncio.to_thread(registry.finished_paths)
        service = Service(settings, publisher, registry, jobs, token, metrics, finished)
        await service.resume(resumed)
        http = await start_http(service, settings.http) if settings.http is not None else None
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, service.stop)
            stack.callback(loop.remove_signal_handler, number)
        try:
            await service.discover(lambda: ready(service) if ready else None)
        finally:
            # Stop taking requests first, then stop conversions and runs together.
            if http is not None:
                await http.cleanup()
        await asyncio.gather(jobs.stop(), service.drain())


async def start_http(service: Service, address: str) -> web.AppRunner:
    """Serve the HTTP API of ``service`` on ``address``.

    Parameters
    ----------
    service
        The service the API controls.
    address
        ``HOST:PORT``; port 0 binds a free port, which ``service.http_address`` then names.

    Returns
    -------
    aiohttp.web.AppRunner
        The server; its ``cleanup()`` stops it.

    Raises
    ------
    StemcastError
        When the address cannot be bound.
    """
    from aiohttp import web

    from stemcast.service.control.api import make_runner

    host, port = http_bind_address(address)
    runner = make_runner(service, shutdown_timeout=service.settings.shutdown_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise StemcastError(
            f"cannot listen on {address}: {reason}; choose another address "
            "with --http (setting http), or --http off"
        ) from None
    bound: Any = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    service.http_address = f"http://{shown}:{bound[1]}"
    _logger.info("HTTP API on %s", service.http_address)
    return runner
