"""Liveness, readiness and metrics endpoints of the control HTTP server (see docs/operations.md).

``GET /health`` answers as long as the event loop does. ``GET /ready`` checks what the
service needs to do its work: every watched folder can be listed, the output root (when
conversions are configured) takes a new file, both ZeroMQ sockets are bound, and the
registry answers; it returns 503 with the failed checks otherwise. ``GET /metrics`` is the
Prometheus scrape endpoint. All three are reads: no token is needed. The readiness checks
and the scrape touch the file system and the registry, so they run in worker threads.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from pathlib import Path

from aiohttp import web

from stemcast.errors import StemcastError
from stemcast.service.control.target import ControlTarget
from stemcast.service.state.records import JobStatus

__all__ = ["readiness", "routes"]


def routes(service: ControlTarget) -> list[web.RouteDef]:
    """Return the routes ``/health``, ``/ready`` and ``/metrics`` of ``service``.

    Parameters
    ----------
    service
        The running service.

    Returns
    -------
    list of aiohttp.web.RouteDef
        Routes to add to the control application.
    """

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def ready(_: web.Request) -> web.Response:
        checks = await asyncio.to_thread(readiness, service)
        ok = all(check["ok"] for check in checks.values())
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        body, content_type = await asyncio.to_thread(service.metrics.render, accept)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [web.get("/health", health), web.get("/ready", ready), web.get("/metrics", metrics)]


def readiness(service: ControlTarget) -> dict[str, dict[str, object]]:
    """Check what the service needs to work (blocking: file-system access).

    Parameters
    ----------
    service
        The running service.

    Returns
    -------
    dict
        ``{check: {"ok": bool, "detail": str}}`` for each watched folder, the output root,
        the sockets and the registry.
    """
    checks: dict[str, dict[str, object]] = {}
    for folder in service.settings.watch:
        checks[f"watch {folder}"] = _readable(folder)
    output = service.settings.output
    if output is not None:
        checks[f"output {output}"] = _writable(output)
    publisher = service.publisher
    bound = not publisher.data.socket.closed and not publisher.preview.closed
    checks["sockets"] = {
        "ok": bound,
        "detail": f"data {publisher.data_address}, preview {publisher.preview_address}"
        if bound
        else "closed",
    }
    try:
        queued = service.registry.count_jobs()[JobStatus.QUEUED]
    except (StemcastError, sqlite3.Error) as error:
        checks["registry"] = {"ok": False, "detail": str(error)}
    else:
        checks["registry"] = {"ok": True, "detail": f"{queued} jobs queued"}
    return checks


def _readable(folder: Path) -> dict[str, object]:
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as error:
        return {"ok": False, "detail": f"cannot list: {error.strerror or error}"}
    return {"ok": True, "detail": "readable"}


def _writable(folder: Path) -> dict[str, object]:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".stemcast-ready-"):
            pass
    except OSError as error:
        return {"ok": False, "detail": f"cannot create a file: {error.strerror or error}"}
    return {"ok": True, "detail": "writable"}
