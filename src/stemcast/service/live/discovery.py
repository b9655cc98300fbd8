"""Discovery of new runs in the watched directories.

Local directories are watched with file-system events (watchfiles, inotify on Linux). On
network shares (SMB, NFS) the events of files written by another machine never arrive, so
the ``polling`` setting makes watchfiles compare directory listings instead. In both modes
the directories are also listed in full when nothing has happened for a poll interval, so an
event lost in a burst is found at the next listing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from watchfiles import Change, awatch

from stemcast.errors import ParameterError
from stemcast.formats.runs import run_kind
from stemcast.formats.tvips.run import is_tvips

__all__ = ["is_run_file", "list_runs", "watch"]


def is_run_file(change: Change, path: str) -> bool:
    """Whether a file-system change concerns a run file (``.mib``, ``.tvips``)."""
    return change != Change.deleted and (run_kind(path) is not None or is_tvips(path))


def list_runs(directories: Sequence[Path]) -> list[str]:
    """List the run files in ``directories``, oldest first.

    Parameters
    ----------
    directories
        The watched directories (not recursive).

    Returns
    -------
    list of str
        ``.mib`` files and first parts of TVIPS series, by modification time then name.
    """
    found: list[tuple[float, str]] = []
    for directory in directories:
        with os.scandir(directory) as entries:
            for entry in entries:
                if run_kind(entry.name) is None:
                    continue
                try:
                    if entry.is_file():
                        found.append((entry.stat().st_mtime, entry.path))
                except FileNotFoundError:
                    continue
    return [path for _, path in sorted(found)]


async def watch(
    directories: Sequence[Path],
    *,
    polling: bool,
    poll_interval_s: float,
    stop: asyncio.Event,
) -> AsyncIterator[list[str]]:
    """Yield run files that appeared or changed, until ``stop`` is set.

    The first batch is a full listing, made once the watcher is running, so no file created
    after this generator starts is missed.

    Parameters
    ----------
    directories
        Directories to watch (not recursive).
    polling
        Compare listings instead of waiting for events (network shares).
    poll_interval_s
        Time between listings when polling, and between safety listings otherwise.
    stop
        Ends the watch.

    Yields
    ------
    list of str
        Paths of run files, oldest first.
    """
    for directory in directories:
        if not directory.is_dir():
            raise ParameterError(f"{directory} is not a directory", parameter="watch")
    interval_ms = max(1, round(poll_interval_s * 1000))
    first = True
    async for changes in awatch(
        *directories,
        watch_filter=is_run_file,
        debounce=interval_ms,
        step=min(10, interval_ms),
        stop_event=stop,
        rust_timeout=interval_ms,
        yield_on_timeout=True,
        force_polling=polling,
        poll_delay_ms=interval_ms,
        recursive=False,
    ):
        if first or not changes:
            first = False
            yield await asyncio.to_thread(list_runs, directories)
        else:
            yield sorted({path for _, path in changes})
