"""The aiohttp application: the page, the signaling WebSocket and the HTTP API."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web
from yarl import URL

from .. import protocol as p
from ..space import space_json
from .backend import RoomBackend, Unavailable
from .config import ServerConfig
from .hub import Hub
from .memory import MemoryBackend
from .redis_backend import RedisBackend, RedisOptions
from .session import Session

logger = logging.getLogger(__name__)

HUB = web.AppKey("hub", Hub)
WEB_ROOT = web.AppKey("web_root", Path)

_JSON = "application/json"


def default_web_root() -> Path:
    """The page's files: inside the installed package, or ``web/`` beside a source checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "web"
    return installed if installed.is_dir() else package.parent / "web"


def create_app(config: ServerConfig, web_root: Path | None = None) -> web.Application:
    """Build the server application; its state lives on the app under ``HUB``."""
    app = web.Application()
    app[HUB] = Hub(config, room_backend(config))
    root = web_root or default_web_root()
    app.router.add_get("/ws", websocket)
    app.router.add_get("/api/rooms", rooms)
    app.router.add_get("/api/space", space)
    app.router.add_get("/api/protocol", protocol_rules)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_static("/", root)
    app[WEB_ROOT] = root
    app.on_startup.append(_start_hub)
    app.on_shutdown.append(_close_hub)
    return app


async def _start_hub(app: web.Application) -> None:
    await app[HUB].start()


async def _close_hub(app: web.Application) -> None:
    await app[HUB].close()


def room_backend(config: ServerConfig) -> RoomBackend:
    """Rooms in Redis when ``config.redis_url`` is set, else in this process's memory."""
    if config.redis_url is None:
        return MemoryBackend()
    return RedisBackend(RedisOptions(url=config.redis_url, prefix=config.redis_prefix))


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Whether a browser page at ``origin`` may connect to a server reached as ``host``.

    Clients that send no Origin (bots, scripts) are allowed; browsers always
    send one. Same-origin compares host and port, reading the Host header with
    the Origin's scheme so that a TLS-terminating proxy still matches.
    """
    if origin is None:
        return True
    if "*" in allowed:
        return True
    try:
        url = URL(origin)
        if url.host is None or host is None:
            return False
        if str(url.origin()) in {str(URL(a).origin()) for a in allowed}:
            return True
        served = URL(f"{url.scheme}://{host}")
        return (url.host.lower(), url.port) == ((served.host or "").lower(), served.port)
    except ValueError:
        return False


async def websocket(request: web.Request) -> web.StreamResponse:
    """The signaling socket: one ``Session`` per connection."""
    hub = request.app[HUB]
    config = hub.config
    # No aiohttp heartbeat and no autoping: the session answers pings and the
    # hub's heartbeat sweep pings silent peers (see Session.heartbeat).
    ws = web.WebSocketResponse(
        autoping=False,
        compress=False,
        max_msg_size=config.hard_message_bytes,
        timeout=2.0,
    )
    await ws.prepare(request)
    transport = request.transport
    if transport is None:
        return ws
    if not origin_allowed(request.headers.get("Origin"), request.host, config.allowed_origins):
        await _refuse(
            hub,
            ws,
            p.CloseCode.POLICY_VIOLATION,
            p.ErrorCode.BAD_ORIGIN,
            f"origin {request.headers.get('Origin')} is not allowed",
        )
        return ws
    if hub.connections() >= config.max_connections:
        await _refuse(
            hub,
            ws,
            p.CloseCode.TRY_AGAIN_LATER,
            p.ErrorCode.SERVER_FULL,
            "the server is at its connection limit; try again later",
        )
        return ws
    # Session.send cuts a slow reader off once its backlog passes
    # max_send_buffer; the headroom above that holds the frame that crossed it
    # (a room list can exceed one message), so the transport never pauses and a
    # send never waits on another client's network.
    transport.set_write_buffer_limits(high=config.max_send_buffer + 4 * config.hard_message_bytes)
    await Session(hub, ws, transport, request.url.host).run()
    return ws


async def _refuse(
    hub: Hub, ws: web.WebSocketResponse, close: p.CloseCode, code: p.ErrorCode, reason: str
) -> None:
    hub.metrics.errors.labels(code=code.value).inc()
    await ws.send_frame(p.encode(p.Error(code=code, message=reason)), web.WSMsgType.TEXT)
    await ws.close(code=close, message=p.close_reason(reason))


async def rooms(request: web.Request) -> web.Response:
    """The lobby's room list, the same as the ``rooms`` message.

    On an invite-only server, an invite as ``Authorization: Bearer TOKEN``
    shows the rooms it opens.
    """
    hub = request.app[HUB]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        listed = await hub.room_list(token if scheme.lower() == "bearer" and token else None)
    except Unavailable as exc:
        return _unavailable(exc)
    return web.Response(body=p.encode(p.Rooms(rooms=listed)), content_type=_JSON)


def _unavailable(exc: Unavailable) -> web.Response:
    body = {"status": "unavailable", "error": str(exc)}
    return web.Response(status=503, body=p.encode(body), content_type=_JSON)


async def space(request: web.Request) -> web.Response:
    """The bar's map and distance model, shared by every peer."""
    return web.Response(body=space_json(), content_type=_JSON)


async def protocol_rules(request: web.Request) -> web.Response:
    """The rules every client follows: close codes, reconnect timing, name limits."""
    return web.Response(body=p.rules_json(), content_type=_JSON)


async def healthz(request: web.Request) -> web.Response:
    """Liveness and this instance's counts; 503 while the rooms cannot be reached."""
    hub = request.app[HUB]
    problem = hub.backend.problem
    if problem is not None:
        return _unavailable(Unavailable(problem))
    held = hub.members_here()
    body = {
        "status": "ok",
        "connections": hub.connections(),
        "rooms": len({m.room_id for m in held}),
        "peers": len(held),
    }
    return web.Response(body=p.encode(body), content_type=_JSON)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    body = request.app[HUB].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def index(request: web.Request) -> web.FileResponse:
    """The page."""
    return web.FileResponse(request.app[WEB_ROOT] / "index.html")
