"""The scan shape of a run being followed, from the evidence that has arrived so far.

The acquisition software's shape (``.hdr``) or the user's is known at the start, and with it
the number of frames the run holds. Otherwise the frame timestamps show the line fly-backs
as the frames arrive, and a TVIPS rotator index gives the scan once the index drops back to
0 after its last scan position (or, when it never does, when the run ends). Only the
evidence is kept (a bounded number of timestamps, a few small integers per frame of a TVIPS
run until its scan is found), never frames.
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
        #: Frames the run holds, once known: its end is then its last frame.
        self.frames_expected = frames_expected
        #: Why the run is complete once :attr:`frames_expected` frames have arrived.
        self.complete_reason = f"all {frames_expected} frames announced by the .hdr"
        self._user = user
        self._capacity = timestamp_frames
        self._times: list[npt.NDArray[np.int64]] = []
        self._kept = 0
        self._fields: dict[str, list[npt.NDArray[np.int64]]] = {}
        self._taken = 0
        self._rotator_last = 0
        #: Scan position of each frame of a scan found from the rotator index (-1: none).
        self._positions: npt.NDArray[np.int64] | None = None
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
        if frames_expected is None and self.scan is not None and all(self.scan.shape):
            self.frames_expected = self.scan.frames
            self.complete_reason = f"all {self.scan.frames} frames of the scan: {self.scan.detail}"

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
            Whether this batch made the scan shape known. When a TVIPS rotator index drops
            back to 0 after the last position of a scan, :attr:`frames_expected` becomes the
            frames up to and including that frame: the run ends there.
        """
        if self.scan is None and fields and self._take(fields):
            return True
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

    def _take(self, fields: dict[str, npt.NDArray[np.int64]]) -> bool:
        """Keep the header fields of a batch; whether its rotator index ended a scan."""
        for name, values in fields.items():
            self._fields.setdefault(name, []).append(values)
        rotator = fields.get("rotator")
        first = self._taken
        self._taken += len(next(iter(fields.values())))
        if rotator is None or not len(rotator):
            return False
        before = np.r_[self._rotator_last, rotator[:-1]]
        self._rotator_last = int(rotator[-1])
        drops = np.flatnonzero((rotator <= 0) & (before > 0))
        return any(self._scan_ended(first + int(drop) + 1, int(before[drop])) for drop in drops)

    def _columns(self, frames: int | None = None) -> dict[str, npt.NDArray[np.int64]]:
        return {name: np.concatenate(parts)[:frames] for name, parts in self._fields.items()}

    def _scan_ended(self, frames: int, last: int) -> bool:
        """Keep the scan of the first ``frames`` frames if they hold whole scans of ``last``.

        The last of them is the frame whose rotator index dropped to 0 from ``last``.
        """
        columns = self._columns(frames)
        found = scan_from_rotator(columns.pop("rotator"), **columns)
        shape = found.scan.shape
        if found.frames is None or len(shape) < 2 or shape[0] * shape[1] != last:
            return False
        self.scan = found.scan
        self.frames_expected = frames
        self.complete_reason = (
            f"the rotator index reached the last of the {last} scan positions and dropped to 0 "
            f"at frame {frames - 1}"
        )
        grid = found.frames.reshape(-1)
        positions = np.full(frames, -1, dtype=np.int64)
        # The first position a frame stands for is its own (a frame repeated for skipped
        # positions also fills the ones after it).
        held, first = np.unique(grid, return_index=True)
        positions[held] = first % last
        self._positions = positions
        self._fields.clear()
        return True

    def position(self, frame: int) -> list[int] | None:
        """Scan position ``[x, y]`` of frame ``frame``, once the width is known."""
        width = self.width
        if width is None:
            return None
        if self._positions is None:
            return [frame % width, frame // width]
        found = int(self._positions[frame]) if frame < len(self._positions) else -1
        return None if found < 0 else [found % width, found // width]

    def cut_short(self, frames: int) -> str | None:
        """Say how a run without a known frame count visibly stops within its scan.

        Parameters
        ----------
        frames
            Frames published when the run's files stopped growing.

        Returns
        -------
        str or None
            Why the scan was cut short (a last scan line of a known width not complete, a
            rotator index or scan positions stopping within the scan); ``None`` when nothing
            shows it.
        """
        width = self.width
        if width is not None:
            if frames % width:
                return f"its last scan line has {frames % width} of its {width} frames"
            return None
        if "rotator" not in self._fields:
            return None
        columns = self._columns(frames)
        rotator = columns["rotator"]
        scanning = np.flatnonzero(rotator > 0)
        if not scanning.size:
            return None
        last = int(rotator[scanning[-1]])
        found = scan_from_rotator(
            rotator,
            counters=columns.get("counters"),
            scan_x=columns.get("scan_x"),
            scan_y=columns.get("scan_y"),
        )
        if found.frames is not None:
            positions = found.scan.shape[0] * found.scan.shape[1]
            if last < positions:
                return f"the rotator index stopped at scan position {last} of {positions}"
            return None
        scan_x = columns.get("scan_x")
        if scan_x is None:
            return None
        xs = scan_x[scanning]
        line = int(xs.max()) + 1
        if line > 1 and bool((np.diff(xs) < 0).any()) and int(xs[-1]) < line - 1:
            return f"the scan positions stop within a line, at x = {int(xs[-1])} of {line}"
        return None

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
            columns: dict[str, Any] = self._columns(frames)
            scan = scan_from_rotator(columns.pop("rotator"), **columns).scan
        if scan is None or len(scan.shape) < 2:
            reason = scan.detail if scan is not None else "no scan shape found: a stack of frames"
            return ScanShape((frames,), Evidence.NONE, reason), (frames,)
        return scan, complete_lines(scan.shape, frames)

    def announce(
        self,
        *,
        hdr_shape: Sequence[int] | None = None,
        frames_per_line: int | None = None,
        frames_expected: int | None = None,
    ) -> bool:
        """Take what the acquisition software announced after the run started (a late ``.hdr``).

        The announced frame count is taken if none was known; the announced scan replaces
        none, or one found from timestamps (the ``.hdr`` is the stronger evidence), never the
        user's.

        Returns
        -------
        bool
            Whether the scan shape changed.
        """
        announced = NavigationTracker(
            user=self._user,
            hdr_shape=hdr_shape,
            frames_per_line=frames_per_line,
            frames_expected=frames_expected,
            timestamp_frames=self._capacity,
        )
        before = self.scan
        if self.frames_expected is None and announced.frames_expected is not None:
            self.frames_expected = announced.frames_expected
            self.complete_reason = announced.complete_reason
        timed = self.scan is not None and self.scan.evidence is Evidence.TIMESTAMPS
        if announced.scan is not None and (self.scan is None or timed):
            self.scan = announced.scan
        elif self.scan is not None and timed and self.frames_expected:
            width = self.scan.shape[0]
            height = self.frames_expected // width
            self.scan = ScanShape((width, height), Evidence.TIMESTAMPS, self.scan.detail)
        return self.scan != before
