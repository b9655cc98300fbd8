"""The registry of runs and conversion jobs: one SQLite file that survives restarts.

The service records every run it follows and every conversion job it is asked for, so that a
restarted service resumes unfinished conversions, does not redo finished ones and does not
re-publish finished runs. The file uses a write-ahead log with ``synchronous=NORMAL``: a
committed row survives the process being killed at any moment (only a power cut can lose the
last transactions, never corrupt the file). The schema version is kept in ``PRAGMA
user_version``; a registry of an older version is migrated when it is opened (version 2 added
the jobs' output ``tags`` and the ``fingerprints`` of their outputs).

The API is synchronous and blocking, for the command line and tests; the service's async code
calls it in worker threads (``asyncio.to_thread``), never in the event loop. One connection
serves the whole process, from whichever thread calls, so each method takes a lock; every call
is one short transaction.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from stemcast.errors import FormatError, ParameterError, StemcastError, UnsupportedError
from stemcast.service.state.records import JobRecord, JobStatus, RunRecord, RunStatus

__all__ = ["JOB_STATES", "RUN_STATES", "Registry", "default_registry_path"]

#: The values of :class:`RunStatus`, in order.
RUN_STATES = tuple(status.value for status in RunStatus)
#: The values of :class:`JobStatus`, in order.
JOB_STATES = tuple(status.value for status in JobStatus)

_RUN_ENDED = frozenset(status for status in RunStatus if status.ended)
#: Runs whose files the service never follows again.
_RUN_FINISHED = (RunStatus.COMPLETE, RunStatus.INTERRUPTED, RunStatus.FAILED)
_JOB_ENDED = frozenset(status for status in JobStatus if status.ended)
#: Jobs that block a new request with the same key.
_JOB_LIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE)
_JOB_UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)

_Status = TypeVar("_Status", RunStatus, JobStatus)

_SCHEMA_VERSION = 2
_BUSY_TIMEOUT_MS = 5000
_RUN_JSON = frozenset(("sources", "frame_shape", "nav_shape", "nav_shape_intended"))
_JOB_JSON = frozenset(("targets", "options", "navigation_shape", "outputs", "tags", "fingerprints"))

# The autoincrement ``seq`` keeps insertion order: timestamps of two rows can tie.
_SCHEMA = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    detector TEXT NOT NULL,
    sources TEXT NOT NULL,
    frame_shape TEXT NOT NULL,
    dtype TEXT NOT NULL,
    frames_expected INTEGER,
    watch_root TEXT,
    frames INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    reason TEXT,
    nav_shape TEXT,
    nav_shape_intended TEXT,
    nav_evidence TEXT,
    nav_detail TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT
);
CREATE INDEX runs_by_status ON runs (status);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    run_id TEXT,
    targets TEXT NOT NULL,
    options TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    navigation_shape TEXT,
    relative_to TEXT,
    status TEXT NOT NULL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER,
    outputs TEXT NOT NULL DEFAULT '{}',
    bytes_written INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    fingerprints TEXT
);
CREATE INDEX jobs_by_key ON jobs (key);
CREATE INDEX jobs_by_status ON jobs (status);
CREATE INDEX jobs_by_run ON jobs (run_id);
"""
#: The statements that take a registry from each version to the next.
_MIGRATIONS = {
    1: """
ALTER TABLE jobs ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN fingerprints TEXT;
""",
}


def default_registry_path() -> Path:
    """Where the service keeps its registry unless told otherwise.

    Returns
    -------
    pathlib.Path
        ``$XDG_STATE_HOME/stemcast/registry.sqlite3``, or
        ``~/.local/state/stemcast/registry.sqlite3`` when ``XDG_STATE_HOME`` is unset, empty or
        relative (the XDG base directory specification says to ignore relative values).
    """
    state_home = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state_home) if os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return base / "stemcast" / "registry.sqlite3"


class Registry:
    """The runs the service followed and the conversion jobs it was given, in SQLite.

    Rows come back as plain JSON-serialisable dicts (:class:`RunRecord`, :class:`JobRecord`,
    whose ``status`` is a :class:`RunStatus` or :class:`JobStatus`): the ``id``, every
    recorded field (lists and dicts decoded), and the times ``created_at``, ``started_at`` and
    ``ended_at`` as ISO 8601 UTC strings ending in ``Z`` (``None`` until they happen); jobs also
    carry ``duration_s``, the seconds from start (or creation, if never started) to end, once
    ended.

    Parameters
    ----------
    path
        The SQLite file; it and its folder are created when missing.

    Raises
    ------
    FormatError
        When ``path`` is not an SQLite file, or is one that is not a stemcast registry.
    UnsupportedError
        When the registry was written by a newer stemcast with a newer schema.
    StemcastError
        When the file cannot be opened (a folder, no permission).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are begun explicitly (see _transaction). The
            # connection is used from any thread (check_same_thread=False), one call at a time
            # (self._lock). A connection per thread would leave connections open in the
            # executor's threads that close() cannot reach, and would gain nothing: SQLite
            # writes one transaction at a time anyway, and every call here is short.
            self._connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.OperationalError) as error:
            raise StemcastError(f"cannot open the registry: {error}", path=self.path) from error
        self._connection.row_factory = sqlite3.Row
        try:
            self._prepare()
        except BaseException:
            self._connection.close()
            raise

    def _prepare(self) -> None:
        try:
            self._connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = NORMAL")
            with self._transaction():
                self._migrate()
        except sqlite3.OperationalError as error:
            raise StemcastError(f"cannot open the registry: {error}", path=self.path) from error
        except sqlite3.DatabaseError as error:
            raise FormatError(f"not an SQLite registry: {error}", path=self.path) from error

    def _migrate(self) -> None:
        version: int = self._connection.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise UnsupportedError(
                f"the registry has schema version {version}, written by a newer stemcast; "
                f"this one reads up to version {_SCHEMA_VERSION}",
                path=self.path,
            )
        if version == _SCHEMA_VERSION:
            return
        if version == 0:
            tables = self._connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            ).fetchall()
            if tables:
                names = ", ".join(sorted(row["name"] for row in tables))
                raise FormatError(
                    f"an SQLite file of another application (tables: {names}), "
                    "not a stemcast registry",
                    path=self.path,
                )
            self._execute(_SCHEMA)
        else:
            for step in range(version, _SCHEMA_VERSION):
                self._execute(_MIGRATIONS[step])
        self._connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _execute(self, script: str) -> None:
        """Run the statements of ``script`` in the open transaction."""
        for statement in script.split(";"):
            if statement.strip():
                self._connection.execute(statement)

    def close(self) -> None:
        """Close the file; the registry cannot be used afterwards."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at once: when another process writes the same file,
        # this one waits (busy_timeout) instead of failing as a read turns into a write.
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    # runs

    def add_run(
        self,
        run_id: str,
        *,
        path: str,
        detector: str,
        sources: list[str],
        frame_shape: list[int],
        dtype: str,
        frames_expected: int | None,
        watch_root: str | None,
    ) -> None:
        """Record a run the service starts following (status ``following``, started now).

        Parameters
        ----------
        run_id
            The series UUID the service puts on the wire.
        path
            The run's first file.
        detector
            ``merlin`` or ``tvips``.
        sources
            Every file of the run known so far.
        frame_shape
            Detector frame shape (rows, columns).
        dtype
            Pixel dtype with explicit byte order, e.g. ``<u2``.
        frames_expected
            Frames the run announced, if it did.
        watch_root
            The watched directory the run was found in, if any.

        Raises
        ------
        ParameterError
            When a run with ``run_id`` is already recorded.
        """
        now = _now()
        row = {
            "id": run_id,
            "path": path,
            "detector": detector,
            "sources": _encode(sources, "sources"),
            "frame_shape": _encode(frame_shape, "frame_shape"),
            "dtype": dtype,
            "frames_expected": _count(frames_expected, "frames_expected"),
            "watch_root": watch_root,
            "status": RunStatus.FOLLOWING,
            "created_at": now,
            "started_at": now,
        }
        with self._lock, self._transaction() as connection:
            _insert(connection, "runs", row, parameter="run_id")

    def update_run(
        self,
        run_id: str,
        *,
        frames: int | None = None,
        status: str | None = None,
        reason: str | None = None,
        sources: list[str] | None = None,
        nav_shape: list[int] | None = None,
        nav_shape_intended: list[int] | None = None,
        nav_evidence: str | None = None,
        nav_detail: str | None = None,
    ) -> None:
        """Change the given fields of a run; the others keep their values.

        ``ended_at`` is set when the status changes to an ended state (any but
        ``following``), and cleared should it change back to ``following``.

        Parameters
        ----------
        run_id
            The run.
        frames
            Frames published so far.
        status
            A :class:`RunStatus` (or its value).
        reason
            Why the run ended as it did.
        sources
            Every file of the run known so far.
        nav_shape
            The scan shape inferred for the frames there are.
        nav_shape_intended
            The scan shape the run was meant to have.
        nav_evidence
            Where ``nav_shape`` came from (``user``, ``hdr``, ``timestamps``...).
        nav_detail
            A sentence on how ``nav_shape`` was found.

        Raises
        ------
        KeyError
            When no run has ``run_id``.
        ParameterError
            When ``status`` is not a run state or ``frames`` is negative.
        """
        changes: dict[str, Any] = {
            "frames": _count(frames, "frames"),
            "status": _state(status, RunStatus, "status"),
            "reason": reason,
            "sources": _encode(sources, "sources"),
            "nav_shape": _encode(nav_shape, "nav_shape"),
            "nav_shape_intended": _encode(nav_shape_intended, "nav_shape_intended"),
            "nav_evidence": nav_evidence,
            "nav_detail": nav_detail,
        }
        with self._lock, self._transaction() as connection:
            _update(connection, "runs", run_id, changes, _RUN_ENDED, start_state=None)

    def run(self, run_id: str) -> RunRecord | None:
        """Return the run with ``run_id``, or ``None`` if there is none."""
        with self._lock:
            row = self._connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _run_dict(row)

    def runs(self, *, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Return recorded runs, newest first.

        Parameters
        ----------
        status
            Only runs in this state (a :class:`RunStatus` or its value); all when ``None``.
        limit
            At most this many runs; all when ``None``.

        Raises
        ------
        ParameterError
            When ``status`` is not a run state or ``limit`` is negative.
        """
        rows = self._select("runs", {"status": _state(status, RunStatus, "status")}, limit)
        return [_run_dict(row) for row in rows]

    def runs_after(self, run_id: str) -> list[str]:
        """Return the ids of the runs recorded after ``run_id``, oldest first.

        Parameters
        ----------
        run_id
            A run's id; when the registry does not hold it, no run is after it.
        """
        with self._lock:
            rows = self._connection.execute(
                "SELECT id FROM runs WHERE seq > (SELECT seq FROM runs WHERE id = ?) ORDER BY seq",
                (run_id,),
            ).fetchall()
        return [row["id"] for row in rows]

    def finished_paths(self) -> set[str]:
        """Return every file of the runs that ended complete, interrupted or failed.

        The service skips these at start-up, so a restart never re-publishes a finished
        run. Runs that were ``abandoned`` are not finished: their files may be followed again.
        """
        with self._lock:
            rows = self._connection.execute(
                "SELECT path, sources FROM runs WHERE status IN (?, ?, ?)", _RUN_FINISHED
            ).fetchall()
        paths: set[str] = set()
        for row in rows:
            paths.add(row["path"])
            paths.update(json.loads(row["sources"]))
        return paths

    def count_runs(self) -> dict[str, int]:
        """Return the number of runs in each state (every state present, 0 if none)."""
        return self._count("runs", RunStatus)

    # conversion jobs

    def add_job(
        self,
        job_id: str,
        *,
        key: str,
        source: str,
        run_id: str | None,
        targets: list[str],
        options: dict[str, Any],
        output_dir: str,
        navigation_shape: list[int] | None,
        relative_to: str | None,
        tags: dict[str, str] | None = None,
    ) -> JobRecord:
        """Record a conversion job (status ``queued``).

        Parameters
        ----------
        job_id
            The job's id.
        key
            What makes two requests the same conversion (see :meth:`job_by_key`).
        source
            The file to convert.
        run_id
            The run the file belongs to, if the service followed it.
        targets
            The output formats.
        options
            Writer options, JSON-serialisable.
        output_dir
            Where the outputs go.
        navigation_shape
            The scan shape to write, if not the inferred one.
        relative_to
            The folder whose layout is mirrored under ``output_dir``, if any.
        tags
            Target -> the tag in its output's name (``scan.TAG.emd``), for the targets
            that have one.

        Returns
        -------
        JobRecord
            The job as recorded.

        Raises
        ------
        ParameterError
            When a job with ``job_id`` exists or ``options`` is not JSON-serialisable.
        """
        row = {
            "id": job_id,
            "key": key,
            "source": source,
            "run_id": run_id,
            "targets": _encode(targets, "targets"),
            "options": _encode(options, "options"),
            "output_dir": output_dir,
            "navigation_shape": _encode(navigation_shape, "navigation_shape"),
            "relative_to": relative_to,
            "tags": _encode(tags or {}, "tags"),
            "status": JobStatus.QUEUED,
            "created_at": _now(),
        }
        with self._lock, self._transaction() as connection:
            _insert(connection, "jobs", row, parameter="job_id")
            return _job_dict(_fetch(connection, "jobs", job_id))

    def job(self, job_id: str) -> JobRecord | None:
        """Return the job with ``job_id``, or ``None`` if there is none."""
        with self._lock:
            row = self._connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job_dict(row)

    def job_by_key(self, key: str) -> JobRecord | None:
        """Return the newest job with ``key`` that is queued, running or done.

        A failed or cancelled job does not count: its conversion may be requested again.
        """
        with self._lock:
            row = self._connection.execute(
                "SELECT * FROM jobs WHERE key = ? AND status IN (?, ?, ?)"
                " ORDER BY seq DESC LIMIT 1",
                (key, *_JOB_LIVE),
            ).fetchone()
        return None if row is None else _job_dict(row)

    def jobs(
        self, *, status: str | None = None, run_id: str | None = None, limit: int | None = None
    ) -> list[JobRecord]:
        """Return recorded jobs, newest first.

        Parameters
        ----------
        status
            Only jobs in this state (a :class:`JobStatus` or its value); all when ``None``.
        run_id
            Only jobs of this run; all when ``None``.
        limit
            At most this many jobs; all when ``None``.

        Raises
        ------
        ParameterError
            When ``status`` is not a job state or ``limit`` is negative.
        """
        where = {"status": _state(status, JobStatus, "status"), "run_id": run_id}
        return [_job_dict(row) for row in self._select("jobs", where, limit)]

    def update_job(
        self,
        job_id: str,
        *,
        status: str | None = None,
        frames_done: int | None = None,
        frames_total: int | None = None,
        outputs: dict[str, str] | None = None,
        fingerprints: dict[str, list[int] | None] | None = None,
        bytes_written: int | None = None,
        error: str | None = None,
        navigation_shape: list[int] | None = None,
    ) -> JobRecord:
        """Change the given fields of a job; the others keep their values.

        ``started_at`` is set when the status changes to ``running``, ``ended_at`` when it
        changes to ``done``, ``failed`` or ``cancelled`` (and cleared when it changes back to
        ``queued`` or ``running``).

        Parameters
        ----------
        job_id
            The job.
        status
            A :class:`JobStatus` (or its value).
        frames_done
            Frames converted so far.
        frames_total
            Frames to convert.
        outputs
            Target format -> output file written.
        fingerprints
            Target format -> ``[device, inode, size, mtime_ns]`` of its output when the job
            wrote it (``None`` if it could not be read): a done job counts only while its
            outputs are still these files.
        bytes_written
            Bytes written to the outputs so far.
        error
            Why the job failed.
        navigation_shape
            The scan shape written, once known (a live conversion learns it as the run goes).

        Returns
        -------
        JobRecord
            The job as it is now.

        Raises
        ------
        KeyError
            When no job has ``job_id``.
        ParameterError
            When ``status`` is not a job state or a count is negative.
        """
        changes: dict[str, Any] = {
            "status": _state(status, JobStatus, "status"),
            "frames_done": _count(frames_done, "frames_done"),
            "frames_total": _count(frames_total, "frames_total"),
            "outputs": _encode(outputs, "outputs"),
            "fingerprints": _encode(fingerprints, "fingerprints"),
            "bytes_written": _count(bytes_written, "bytes_written"),
            "error": error,
            "navigation_shape": _encode(navigation_shape, "navigation_shape"),
        }
        with self._lock, self._transaction() as connection:
            _update(connection, "jobs", job_id, changes, _JOB_ENDED, start_state=JobStatus.RUNNING)
            return _job_dict(_fetch(connection, "jobs", job_id))

    def unfinished_jobs(self) -> list[JobRecord]:
        """Return the queued and running jobs, oldest first.

        At start-up a ``running`` job was interrupted by the previous process stopping; the
        caller sets it back to ``queued``.
        """
        with self._lock:
            rows = self._connection.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY seq", _JOB_UNFINISHED
            ).fetchall()
        return [_job_dict(row) for row in rows]

    def count_jobs(self) -> dict[str, int]:
        """Return the number of jobs in each state (every state present, 0 if none)."""
        return self._count("jobs", JobStatus)

    # shared queries

    def _select(self, table: str, where: dict[str, Any], limit: int | None) -> list[sqlite3.Row]:
        conditions = {column: value for column, value in where.items() if value is not None}
        query = f"SELECT * FROM {table}"
        if conditions:
            query += " WHERE " + " AND ".join(f"{column} = ?" for column in conditions)
        query += " ORDER BY seq DESC"
        parameters = list(conditions.values())
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(_count(limit, "limit"))
        with self._lock:
            return self._connection.execute(query, parameters).fetchall()

    def _count(self, table: str, states: type[RunStatus | JobStatus]) -> dict[str, int]:
        with self._lock:
            rows = self._connection.execute(
                f"SELECT status, COUNT(*) AS n FROM {table} GROUP BY status"
            ).fetchall()
        counts = dict.fromkeys((state.value for state in states), 0)
        counts.update({row["status"]: row["n"] for row in rows})
        return counts


def _insert(
    connection: sqlite3.Connection, table: str, row: dict[str, Any], *, parameter: str
) -> None:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    try:
        connection.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))
    except sqlite3.IntegrityError as error:
        raise ParameterError(
            f"{row['id']!r} is already in the registry", parameter=parameter
        ) from error


def _update(
    connection: sqlite3.Connection,
    table: str,
    row_id: str,
    changes: dict[str, Any],
    ended_states: frozenset[RunStatus] | frozenset[JobStatus],
    *,
    start_state: JobStatus | None,
) -> None:
    current = connection.execute(f"SELECT status FROM {table} WHERE id = ?", (row_id,)).fetchone()
    if current is None:
        raise KeyError(row_id)
    given = {column: value for column, value in changes.items() if value is not None}
    status = given.get("status")
    if status is not None and status != current["status"]:
        now = _now()
        given["ended_at"] = now if status in ended_states else None
        if status == start_state:
            given["started_at"] = now
    if not given:
        return
    assignments = ", ".join(f"{column} = ?" for column in given)
    connection.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", [*given.values(), row_id])


def _fetch(connection: sqlite3.Connection, table: str, row_id: str) -> sqlite3.Row:
    row: sqlite3.Row = connection.execute(
        f"SELECT * FROM {table} WHERE id = ?", (row_id,)
    ).fetchone()
    return row


def _run_dict(row: sqlite3.Row) -> RunRecord:
    run = _decode_row(row, _RUN_JSON)
    run["status"] = RunStatus(run["status"])
    return cast(RunRecord, run)


def _job_dict(row: sqlite3.Row) -> JobRecord:
    job = _decode_row(row, _JOB_JSON)
    job["status"] = JobStatus(job["status"])
    job["duration_s"] = None
    if job["ended_at"] is not None:
        began = datetime.fromisoformat(job["started_at"] or job["created_at"])
        job["duration_s"] = (datetime.fromisoformat(job["ended_at"]) - began).total_seconds()
    return cast(JobRecord, job)


def _decode_row(row: sqlite3.Row, json_columns: frozenset[str]) -> dict[str, Any]:
    decoded: dict[str, Any] = dict(row)
    del decoded["seq"]
    for column in json_columns:
        if decoded[column] is not None:
            decoded[column] = json.loads(decoded[column])
    return decoded


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _encode(value: Any, parameter: str) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ParameterError(f"cannot be stored as JSON: {error}", parameter=parameter) from error


def _state(status: str | None, states: type[_Status], parameter: str) -> _Status | None:
    if status is None:
        return None
    try:
        return states(status)
    except ValueError:
        raise ParameterError(
            f"unknown state {status!r}; expected one of {', '.join(states)}", parameter=parameter
        ) from None


def _count(value: int | None, parameter: str) -> int | None:
    if value is not None and value < 0:
        raise ParameterError(f"{value} is negative", parameter=parameter)
    return value
