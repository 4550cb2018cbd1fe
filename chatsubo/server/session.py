"""One signaling connection: reads frames, enforces the limits, and hands messages to the hub."""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from .. import protocol as p
from .backend import Unavailable
from .identity import new_peer_id
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .hub import Hub

logger = logging.getLogger(__name__)

#: Frames that count against the rate limit: each one costs the server work.
_COUNTED = frozenset({WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING})

#: Heartbeat checks per ``heartbeat`` period. A silent peer is pinged after one
#: period and dropped half a period later, each at most 1/8 period late.
HEARTBEAT_TICKS = 8

#: The first byte of a frame holding a whole message: the FIN bit and the opcode
#: (RFC 6455, section 5.2). Compression would also set RSV1; it is off.
_FIN = 0x80
_FIN_TEXT = _FIN | WSMsgType.TEXT
_pack_length_16 = struct.Struct("!BBH").pack
_pack_length_64 = struct.Struct("!BBQ").pack
_CLOSE_CODE = struct.Struct("!H").pack


def _text_frame(data: bytes) -> bytes:
    """``data`` as one WebSocket text frame as a server sends it: unmasked."""
    size = len(data)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + data
    if size < 65536:
        return _pack_length_16(_FIN_TEXT, 126, size) + data
    return _pack_length_64(_FIN_TEXT, 127, size) + data


class Ending(enum.Enum):
    """How a connection ended, as its session reports it to the hub."""

    #: The client closed with 1000 or 1001: it is leaving on purpose.
    CLEAN = "clean"
    #: No clean close: the network dropped, the process died, a heartbeat was missed.
    DROPPED = "dropped"
    #: The server closed it for abuse.
    KICKED = "kicked"


class Session:
    """A client's WebSocket. It lives exactly as long as the socket.

    It reads, writes and enforces the per-connection limits; what a message
    means for the rooms is the hub's to decide.
    """

    def __init__(
        self,
        hub: Hub,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        host: str | None = None,
    ) -> None:
        self.hub = hub
        #: The host name or address the client reached us by, for our STUN URL.
        self.host = host
        #: When its TURN credentials are due to be renewed (monotonic); None without TURN.
        self.renew_ice_at: float | None = None
        self.ws = ws
        self._transport = transport
        #: Who this connection speaks for: its own new id, until the hub seats
        #: it under an older one that a resume token proved.
        self.peer_id = new_peer_id()
        #: The room it is in or joining, and the room event it has caught up
        #: with; None until its peer list is sent, while events wait in ``early``.
        self.room_id: str | None = None
        self.since: int | None = None
        self.early: list[tuple[int | None, bytes]] = []
        #: The display name its invite fixed, which ``update`` may not change.
        self.fixed_name: str | None = None
        #: Which rooms its lobby shows, as :meth:`Hub.opens` says, while it watches.
        self.lobby: str | None = None
        config = hub.config
        self._bucket = TokenBucket(config.messages_per_second, config.message_burst)
        # Patience refills slowly, so only a sustained flood exhausts it.
        self._patience = TokenBucket(config.flood_tolerance / 10, config.flood_tolerance)
        self._closed = False
        #: Whether a frame arrived since the last heartbeat tick, and ticks without one.
        self._heard = True
        self._silent_ticks = 0

    # --- sending ---------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue one encoded frame; never waits, least of all on a slow reader.

        A client whose unread backlog passes ``max_send_buffer`` is cut off as
        if its network had dropped, so it can never hold up the sender.
        """
        if not self._writable():
            return
        transport = self._transport
        if transport.get_write_buffer_size() > self.hub.config.max_send_buffer:
            logger.info("peer %s does not read its messages; dropping the connection", self.peer_id)
            self._drop()
            return
        # Straight to the transport: ws.send_frame would add two coroutines per
        # message to repeat the checks above, and could wait for a drain.
        # Compression is off, so a frame is just a header and the data.
        transport.write(_text_frame(data))

    def _writable(self) -> bool:
        """Whether frames may still go out: not closed by us, aiohttp or the network."""
        return not (self._closed or self.ws.closed or self._transport.is_closing())

    def _send_control(self, opcode: WSMsgType, payload: bytes = b"") -> None:
        """Write a ping, pong or close frame, unless the connection is on its way out."""
        if self._writable():
            self._transport.write(bytes((_FIN | opcode, len(payload))) + payload)

    def send_message(self, message: p.ServerMessage) -> None:
        """Encode and send one message."""
        self.send(p.encode(message))

    def error(self, code: p.ErrorCode, message: str) -> None:
        """Tell the client what it did wrong; the connection stays open."""
        self.hub.metrics.errors.labels(code=code.value).inc()
        self.send_message(p.Error(code=code, message=message))

    async def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code``, waiting briefly for the client's goodbye."""
        self._closed = True
        await self.ws.close(code=code, message=p.close_reason(reason))

    def end(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` at once, without waiting for the client."""
        self._send_control(WSMsgType.CLOSE, _CLOSE_CODE(code) + p.close_reason(reason))
        self._closed = True
        self._transport.close()

    def _drop(self) -> None:
        """Cut the connection as if the network had failed; the peer keeps its place a while."""
        self._closed = True
        self._transport.abort()

    async def kick(self, code: p.CloseCode, error: p.ErrorCode, reason: str) -> None:
        """Send a last error, have the client taken out of its room at once, and close."""
        self.error(error, reason)
        self.hub.disconnect(self, Ending.KICKED)
        await self.close(code, reason)

    # --- heartbeat -------------------------------------------------------------

    def heartbeat(self) -> None:
        """One of ``HEARTBEAT_TICKS`` checks a period: ping a silent peer, then drop it.

        The hub calls this for every session from one loop; aiohttp's own
        heartbeat would re-arm a timer per connection on every frame received.
        """
        if self._heard:
            self._heard = False
            self._silent_ticks = 0
            return
        self._silent_ticks += 1
        if self._silent_ticks == HEARTBEAT_TICKS:
            self._send_control(WSMsgType.PING)
        elif self._silent_ticks == HEARTBEAT_TICKS * 3 // 2:
            logger.info("peer %s did not answer a ping; dropping the connection", self.peer_id)
            self._drop()

    # --- receiving -------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes, then tell the hub how it ended."""
        self.send_message(self.hub.welcome(self))
        ending = Ending.DROPPED
        try:
            while not self._closed:
                msg = await self.ws.receive()
                self._heard = True
                kind = msg.type
                if kind is WSMsgType.PONG:
                    continue  # Heard: that is all a pong is for.
                if kind is WSMsgType.CLOSE:
                    if msg.data in p.CLEAN_CLOSE_CODES:
                        ending = Ending.CLEAN
                    break
                if kind not in _COUNTED:
                    break
                if not self._bucket.take():
                    await self._over_limit()
                elif kind is WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif kind is WSMsgType.PING:
                    self._send_control(WSMsgType.PONG, msg.data)
                else:
                    self.error(
                        p.ErrorCode.BAD_MESSAGE, "binary frames are not accepted; send JSON text"
                    )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("connection of peer %s failed", self.peer_id)
        finally:
            self.hub.disconnect(self, ending)

    async def _over_limit(self) -> None:
        """Refuse a frame over the rate limit; close the connection if the flood goes on."""
        if self._patience.take():
            self.error(
                p.ErrorCode.RATE_LIMITED,
                f"over {self.hub.config.messages_per_second:g} messages a second; message dropped",
            )
        else:
            await self.kick(
                p.CloseCode.POLICY_VIOLATION,
                p.ErrorCode.RATE_LIMITED,
                "message flood; closing the connection",
            )

    async def _on_text(self, text: str) -> None:
        """Decode and dispatch one text frame, answering a bad one with an error."""
        msg: p.ClientMessage | None = None
        try:
            limit = self.hub.config.max_message_bytes
            if len(text) > limit // 4 and len(text.encode()) > limit:
                raise p.ProtocolError(
                    p.ErrorCode.TOO_LARGE, f"message over {limit} bytes; message dropped"
                )
            msg = p.decode_client(text)
            if type(msg) is p.Signal:
                # Most frames are signals: straight to the relay.
                await self.hub.relay(self, msg)
            else:
                await self._dispatch(msg)
        except p.ProtocolError as exc:
            self.error(exc.code, exc.message)
        except Unavailable as exc:
            logger.info("could not serve peer %s: %s", self.peer_id, exc)
            self.error(p.ErrorCode.UNAVAILABLE, "the server cannot reach its rooms; try again")
            if isinstance(msg, p.Join):
                # Away from its room, the client does best to come back later,
                # perhaps through another instance.
                self.end(p.CloseCode.TRY_AGAIN_LATER, "rooms unavailable")
        except Exception:
            logger.exception("failed to handle a message from peer %s", self.peer_id)

    async def _dispatch(self, msg: p.ClientMessage) -> None:
        hub = self.hub
        match msg:
            case p.Join():
                await hub.join(self, msg)
            case p.Leave():
                await hub.leave(self)
            case p.Update():
                await hub.update(self, msg)
            case p.Ping():
                self.send_message(p.Pong(t=msg.t))
            case p.WatchRooms():
                await hub.watch(self, msg)
            case p.UnwatchRooms():
                hub.unwatch(self)
