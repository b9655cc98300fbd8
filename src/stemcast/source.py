"""The interface of every run model: what converters and the live service read from a run."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np

from stemcast.batch import FrameBatch
from stemcast.shape import ScanGrid, ScanShape

__all__ = ["Source"]


class Source(ABC):
    """A run on disk (a Merlin run, a TVIPS series) that hands out its frames in batches.

    Frames come oriented as the format's ``file_reader`` returns them, so whatever a
    converter writes from a source reads back as the reader reads the source.
    """

    @property
    @abstractmethod
    def path(self) -> str:
        """The first file of the run."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The run's name, for its outputs: ``scan`` for ``scan.mib``, ``run`` for a series."""

    @property
    @abstractmethod
    def files(self) -> list[str]:
        """All files of the run, in order."""

    @property
    @abstractmethod
    def frames(self) -> int:
        """Complete records in the files."""

    @property
    @abstractmethod
    def record_size(self) -> int:
        """Bytes of one record in the files (frame header and pixels)."""

    @property
    @abstractmethod
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of a decoded frame."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype[Any]:
        """Native dtype of decoded frames."""

    @abstractmethod
    def batches(
        self, start: int = 0, stop: int | None = None, *, batch_frames: int = 64
    ) -> Iterator[FrameBatch]:
        """Yield frames ``start:stop`` decoded and oriented, ``batch_frames`` at a time.

        Parameters
        ----------
        start, stop
            Frame range; ``stop`` defaults to all complete records.
        batch_frames
            Frames per batch (memory stays bounded by one batch).

        Yields
        ------
        FrameBatch
            Native-endian frames, oriented as the format's reader returns them, with their
            raw headers.
        """

    @abstractmethod
    def refresh(self) -> Source:
        """Look again at a run that is being written: new complete records and new files.

        Returns
        -------
        Source
            The run as it is now (the object itself when nothing changed).

        Raises
        ------
        FormatError
            When the files shrank or changed under the run.
        """

    def value_range(self, count: int, *, batch_frames: int = 64) -> tuple[float, float]:
        """Return the minimum and maximum pixel value of the first ``count`` frames.

        Parameters
        ----------
        count
            Frames to look at, from the first.
        batch_frames
            Frames read at a time.

        Returns
        -------
        tuple of float
            ``(minimum, maximum)``.
        """
        low, high = np.inf, -np.inf
        for batch in self.batches(0, count, batch_frames=batch_frames):
            low, high = min(low, batch.frames.min()), max(high, batch.frames.max())
        return float(low), float(high)

    @abstractmethod
    def scan(self) -> ScanGrid:
        """Return the scan shape the format's reader finds, with its evidence.

        Returns
        -------
        ScanGrid
            The shape ``(x, y)`` (or a stack), and the source frame of each scan position
            when they are not simply the frames in order (TVIPS rotator index).
        """

    def navigation(self, kept: tuple[int, ...]) -> tuple[int, ...]:
        """Return the navigation shape of a signal of ``kept`` positions, as the reader gives it.

        Parameters
        ----------
        kept
            Navigation shape in HyperSpy order, ``(x, y)`` or ``(n,)``.

        Returns
        -------
        tuple of int
            The shape the reader would give those positions (e.g. without axes of length 1).
        """
        return kept

    @abstractmethod
    def signal(self, navigation: tuple[int, ...], scan: ScanShape) -> dict[str, Any]:
        """Return axes and metadata of the run as the format's ``file_reader`` gives them.

        Parameters
        ----------
        navigation
            Navigation shape written, HyperSpy order.
        scan
            The scan shape and its evidence.

        Returns
        -------
        dict
            ``axes``, ``metadata`` and ``original_metadata`` (no ``data``).
        """
