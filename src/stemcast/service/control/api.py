"""The HTTP control API of the service: runs, conversion jobs, cancelling (see docs/api.md).

JSON in and out. Reading (``GET``) is open to whoever can reach the address, which is
loopback by default; every other method needs ``Authorization: Bearer TOKEN`` with the
configured token, compared in constant time. Without a configured token those calls are
refused. Errors are ``{"error": "..."}`` with the status that says what kind of problem it
is (400 bad request, 401 no or wrong token, 403 not allowed, 404 not found, 405 method not
allowed, 409 conflict, 413 body too large), for every request: bodies and queries are checked
against the models of :mod:`stemcast.service.control.requests` before anything is done, and
even a message that is not HTTP gets a JSON answer (:func:`make_runner`).

Paths given to ``POST /convert`` are resolved (``os.path.realpath``: symbolic links followed)
and must lie in a watched folder or one of the ``input_roots``; ``..`` is refused outright.

:func:`make_app` returns a plain :class:`aiohttp.web.Application` that keeps the service
under :data:`SERVICE`, so other endpoints can be added to it with ``app.router``. The
registry is SQLite: the handlers read and write it in worker threads, never in the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import PurePath
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from stemcast.errors import StemcastError
from stemcast.service.control import probes
from stemcast.service.control.requests import (
    MAX_BODY_BYTES,
    ConvertPathBody,
    ConvertRunBody,
    JobsQuery,
    RequestError,
    RunsQuery,
    parse_body,
    parse_query,
)
from stemcast.service.control.target import ControlTarget
from stemcast.service.jobs.manager import JobConflict
from stemcast.service.paths import inside
from stemcast.service.state.records import JobRecord, JobStatus, RunRecord, RunStatus

__all__ = ["SERVICE", "ApiError", "make_app", "make_runner"]

_logger = logging.getLogger(__name__)

#: The service an application controls: ``request.app[SERVICE]``.
SERVICE = web.AppKey("service", ControlTarget)

_READING = frozenset(("GET", "HEAD", "OPTIONS"))
_DETECTORS = {".mib": "merlin", ".tvips": "tvips"}
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Model = TypeVar("_Model", bound=BaseModel)
#: Characters of aiohttp's description of a malformed HTTP message kept in the answer.
_SHOWN = 200
#: Job fields the API leaves out: internal bookkeeping.
_INTERNAL = frozenset(("key", "tags", "fingerprints"))


class ApiError(Exception):
    """A request the API refuses, with its HTTP status.

    Parameters
    ----------
    status
        HTTP status code.
    message
        What is wrong, for the ``error`` field of the response.
    headers
        Extra response headers.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def make_app(service: ControlTarget) -> web.Application:
    """Build the API application of ``service``.

    Parameters
    ----------
    service
        The running service.

    Returns
    -------
    aiohttp.web.Application
        Routes ``GET /runs``, ``GET /runs/{id}``, ``POST /runs/{id}/convert``,
        ``POST /convert``, ``GET /jobs``, ``GET /jobs/{id}``, ``DELETE /jobs/{id}``, the
        probes ``GET /health``, ``GET /ready``, ``GET /metrics``, and the live viewer at
        ``GET /`` (:mod:`stemcast.service.viewer`).
    """
    from stemcast.service.viewer.routes import add_viewer

    app = web.Application(middlewares=[_json_errors, _authorize], client_max_size=MAX_BODY_BYTES)
    app[SERVICE] = service
    app.add_routes(
        [
            web.get("/runs", list_runs),
            web.get("/runs/{run_id}", show_run),
            web.post("/runs/{run_id}/convert", convert_run),
            web.post("/convert", convert_path),
            web.get("/jobs", list_jobs),
            web.get("/jobs/{job_id}", show_job),
            web.delete("/jobs/{job_id}", cancel_job),
            *probes.routes(service),
        ]
    )
    add_viewer(app, service)
    return app


def make_runner(service: ControlTarget, **options: Any) -> web.AppRunner:
    """Return the runner serving the API of ``service``, JSON errors included.

    Requests that reach the application are answered by its handlers and middlewares; a
    message aiohttp cannot parse as HTTP (a bad request line, a header line over 8190
    bytes, a bad chunked body) never does, so the connections of this runner answer those
    with a JSON error too.

    Parameters
    ----------
    service
        The running service.
    **options
        Options of :class:`aiohttp.web.AppRunner` (``shutdown_timeout``...).

    Returns
    -------
    aiohttp.web.AppRunner
        The runner, to ``setup()`` and start a site with.
    """
    return _JsonRunner(make_app(service), **options)


class _JsonErrorsHandler(web.RequestHandler):
    """A connection of the API: its own errors (not HTTP, handler timed out) are JSON."""

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            # The parent logs the traceback and refuses when a response was already sent.
            super().handle_error(request, status, exc, message)
            text = f"{HTTPStatus(status).phrase}: the service log has the details"
        else:
            if request.writer.output_size > 0:
                raise ConnectionError("a response was sent already: no room for the error")
            # What aiohttp found, without the bytes it quotes (they may hold a header's secret).
            first = (message or HTTPStatus(status).phrase).strip().splitlines()[0]
            problem = first.split(":", 1)[0][:_SHOWN]
            # A client's mistake, not the service's: one line, no traceback.
            _logger.warning("refused a malformed HTTP request from %s: %s", request.remote, problem)
            text = f"not an HTTP request the API can read: {problem}"
        response = web.json_response({"error": text}, status=status)
        response.force_close()
        return response


def _json_connection(server: web.Server) -> web.RequestHandler:
    """Make a connection of ``server`` whose own errors are JSON.

    The connection is made by the server, with its settings, then takes the class that
    answers errors in JSON (it adds no state, only that method).
    """
    handler = server()
    handler.__class__ = _JsonErrorsHandler
    return handler


class _JsonRunner(web.AppRunner):
    """An application runner whose sites make :class:`_JsonErrorsHandler` connections."""

    @property
    def server(self) -> Any:
        """The factory of the connections, for the sites (``None`` before ``setup()``)."""
        made = super().server
        return None if made is None else functools.partial(_json_connection, made)


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response(
            {"error": error.message}, status=error.status, headers=error.headers
        )
    except RequestError as error:
        return web.json_response({"error": str(error)}, status=400)
    except JobConflict as error:
        return web.json_response({"error": str(error)}, status=409)
    except StemcastError as error:
        return web.json_response({"error": str(error)}, status=400)
    except FileNotFoundError as error:
        return web.json_response({"error": f"{error.filename}: no such file"}, status=404)
    except PermissionError as error:
        return web.json_response({"error": f"{error.filename}: cannot be read"}, status=403)
    except OSError as error:
        reason = error.strerror or str(error)
        return web.json_response({"error": f"{error.filename}: {reason}"}, status=400)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {name: value for name, value in error.headers.items() if name == "Allow"}
        if isinstance(error, web.HTTPRequestEntityTooLarge):
            message = f"the body is larger than {MAX_BODY_BYTES} bytes"
        else:
            message = f"{error.reason}: {request.method} {request.path}"
        return web.json_response({"error": message}, status=error.status, headers=headers)
    except Exception as error:
        # A bug, not a bad request: said in JSON all the same, with the details in the log.
        _logger.exception("%s %s failed", request.method, request.path)
        return web.json_response(
            {"error": f"internal error ({type(error).__name__}): the service log has the details"},
            status=500,
        )


@web.middleware
async def _authorize(request: web.Request, handler: _Handler) -> web.StreamResponse:
    if request.method in _READING:
        return await handler(request)
    token = request.app[SERVICE].token
    if token is None:
        raise ApiError(
            403,
            "changes are disabled: the service has no token; set token_file (--token-file "
            "FILE) or the environment variable STEMCAST_TOKEN and restart it",
        )
    challenge = {"WWW-Authenticate": 'Bearer realm="stemcast"'}
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer TOKEN'", challenge)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "wrong bearer token", challenge)
    return await handler(request)


async def list_runs(request: web.Request) -> web.Response:
    """``GET /runs[?status=S&limit=N]``: recorded runs, newest first."""
    registry = request.app[SERVICE].registry
    query = _query(request, RunsQuery)
    runs = await asyncio.to_thread(registry.runs, status=query.status, limit=query.limit)
    return web.json_response({"runs": runs})


async def show_run(request: web.Request) -> web.Response:
    """``GET /runs/{id}``: one run, with its conversion jobs."""
    service = request.app[SERVICE]
    run = await _run(service, request.match_info["run_id"])
    jobs = await asyncio.to_thread(service.registry.jobs, run_id=run["id"])
    return web.json_response({**run, "jobs": [job_view(job) for job in jobs]})


async def convert_run(request: web.Request) -> web.Response:
    """``POST /runs/{id}/convert``: convert a run that has ended."""
    service = request.app[SERVICE]
    run = await _run(service, request.match_info["run_id"])
    body = await _body(request, ConvertRunBody)
    if run["status"] is RunStatus.FOLLOWING:
        raise ApiError(409, f"run {run['id']} is still being followed: convert it once it ends")
    if run["status"] not in (RunStatus.COMPLETE, RunStatus.INTERRUPTED):
        raise ApiError(
            409,
            f"run {run['id']} is {run['status']} ({run['reason']}); "
            "convert its file with POST /convert if it is readable",
        )
    if not run["frames"]:
        raise ApiError(409, f"run {run['id']} has no frame to convert")
    if not os.path.exists(run["path"]):
        raise ApiError(404, f"{run['path']}: the run's file is gone")
    # A TVIPS scan found from the rotator index is not always the frames in order: the
    # converter finds its grid in the files again.
    shaped = run["nav_shape"] and len(run["nav_shape"]) == 2 and run["nav_evidence"] != "rotator"
    shape = run["nav_shape"] if shaped else None
    return await _request(
        service,
        run["path"],
        run["detector"],
        body,
        run_id=run["id"],
        run_shape=shape,
        relative_to=run["watch_root"],
    )


async def convert_path(request: web.Request) -> web.Response:
    """``POST /convert``: convert a finished run given by the path of one of its files."""
    service = request.app[SERVICE]
    body = await _body(request, ConvertPathBody)
    text = body.path
    path, root = _confine(text, service.roots())
    if not os.path.isfile(path):
        raise ApiError(400, f"{text}: not a file")
    detector = _DETECTORS.get(os.path.splitext(path)[1].lower())
    if detector is None:
        raise ApiError(400, f"{text}: not a Merlin .mib or TVIPS .tvips file")
    if service.following(path):
        raise ApiError(409, f"{text}: the service is following this run; wait for its end")
    return await _request(service, path, detector, body, run_shape=None, relative_to=root)


async def list_jobs(request: web.Request) -> web.Response:
    """``GET /jobs[?status=S&run_id=ID&limit=N]``: conversion jobs, newest first."""
    registry = request.app[SERVICE].registry
    query = _query(request, JobsQuery)
    jobs = await asyncio.to_thread(
        registry.jobs, status=query.status, run_id=query.run_id, limit=query.limit
    )
    return web.json_response({"jobs": [job_view(job) for job in jobs]})


async def show_job(request: web.Request) -> web.Response:
    """``GET /jobs/{id}``: one job, its state and progress."""
    job_id = request.match_info["job_id"]
    job = await asyncio.to_thread(request.app[SERVICE].registry.job, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    return web.json_response(job_view(job))


async def cancel_job(request: web.Request) -> web.Response:
    """``DELETE /jobs/{id}``: cancel a queued (200) or running (202) job."""
    job_id = request.match_info["job_id"]
    job = await asyncio.to_thread(request.app[SERVICE].jobs.cancel, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    cancelled = job["status"] is JobStatus.CANCELLED
    return web.json_response(
        {**job_view(job), "cancel_requested": True}, status=200 if cancelled else 202
    )


def job_view(job: JobRecord) -> dict[str, Any]:
    """Return a job as the API shows it: the registry row with a ``progress`` object.

    Parameters
    ----------
    job
        The job as the registry returns it.

    Returns
    -------
    dict
        Its fields without the internal ones (dedupe key, output tags and fingerprints),
        ``frames_done`` and ``frames_total`` moved under ``progress`` with the ``fraction``
        done (0 to 1, ``None`` while the number of frames is unknown).
    """
    view: dict[str, Any] = {name: value for name, value in job.items() if name not in _INTERNAL}
    done, total = view.pop("frames_done"), view.pop("frames_total")
    fraction = None if not total else round(min(done / total, 1.0), 4)
    view["progress"] = {"frames_done": done, "frames_total": total, "fraction": fraction}
    return view


async def _request(
    service: ControlTarget,
    path: str,
    detector: str,
    body: ConvertRunBody,
    *,
    run_id: str | None = None,
    run_shape: list[int] | None,
    relative_to: str | None,
) -> web.Response:
    """Ask the jobs for a conversion; the configured one when the body names no targets."""
    from stemcast.convert.options import parse_targets

    settings = service.settings
    folder = os.path.dirname(path)
    targets: str | list[str]
    if body.targets is None:
        targets, options = settings.conversion_for(detector, folder)
        if not targets:
            raise ApiError(
                400, "no targets: give 'targets' (emd, blockfile); none is configured for this run"
            )
    else:
        targets = body.targets
        options = settings.options_for(detector, folder, parse_targets(targets))
    if body.options is not None:
        options = body.options.model_dump(exclude_unset=True)
    job, created = await service.jobs.request(
        path,
        targets,
        options,
        run_id=run_id,
        navigation_shape=body.navigation_shape,
        run_shape=run_shape,
        relative_to=relative_to,
    )
    return web.json_response(
        {**job_view(job), "existing": not created},
        status=202 if created else 200,
        headers={"Location": f"/jobs/{job['id']}"},
    )


async def _run(service: ControlTarget, run_id: str) -> RunRecord:
    run = await asyncio.to_thread(service.registry.run, run_id)
    if run is None:
        raise ApiError(404, f"no run {run_id}")
    return run


async def _body(request: web.Request, model: type[_Model]) -> _Model:
    """Read and check a request body (at most ``MAX_BODY_BYTES``: 413 beyond)."""
    return parse_body(await request.read(), model)


def _query(request: web.Request, model: type[_Model]) -> _Model:
    return parse_query(request.query, list(request.query.items()), model)


def _confine(text: str, roots: list[str]) -> tuple[str, str]:
    """Resolve a requested path and check that it lies in one of ``roots``.

    Parameters
    ----------
    text
        An absolute path, or one relative to a root.
    roots
        The folders the API may read, resolved.

    Returns
    -------
    tuple of str
        The resolved path and the root holding it.

    Raises
    ------
    ApiError
        403 for ``..`` or a path (after following links) outside every root, 404 for a
        path that does not exist.
    """
    if ".." in PurePath(text).parts:
        raise ApiError(403, f"{text}: '..' is not allowed in paths")
    if "\0" in text:
        raise ApiError(400, "the path contains a NUL character")
    candidates = [text] if os.path.isabs(text) else [os.path.join(root, text) for root in roots]
    for candidate in candidates:
        if not os.path.lexists(candidate) and len(candidates) > 1:
            continue
        real = os.path.realpath(candidate)
        root = next((root for root in roots if inside(real, root)), None)
        if root is None:
            raise ApiError(
                403,
                f"{text}: outside the folders the service may read (watch folders and input_roots)",
            )
        if not os.path.exists(real):
            raise ApiError(404, f"{text}: no such file")
        return real, root
    raise ApiError(404, f"{text}: no such file in the watch folders or input_roots")
