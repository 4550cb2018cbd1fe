"""The signaling client: a Python peer's link to the server, kept alive across drops.

It joins one room and stays there. When the socket drops it reconnects with
exponential backoff and jitter, and rejoins with its resume token, so it keeps
its peer id and its peer-to-peer connections never notice. Given several
server URLs (instances sharing one secret), it fails over to the next one when
the current one restarts or cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
from dataclasses import dataclass, field

import aiohttp
import msgspec
from pyee.asyncio import AsyncIOEventEmitter
from yarl import URL

from .. import protocol as p

logger = logging.getLogger(__name__)

#: Where a client connects when told nothing else: a server on this machine.
DEFAULT_URL = "http://127.0.0.1:8080"

#: Join errors that no amount of retrying will fix.
_FINAL_JOIN_ERRORS = frozenset(
    {p.ErrorCode.BAD_MESSAGE, p.ErrorCode.BAD_ORIGIN, p.ErrorCode.UNAUTHORIZED}
)


def websocket_url(url: str) -> str:
    """The signaling socket's URL, from the page's (``http://host:8080``) or the socket's own."""
    parsed = URL(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parsed.scheme)
    if scheme is None or not parsed.host:
        raise ValueError(f"{url!r} is not an http(s):// or ws(s):// URL")
    path = parsed.path if parsed.path.endswith("/ws") else parsed.path.rstrip("/") + "/ws"
    return str(parsed.with_scheme(scheme).with_path(path).with_query(None).with_fragment(None))


@dataclass(frozen=True)
class InviteLink:
    """What an invite link (``https://host/?room=NAME#token=...``) carries besides the server."""

    room: str | None
    token: str | None


def read_invite(url: str) -> InviteLink:
    """The room and token an invite link names, as ``chatsubo token`` prints it."""
    parsed = URL(url if "://" in url else f"http://{url}")
    fragment = URL(f"?{parsed.fragment}").query
    return InviteLink(parsed.query.get("room"), fragment.get("token"))


async def _write(ws: aiohttp.ClientWebSocketResponse, message: p.ClientMessage) -> None:
    """Send one message as the text frame the server requires."""
    await ws.send_str(p.encode(message).decode())


class SignalingError(Exception):
    """The server refused to let us into the room."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class SignalingOptions:
    """How to reach the server and how to retry."""

    #: The server's URLs, each as :func:`websocket_url` takes it. The client
    #: stays on one while it works and moves to the next, round robin, when
    #: that one restarts (1012) or a connection attempt to it fails.
    urls: list[str] = field(default_factory=lambda: [DEFAULT_URL])
    #: Accept any TLS certificate, as for a server run with ``--self-signed``.
    insecure: bool = False
    #: Seconds between our WebSocket pings; a server silent for 1.5 periods is given up on.
    heartbeat: float = p.CLIENT_RULES.ping_interval
    #: Seconds to wait for a TCP (and TLS) connection to the server.
    connect_timeout: float = 10.0


class SignalingClient(AsyncIOEventEmitter):
    """Membership of one room, through drops and server restarts.

    Events, each with the message from :mod:`chatsubo.protocol`:
    ``peer_list``, ``peer_joined``, ``peer_left``, ``peer_updated``,
    ``signal``, ``link``, ``unlink``, ``positions``, ``rooms`` and
    ``server_error`` (any other message as an event named by its type);
    ``connectionstatechange``
    when :attr:`connectionState` changes (``new``, ``connecting``,
    ``connected``, ``reconnecting``, ``closed``); and ``retrying(url, why,
    seconds)`` before each wait to reconnect, ``url`` being the one it will try.

    After a rejoin, a peer we knew that the server does not list again
    within its grace period is taken to have left while we were away: it
    gets a ``peer_left`` with reason ``timeout``, as the server would have
    sent had we been there.
    """

    def __init__(
        self,
        room_id: str,
        name: str,
        options: SignalingOptions | None = None,
        token: str | None = None,
    ) -> None:
        """Join ``room_id`` as ``name``, with the invite ``token`` if the room needs one."""
        super().__init__()
        if not p.is_valid_room_id(room_id):
            raise ValueError(f"room name {room_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
        self.room_id = room_id
        self.name = name
        self.token = token
        self.options = options or SignalingOptions()
        if not self.options.urls:
            raise ValueError("no server URL to connect to")
        self._urls = [websocket_url(url) for url in self.options.urls]
        #: Which of ``_urls`` we use now, or try next.
        self._current = 0
        self.peer_id: str | None = None
        self.resume_token: str | None = None
        self.ice_servers: list[p.IceServer] = []
        #: Our zone, told to the server again after every rejoin: a restarted
        #: server has forgotten it, and the lobby counts people by zone.
        self.zone: str | None = None
        #: Where we stand (see :meth:`move`), told again after every rejoin
        #: too: the server links us to the people near us by it.
        self.position: tuple[float, float] | None = None
        self._position_sent: tuple[float, float] | None = None
        self._position_sent_at = -math.inf
        self._mover: asyncio.Task[None] | None = None
        self.connectionState = "new"
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._joined: asyncio.Future[None] | None = None
        self._closing = False
        #: Everyone in the room as far as we know, and a timer for each one
        #: that a rejoin did not list again.
        self._members: set[str] = set()
        self._unconfirmed: dict[str, asyncio.TimerHandle] = {}
        self._grace = 0.0
        #: The code of the last ``error``: with the close code, it says why we were closed.
        self._last_error: str | None = None

    @property
    def url(self) -> str:
        """The socket URL we are connected to, or will try next."""
        return self._urls[self._current]

    # --- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Join the room; returns once in it, retrying while the server is unreachable.

        Raises :class:`SignalingError` if the server refuses the join for good
        (a full room, a bad name).
        """
        if self._task is not None:
            raise RuntimeError("connect() was already called")
        self._joined = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run())
        try:
            await asyncio.shield(self._joined)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Leave the room and stop reconnecting."""
        self._closing = True
        if self._joined is not None and not self._joined.done():
            self._joined.set_exception(SignalingError("closed", "closed before joining"))
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await _write(ws, p.Leave())
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close()
        for task in (self._task, self._mover):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for timer in self._unconfirmed.values():
            timer.cancel()
        self._unconfirmed.clear()
        self._set_state("closed")

    # --- requests --------------------------------------------------------------

    async def signal(self, to: str, data: p.PeerSignal) -> bool:
        """Send ``data`` to peer ``to``; False when the server cannot be reached right now."""
        return await self._send(p.Signal(to=to, data=msgspec.Raw(p.encode(data))))

    async def update(
        self, name: str | None = None, zone: str | msgspec.UnsetType | None = msgspec.UNSET
    ) -> bool:
        """Change our name or zone (None clears it); False while disconnected."""
        if name is not None:
            self.name = name
        if zone is not msgspec.UNSET:
            self.zone = zone
        return await self._send(p.Update(name=msgspec.UNSET if name is None else name, zone=zone))

    def move(self, x: float, y: float) -> None:
        """Tell the server where we stand, in meters on the map.

        At most ``POSITION_UPDATES_PER_SECOND`` updates a second: a move goes
        out at once if none went out in the last interval, else at its end,
        folded with any later moves so that the last position always goes
        out last; nothing goes out while nothing changed. While disconnected
        moves wait for the rejoin, which sends the position anyway.
        """
        self.position = (x, y)
        if self._mover is None or self._mover.done():
            self._mover = asyncio.create_task(self._send_positions())

    async def _send_positions(self) -> None:
        loop = asyncio.get_running_loop()
        while self.position is not None and self.position != self._position_sent:
            wait = self._position_sent_at + 1 / p.POSITION_UPDATES_PER_SECOND - loop.time()
            if wait > 0:
                # Then look again: a rejoin may have sent it meanwhile.
                await asyncio.sleep(wait)
                continue
            position = self.position
            if not await self._send(p.Update(x=position[0], y=position[1])):
                return
            self._position_sent, self._position_sent_at = position, loop.time()

    async def watch_rooms(self) -> bool:
        """Ask for the lobby's room list, as ``rooms`` events."""
        return await self._send(p.WatchRooms())

    async def _send(self, message: p.ClientMessage) -> bool:
        ws = self._ws
        if ws is None or ws.closed or self.connectionState != "connected":
            return False
        try:
            await _write(ws, message)
        except ConnectionError:
            return False
        return True

    # --- the connection loop -----------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.connectionState:
            self.connectionState = state
            self.emit("connectionstatechange", state)

    async def _run(self) -> None:
        """Connect, serve, and reconnect until closed or refused for good."""
        loop = asyncio.get_running_loop()
        attempt, outage_began = 0, loop.time()
        ssl_context: ssl.SSLContext | bool = not self.options.insecure
        timeout = aiohttp.ClientTimeout(sock_connect=self.options.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._closing:
                self._set_state("connecting" if self.peer_id is None else "reconnecting")
                code: int | None = None
                why = "the connection dropped"
                tried, connected = self.url, False
                try:
                    async with http.ws_connect(
                        tried, heartbeat=self.options.heartbeat, ssl=ssl_context
                    ) as ws:
                        connected = True
                        self._ws = ws
                        self._last_error = None
                        if await self._serve(ws):
                            attempt, outage_began = 0, loop.time()
                        code = ws.close_code
                        why = p.closing_words(code, self._last_error)
                except SignalingError as exc:
                    self._fail(exc)
                    return
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    why = f"cannot connect ({exc or type(exc).__name__})"
                except Exception:
                    logger.exception("signaling connection failed")
                finally:
                    self._ws = None
                if self._closing:
                    break
                reconnect = p.reconnect_after(code)
                if reconnect is p.Reconnect.NEVER:
                    self._fail(SignalingError("closed", f"{why} ({code})"))
                    return
                if not connected:
                    self._fail_over()
                if reconnect is p.Reconnect.AT_ONCE:
                    # The spread keeps everyone from returning to a restarting
                    # server at the same moment; another instance is up already.
                    moved = self._fail_over()
                    spread = 0.0 if moved else p.CLIENT_RULES.restart_spread
                    wait = spread * random.random()
                else:
                    wait = p.reconnect_delay(attempt, loop.time() - outage_began, random.random())
                    attempt += 1
                target = "again" if self.url == tried else self.url
                logger.warning("%s: %s; trying %s in %.1f s", tried, why, target, wait)
                self.emit("retrying", self.url, why, wait)
                await asyncio.sleep(wait)

    def _fail_over(self) -> bool:
        """Move on to the next URL, round robin; whether there was another one."""
        self._current = (self._current + 1) % len(self._urls)
        return len(self._urls) > 1

    def _fail(self, error: SignalingError) -> None:
        logger.warning("signaling stopped: %s", error)
        if self._joined is not None and not self._joined.done():
            self._joined.set_exception(error)
        self._set_state("closed")

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Greet, join and dispatch until the socket closes; whether the join succeeded."""
        joined = False
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                message = p.decode_server(msg.data)
            except p.ProtocolError as exc:
                logger.debug("ignoring a frame from the server: %s", exc.message)
                continue
            match message:
                case p.Welcome():
                    self.ice_servers = message.ice_servers
                    self._grace = message.limits.grace
                    join = self._join(self.resume_token)
                    if self.resume_token is None:
                        self.peer_id, self.resume_token = message.peer_id, message.resume_token
                    await _write(ws, join)
                case p.PeerList():
                    joined = True
                    self.peer_id = message.peer_id
                    self.resume_token = message.resume_token or self.resume_token
                    self.name = message.name or self.name
                    self._set_state("connected")
                    await self._tell_again(ws)
                    self._confirm({info.peer_id for info in message.peers})
                    self.emit("peer_list", message)
                    if self._joined is not None and not self._joined.done():
                        self._joined.set_result(None)
                case p.Error():
                    self._last_error = message.code.value
                    if joined:
                        self.emit("server_error", message)
                    else:
                        await self._join_refused(ws, message)
                case p.IceServersUpdate():
                    # Fresh TURN credentials, for the links made from now on.
                    self.ice_servers = message.ice_servers
                case p.RelayedSignal():
                    self.emit("signal", message)
                case p.PeerJoined():
                    self._arrived(message.peer_id)
                    self.emit("peer_joined", message)
                case p.PeerLeft():
                    self._gone(message.peer_id)
                    self.emit("peer_left", message)
                case _:
                    self.emit(str(message.__struct_config__.tag), message)
        return joined

    async def _tell_again(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """After a (re)join, our zone and position: a restarted server has forgotten both."""
        position = self.position
        if self.zone is None and position is None:
            return
        x, y = position or (msgspec.UNSET, msgspec.UNSET)
        zone = msgspec.UNSET if self.zone is None else self.zone
        await _write(ws, p.Update(zone=zone, x=x, y=y))
        if position is not None:
            self._position_sent = position
            self._position_sent_at = asyncio.get_running_loop().time()

    def _join(self, resume: str | None) -> p.Join:
        return p.Join(room_id=self.room_id, name=self.name, resume=resume, token=self.token)

    # --- who is in the room --------------------------------------------------------

    def _confirm(self, listed: set[str]) -> None:
        """A (re)join listed these peers: anyone else we knew gets the grace period to return."""
        loop = asyncio.get_running_loop()
        for peer_id in self._members - listed:
            if peer_id not in self._unconfirmed:
                self._unconfirmed[peer_id] = loop.call_later(self._grace, self._expire, peer_id)
        for peer_id in listed:
            self._arrived(peer_id)

    def _arrived(self, peer_id: str) -> None:
        self._members.add(peer_id)
        self._stop_waiting(peer_id)

    def _gone(self, peer_id: str) -> None:
        self._members.discard(peer_id)
        self._stop_waiting(peer_id)

    def _stop_waiting(self, peer_id: str) -> None:
        timer = self._unconfirmed.pop(peer_id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, peer_id: str) -> None:
        self._gone(peer_id)
        logger.info("peer %s did not come back after the rejoin; taking it as gone", peer_id)
        self.emit("peer_left", p.PeerLeft(peer_id=peer_id, reason=p.LeaveReason.TIMEOUT))

    async def _join_refused(self, ws: aiohttp.ClientWebSocketResponse, error: p.Error) -> None:
        """Decide what a refused join means: retry fresh, wait, or give up."""
        if error.code is p.ErrorCode.BAD_RESUME:
            logger.info("resume token refused; joining as a new peer")
            self.resume_token = None
            await _write(ws, self._join(None))
            return
        if error.code is p.ErrorCode.UNAVAILABLE:
            # The server closes with 1013 next, and we try again after a while.
            self.emit("server_error", error)
            return
        first_join = self._joined is not None and not self._joined.done()
        if error.code in _FINAL_JOIN_ERRORS or first_join:
            raise SignalingError(error.code.value, error.message)
        self.emit("server_error", error)
        await ws.close()
