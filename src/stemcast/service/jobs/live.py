"""Live conversion: a run's outputs written by a worker process while the camera writes it.

The follower of a run tells the run's live job how far the run can be read, its scan shape
once known, and how it ended, through the job's control folder (``state.json``, replaced
atomically, at most every :data:`_TELL_INTERVAL_S` and at once at the end). The worker
(:func:`convert_live_in_worker`) reads the frames back from the run's files at its own pace,
positional reads of whole records, and writes them into the outputs with
:class:`~stemcast.convert.live.LiveConversion`: the follower never waits for it, and a worker
that falls behind costs no memory in the service.

When the run ends having filled its scan, the worker closes and renames the outputs. A run
that ended otherwise (interrupted before filling its scan, or whose shape was known only at
the end) is converted afresh from its files, as an offline job would, in the same job. A
failed run is not converted: its job ends ``cancelled``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from stemcast.errors import StemcastError
from stemcast.service.jobs.worker import JobControl
from stemcast.shape import Evidence, ScanShape

__all__ = ["LiveJob", "RunNotConverted", "convert_live_in_worker"]

#: Least seconds between two updates of the state file while the run grows.
_TELL_INTERVAL_S = 0.02
#: Seconds between two looks of the worker at the state file when it has nothing to write.
_POLL_S = 0.02
#: Seconds between two progress reports of the worker.
_PROGRESS_INTERVAL_S = 0.2
#: Bytes of frames read and written at a time by the worker.
_BATCH_BYTES = 16 * 2**20
#: Run states whose frames are converted.
_CONVERTED = ("complete", "interrupted")


class RunNotConverted(StemcastError):
    """The run ended in a way that is not converted (it failed, or has no frame)."""


class LiveJob:
    """The service's side of one run's live conversion.

    Parameters
    ----------
    job_id
        The job in the registry.
    control
        The job's control folder.
    """

    def __init__(self, job_id: str, control: JobControl) -> None:
        self.job_id = job_id
        self.control = control
        #: Frames the worker has written, as it last reported.
        self.written = 0
        self._state: dict[str, Any] = {
            "frames": 0,
            "scan": None,
            "evidence": None,
            "detail": None,
            "end": None,
        }
        self._changed = asyncio.Event()
        self._teller: asyncio.Task[None] = asyncio.create_task(
            self._tell(), name=f"live job {job_id}"
        )

    @property
    def frames(self) -> int:
        """Frames of the run the worker has been told it can read."""
        frames: int = self._state["frames"]
        return frames

    def advance(self, frames: int, scan: ScanShape | None) -> None:
        """Say that ``frames`` frames can be read, and the scan shape if known (never waits).

        Parameters
        ----------
        frames
            Frames of the run read and checked by the follower.
        scan
            The scan shape, once known.
        """
        self._state["frames"] = frames
        known = scan is not None and len(scan.shape) == 2 and all(scan.shape)
        if known and scan is not None and self._state["scan"] is None:
            self._state.update(
                scan=[int(size) for size in scan.shape],
                evidence=scan.evidence.value,
                detail=scan.detail,
            )
        self._changed.set()

    def finish(
        self, status: str, frames: int, navigation: tuple[int, ...] | None, reason: str
    ) -> None:
        """Say how the run ended (never waits).

        Parameters
        ----------
        status
            ``complete``, ``interrupted`` or ``failed``.
        frames
            Frames of the run.
        navigation
            The scan shape the frames fill (complete lines), ``(n,)`` for a stack, or
            ``None``: the conversion finds the scan in the files (TVIPS rotator index).
        reason
            Why it ended.
        """
        self._state.update(
            frames=frames,
            end={
                "status": status,
                "navigation": None if navigation is None else [int(size) for size in navigation],
                "reason": reason,
            },
        )
        self._changed.set()

    async def _tell(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            ended = self._state["end"] is not None
            await asyncio.to_thread(self.control.tell, json.dumps(self._state))
            if ended:
                return
            await asyncio.sleep(_TELL_INTERVAL_S)

    async def close(self) -> None:
        """Stop telling the worker anything (the job has ended)."""
        self._teller.cancel()
        await asyncio.gather(self._teller, return_exceptions=True)


def convert_live_in_worker(
    control: str,
    source: str,
    targets: list[str],
    output_dir: str,
    *,
    options: dict[str, Any] | None = None,
    relative_to: str | None = None,
) -> dict[str, Any]:
    """Write a run's outputs while it is acquired, in a worker process.

    Parameters
    ----------
    control
        The job's control folder: ``state.json`` says how far the run can be read, its scan
        and its end; ``cancel`` stops the job; ``progress`` is written here.
    source
        The run's first file.
    targets, output_dir, options, relative_to
        As :func:`stemcast.convert.run.convert_run`.

    Returns
    -------
    dict
        :meth:`stemcast.convert.run.Converted.as_dict` of the result.

    Raises
    ------
    Cancelled
        When the job was cancelled or the service stopped; no output is left.
    RunNotConverted
        When the run failed or ended without a frame.
    """
    from stemcast.convert.live import LiveConversion
    from stemcast.convert.run import Cancelled, convert_run, throttled
    from stemcast.formats.runs import open_run

    folder = Path(control)
    cancel = folder / "cancel"

    def cancelled() -> bool:
        return cancel.exists()

    def report(done: int, total: int) -> None:
        JobControl.report(folder, done, total)

    progress = throttled(report, _PROGRESS_INTERVAL_S)
    step = 1
    conversion: LiveConversion | None = None
    #: Frames written when the worker last caught up (and said so).
    caught_up = -1
    try:
        while True:
            if cancelled():
                raise Cancelled(f"conversion of {source} cancelled")
            state = _read_state(folder)
            if conversion is None and state.get("scan") is not None:
                # Opened once the scan is known: the camera may write the .hdr a moment
                # after the .mib, and the service has read it by then.
                run = open_run(source)
                rows, cols = run.frame_shape
                step = max(1, _BATCH_BYTES // max(rows * cols * run.dtype.itemsize, 1))
                scan = ScanShape(tuple(state["scan"]), Evidence(state["evidence"]), state["detail"])
                conversion = LiveConversion(
                    run, targets, output_dir, scan, options=options, relative_to=relative_to
                )
            todo = 0 if conversion is None else conversion.frames_to_read(state.get("frames", 0))
            if conversion is not None and todo:
                stop = conversion.written + min(todo, step)
                if run.frames < stop:
                    run = run.refresh()
                for batch in run.batches(conversion.written, stop, batch_frames=step):
                    conversion.write(batch)
                progress(conversion.written, conversion.count)
                continue
            if state.get("end") is not None:
                break
            if conversion is not None and caught_up != conversion.written:
                # Caught up: say so now, the throttle may have held the last report back.
                report(conversion.written, conversion.count)
                caught_up = conversion.written
            time.sleep(_POLL_S)
        end = state["end"]
        if end["status"] not in _CONVERTED or not state["frames"]:
            raise RunNotConverted(
                f"the run ended {end['status']} ({end['reason']}): not converted", path=source
            )
        filled = tuple(end["navigation"] or ())
        filled_scan = conversion is not None and filled == tuple(state["scan"])
        if conversion is not None and filled_scan and conversion.written >= conversion.count:
            finished = conversion.finish(run.refresh(), progress=progress, cancelled=cancelled)
            return finished.as_dict()
    except BaseException:
        if conversion is not None:
            conversion.abort()
        raise
    if conversion is not None:
        conversion.abort()
    return convert_run(
        source,
        targets,
        output_dir,
        options=options,
        navigation_shape=filled if len(filled) == 2 else None,
        relative_to=relative_to,
        progress=progress,
        cancelled=cancelled,
    ).as_dict()


def _read_state(folder: Path) -> dict[str, Any]:
    """Return the state the service last wrote (empty before its first word)."""
    try:
        state: dict[str, Any] = json.loads((folder / "state.json").read_text())
    except FileNotFoundError:
        return {}
    return state
