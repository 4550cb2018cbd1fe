"""Our own STUN server: answers binding requests on UDP, so peers behind NATs learn their address.

Only binding requests are answered, and each source address is rate-limited,
so the port cannot be used to amplify traffic towards someone else. The wire
format is aioice's, the STUN code aiortc itself uses.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aioice import stun

from .ratelimit import TokenBucket

logger = logging.getLogger(__name__)

#: Binding requests a second from one address, and the burst allowed above it.
#: An ICE agent sends a few per candidate gathering; a NAT keep-alive one per 15 s.
REQUESTS_PER_SECOND = 10.0
REQUEST_BURST = 30.0
#: Sources forgotten after this many seconds of silence, so the table stays small.
FORGET_AFTER = 60.0


class StunProtocol(asyncio.DatagramProtocol):
    """Answers STUN binding requests with the address they came from (XOR-MAPPED-ADDRESS)."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._buckets: dict[str, TokenBucket] = {}
        self._seen: dict[str, float] = {}
        self._swept = time.monotonic()
        #: Answered, refused for the rate and ignored datagrams, for /metrics and tests.
        self.answered = 0
        self.limited = 0
        self.ignored = 0

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            self.ignored += 1
            return
        if request.message_method != stun.Method.BINDING or (
            request.message_class != stun.Class.REQUEST
        ):
            self.ignored += 1
            return
        if not self._allowed(addr[0]):
            self.limited += 1
            return
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
        response.add_fingerprint()
        assert self._transport is not None
        self._transport.sendto(bytes(response), addr)
        self.answered += 1

    def _allowed(self, host: str) -> bool:
        now = time.monotonic()
        if now - self._swept > FORGET_AFTER:
            self._swept = now
            for key in [k for k, seen in self._seen.items() if now - seen > FORGET_AFTER]:
                del self._seen[key], self._buckets[key]
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = self._buckets[host] = TokenBucket(REQUESTS_PER_SECOND, REQUEST_BURST)
        self._seen[host] = now
        return bucket.take()


class StunServer:
    """The UDP endpoint of :class:`StunProtocol`, started and stopped with the app."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.protocol = StunProtocol()
        self._transport: asyncio.BaseTransport | None = None

    async def start(self) -> None:
        """Listen; ``port`` becomes the bound one (useful when asked for port 0)."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self.protocol, local_addr=(self.host, self.port)
        )
        self.port = self._transport.get_extra_info("sockname")[1]
        logger.info("STUN is answering on udp %s:%d", self.host, self.port)

    def close(self) -> None:
        """Stop listening."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
