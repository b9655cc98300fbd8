"""Conversion jobs: requested, deduplicated, queued, run and recorded in the registry.

A job converts one run to one or more targets under the output root. Its row in the registry
is the truth: a job is ``queued`` until a worker takes it, ``running`` while it converts,
then ``done``, ``failed`` or ``cancelled``. A restarted service takes the ``queued`` and
``running`` rows up again, oldest first.

Two requests are the same conversion when they name the same run (its first file, resolved),
its files have the same sizes and modification times, and the targets, options, output root,
scan shape and mirrored folder are the same: the second request gets the first job back
instead of a new one, unless that job failed or was cancelled, or it is done but one of its
outputs is no longer the file it wrote (gone, or replaced: the job keeps each output's device,
inode, size and modification time).

Jobs of one run never share an output file unless they write the same thing: an output
whose options differ from the run's usual ones (its conversion rule's, else
``convert_options``), or whose scan shape is not the run's own, is tagged with a short hash
of them (``scan.1f2e3d4c.emd``); the usual conversion keeps ``scan.emd``. A request is
planned as its conversion will be (:func:`stemcast.convert.run.check_conversion`) before it
is recorded, so a job accepted does not fail later for a reason known at the request.

Conversions run in a pool of ``convert_workers`` worker processes
(:mod:`stemcast.service.jobs.worker`: a crash fails the job, not the service, and a conversion
never holds the lock the run followers need), or, with a ``scheduler``, as one
dask.distributed task per job. The registry is SQLite: the manager reads and writes it in
worker threads, never in the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from stemcast.errors import ParameterError, StemcastError
from stemcast.formats.runs import open_run, run_kind, run_source
from stemcast.service.config import ServiceSettings
from stemcast.service.jobs.live import LiveJob, RunNotConverted, convert_live_in_worker
from stemcast.service.jobs.worker import JobControl, WorkerDied, convert_in_worker, worker_pool
from stemcast.service.metrics import Metrics
from stemcast.service.state.records import JobRecord, JobStatus
from stemcast.service.state.registry import Registry
from stemcast.shape import check_navigation_shape

__all__ = ["JobConflict", "JobManager"]

_logger = logging.getLogger(__name__)

#: Seconds between two writes of a running job's progress to the registry.
_PROGRESS_INTERVAL_S = 0.5
#: Seconds between two looks at a live job's progress (its lag is reported from it).
_LIVE_PROGRESS_INTERVAL_S = 0.1
#: Seconds given to the scheduler to answer when the service connects.
_SCHEDULER_TIMEOUT_S = 10


class JobConflict(StemcastError):
    """A job cannot do what was asked in its state (cancel a job that has ended)."""


class JobManager:
    """The conversion jobs of the service.

    Parameters
    ----------
    settings
        Output root, workers, scheduler address.
    registry
        Where jobs are recorded.
    metrics
        Where each ended job is counted, per output format, with its duration and bytes.
    """

    def __init__(
        self, settings: ServiceSettings, registry: Registry, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        # Changed in the event loop only; cancel() (any thread) reads it.
        self._cancel: dict[str, threading.Event] = {}
        self._cancelled: set[str] = set()
        # Taking a queued job, cancelling one and finding-or-adding a job each read a row and
        # then write one, in worker threads (cancel() in its caller's): this keeps each
        # read-then-write whole, as the single-threaded event loop alone no longer does.
        self._transition = threading.Lock()
        self._progress: dict[str, tuple[int, int | None]] = {}
        self._stopping = False
        self._executor: ProcessPoolExecutor | None = None
        self._live_executor: ProcessPoolExecutor | None = None
        self._live_tasks: set[asyncio.Task[None]] = set()
        #: The live conversions running, by job id (read by scrapes in other threads).
        self._live: dict[str, tuple[JobRecord, LiveJob]] = {}
        self._client: Any = None

    async def start(self, resumed: Collection[str] = ()) -> None:
        """Connect to the scheduler, if any, and take up the jobs a previous run left.

        Jobs that were ``running`` when the previous process stopped go back to ``queued``
        (the conversion removes the temporary files a killed process left); then every
        unfinished job is queued, oldest first, but for the live conversions of the runs in
        ``resumed``: their followers take them up (:meth:`start_live`).

        Parameters
        ----------
        resumed
            Ids of the runs the service resumes following.

        Raises
        ------
        StemcastError
            When the scheduler cannot be reached.
        """
        if self.settings.scheduler:
            self._client = await _connect(self.settings.scheduler)
        else:
            self._executor = worker_pool(self.settings.convert_workers)
        self._live_executor = worker_pool(self.settings.live_conversions)
        for job in await asyncio.to_thread(self.registry.unfinished_jobs):
            if job["run_id"] in resumed:
                continue
            if job["status"] is JobStatus.RUNNING:
                await asyncio.to_thread(
                    self.registry.update_job, job["id"], status=JobStatus.QUEUED
                )
            _logger.info("job %s: resumed (%s)", job["id"], job["source"])
            self._queue.put_nowait(job["id"])
        self._workers = [
            asyncio.create_task(self._work(), name=f"conversion worker {number}")
            for number in range(self.settings.convert_workers)
        ]

    async def request(
        self,
        source: str | os.PathLike[str],
        targets: str | Sequence[str],
        options: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        navigation_shape: Sequence[int] | None = None,
        run_shape: Sequence[int] | None = None,
        relative_to: str | os.PathLike[str] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Ask for a conversion; the same conversion asked twice is one job.

        Parameters
        ----------
        source
            A file of the run (its first file is found).
        targets
            Output formats: ``"emd,blockfile"`` or a list of names.
        options
            Writer options per target.
        run_id
            The run the file belongs to, if the service followed it.
        navigation_shape
            ``(x, y)`` scan shape asked for: the frames must fill its first line. When
            ``None``, ``run_shape``, else the shape inferred from the run's files.
        run_shape
            ``(x, y)`` scan shape the service found for the run, if it followed it: a job
            writing it keeps the usual output names.
        relative_to
            The watched folder or input root holding the run: outputs go to
            ``OUTPUT/<its name>/<sub-folders of the run>/``, so that runs of the same name in
            two roots never share an output.

        Returns
        -------
        tuple
            The job (as recorded) and whether it is new (``False``: the same conversion was
            already queued, running or done).

        Raises
        ------
        ParameterError
            When no output root is configured, or the targets, options or scan shape are bad,
            or the conversion could not write the run as asked (EMD chunks that do not fit the
            data, a scan whose first line the frames do not fill, a shape or frame size a
            blockfile cannot hold).
        FormatError
            When ``source`` is not a file of a Merlin or TVIPS run.
        """
        from stemcast.convert.options import check_options, parse_targets
        from stemcast.convert.run import check_conversion

        if self.settings.output is None:
            raise ParameterError(
                "no output root is configured: start the service with --output DIR",
                parameter="output",
            )
        chosen = list(parse_targets(targets))
        normalized = check_options(chosen, options)
        asked = _navigation_shape(navigation_shape)
        usual_shape = _navigation_shape(run_shape)
        shape = asked or usual_shape
        output_dir = os.path.realpath(self.settings.output)
        mirrored = None if relative_to is None else os.path.dirname(os.path.realpath(relative_to))
        first, files, detector = await asyncio.to_thread(_describe, source)
        usual = self.settings.options_for(detector, os.path.dirname(first), chosen)
        tags = _tags(normalized, usual, None if asked == usual_shape else asked)
        key = _job_key(
            {
                "source": first,
                "files": files,
                "targets": sorted(chosen),
                "options": normalized,
                "output_dir": output_dir,
                "navigation_shape": shape,
                "relative_to": mirrored,
                "tags": tags,
            }
        )
        existing = await asyncio.to_thread(self._existing, key)
        if existing is not None:
            return existing, False
        await asyncio.to_thread(
            check_conversion, first, chosen, normalized, navigation_shape=asked or usual_shape
        )
        add = functools.partial(
            self.registry.add_job,
            uuid.uuid4().hex,
            key=key,
            source=first,
            run_id=run_id,
            targets=chosen,
            options=normalized,
            output_dir=output_dir,
            navigation_shape=shape,
            relative_to=mirrored,
            tags=tags,
        )
        job, created = await asyncio.to_thread(self._find_or_add, key, add)
        if not created:
            return job, False
        _logger.info("job %s: queued %s to %s", job["id"], first, ", ".join(chosen))
        self._queue.put_nowait(job["id"])
        return job, True

    def _existing(self, key: str) -> JobRecord | None:
        """Return the job with ``key`` that is queued, running, or done with its outputs intact.

        Blocking (registry, file system): runs in a worker thread.
        """
        with self._transition:
            existing = self.registry.job_by_key(key)
            if existing is None or _outputs_changed(existing):
                return None
            return existing

    def _find_or_add(self, key: str, add: Callable[[], JobRecord]) -> tuple[JobRecord, bool]:
        """Return the live job with ``key`` and ``False``, or the one ``add`` records and ``True``.

        Blocking (registry): runs in a worker thread.
        """
        with self._transition:
            existing = self.registry.job_by_key(key)
            if existing is not None and not _outputs_changed(existing):
                return existing, False
            return add(), True

    async def start_live(
        self,
        source: str,
        targets: Sequence[str],
        options: Mapping[str, Any],
        *,
        run_id: str,
        relative_to: str | None = None,
    ) -> LiveJob:
        """Start converting a run while it is acquired (a job ``running`` from now on).

        The job of the run left unfinished by a previous process (the service resumed
        following the run) is taken up, its outputs written anew; otherwise a job is
        recorded.

        Parameters
        ----------
        source
            The run's first file.
        targets, options
            Output formats and their options.
        run_id
            The run's id.
        relative_to
            As :meth:`request`.

        Returns
        -------
        LiveJob
            What the follower tells how far the run is.

        Raises
        ------
        ParameterError
            When no output root is configured, or the targets or options are bad.
        """
        from stemcast.convert.options import check_options, parse_targets

        if self.settings.output is None:
            raise ParameterError(
                "no output root is configured: start the service with --output DIR",
                parameter="output",
            )
        chosen = list(parse_targets(targets))
        normalized = check_options(chosen, options)
        output_dir = os.path.realpath(self.settings.output)
        mirrored = None if relative_to is None else os.path.dirname(os.path.realpath(relative_to))
        first = os.path.realpath(source)
        key = _job_key(
            {
                "live": run_id,
                "source": first,
                "targets": sorted(chosen),
                "options": normalized,
                "output_dir": output_dir,
                "relative_to": mirrored,
            }
        )
        add = functools.partial(
            self.registry.add_job,
            uuid.uuid4().hex,
            key=key,
            source=first,
            run_id=run_id,
            targets=chosen,
            options=normalized,
            output_dir=output_dir,
            navigation_shape=None,
            relative_to=mirrored,
            tags={},
        )
        job = await asyncio.to_thread(self._take_live, run_id, add)
        control = JobControl()
        live = LiveJob(job["id"], control)
        self._live[job["id"]] = job, live
        flag = self._cancel[job["id"]] = threading.Event()
        _logger.info("job %s: converting %s live to %s", job["id"], first, ", ".join(chosen))
        task = asyncio.create_task(
            self._run(job, flag, lambda: self._convert_live(job, live, flag)),
            name=f"live job {job['id']}",
        )
        self._live_tasks.add(task)
        task.add_done_callback(self._live_tasks.discard)
        return live

    def live_jobs(self) -> list[tuple[JobRecord, LiveJob]]:
        """Return the live conversions running now: each job's record and its live job.

        Callable from any thread (a scrape).
        """
        return list(self._live.values())

    def _take_live(self, run_id: str, add: Callable[[], JobRecord]) -> JobRecord:
        """Mark the run's unfinished job, or a new one, ``running``.

        Blocking (registry): runs in a worker thread.
        """
        with self._transition:
            unfinished = [
                job for job in self.registry.jobs(run_id=run_id) if not job["status"].ended
            ]
            job = unfinished[0] if unfinished else add()
            return self.registry.update_job(
                job["id"], status=JobStatus.RUNNING, frames_done=0, frames_total=None
            )

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a job: a queued one at once, a running one when it next looks.

        Blocking (it reads and writes the registry) and safe to call from any thread: from
        async code, call it in a worker thread (``asyncio.to_thread``).

        Parameters
        ----------
        job_id
            The job.

        Returns
        -------
        JobRecord or None
            The job as it is now (``cancelled``, or still ``running`` until the conversion
            stops and removes its temporary files); ``None`` when there is no such job.

        Raises
        ------
        JobConflict
            When the job has already ended.
        """
        with self._transition:
            job = self.registry.job(job_id)
            if job is None:
                return None
            if job["status"] is JobStatus.QUEUED:
                _logger.info("job %s: cancelled before it started", job_id)
                return self.registry.update_job(job_id, status=JobStatus.CANCELLED)
            flag = self._cancel.get(job_id)
            if job["status"] is JobStatus.RUNNING and flag is not None:
                _logger.info("job %s: cancel requested", job_id)
                self._cancelled.add(job_id)
                flag.set()
                return job
        raise JobConflict(f"job {job_id} has already ended: {job['status']}")

    async def stop(self) -> None:
        """Stop converting: running jobs are cancelled and left ``queued`` for a restart."""
        if self._stopping:
            return
        self._stopping = True
        for flag in self._cancel.values():
            flag.set()
        for _ in self._workers:
            self._queue.put_nowait(None)
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=self.settings.shutdown_timeout_s)
            unstopped = list(self._cancel)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            for job_id in unstopped:
                await asyncio.to_thread(self.registry.update_job, job_id, status=JobStatus.QUEUED)
                _logger.warning("job %s: did not stop in time; queued for the next start", job_id)
        if self._live_tasks:
            await asyncio.wait(set(self._live_tasks), timeout=self.settings.shutdown_timeout_s)
        for executor in (self._executor, self._live_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            await self._client.close()

    async def _work(self) -> None:
        while not self._stopping:
            job_id = await self._queue.get()
            if job_id is None or self._stopping:
                return
            flag = self._cancel[job_id] = threading.Event()
            job = await asyncio.to_thread(self._take, job_id)
            if job is None:
                del self._cancel[job_id]
            elif self._client is None:
                await self._run(job, flag, functools.partial(self._convert_here, job, flag))
            else:
                await self._run(job, flag, functools.partial(self._convert_on_cluster, job, flag))

    def _take(self, job_id: str) -> JobRecord | None:
        """Mark a queued job ``running``; ``None`` if it is no longer queued (cancelled).

        Blocking (registry): runs in a worker thread.
        """
        with self._transition:
            job = self.registry.job(job_id)
            if job is None or job["status"] is not JobStatus.QUEUED:
                return None
            return self.registry.update_job(job_id, status=JobStatus.RUNNING, frames_done=0)

    async def _run(
        self,
        job: JobRecord,
        flag: threading.Event,
        convert: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        from stemcast.convert.run import Cancelled

        job_id = job["id"]
        update = self.registry.update_job
        _logger.info("job %s: converting %s", job_id, job["source"])
        began = time.monotonic()
        outputs: dict[str, str] = {}
        try:
            result = await convert()
        except RunNotConverted as error:
            job = await asyncio.to_thread(
                update, job_id, status=JobStatus.CANCELLED, error=error.problem
            )
            _logger.info("job %s: %s", job_id, error.problem)
        except Cancelled:
            # Stopped by the service stopping, not by a request: it resumes at the next start.
            resumed = self._stopping and job_id not in self._cancelled
            status = JobStatus.QUEUED if resumed else JobStatus.CANCELLED
            job = await asyncio.to_thread(update, job_id, status=status)
            _logger.info("job %s: %s", job_id, "stopped" if resumed else "cancelled")
        except (StemcastError, OSError) as error:
            job = await asyncio.to_thread(update, job_id, status=JobStatus.FAILED, error=str(error))
            _logger.error("job %s failed: %s", job_id, error)
        except Exception as error:
            # An unexpected error fails the job, never the service.
            _logger.exception("job %s failed", job_id)
            job = await asyncio.to_thread(
                update, job_id, status=JobStatus.FAILED, error=f"{type(error).__name__}: {error}"
            )
        else:
            outputs = result["outputs"]
            fingerprints = await asyncio.to_thread(_fingerprints, outputs)
            job = await asyncio.to_thread(
                update,
                job_id,
                status=JobStatus.DONE,
                frames_done=result["frames"],
                frames_total=result["frames"],
                outputs=outputs,
                fingerprints=fingerprints,
                bytes_written=result["bytes_written"],
                navigation_shape=job["navigation_shape"] or result["navigation_shape"],
            )
            _logger.info("job %s done: %s", job_id, ", ".join(map(str, result["outputs"].values())))
        finally:
            del self._cancel[job_id]
            self._cancelled.discard(job_id)
            self._progress.pop(job_id, None)
        self._count(job, time.monotonic() - began, outputs)

    def _count(self, job: JobRecord, seconds: float, outputs: Mapping[str, str]) -> None:
        """Count a job that ended (not one stopped to resume) once per output format."""
        if self.metrics is None or not job["status"].ended:
            return
        for target in job["targets"]:
            try:
                written = os.path.getsize(outputs[target]) if target in outputs else 0
            except OSError:
                written = 0
            self.metrics.conversion_finished(target, job["status"], seconds, written)

    async def _convert_here(self, job: JobRecord, flag: threading.Event) -> dict[str, Any]:
        from stemcast.convert.run import Cancelled

        assert self._executor is not None
        control = JobControl()
        try:
            running = asyncio.wrap_future(
                self._executor.submit(
                    convert_in_worker,
                    str(control.folder),
                    job["source"],
                    job["targets"],
                    job["output_dir"],
                    options=job["options"],
                    navigation_shape=_shape_tuple(job["navigation_shape"]),
                    relative_to=job["relative_to"],
                    tags=job["tags"],
                )
            )
            while True:
                finished, _ = await asyncio.wait({running}, timeout=_PROGRESS_INTERVAL_S)
                if flag.is_set():
                    control.cancel()
                await self._record_progress(job["id"], *control.progress())
                if finished:
                    return running.result()
        except BrokenProcessPool:
            # The pool is unusable once one of its processes died: start a new one.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = worker_pool(self.settings.convert_workers)
            if flag.is_set() and self._stopping:
                raise Cancelled("the service stopped") from None
            raise WorkerDied(
                "the conversion process ended without finishing (it crashed or was killed): "
                "nothing appeared under an output's name",
                path=job["source"],
            ) from None
        finally:
            control.close()

    async def _convert_live(
        self, job: JobRecord, live: LiveJob, flag: threading.Event
    ) -> dict[str, Any]:
        from stemcast.convert.run import Cancelled

        assert self._live_executor is not None
        control = live.control
        try:
            running = asyncio.wrap_future(
                self._live_executor.submit(
                    convert_live_in_worker,
                    str(control.folder),
                    job["source"],
                    job["targets"],
                    job["output_dir"],
                    options=job["options"],
                    relative_to=job["relative_to"],
                )
            )
            while True:
                finished, _ = await asyncio.wait({running}, timeout=_LIVE_PROGRESS_INTERVAL_S)
                if flag.is_set():
                    control.cancel()
                done, total = control.progress()
                live.written = done
                await self._record_progress(job["id"], done, total)
                if finished:
                    return running.result()
        except BrokenProcessPool:
            assert self._live_executor is not None
            self._live_executor.shutdown(wait=False, cancel_futures=True)
            self._live_executor = worker_pool(self.settings.live_conversions)
            if flag.is_set() and self._stopping:
                raise Cancelled("the service stopped") from None
            raise WorkerDied(
                "the live conversion process ended without finishing (it crashed or was "
                "killed): nothing appeared under an output's name",
                path=job["source"],
            ) from None
        finally:
            self._live.pop(job["id"], None)
            await live.close()
            control.close()

    async def _convert_on_cluster(self, job: JobRecord, flag: threading.Event) -> dict[str, Any]:
        from stemcast.convert.run import convert_on_worker

        job_id = job["id"]
        cluster = _distributed()
        progress = cluster.Variable(f"stemcast-progress-{job_id}", client=self._client)
        cancel = cluster.Event(f"stemcast-cancel-{job_id}", client=self._client)
        future = self._client.submit(
            convert_on_worker,
            job_id,
            job["source"],
            job["targets"],
            job["output_dir"],
            options=job["options"],
            navigation_shape=job["navigation_shape"],
            relative_to=job["relative_to"],
            tags=job["tags"],
            pure=False,
        )
        waiting: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(future)
        cancel_sent = False
        try:
            while True:
                finished, _ = await asyncio.wait({waiting}, timeout=_PROGRESS_INTERVAL_S)
                if flag.is_set() and not cancel_sent:
                    await cancel.set()
                    cancel_sent = True
                with contextlib.suppress(TimeoutError):
                    state = await progress.get(timeout=0)
                    await self._record_progress(job_id, state["frames_done"], state["frames_total"])
                if finished:
                    return waiting.result()
        finally:
            waiting.cancel()
            try:
                progress.delete()
            except Exception as error:  # the scheduler may be gone; the job's result stands
                _logger.warning("job %s: could not delete its progress variable: %s", job_id, error)

    async def _record_progress(self, job_id: str, done: int, total: int | None) -> None:
        if self._progress.get(job_id) != (done, total):
            self._progress[job_id] = (done, total)
            await asyncio.to_thread(
                self.registry.update_job, job_id, frames_done=done, frames_total=total
            )


def _distributed() -> Any:
    """Import dask.distributed (only when a scheduler is configured)."""
    import distributed

    return distributed


async def _connect(address: str) -> Any:
    try:
        return await _distributed().Client(address, asynchronous=True, timeout=_SCHEDULER_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise StemcastError(
            f"cannot reach the dask scheduler at {address}: {error}", parameter="scheduler"
        ) from None


def _describe(source: str | os.PathLike[str]) -> tuple[str, list[list[Any]], str]:
    """Return the run's first file (resolved), ``[file, size, mtime_ns]`` per file, detector."""
    first = os.path.realpath(run_source(source))
    run = open_run(first)
    described = []
    for name in run.files:
        status = os.stat(name)
        described.append([os.path.realpath(name), status.st_size, status.st_mtime_ns])
    return first, described, "merlin" if run_kind(first) == "mib" else "tvips"


def _job_key(fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of what makes a conversion the same."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _navigation_shape(shape: Sequence[int] | None) -> list[int] | None:
    if shape is None:
        return None
    return list(check_navigation_shape(shape, ndim=2))


def _shape_tuple(shape: list[int] | None) -> tuple[int, int] | None:
    return None if shape is None else (shape[0], shape[1])


def _tags(
    options: Mapping[str, Mapping[str, Any]],
    usual: Mapping[str, Mapping[str, Any]],
    shape: list[int] | None,
) -> dict[str, str]:
    """Tag the targets whose output differs from the run's usual one (see the module doc).

    Parameters
    ----------
    options
        Normalised options of each requested target.
    usual
        Normalised options the run's conversion uses for these targets by default.
    shape
        The scan shape asked for when it is not the run's own, else ``None``.

    Returns
    -------
    dict
        Target -> the first 8 hex digits of the SHA-256 of its options and ``shape``, for the
        targets with other options than the usual ones, or all of them when ``shape`` is set.
    """
    return {
        target: _job_key({"options": given, "navigation_shape": shape})[:8]
        for target, given in options.items()
        if shape is not None or given != usual.get(target, {})
    }


def _fingerprint(path: str) -> list[int] | None:
    """``[device, inode, size, mtime_ns]`` of a file, ``None`` when it is not there."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns]


def _fingerprints(outputs: Mapping[str, str]) -> dict[str, list[int] | None]:
    """Return what identifies each output file a job wrote (taken when it is done)."""
    return {target: _fingerprint(path) for target, path in outputs.items()}


def _outputs_changed(job: JobRecord) -> bool:
    """Whether a done job's outputs are not all the files it wrote (so it must run again).

    An output that is gone, or was replaced or rewritten since (another device, inode, size
    or modification time), changed; so did every output of a job done before the registry
    kept fingerprints.
    """
    if job["status"] is not JobStatus.DONE:
        return False
    kept = job["fingerprints"] or {}
    return any(
        kept.get(target) is None or _fingerprint(path) != kept[target]
        for target, path in job["outputs"].items()
    )
