"""Conversions in worker processes: a crash fails one job, never the service.

HDF5 aborts the process on some write errors (closing a file after a failed write on a full
disk, for one), and a conversion holds the interpreter lock for part of every batch. The
service therefore converts in a pool of worker processes: a worker that dies fails its job
(:class:`WorkerDied`), the pool is made anew, and the runs being followed never share a
lock with a conversion.

A job and its worker talk through a small control folder: the worker writes its progress to
``progress`` (``done total``, replaced atomically) and stops between two batches once
``cancel`` exists. Workers die with the service (``PR_SET_PDEATHSIG``): a killed service
leaves no conversion behind that would rename an output later; its temporary files are
removed when the job is taken up again.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from stemcast.errors import StemcastError

__all__ = ["JobControl", "WorkerDied", "convert_in_worker", "worker_pool"]

#: Seconds between two progress reports of a worker.
_PROGRESS_INTERVAL_S = 0.2
#: Scheduling priority of the workers below the service's: on a busy machine the runs being
#: followed and their clients come first, conversions take the time left.
_NICENESS = 10
#: ``prctl`` option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


class WorkerDied(StemcastError):
    """The process converting a job ended without finishing it (a crash or a kill)."""


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Start a pool of conversion processes.

    Parameters
    ----------
    workers
        Processes, hence conversions at a time.

    Returns
    -------
    concurrent.futures.ProcessPoolExecutor
        The pool; its processes are spawned (never forked from the threaded service).
    """
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_prepare_worker,
    )


def _prepare_worker() -> None:
    """Yield the processor to the service, die with it, and leave SIGINT and SIGTERM to it.

    A terminal's Ctrl-C and systemd's stop reach every process of the group; the service
    answers them by cancelling its jobs through their control folders, which requeues them.
    """
    os.nice(_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class JobControl:
    """The service's side of a job's control folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="stemcast-job-"))

    def cancel(self) -> None:
        """Ask the worker to stop after its current batch."""
        (self.folder / "cancel").touch()

    def tell(self, state: str) -> None:
        """Replace the ``state.json`` a live job's worker reads (:mod:`.live`)."""
        staged = self.folder / "state.new"
        staged.write_text(state)
        os.replace(staged, self.folder / "state.json")

    @staticmethod
    def report(folder: Path, done: int, total: int) -> None:
        """Write a worker's progress into its control folder ``folder`` (atomically)."""
        staged = folder / "progress.new"
        staged.write_text(f"{done} {total}")
        os.replace(staged, folder / "progress")

    def progress(self) -> tuple[int, int | None]:
        """Return the frames converted and the frames to convert, as last reported."""
        try:
            done, total = (self.folder / "progress").read_text().split()
        except (OSError, ValueError):
            return 0, None
        return int(done), int(total)

    def close(self) -> None:
        """Remove the control folder."""
        shutil.rmtree(self.folder, ignore_errors=True)


def convert_in_worker(
    control: str,
    source: str,
    targets: list[str],
    output_dir: str,
    *,
    options: dict[str, Any] | None = None,
    navigation_shape: tuple[int, int] | None = None,
    relative_to: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Convert a run in a worker process, reporting to and obeying the control folder.

    Parameters
    ----------
    control
        The job's control folder (:attr:`JobControl.folder`).
    source, targets, output_dir, options, navigation_shape, relative_to, tags
        As :func:`stemcast.convert.run.convert_run`.

    Returns
    -------
    dict
        :meth:`stemcast.convert.run.Converted.as_dict` of the result.
    """
    from stemcast.convert.run import convert_run, throttled

    folder = Path(control)
    cancel = folder / "cancel"

    def report(done: int, total: int) -> None:
        JobControl.report(folder, done, total)

    result = convert_run(
        source,
        targets,
        output_dir,
        options=options,
        navigation_shape=navigation_shape,
        relative_to=relative_to,
        tags=tags,
        progress=throttled(report, _PROGRESS_INTERVAL_S),
        cancelled=cancel.exists,
    )
    return result.as_dict()
