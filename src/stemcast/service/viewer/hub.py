"""What every page of the viewer shares: the runs list and one view per run shown.

The hub builds the runs list once a second while pages are open, and keeps a
:class:`~stemcast.service.viewer.runview.RunView` for each run some page shows (closed a
while after the last page left it). All their reads and sums run in the hub's single
thread, apart from the threads the follower and the data channel use: however many pages are
open, the viewer costs the service one thread and one consumer per run shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stemcast.errors import StemcastError
from stemcast.service.control.target import ControlTarget
from stemcast.service.live.catalog import SeriesEntry
from stemcast.service.live.tail import NotReady, open_source
from stemcast.service.state.records import RunRecord
from stemcast.service.viewer.runs import RunsList
from stemcast.service.viewer.runview import RunView

__all__ = ["ViewerHub"]

_logger = logging.getLogger(__name__)

#: Seconds between two builds of the runs list.
_RUNS_INTERVAL_S = 1.0
#: Recent runs listed.
_RECENT_RUNS = 30
#: Seconds a run view no page looks at is kept.
_VIEW_IDLE_S = 30.0


class ViewerHub:
    """The runs list and the run views of the service's viewer.

    Parameters
    ----------
    service
        The running service: its registry and the publisher's catalog.
    """

    def __init__(self, service: ControlTarget) -> None:
        self.service = service
        self.catalog = service.publisher.catalog
        self.views: dict[str, RunView] = {}
        #: The runs list as JSON text (a ``runs`` message) and its version.
        self.runs_message = json.dumps({"type": "runs", "runs": []})
        self.runs_version = 0
        self.runs: dict[str, dict[str, Any]] = {}
        self.pages = 0
        self._list = RunsList(self.catalog)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="stemcast-viewer")
        self._opening: dict[str, asyncio.Task[RunView | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listed = asyncio.Event()

    def attach(self) -> None:
        """Count a page that opened; start building the runs list."""
        self.pages += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._maintain(), name="viewer runs")

    def detach(self) -> None:
        """Count a page that closed."""
        self.pages -= 1

    async def listed(self) -> None:
        """Wait until the runs list has been built once."""
        await self._listed.wait()

    def newest(self) -> str | None:
        """Return the run a page following the newest shows: the last to start."""
        if self.catalog.entries:
            return self.catalog.entries[-1].series
        return next(iter(self.runs), None)

    async def view(self, series: str) -> RunView | None:
        """Return the view of a run, opening it if no page shows it yet.

        Parameters
        ----------
        series
            The run's id.

        Returns
        -------
        RunView or None
            ``None`` when the run is not known or its files cannot be read.
        """
        view = self.views.get(series)
        if view is not None:
            return view
        opening = self._opening.get(series)
        if opening is None:
            opening = self._opening[series] = asyncio.create_task(self._open(series))
            opening.add_done_callback(lambda _: self._opening.pop(series, None))
        return await asyncio.shield(opening)

    async def _open(self, series: str) -> RunView | None:
        entry = self.catalog.find(series)
        if entry is not None:
            view = RunView(entry, self.catalog.listen(), self._executor, self.catalog.forget)
        else:
            record = await asyncio.to_thread(self.service.registry.run, series)
            entry = None if record is None else await asyncio.to_thread(_from_files, record)
            if entry is None:
                return None
            view = RunView(entry, asyncio.Event(), self._executor)
        self.views[series] = view
        return view

    async def _maintain(self) -> None:
        """Build the runs list once a second and close unused views, while pages are open."""
        registry = self.service.registry
        while self.pages > 0 or self.views:
            try:
                runs = await asyncio.to_thread(registry.runs, limit=_RECENT_RUNS)
                jobs = await asyncio.to_thread(registry.jobs, limit=4 * _RECENT_RUNS)
            except (StemcastError, OSError) as error:
                _logger.warning("viewer: cannot read the registry: %s", error)
            else:
                shown = self._list.build(runs, jobs)
                self.runs = {item["id"]: item for item in shown}
                message = json.dumps({"type": "runs", "runs": shown}, default=str)
                if message != self.runs_message:
                    self.runs_message = message
                    self.runs_version += 1
                self._listed.set()
            now = time.monotonic()
            for series, view in list(self.views.items()):
                if now - view.used > _VIEW_IDLE_S:
                    del self.views[series]
                    await view.close()
            await asyncio.sleep(_RUNS_INTERVAL_S)

    async def close(self) -> None:
        """Close every view and the hub's thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for view in list(self.views.values()):
            await view.close()
        self.views.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _from_files(record: RunRecord) -> SeriesEntry | None:
    """Make a catalog entry for a run that ended before the service started (blocks).

    Returns ``None`` when the run is still followed by no one (never ended) or its files
    cannot be read.
    """
    if not record["status"].ended:
        return None
    try:
        source = open_source(record["path"])
    except (NotReady, StemcastError, OSError) as error:
        _logger.info("viewer: run %s cannot be shown: %s", record["id"], error)
        return None
    shape = record["nav_shape"]
    width = shape[0] if shape and len(shape) == 2 else None

    def position(frame: int) -> list[int] | None:
        return None if width is None else [frame % width, frame // width]

    fields = {"nav_shape": shape, "nav_evidence": record["nav_evidence"]}
    entry = SeriesEntry(record["id"], dict(fields), source, position)
    entry.frames = min(record["frames"], source.frames)
    entry.end = {"status": str(record["status"]), **fields}
    return entry
