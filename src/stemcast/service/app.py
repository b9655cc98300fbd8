"""The daemon: discovery, one follower per run, the publisher, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

from stemcast.errors import StemcastError
from stemcast.service.config import ServiceSettings
from stemcast.service.discovery import watch
from stemcast.service.publish import Publisher
from stemcast.service.run import RunFollower
from stemcast.service.tail import MibSource, NotReady, open_source, stem_of

__all__ = ["Service", "serve"]

_logger = logging.getLogger(__name__)


class Service:
    """Runs found in the watched directories, each followed by its own task.

    Parameters
    ----------
    settings
        The service settings.
    publisher
        The bound sockets.
    """

    def __init__(self, settings: ServiceSettings, publisher: Publisher) -> None:
        self.settings = settings
        self.publisher = publisher
        self.stopping = asyncio.Event()
        self.followers: dict[str, RunFollower] = {}
        self.tasks: set[asyncio.Task[object]] = set()
        self.seen: set[str] = set()
        self.pending: set[str] = set()

    def stop(self) -> None:
        """Ask every run to finish its current batch, and discovery to end."""
        if not self.stopping.is_set():
            _logger.info("stopping: finishing the current batch of each run")
            self.stopping.set()

    async def consider(self, paths: list[str], *, startup: bool = False) -> None:
        """Look at run files that appeared or changed.

        Parameters
        ----------
        paths
            Run files, oldest first.
        startup
            The first listing: files older than ``existing_max_age_s`` are left alone.
        """
        for path in [*sorted(self.pending - set(paths)), *paths]:
            owner = next((run for run in self.followers.values() if run.owns(path)), None)
            if owner is not None:
                owner.wake.set()
                continue
            if path in self.seen or self.stopping.is_set():
                continue
            if startup and not self._recent(path):
                self.seen.add(path)
                continue
            await self._open(path)

    def _recent(self, path: str) -> bool:
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return False
        return age <= self.settings.existing_max_age_s

    async def _open(self, path: str) -> None:
        try:
            source = await asyncio.to_thread(open_source, path)
        except NotReady:
            self.pending.add(path)
            return
        except FileNotFoundError:
            self.pending.discard(path)
            return
        except (StemcastError, OSError) as error:
            self.pending.discard(path)
            self.seen.add(path)
            _logger.error("run failed: %s", error)
            return
        self.pending.discard(path)
        self.seen.add(path)
        if isinstance(source, MibSource) and source.first_sequence > 1 and self._continues(path):
            return
        directory = os.path.dirname(path)
        for run in self.followers.values():
            if os.path.dirname(run.path) == directory:
                run.supersede()
        follower = RunFollower(source, self.publisher, self.settings, self.stopping)
        self.followers[path] = follower
        task: asyncio.Task[object] = asyncio.create_task(follower.run(), name=path)
        self.tasks.add(task)
        task.add_done_callback(lambda done: self._finished(path, done))

    def _continues(self, path: str) -> bool:
        """Whether ``path`` is a later file of a Merlin run being followed."""
        return any(
            isinstance(run.source, MibSource) and stem_of(run.path) == stem_of(path)
            for run in self.followers.values()
        )

    def _finished(self, path: str, task: asyncio.Task[object]) -> None:
        self.tasks.discard(task)
        follower = self.followers.pop(path)
        self.seen.update(follower.source.files)
        if not task.cancelled() and task.exception() is not None:
            _logger.error("run %s: %s", path, task.exception())

    async def discover(self, ready: Callable[[], None]) -> None:
        """Follow new runs until the service stops; call ``ready`` after the first listing."""
        settings = self.settings
        first = True
        async for paths in watch(
            settings.watch,
            polling=settings.polling,
            poll_interval_s=settings.poll_interval_s,
            stop=self.stopping,
        ):
            await self.consider(paths, startup=first)
            if first:
                first = False
                ready()

    async def drain(self) -> None:
        """Wait for the runs to finish their batch, then cancel those that cannot."""
        if not self.tasks:
            return
        _, late = await asyncio.wait(set(self.tasks), timeout=self.settings.shutdown_timeout_s)
        self.publisher.stop_waiting()
        for task in late:
            _logger.warning(
                "run %s did not finish in time (no consumer?): cancelled", task.get_name()
            )
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


async def serve(settings: ServiceSettings, ready: Callable[[Service], None] | None = None) -> None:
    """Run the service until SIGTERM or SIGINT.

    Parameters
    ----------
    settings
        The settings (watched directories, endpoints, intervals).
    ready
        Called with the service once discovery is running: its ``publisher`` has the bound
        addresses, its ``stop()`` ends it as SIGTERM does.
    """
    if not settings.watch:
        raise StemcastError("no directory to watch: give --watch DIR or set 'watch'")
    publisher = Publisher(
        settings.data_endpoint,
        settings.preview_endpoint,
        data_hwm=settings.data_hwm,
        preview_hwm=settings.preview_hwm,
        preview_max_fps=settings.preview_max_fps,
    )
    service = Service(settings, publisher)
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, service.stop)
    try:
        await service.discover(lambda: ready(service) if ready else None)
        await service.drain()
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)
        publisher.close(linger_s=settings.shutdown_timeout_s)
    _logger.info("stopped")
