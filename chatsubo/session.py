"""One signaling connection: reads frames, enforces the limits, and hands messages to the hub."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from . import protocol as p
from .identity import new_peer_id
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .hub import Hub
    from .rooms import Member

logger = logging.getLogger(__name__)

#: Close codes by which a client says it is leaving on purpose.
_CLEAN_CLOSE_CODES = frozenset({1000, 1001})


class Session:
    """A client's WebSocket. It lives exactly as long as the socket."""

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self.hub = hub
        self.ws = ws
        self._transport = transport
        self.peer_id = new_peer_id()
        self.member: Member | None = None
        config = hub.config
        self._bucket = TokenBucket(config.messages_per_second, config.message_burst)
        # Patience refills slowly, so only a sustained flood exhausts it.
        self._patience = TokenBucket(config.flood_tolerance / 10, config.flood_tolerance)
        self._closed = False

    # --- sending ---------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Queue one encoded frame without waiting on a slow reader.

        A client whose unread backlog passes ``max_send_buffer`` is cut off as
        if its network had dropped, so it can never hold up the sender.
        """
        if self._closed:
            return
        transport = self._transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.hub.config.max_send_buffer:
            logger.info("peer %s does not read its messages; dropping the connection", self.peer_id)
            self._closed = True
            transport.abort()
            return
        try:
            await self.ws.send_frame(data, WSMsgType.TEXT)
        except ConnectionError:
            self._closed = True

    async def send_message(self, message: p.ServerMessage) -> None:
        """Encode and send one message."""
        await self.send(p.encode(message))

    async def error(self, code: p.ErrorCode, message: str) -> None:
        """Tell the client what it did wrong; the connection stays open."""
        self.hub.metrics.errors.labels(code=code.value).inc()
        await self.send_message(p.Error(code=code, message=message))

    async def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code``."""
        self._closed = True
        await self.ws.close(code=code, message=reason.encode())

    async def kick(self, code: p.CloseCode, error: p.ErrorCode, reason: str) -> None:
        """Send a last error, take the client out of its room at once, and close."""
        await self.error(error, reason)
        if self.member is not None:
            await self.hub.remove(self.member, p.LeaveReason.KICKED)
        await self.close(code, reason)

    # --- receiving -------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes, then tell the hub how it ended."""
        await self.send_message(self.hub.welcome(self))
        clean = False
        try:
            while not self._closed:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.TEXT:
                    await self._on_frame(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await self._on_frame(None)
                elif msg.type is WSMsgType.CLOSE:
                    clean = msg.data in _CLEAN_CLOSE_CODES
                    break
                else:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("connection of peer %s failed", self.peer_id)
        finally:
            await self.hub.disconnect(self, clean=clean)

    async def _on_frame(self, text: str | None) -> None:
        """Police, decode and dispatch one frame; ``None`` stands for a binary frame."""
        if not self._bucket.take():
            if not self._patience.take():
                await self.kick(
                    p.CloseCode.POLICY_VIOLATION,
                    p.ErrorCode.RATE_LIMITED,
                    "message flood; closing the connection",
                )
                return
            await self.error(
                p.ErrorCode.RATE_LIMITED,
                f"over {self.hub.config.messages_per_second:g} messages a second; message dropped",
            )
            return
        try:
            if text is None:
                raise p.ProtocolError(
                    p.ErrorCode.BAD_MESSAGE, "binary frames are not accepted; send JSON text"
                )
            limit = self.hub.config.max_message_bytes
            if len(text) > limit // 4 and len(text.encode()) > limit:
                raise p.ProtocolError(
                    p.ErrorCode.TOO_LARGE, f"message over {limit} bytes; message dropped"
                )
            await self._dispatch(p.decode_client(text))
        except p.ProtocolError as exc:
            await self.error(exc.code, exc.message)
        except Exception:
            logger.exception("failed to handle a message from peer %s", self.peer_id)

    async def _dispatch(self, msg: p.ClientMessage) -> None:
        hub = self.hub
        match msg:
            case p.Signal():
                await hub.relay(self, msg)
            case p.Join():
                await hub.join(self, msg)
            case p.Leave():
                await hub.leave(self, p.LeaveReason.LEAVE)
            case p.Update():
                await hub.update(self, msg)
            case p.Ping():
                await self.send_message(p.Pong(t=msg.t))
            case p.WatchRooms():
                await hub.watch(self)
            case p.UnwatchRooms():
                hub.unwatch(self)
