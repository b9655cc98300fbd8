"""The interface of every streaming writer: batches of frames in, then commit or abort."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy.typing as npt

from stemcast.batch import FrameBatch

__all__ = ["FrameSink"]


class FrameSink(ABC):
    """An output written batch by batch, final only when committed.

    Every streaming writer (MIB, TVIPS, blockfile, EMD) is a sink, so converters and the live
    service feed any of them the same way. A sink is a context manager: leaving the block
    normally commits, an exception aborts.

    Attributes
    ----------
    path
        The output (for a series of files, its first file).
    frames_written
        Frames taken by :meth:`write` so far.
    """

    path: Path
    frames_written: int

    @abstractmethod
    def write(self, batch: npt.ArrayLike | FrameBatch) -> None:
        """Append the next frames, in acquisition (raster) order.

        Parameters
        ----------
        batch
            ``(n, rows, cols)`` frames (any strides and byte order), one ``(rows, cols)``
            frame, or a :class:`~stemcast.batch.FrameBatch`.
        """

    @abstractmethod
    def commit(self) -> Any:
        """Finish the output: flush it to disk and make it appear under its final name.

        Returns
        -------
        Any
            What the writer reports of the finished output (see each writer).
        """

    @abstractmethod
    def abort(self) -> None:
        """Drop the output: nothing of it is left under its final name.

        Aborting a sink that was committed, or aborted already, does nothing.
        """

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
