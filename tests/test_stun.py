"""Our STUN port over real UDP: binding requests answered, everything else not, floods capped."""

from __future__ import annotations

import asyncio
import socket

import aioice
import pytest
from aioice import stun

from chatsubo.server import stun as our_stun
from tests.conftest import DEADLINE, ClientFactory, RunningServer, ServerFactory, poll


@pytest.fixture
async def stun_server(make_server: ServerFactory) -> RunningServer:
    """A server whose STUN port listens on a free UDP port of 127.0.0.1."""
    return await make_server(stun_port=0, stun_host="127.0.0.1")


def stun_port(server: RunningServer) -> int:
    assert server.hub.stun is not None
    return server.hub.stun.port


class Asker(asyncio.DatagramProtocol):
    """A UDP socket that collects what comes back."""

    def __init__(self) -> None:
        self.received: list[stun.Message] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(stun.parse_message(data))


async def asker() -> tuple[asyncio.DatagramTransport, Asker]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Asker, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    return transport, protocol


def binding_request() -> stun.Message:
    return stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)


async def test_a_binding_request_learns_its_own_address(stun_server: RunningServer) -> None:
    transport, protocol = await asker()
    try:
        request = binding_request()
        transport.sendto(bytes(request), ("127.0.0.1", stun_port(stun_server)))
        await poll(lambda: len(protocol.received) == 1)
        response = protocol.received[0]
        assert response.message_class == stun.Class.RESPONSE
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == transport.get_extra_info("sockname")
        assert "FINGERPRINT" in response.attributes
    finally:
        transport.close()


async def test_only_binding_requests_are_answered(stun_server: RunningServer) -> None:
    transport, protocol = await asker()
    target = ("127.0.0.1", stun_port(stun_server))
    try:
        allocate = stun.Message(
            message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST
        )
        indication = stun.Message(
            message_method=stun.Method.BINDING, message_class=stun.Class.INDICATION
        )
        junks = (b"\x00" * 3, b"GET / HTTP/1.1\r\n\r\n", bytes(allocate), bytes(indication))
        for junk in junks:
            transport.sendto(junk, target)
        request = binding_request()
        transport.sendto(bytes(request), target)
        await poll(lambda: len(protocol.received) >= 1)
        # The one answer is to the binding request, sent last: nothing else was answered.
        assert [m.transaction_id for m in protocol.received] == [request.transaction_id]
        ours = stun_server.hub.stun
        assert ours is not None
        await poll(lambda: ours.protocol.ignored == len(junks))
    finally:
        transport.close()


async def test_a_flood_from_one_address_is_capped(stun_server: RunningServer) -> None:
    ours = stun_server.hub.stun
    assert ours is not None
    flooder, flooded = await asker()
    target = ("127.0.0.1", stun_port(stun_server))
    try:
        for _ in range(200):
            flooder.sendto(bytes(binding_request()), target)
        await poll(lambda: ours.protocol.answered + ours.protocol.limited == 200)
        # The burst and what refilled meanwhile, not 200.
        assert len(flooded.received) <= our_stun.REQUEST_BURST + 10
        assert ours.protocol.limited > 100
    finally:
        flooder.close()


async def test_welcome_names_our_stun_first_by_the_host_the_client_used(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await make_server(
        stun_port=0,
        stun_host="127.0.0.1",
        ice_servers=[],
    )
    port = stun_port(server)
    by_address = await connect(server)
    assert by_address.welcome["iceServers"] == [{"urls": [f"stun:127.0.0.1:{port}"]}]
    by_name = await connect(f"ws://localhost:{server.port}/ws")
    assert by_name.welcome["iceServers"] == [{"urls": [f"stun:localhost:{port}"]}]


async def test_without_a_stun_port_nothing_changes(
    server: RunningServer, connect: ClientFactory
) -> None:
    client = await connect(server)
    assert client.welcome["iceServers"] == []
    assert server.hub.stun is None


async def test_an_ice_agent_gathers_a_server_reflexive_candidate_from_it(
    stun_server: RunningServer,
) -> None:
    agent = aioice.Connection(
        ice_controlling=True,
        components=1,
        stun_server=("127.0.0.1", stun_port(stun_server)),
        use_ipv6=False,
    )
    try:
        async with asyncio.timeout(DEADLINE):
            await agent.gather_candidates()
        assert "srflx" in {c.type for c in agent.local_candidates}
    finally:
        await agent.close()
