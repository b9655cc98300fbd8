"""What the control server needs from the service it controls, as a protocol.

The HTTP API and the probes are typed against :class:`ControlTarget`, never against the
daemon's class: ``stemcast.service.app`` imports the control server to start it, so the
control server importing the app back would be a cycle. The daemon's ``Service``
satisfies the protocol structurally (mypy checks it where the app hands itself to
:func:`stemcast.service.control.api.make_app`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from stemcast.service.config import ServiceSettings
    from stemcast.service.jobs.manager import JobManager
    from stemcast.service.live.publisher import Publisher
    from stemcast.service.metrics import Metrics
    from stemcast.service.state.registry import Registry

__all__ = ["ControlTarget"]


class ControlTarget(Protocol):
    """The parts of a running service that the HTTP API and the probes read and call."""

    @property
    def settings(self) -> ServiceSettings:
        """The settings: watched folders, output root, configured conversions."""

    @property
    def registry(self) -> Registry:
        """The recorded runs and jobs (blocking: call it in a thread)."""

    @property
    def jobs(self) -> JobManager:
        """The conversion jobs: requests and cancelling."""

    @property
    def publisher(self) -> Publisher:
        """The ZeroMQ sockets, whose state the readiness probe reports."""

    @property
    def metrics(self) -> Metrics:
        """The Prometheus metrics served at ``/metrics``."""

    @property
    def token(self) -> str | None:
        """The bearer token of the mutating calls; ``None`` turns them off."""

    def roots(self) -> list[str]:
        """Return the folders whose runs may be converted on request (resolved)."""

    def following(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a file of a run the service is following now."""
