"""Series that ended before the service started, rebuilt from the registry and their files.

A data client resumes from the position it saw last, ``(series, frame)``. When the series
ended before a restart of the service, the new process has no catalog entry for it: the
entry is rebuilt here from the run's registry record (its files, the frames it published,
how it ended and its scan) and from its files, which are read once to find each frame's
scan position as the follower found it. The client then gets the rest of the series and
its ``series_end`` as if the service had not restarted.
"""

from __future__ import annotations

import time
from typing import Any

from stemcast.errors import FormatError
from stemcast.service.config import ServiceSettings
from stemcast.service.live.catalog import SeriesEntry
from stemcast.service.live.navigation import NavigationTracker
from stemcast.service.live.tail import open_source, series_fields
from stemcast.service.state.records import RunRecord, RunStatus

__all__ = ["recall_series"]


def recall_series(record: RunRecord, settings: ServiceSettings) -> SeriesEntry:
    """Rebuild the catalog entry of a run that ended, as its follower left it.

    Runs in a worker thread: it opens the run's files and reads the frames it published
    (for their timestamps and header fields).

    Parameters
    ----------
    record
        The run's registry record; its status must be an end a ``series_end`` tells
        (complete, interrupted or failed).
    settings
        The service settings the scan positions are found with (configured shape, frames
        of timestamps kept).

    Returns
    -------
    SeriesEntry
        The ended entry: header, every published frame readable, and its ``series_end``
        fields.

    Raises
    ------
    FormatError
        When the run has not ended (or was abandoned), or its files no longer hold the
        frames it published.
    OSError
        When its files cannot be read (gone, no permission).
    """
    if record["status"] in (RunStatus.FOLLOWING, RunStatus.ABANDONED):
        raise FormatError(f"the run is {record['status'].value}", path=record["path"])
    source = open_source(record["path"])
    source.refresh(rescan=True)
    frames = record["frames"]
    if source.frames < frames:
        raise FormatError(
            f"the run's files hold {source.frames} frames, fewer than the {frames} it published",
            path=record["path"],
        )
    navigation = NavigationTracker(
        user=settings.navigation_shape,
        hdr_shape=source.hdr_shape,
        frames_per_line=source.frames_per_line,
        frames_expected=source.frames_expected,
        timestamp_frames=settings.timestamp_frames,
    )
    rows, cols = source.frame_shape
    step = max(1, settings.batch_bytes // max(1, rows * cols * source.dtype.itemsize))
    for start in range(0, frames, step):
        # The scan positions come from the frames' headers: the pixels are not read.
        headers = source.read_headers(start, min(frames, start + step))
        times = source.times_ns(headers, start) if source.timestamps_show_lines else None
        navigation.add(times, source.header_fields(headers))
    header: dict[str, Any] = {
        "series": record["id"],
        **series_fields(source),
        "sources": record["sources"],
        "nav_shape": record["nav_shape"],
        "nav_evidence": record["nav_evidence"],
    }
    entry = SeriesEntry(record["id"], header, source, navigation.position)
    entry.frames = frames
    entry.readable(frames, time.monotonic())
    entry.end = {
        "frames": frames,
        "status": record["status"].value,
        "reason": record["reason"] or "",
        "nav_shape": record["nav_shape"],
        "nav_shape_intended": record["nav_shape_intended"],
        "nav_evidence": record["nav_evidence"],
        "nav_detail": record["nav_detail"],
        "sources": record["sources"],
    }
    return entry
