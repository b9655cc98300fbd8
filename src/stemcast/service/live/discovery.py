"""Discovery of new runs in the watched directories.

Local directories are watched with file-system events (watchfiles, inotify on Linux). On
network shares (SMB, NFS) the events of files written by another machine never arrive, so
the ``polling`` setting makes watchfiles compare directory listings instead. In both modes
the directories are also listed in full when nothing has happened for a poll interval, so an
event lost in a burst is found at the next listing.

Nothing found in a folder stops discovery. A watch folder that vanishes (an unmounted share)
or cannot be listed is left out, with one warning, until it can be listed again; following
goes on in the other folders and resumes in that one when it comes back. An entry that
cannot be looked at (a symbolic link loop, no permission) is skipped with one warning, and so
is a symbolic link whose target lies outside the watch folders: only files within them are
followed, as the HTTP API reads only files within them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watchfiles import Change, awatch

from stemcast.formats.runs import run_kind
from stemcast.formats.tvips.run import is_tvips
from stemcast.service.live.reasons import bounded
from stemcast.service.paths import inside

__all__ = ["GONE", "HEAD_BYTES", "FileIdentity", "Found", "WatchFolders", "is_run_file", "watch"]

#: Bytes at the start of a run file that tell one acquisition from another: the first frame
#: header (or TVIPS main and first frame header), with the acquisition's time.
HEAD_BYTES = 4096

_logger = logging.getLogger(__name__)


def is_run_file(change: Change, path: str) -> bool:
    """Whether a file-system change concerns a run file (``.mib``, ``.tvips``)."""
    return change != Change.deleted and (run_kind(path) is not None or is_tvips(path))


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file a name stands for, as it was when looked at: a name reused is another file.

    Attributes
    ----------
    device, inode
        The file (its target, for a symbolic link).
    size
        Its size in bytes.
    mtime_ns
        Its modification time.
    head
        Digest of its first :data:`HEAD_BYTES` bytes, when they were read (at the end of its
        run); empty otherwise.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    head: str = field(default="", compare=False)

    @classmethod
    def of(cls, path: str, *, head: bool = False) -> FileIdentity:
        """Look at ``path`` now (following links); ``head`` also digests its start.

        Raises
        ------
        OSError
            When it cannot be looked at (gone, a link loop, no permission).
        """
        status = os.stat(path)
        digest = head_digest(path) if head else ""
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, digest)

    def same_file(self, other: FileIdentity) -> bool | None:
        """Whether ``other``, found under the same name later, is still this file.

        Returns
        -------
        bool or None
            ``False`` for another inode or a smaller size (rewritten in place), ``True`` when
            nothing changed, ``None`` when the same inode was written since: a file system
            may give a new file the inode of one just deleted, so only its start (compare
            :attr:`head`) tells. Without a recorded head, ``True``.
        """
        if (other.device, other.inode) != (self.device, self.inode) or other.size < self.size:
            return False
        if (other.size, other.mtime_ns) == (self.size, self.mtime_ns) or not self.head:
            return True
        return None


def head_digest(path: str) -> str:
    """Return a digest of the first :data:`HEAD_BYTES` bytes of ``path``."""
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read(HEAD_BYTES)).hexdigest()


#: What a file that was gone when looked at is: any file found later under its name differs.
GONE = FileIdentity(-1, -1, 0, 0)


@dataclass(frozen=True, slots=True)
class Found:
    """A run file found in a watch folder.

    Attributes
    ----------
    path
        Its path in the watch folder (a symbolic link keeps its own name).
    identity
        The file it is now.
    mtime
        Its modification time (seconds since the epoch).
    """

    path: str
    identity: FileIdentity
    mtime: float


class WatchFolders:
    """The watch folders: which can be listed, and the run files they hold.

    Every problem is told once, when it appears (a folder that cannot be listed, an entry
    that cannot be looked at or points outside the folders), and again only after it went
    away and came back. The methods block (file-system access): the service calls them in a
    worker thread.

    Parameters
    ----------
    directories
        The watched directories (not recursive).
    """

    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = [Path(directory) for directory in directories]
        #: The folders that could not be listed at the last look, with the reason.
        self.unavailable: dict[Path, str] = {}
        self._told: dict[str, str] = {}

    def available(self) -> list[Path]:
        """Return the folders that can be listed now, telling which stopped or started."""
        found = []
        for directory in self.directories:
            try:
                with os.scandir(directory) as entries:
                    next(entries, None)
            except OSError as error:
                reason = error.strerror or str(error)
                if self.unavailable.get(directory) != reason:
                    _logger.warning(
                        "watch folder %s cannot be listed (%s): its runs are not followed "
                        "until it can be",
                        directory,
                        reason,
                    )
                self.unavailable[directory] = reason
                continue
            if self.unavailable.pop(directory, None) is not None:
                _logger.info("watch folder %s can be listed again: following its runs", directory)
            found.append(directory)
        return found

    def runs(self, directories: Sequence[Path] | None = None) -> list[Found]:
        """List the run files of ``directories`` (default: those available), oldest first.

        Returns
        -------
        list of Found
            ``.mib`` files and first parts of TVIPS series, by modification time then name.
        """
        found: list[Found] = []
        for directory in self.available() if directories is None else directories:
            try:
                with os.scandir(directory) as entries:
                    names = [entry.path for entry in entries if run_kind(entry.name) is not None]
            except OSError as error:
                self._tell(os.fspath(directory), f"cannot be listed: {error.strerror or error}")
                continue
            found.extend(self.look_all(names))
        found.sort(key=lambda item: (item.mtime, item.path))
        return found

    def look(self, path: str) -> Found | None:
        """Look at one file of a watch folder: ``None`` when it is not a file to follow.

        Parameters
        ----------
        path
            A file name in a watch folder.

        Returns
        -------
        Found or None
            What it is now; ``None`` when it is gone, not a regular file, cannot be looked
            at, or is a symbolic link to a file outside the watch folders (the last two are
            told once).
        """
        try:
            status = os.stat(path)
        except FileNotFoundError:
            self._forget(path)
            return None
        except OSError as error:
            self._tell(path, f"skipped: {error.strerror or error}")
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        if os.path.islink(path):
            target = os.path.realpath(path)
            roots = [os.path.realpath(directory) for directory in self.directories]
            if not any(inside(target, root) for root in roots):
                self._tell(
                    path,
                    "skipped: a symbolic link to a file outside the watch folders "
                    "(only files within them are followed)",
                )
                return None
        self._forget(path)
        identity = FileIdentity(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        return Found(path, identity, status.st_mtime)

    def look_all(self, paths: Sequence[str]) -> list[Found]:
        """Look at files named by file-system events; keep those to follow, in order."""
        return [item for item in map(self.look, paths) if item is not None]

    def _tell(self, key: str, message: str) -> None:
        if self._told.get(key) != message:
            self._told[key] = message
            _logger.warning("%s: %s", key, message)

    def _forget(self, key: str) -> None:
        self._told.pop(key, None)


async def watch(
    folders: WatchFolders,
    *,
    polling: bool,
    poll_interval_s: float,
    stop: asyncio.Event,
) -> AsyncIterator[list[Found]]:
    """Yield run files that appeared or changed, until ``stop`` is set.

    The first batch is a full listing, made once the watcher is running, so no file created
    after this generator starts is missed. When the folders that can be listed change (one
    vanished, or came back), the watcher starts again on those that can.

    Parameters
    ----------
    folders
        The folders to watch (not recursive).
    polling
        Compare listings instead of waiting for events (network shares).
    poll_interval_s
        Time between listings when polling, and between safety listings otherwise.
    stop
        Ends the watch.

    Yields
    ------
    list of Found
        Run files, oldest first.
    """
    interval_ms = max(1, round(poll_interval_s * 1000))
    #: The folders the watcher failed on: listed every poll interval instead.
    failed: list[Path] | None = None
    while not stop.is_set():
        watched = await asyncio.to_thread(folders.available)
        if not watched or watched == failed:
            yield await asyncio.to_thread(folders.runs, watched)
            await _sleep(stop, poll_interval_s)
            continue
        # A full listing first, once the watcher runs: nothing created from now on is missed.
        full = True
        names = {os.fspath(folder) for folder in watched}

        def wanted(change: Change, path: str, names: set[str] = names) -> bool:
            # A change of a watched folder itself (gone, back) calls for a full listing.
            return (path in names and change != Change.modified) or is_run_file(change, path)

        try:
            async for changes in awatch(
                *watched,
                watch_filter=wanted,
                debounce=interval_ms,
                step=min(10, interval_ms),
                stop_event=stop,
                rust_timeout=interval_ms,
                yield_on_timeout=True,
                force_polling=polling,
                poll_delay_ms=interval_ms,
                recursive=False,
            ):
                if full or not changes or any(path in names for _, path in changes):
                    # The watcher's first look, a quiet interval, or a folder gone or back.
                    full = False
                    now = await asyncio.to_thread(folders.available)
                    yield await asyncio.to_thread(folders.runs, now)
                    if now != watched:
                        break
                else:
                    paths = sorted({path for _, path in changes})
                    yield await asyncio.to_thread(folders.look_all, paths)
        except Exception as error:  # the watcher gives up on entries it cannot stat (loops)
            _logger.warning(
                "watching %s failed (%s): listing %s every %g s instead",
                ", ".join(map(str, watched)),
                bounded(str(_innermost(error))),
                "it" if len(watched) == 1 else "them",
                poll_interval_s,
            )
            failed = watched


def _innermost(error: BaseException) -> BaseException:
    """Return the first error an exception group holds (the watcher raises groups)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
