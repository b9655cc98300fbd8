"""The viewer's HTTP routes: the page at ``/``, its script and style, and its WebSocket.

Everything the page needs ships in the package (``static/``): no other site is asked for
anything, and there is nothing to build. The routes only read, like the rest of the API's
``GET`` routes; the WebSocket refuses pages from other sites (a browser lets any page open a
WebSocket to any address: the ``Origin`` it sends must be this server).
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, web

from stemcast.service.control.target import ControlTarget
from stemcast.service.viewer.hub import ViewerHub
from stemcast.service.viewer.page import Page

__all__ = ["VIEWER", "add_viewer"]

#: The hub of an application's viewer: ``request.app[VIEWER]``.
VIEWER = web.AppKey("viewer", ViewerHub)
_SOCKETS = web.AppKey("viewer sockets", set[web.WebSocketResponse])
_FILES = web.AppKey("viewer files", dict[str, tuple[bytes, str]])

_TYPES = {
    "index.html": "text/html",
    "viewer.js": "text/javascript",
    "viewer.css": "text/css",
}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
}
#: Largest message a page may send (its messages are small JSON objects).
_MAX_PAGE_MESSAGE = 64 * 1024


def add_viewer(app: web.Application, service: ControlTarget) -> None:
    """Add the viewer to an API application.

    Parameters
    ----------
    app
        The application (:func:`stemcast.service.control.api.make_app`).
    service
        The running service.
    """
    static = resources.files(__package__).joinpath("static")
    app[_FILES] = {
        name: (static.joinpath(name).read_bytes(), kind) for name, kind in _TYPES.items()
    }
    app[VIEWER] = ViewerHub(service)
    app[_SOCKETS] = set()
    app.router.add_get("/", _index)
    app.router.add_get("/viewer/ws", _socket)
    app.router.add_get("/viewer/{name}", _file)
    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_close_hub)


async def _index(request: web.Request) -> web.Response:
    """``GET /``: the viewer's page."""
    return _send(request, "index.html")


async def _file(request: web.Request) -> web.Response:
    """``GET /viewer/{name}``: the page's script and style."""
    return _send(request, request.match_info["name"])


def _send(request: web.Request, name: str) -> web.Response:
    found = request.app[_FILES].get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, kind = found
    return web.Response(body=body, content_type=kind, charset="utf-8", headers=_HEADERS)


async def _socket(request: web.Request) -> web.WebSocketResponse:
    """``GET /viewer/ws``: the page's WebSocket (see :mod:`stemcast.service.viewer.page`)."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(reason=f"pages from {origin} may not use this viewer")
    # Uncompressed: frames are mostly counts that deflate would spend the service's
    # processor on, for a connection that is loopback or a local network.
    socket = web.WebSocketResponse(heartbeat=20.0, max_msg_size=_MAX_PAGE_MESSAGE, compress=False)
    await socket.prepare(request)
    sockets = request.app[_SOCKETS]
    sockets.add(socket)
    try:
        await Page(socket, request.app[VIEWER]).serve()
    finally:
        sockets.discard(socket)
    return socket


async def _close_sockets(app: web.Application) -> None:
    sockets: set[web.WebSocketResponse] = app[_SOCKETS]
    for socket in list(sockets):
        await socket.close(code=WSCloseCode.GOING_AWAY, message=b"the service stops")


async def _close_hub(app: web.Application) -> None:
    await app[VIEWER].close()
