"""The scan shape of a run being followed, from the evidence that has arrived so far.

The acquisition software's shape (``.hdr``) or the user's is known at the start. Otherwise
the frame timestamps show the line fly-backs as the frames arrive, and a TVIPS rotator index
gives the scan when the run ends. Only the evidence is kept (a bounded number of timestamps,
one small integer per frame of the rotator), never frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from stemcast.shape import (
    Evidence,
    ScanShape,
    complete_lines,
    infer_scan_shape,
    line_width_from_timestamps,
    scan_from_rotator,
)

__all__ = ["NavigationTracker"]


class NavigationTracker:
    """Collect scan-shape evidence of one run and say what the shape is.

    Parameters
    ----------
    user
        Shape ``(x, y)`` configured by the user: used as is.
    hdr_shape, frames_per_line, frames_expected
        What the acquisition software announced.
    timestamp_frames
        Timestamps kept to find the line width from fly-back gaps.
    """

    def __init__(
        self,
        *,
        user: Sequence[int] | None = None,
        hdr_shape: Sequence[int] | None = None,
        frames_per_line: int | None = None,
        frames_expected: int | None = None,
        timestamp_frames: int = 4096,
    ) -> None:
        self.frames_expected = frames_expected
        self._capacity = timestamp_frames
        self._times: list[npt.NDArray[np.int64]] = []
        self._kept = 0
        self._fields: dict[str, list[npt.NDArray[np.int64]]] = {}
        self.scan: ScanShape | None = None
        if user is not None or hdr_shape is not None or (frames_per_line or 0) > 1:
            found = infer_scan_shape(
                frames_expected or 0,
                user=user,
                hdr_shape=hdr_shape,
                frames_per_line=frames_per_line,
                frames_expected=frames_expected,
            )
            self.scan = found if found.evidence is not Evidence.NONE else None

    @property
    def width(self) -> int | None:
        """Frames per scan line, once known."""
        return self.scan.shape[0] if self.scan and len(self.scan.shape) > 1 else None

    def add(
        self, times_ns: npt.NDArray[np.int64] | None, fields: dict[str, npt.NDArray[np.int64]]
    ) -> bool:
        """Take the evidence of the next batch of frames.

        Parameters
        ----------
        times_ns
            Their timestamps, if the headers have them.
        fields
            Per-frame header fields (TVIPS rotator index, counters, scan positions).

        Returns
        -------
        bool
            Whether this batch made the scan shape known.
        """
        if self.scan is None:
            for name, values in fields.items():
                self._fields.setdefault(name, []).append(values)
        if self.scan is not None or times_ns is None or self._kept >= self._capacity:
            return False
        kept = times_ns[: self._capacity - self._kept]
        self._times.append(kept)
        self._kept += len(kept)
        times = np.concatenate(self._times)
        width = line_width_from_timestamps(times)
        # Two fly-backs seen: one late frame alone is jitter, not a line end.
        if width is None or len(times) < 2 * width + 1:
            return False
        total = self.frames_expected or 0
        height = total // width if total >= width else 0
        detail = f"fly-back gap after every {width} frames (seen live)"
        self.scan = ScanShape((width, height), Evidence.TIMESTAMPS, detail)
        return True

    def position(self, frame: int) -> list[int] | None:
        """Scan position ``[x, y]`` of frame ``frame``, once the width is known."""
        width = self.width
        return None if width is None else [frame % width, frame // width]

    def final(self, frames: int) -> tuple[ScanShape, tuple[int, ...]]:
        """Return the run's scan shape once it has ended with ``frames`` frames.

        Parameters
        ----------
        frames
            Frames published.

        Returns
        -------
        tuple
            The intended shape with its evidence, and the shape the frames fill (complete
            lines only for an interrupted scan).
        """
        scan = self.scan
        if scan is not None and scan.evidence is Evidence.TIMESTAMPS and scan.shape[1] == 0:
            width = scan.shape[0]
            scan = ScanShape((width, frames // width), scan.evidence, scan.detail)
        if scan is None and "rotator" in self._fields:
            columns: dict[str, Any] = {
                name: np.concatenate(parts) for name, parts in self._fields.items()
            }
            scan = scan_from_rotator(columns.pop("rotator"), **columns).scan
        if scan is None or len(scan.shape) < 2:
            reason = scan.detail if scan is not None else "no scan shape found: a stack of frames"
            return ScanShape((frames,), Evidence.NONE, reason), (frames,)
        return scan, complete_lines(scan.shape, frames)
