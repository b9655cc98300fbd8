"""The states of runs and conversion jobs, and the rows the registry returns for them.

The states are :class:`enum.StrEnum` members: each is the very string stored in the
registry's ``status`` columns, sent in a ``series_end`` header and shown by the HTTP API, so
comparing with, formatting or JSON-encoding a member gives the same result as its value.

The records are :class:`typing.TypedDict` types: at run time they are plain dicts, which the
HTTP API returns as they are.
"""

from __future__ import annotations

import enum
from typing import Any, TypedDict

__all__ = ["JobRecord", "JobStatus", "RunRecord", "RunStatus"]


class RunStatus(enum.StrEnum):
    """The state of a run.

    A run is ``following`` while the service reads it. The three states a follower ends a
    run in are also the ``status`` of its ``series_end`` message: ``complete``,
    ``interrupted`` and ``failed``. ``abandoned``: the service stopped (crashed, was
    killed) while following it, so its end was never seen.
    """

    FOLLOWING = "following"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    ABANDONED = "abandoned"

    @property
    def ended(self) -> bool:
        """Whether the run is over (every state but ``following``)."""
        return self is not RunStatus.FOLLOWING


class JobStatus(enum.StrEnum):
    """The state of a conversion job: ``queued`` until a worker takes it, then the others."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """Whether the job is over: ``done``, ``failed`` or ``cancelled``."""
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class RunRecord(TypedDict):
    """A run as the registry returns it.

    See :meth:`~stemcast.service.state.registry.Registry.add_run` for the fields.
    """

    id: str
    path: str
    detector: str
    sources: list[str]
    frame_shape: list[int]
    dtype: str
    frames_expected: int | None
    watch_root: str | None
    frames: int
    status: RunStatus
    reason: str | None
    nav_shape: list[int] | None
    nav_shape_intended: list[int] | None
    nav_evidence: str | None
    nav_detail: str | None
    created_at: str
    started_at: str
    ended_at: str | None


class JobRecord(TypedDict):
    """A conversion job as the registry returns it.

    See :meth:`~stemcast.service.state.registry.Registry.add_job` and
    :meth:`~stemcast.service.state.registry.Registry.update_job` for the fields. ``key``,
    ``tags`` and ``fingerprints`` are internal (the HTTP API leaves them out); ``duration_s``
    is computed, not stored.
    """

    id: str
    key: str
    source: str
    run_id: str | None
    targets: list[str]
    options: dict[str, Any]
    output_dir: str
    navigation_shape: list[int] | None
    relative_to: str | None
    status: JobStatus
    frames_done: int
    frames_total: int | None
    outputs: dict[str, str]
    bytes_written: int
    error: str | None
    created_at: str
    started_at: str | None
    ended_at: str | None
    tags: dict[str, str]
    fingerprints: dict[str, list[int] | None] | None
    duration_s: float | None
