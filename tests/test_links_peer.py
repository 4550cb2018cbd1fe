"""Mesh peers follow the server's links: real aiortc over real UDP, and the real server.

Every room of two or more is "big" here (``full_mesh_up_to=1``), so the server
links by distance: within 12.5 m, and unlinks beyond 15 m after 3 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from aiortc import RTCPeerConnection

from chatsubo import protocol as p
from chatsubo.peer.audio import AudioIn, AudioOut, ToneSource
from chatsubo.peer.mesh import MeshPeer, PeerOptions
from chatsubo.peer.signaling import SignalingOptions
from chatsubo.server.config import ServerConfig
from chatsubo.server.topology import LinkRules
from tests.conftest import (
    TEST_SECRET,
    ClientFactory,
    RunningServer,
    ServerFactory,
    poll,
    start_server,
)

#: Links between aiortc peers on loopback connect in well under a second; the
#: margin is for two busy shared cores.
DEADLINE = 20.0
ROOM = "big"
RULES = LinkRules(full_mesh_up_to=1)

PeerMaker = Callable[..., MeshPeer]


@pytest.fixture
async def big_rooms(make_server: ServerFactory) -> RunningServer:
    """A server on which every room of two or more links by distance."""
    return await make_server(links=RULES)


@pytest.fixture
async def make_peer(big_rooms: RunningServer) -> AsyncIterator[PeerMaker]:
    peers: list[MeshPeer] = []
    outs: list[AudioOut] = []

    def make(name: str, tone: float | None = None, options: PeerOptions | None = None) -> MeshPeer:
        audio = None
        if tone is not None:
            audio = AudioOut(ToneSource(tone))
            outs.append(audio)
        peer = MeshPeer(ROOM, name, SignalingOptions(urls=[big_rooms.url]), options, audio=audio)
        peers.append(peer)
        return peer

    yield make
    await asyncio.gather(*(peer.close() for peer in peers))
    for out in outs:
        out.stop()


def connection(peer: MeshPeer, other: MeshPeer) -> RTCPeerConnection | None:
    """``peer``'s connection to ``other``, once it can carry chat; else None."""
    link = peer.links.get(other.peer_id or "")
    return link.pc if link is not None and link.connected else None


def hearing(peer: MeshPeer, other: MeshPeer) -> AudioIn | None:
    link = peer.links.get(other.peer_id or "")
    return None if link is None else link.audio_in


async def hear_each_other(a: MeshPeer, b: MeshPeer) -> None:
    """Until both are connected and each has received half a second of the other's voice."""

    def heard() -> bool:
        ins = (hearing(a, b), hearing(b, a))
        return all(i is not None and i.frames > 25 for i in ins)

    await poll(lambda: bool(connection(a, b) and connection(b, a)), DEADLINE)
    await poll(heard, DEADLINE)


async def test_near_peers_link_far_ones_unlink_and_coming_back_relinks(
    make_peer: PeerMaker,
) -> None:
    a, b = make_peer("A", tone=330.0), make_peer("B", tone=440.0)
    gone: dict[str, list[str]] = {"A": [], "B": []}
    a.on("peerdisconnected", gone["A"].append)
    b.on("peerdisconnected", gone["B"].append)
    # Where each stands goes to the server with the join: 3 m apart.
    a.move(6.0, 8.0)
    b.move(9.0, 8.0)
    await a.start()
    await b.start()
    await hear_each_other(a, b)
    # The ends agree on who offers (which one is the rule's business: tests/test_links.py).
    assert b.links[a.peer_id or ""].offerer != a.links[b.peer_id or ""].offerer
    first = (connection(a, b), connection(b, a))

    # 16 m apart: beyond the unlink range, for the 3 s the rule waits.
    loop = asyncio.get_running_loop()
    walked_off = loop.time()
    b.move(22.0, 8.0)
    await poll(lambda: a.peer_id not in b.links and b.peer_id not in a.links, DEADLINE)
    assert loop.time() - walked_off >= RULES.hysteresis - 0.1
    await poll(lambda: gone == {"A": [b.peer_id], "B": [a.peer_id]})
    assert all(pc is not None and pc.connectionState == "closed" for pc in first)

    # Out of earshot, each still sees where the other stands, from the server.
    b.move(21.0, 9.0)
    await poll(lambda: a.positions.get(b.peer_id or "") == (21.0, 9.0), DEADLINE)

    # Back within 12.5 m: a new link, and each hears the other again.
    b.move(12.0, 8.0)
    await hear_each_other(a, b)
    assert connection(a, b) not in first
    assert b.links[a.peer_id or ""].offerer


async def test_a_peer_takes_offers_only_from_those_it_is_linked_to(
    make_peer: PeerMaker,
    big_rooms: RunningServer,
    connect: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatsubo.peer.mesh")
    bot = make_peer("Bot")
    bot.move(2.0, 2.0)
    await bot.start()
    # Across the bar: the server links the two never.
    stranger = await connect(big_rooms)
    await stranger.join(ROOM, "Stranger")
    await stranger.send({"type": "update", "x": 22.0, "y": 14.0})
    await poll(lambda: bot.positions.get(stranger.peer_id) == (22.0, 14.0), DEADLINE)
    offer = {"type": "offer", "sdp": "v=0\r\n"}
    await stranger.send({"type": "signal", "to": bot.peer_id, "data": offer})
    await poll(lambda: "to whom we are not linked" in caplog.text)
    assert bot.links == {}
    assert not [m for m in await stranger.sync() if m["type"] == "signal"]
    assert not [m for m in stranger.directives if m["type"] == "link"]


async def test_an_unlinked_link_stops_being_offered(
    make_peer: PeerMaker, big_rooms: RunningServer, connect: ClientFactory
) -> None:
    """A link that never connects is offered again and again, until the server unlinks it."""
    silent = await connect(big_rooms)
    await silent.join(ROOM, "Silent")
    await silent.send({"type": "update", "x": 18.0, "y": 8.0})
    options = PeerOptions(connect_timeout=0.5, retry_min=0.1, retry_max=0.2)
    bot = make_peer("Bot", options=options)
    offers: list[str] = []
    signal = bot.signaling.signal

    async def counting(to: str, data: p.PeerSignal) -> bool:
        offers.append(to)
        return await signal(to, data)

    bot.signaling.signal = counting  # type: ignore[method-assign]
    gone: list[str] = []
    bot.on("peerdisconnected", gone.append)
    bot.move(20.0, 8.0)
    await bot.start()
    link = await silent.expect("link", DEADLINE)
    assert (link["peerId"], link["offer"]) == (bot.peer_id, False)
    await poll(lambda: len(offers) >= 3, DEADLINE)
    # 19 m away; after the 3 s the rule waits, the server unlinks the two.
    await silent.send({"type": "update", "x": 1.0, "y": 8.0})
    await poll(lambda: gone == [silent.peer_id], DEADLINE)
    assert silent.peer_id not in bot.links
    made = len(offers)
    # A window to see that nothing comes: several times the retry period.
    await asyncio.sleep(3 * (options.connect_timeout + 1.5 * options.retry_max))
    assert len(offers) == made
    await silent.sync()
    assert {"type": "unlink", "peerId": bot.peer_id} in silent.directives


async def test_positions_reach_the_server_rate_limited_and_the_last_one_last(
    make_peer: PeerMaker, big_rooms: RunningServer
) -> None:
    peer = make_peer("Walker")
    peer.move(1.0, 1.0)
    sent: list[p.Update] = []
    send = peer.signaling._send

    async def counting(message: p.ClientMessage) -> bool:
        if isinstance(message, p.Update):
            sent.append(message)
        return await send(message)

    peer.signaling._send = counting  # type: ignore[method-assign]
    await peer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for step in range(1, 41):
        peer.move(1.0 + step / 10, 1.0)
        await asyncio.sleep(0.02)
    await poll(lambda: bool(sent) and (sent[-1].x, sent[-1].y) == (5.0, 1.0))
    elapsed = loop.time() - started
    await poll(lambda: big_rooms.hub.director.positions.get(peer.peer_id or "") == (5.0, 1.0))
    assert len(sent) <= elapsed * p.POSITION_UPDATES_PER_SECOND + 1, (len(sent), elapsed)
    # Standing still, or only changing zones, tells the server nothing more.
    told = len(sent)
    peer.move(5.0, 1.0, "Lounge")
    peer.move(5.0, 1.0)
    # A window to see that nothing comes: two update intervals.
    await asyncio.sleep(2 / p.POSITION_UPDATES_PER_SECOND)
    assert len(sent) == told


async def test_a_restarted_server_hears_again_where_we_stand() -> None:
    config = ServerConfig(secret=TEST_SECRET, links=RULES)
    server = await start_server(config)
    peer = MeshPeer(ROOM, "Still", SignalingOptions(urls=[server.url]))
    try:
        peer.move(7.0, 3.0)
        await peer.start()
        await poll(lambda: server.hub.director.positions.get(peer.peer_id or "") == (7.0, 3.0))
        await server.stop()
        await poll(lambda: peer.signaling.connectionState == "reconnecting")
        server = await start_server(config, port=server.port)
        # It forgot; the rejoin tells it again, though we never moved.
        await poll(
            lambda: server.hub.director.positions.get(peer.peer_id or "") == (7.0, 3.0), DEADLINE
        )
    finally:
        await peer.close()
        await server.stop()


async def test_after_a_restart_the_links_it_names_stay_and_the_others_close() -> None:
    """A restarted server forgot the links: those it names again keep their connections."""
    config = ServerConfig(secret=TEST_SECRET)
    server = await start_server(config)
    a, b, c = (MeshPeer(ROOM, name, SignalingOptions(urls=[server.url])) for name in "abc")
    a.move(2.0, 2.0)
    b.move(3.0, 2.0)
    c.move(6.0, 2.0)
    try:
        for peer in (a, b, c):
            await peer.start()
        pairs = [(a, b), (a, c), (b, c)]
        await poll(lambda: all(connection(x, y) and connection(y, x) for x, y in pairs), DEADLINE)
        kept = connection(a, b)
        await server.stop()
        await poll(lambda: a.signaling.connectionState == "reconnecting", DEADLINE)
        # Now a big room, in which c stands too far from the others to be linked.
        far = LinkRules(full_mesh_up_to=1, link_range=1.5, unlink_range=1.6)
        server = await start_server(replace(config, links=far), port=server.port)
        # Each closes them on its own clock, from its own rejoin.
        await poll(
            lambda: not c.links and c.peer_id not in a.links and c.peer_id not in b.links,
            DEADLINE,
        )
        assert connection(a, b) is kept
    finally:
        await asyncio.gather(*(peer.close() for peer in (a, b, c)))
        await server.stop()
