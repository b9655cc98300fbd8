"""The interface of every streaming writer: batches of frames in, then commit or abort."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy.typing as npt

from stemcast.batch import FrameBatch
from stemcast.errors import ParameterError

__all__ = ["FrameSink", "SinkState"]

SinkState = Literal["open", "committed", "aborted"]


class FrameSink(ABC):
    """An output written batch by batch, final only when committed.

    Every streaming writer (MIB, TVIPS, blockfile, EMD) is a sink, so converters and the live
    service feed any of them the same way. A sink is a context manager: leaving the block
    normally commits (unless the sink was aborted in it), an exception aborts.

    This class keeps the sink's state: :meth:`commit` and :meth:`abort` run the writer's
    :meth:`_commit` and :meth:`_abort` once, a failed commit aborts, and a finished sink
    refuses more frames (writers call :meth:`check_open` before writing).

    Attributes
    ----------
    path
        The output (for a series of files, its first file).
    frames_written
        Frames taken by :meth:`write` so far.
    state
        ``"open"``, ``"committed"`` or ``"aborted"``.
    """

    path: Path
    frames_written: int
    state: SinkState = "open"
    _committed: Any = None

    @abstractmethod
    def write(self, batch: npt.ArrayLike | FrameBatch) -> None:
        """Append the next frames, in acquisition (raster) order.

        Parameters
        ----------
        batch
            ``(n, rows, cols)`` frames (any strides and byte order), one ``(rows, cols)``
            frame, or a :class:`~stemcast.batch.FrameBatch`.

        Raises
        ------
        ParameterError
            When the sink was committed or aborted.
        """

    def commit(self) -> Any:
        """Finish the output: flush it to disk and make it appear under its final name.

        Committing again returns the same result. When finishing fails, the sink is
        aborted and the error raised.

        Returns
        -------
        Any
            What the writer reports of the finished output (see each writer).

        Raises
        ------
        ParameterError
            When the sink was aborted.
        """
        if self.state == "committed":
            return self._committed
        self.check_open()
        try:
            result = self._commit()
        except BaseException:
            self.abort()
            raise
        self.state = "committed"
        self._committed = result
        return result

    def abort(self) -> None:
        """Drop the output: nothing of it is left under its final name.

        Aborting a sink that was committed, or aborted already, does nothing.
        """
        if self.state != "open":
            return
        self.state = "aborted"
        self._abort()

    def check_open(self) -> None:
        """Refuse to go on with a committed or aborted sink (:class:`ParameterError`)."""
        if self.state != "open":
            raise ParameterError(f"the writer was already {self.state}", path=self.path)

    @abstractmethod
    def _commit(self) -> Any:
        """Finish the output (the writer's part of :meth:`commit`); return its result."""

    @abstractmethod
    def _abort(self) -> None:
        """Remove what was written (the writer's part of :meth:`abort`)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None and self.state != "aborted":
            self.commit()
        else:
            self.abort()
