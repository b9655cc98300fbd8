"""The runs list of the viewer: the runs being followed and the recent ones, with their jobs.

The registry says what each run is and how its conversions go; the catalog says how far a
run being followed has been read right now. The list is built once a second for every page
together (:class:`RunsList`), never per page.
"""

from __future__ import annotations

import os
import time
from collections import deque
from datetime import datetime
from typing import Any

from stemcast.service.control.api import job_view
from stemcast.service.live.catalog import Catalog, SeriesEntry
from stemcast.service.state.records import JobRecord, RunRecord

__all__ = ["RunsList"]

#: Seconds of frame counts the rate of a run being followed is measured over.
_RATE_WINDOW_S = 3.0


class RunsList:
    """Build the runs list from the registry's rows and the catalog.

    Parameters
    ----------
    catalog
        The series the service follows or followed since it started.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._counts: dict[str, deque[tuple[float, int]]] = {}

    def build(self, runs: list[RunRecord], jobs: list[JobRecord]) -> list[dict[str, Any]]:
        """Return the runs as the pages show them, newest first.

        Parameters
        ----------
        runs
            The recent runs as the registry has them, newest first.
        jobs
            Their conversion jobs, newest first.

        Returns
        -------
        list of dict
            Per run: ``id``, ``name``, ``path``, ``detector``, ``status``, ``reason``,
            ``frames``, ``frames_expected``, ``frame_shape``, ``dtype``, ``rate`` (frames/s),
            ``lag`` (frames written by the camera and not yet read, and the seconds that
            makes at the current rate), ``scan`` (``shape``, ``evidence``, ``detail``),
            ``started_at``, ``ended_at`` and ``jobs`` (status, targets, outputs, progress).
        """
        now = time.monotonic()
        by_run: dict[str, list[dict[str, Any]]] = {}
        for job in jobs:
            if job["run_id"] is not None:
                by_run.setdefault(job["run_id"], []).append(job_view(job))
        live = {entry.series: entry for entry in self.catalog.entries}
        shown = [self._item(run, live.get(run["id"]), now) for run in runs]
        for item in shown:
            item["jobs"] = [
                {
                    name: job[name]
                    for name in ("id", "status", "targets", "outputs", "progress", "error")
                }
                for job in by_run.get(item["id"], [])
            ]
        for series in list(self._counts):
            if series not in live or live[series].ended:
                del self._counts[series]
        return shown

    def _item(self, run: RunRecord, entry: SeriesEntry | None, now: float) -> dict[str, Any]:
        status, frames = str(run["status"]), run["frames"]
        scan = {
            "shape": run["nav_shape"],
            "evidence": run["nav_evidence"],
            "detail": run["nav_detail"],
        }
        rate = _average_rate(run)
        lag: dict[str, Any] = {"frames": 0, "seconds": 0.0}
        if entry is not None:
            frames = entry.frames
            fields = entry.end if entry.end is not None else entry.header
            scan["shape"] = fields.get("nav_shape") or scan["shape"]
            scan["evidence"] = fields.get("nav_evidence") or scan["evidence"]
            if entry.end is None:
                status = "following"
                rate = self._rate(entry, now)
                written = entry.source.frames
                expected = run["frames_expected"]
                if expected is not None:
                    written = min(written, expected)
                behind = max(0, written - entry.frames)
                seconds = behind / rate if rate else None
                lag = {"frames": behind, "seconds": seconds}
        return {
            "id": run["id"],
            "name": os.path.basename(run["path"]),
            "path": run["path"],
            "detector": run["detector"],
            "status": status,
            "reason": run["reason"],
            "frames": frames,
            "frames_expected": run["frames_expected"],
            "frame_shape": run["frame_shape"],
            "dtype": run["dtype"],
            "rate": None if rate is None else round(rate, 1),
            "lag": lag,
            "scan": scan,
            "started_at": run["started_at"],
            "ended_at": run["ended_at"],
        }

    def _rate(self, entry: SeriesEntry, now: float) -> float | None:
        """Frames per second of a run being followed, over the last few seconds."""
        counts = self._counts.setdefault(entry.series, deque())
        counts.append((now, entry.frames))
        while len(counts) > 2 and now - counts[1][0] >= _RATE_WINDOW_S:
            counts.popleft()
        (first, before), (last, after) = counts[0], counts[-1]
        return (after - before) / (last - first) if last > first else None


def _average_rate(run: RunRecord) -> float | None:
    """Frames per second of a run that ended, from its start to its end."""
    if run["ended_at"] is None or not run["frames"]:
        return None
    started = datetime.fromisoformat(run["started_at"])
    ended = datetime.fromisoformat(run["ended_at"])
    seconds = (ended - started).total_seconds()
    return run["frames"] / seconds if seconds > 0 else None
