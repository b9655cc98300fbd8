"""Atomic output files: written under a temporary name, flushed to disk, then renamed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


class AtomicFile:
    """A temporary path next to ``path`` that :meth:`commit` renames to ``path``.

    Until :meth:`commit`, ``path`` is untouched; :meth:`abort` removes the temporary file,
    so an output either appears whole under its final name or not at all.

    Parameters
    ----------
    path
        The final output path.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        #: Where to write, in the same directory (so the rename is atomic).
        self.temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")

    def commit(self) -> None:
        """Fsync the temporary file, rename it to ``path`` and fsync the folder."""
        try:
            fd = os.open(self.temporary, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.temporary, self.path)
            _fsync_directory(self.path.parent)
        finally:
            self.abort()

    def abort(self) -> None:
        """Remove the temporary file, if it is there."""
        with contextlib.suppress(FileNotFoundError):
            self.temporary.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched, so an
    output either appears whole under its final name or not at all.

    Parameters
    ----------
    path
        The final output path.

    Yields
    ------
    pathlib.Path
        Where to write, in the same directory (so the rename is atomic).
    """
    output = AtomicFile(path)
    try:
        yield output.temporary
    except BaseException:
        output.abort()
        raise
    output.commit()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
