"""The mesh peer with real aiortc over real UDP on loopback, and the real server."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy

from chatsubo import protocol as p
from chatsubo.channels import Chat, Position
from chatsubo.peer.audio import AudioOut, ToneSource
from chatsubo.peer.mesh import MeshPeer, PeerOptions
from chatsubo.peer.signaling import SignalingClient, SignalingOptions
from chatsubo.server.config import ServerConfig
from tests.conftest import TEST_SECRET, ClientFactory, RunningServer, poll, start_server

#: Links between aiortc peers on loopback connect in well under a second; the
#: margin is for two busy shared cores.
MESH_DEADLINE = 20.0


PeerMaker = Callable[..., MeshPeer]


@pytest.fixture
async def make_peer(server: RunningServer) -> AsyncIterator[PeerMaker]:
    peers: list[MeshPeer] = []
    outs: list[AudioOut] = []

    def make(
        name: str,
        room: str = "mesh",
        tone: float | None = None,
        url: str | None = None,
        options: PeerOptions | None = None,
    ) -> MeshPeer:
        audio = None
        if tone is not None:
            audio = AudioOut(ToneSource(tone))
            outs.append(audio)
        signaling = SignalingOptions(urls=[url or server.url])
        peer = MeshPeer(room, name, signaling, options, audio=audio)
        peers.append(peer)
        return peer

    yield make
    await asyncio.gather(*(peer.close() for peer in peers))
    for out in outs:
        out.stop()


def _connected(peer: MeshPeer, others: list[MeshPeer]) -> bool:
    return all(
        (link := peer.links.get(other.peer_id or "")) is not None and link.connected
        for other in others
    )


async def _full_mesh(peers: list[MeshPeer]) -> None:
    await poll(
        lambda: all(_connected(p, [o for o in peers if o is not p]) for p in peers),
        timeout=MESH_DEADLINE,
    )


async def test_three_peers_form_a_mesh_and_talk(make_peer: PeerMaker) -> None:
    peers = [make_peer(name) for name in ("Armitage", "Case", "Molly")]
    chats: dict[str, list[tuple[str, Chat]]] = {p.signaling.name: [] for p in peers}
    positions: dict[str, list[tuple[str, Position]]] = {p.signaling.name: [] for p in peers}
    for peer in peers:
        name = peer.signaling.name
        peer.on("chat", lambda sender, chat, name=name: chats[name].append((sender, chat)))
        peer.on("position", lambda sender, pos, name=name: positions[name].append((sender, pos)))
        await peer.start()
    await _full_mesh(peers)
    # A small room links everyone, and of each pair the later one offers: as ever.
    for i, peer in enumerate(peers):
        for j, other in enumerate(peers[:i]):
            assert peer.links[other.peer_id or ""].offerer, (i, j)
            assert not other.links[peer.peer_id or ""].offerer, (j, i)

    case = peers[1]
    sent = case.say("Sky above the port")
    await poll(lambda: all(len(chats[n]) == 1 for n in ("Armitage", "Molly")))
    for name in ("Armitage", "Molly"):
        sender, chat = chats[name][0]
        assert sender == case.peer_id
        assert (chat.id, chat.text) == (sent.id, "Sky above the port")
    assert chats["Case"] == []

    case.move(3.5, 4.0, "Gaming Zone")
    await poll(lambda: all(len(positions[n]) >= 1 for n in ("Armitage", "Molly")))
    sender, position = positions["Molly"][-1]
    assert sender == case.peer_id
    assert (position.x, position.y, position.zone) == (3.5, 4.0, "Gaming Zone")


async def test_a_peer_that_leaves_is_closed_by_the_others(make_peer: PeerMaker) -> None:
    a, b = make_peer("A"), make_peer("B")
    await a.start()
    await b.start()
    await _full_mesh([a, b])
    b_id = b.peer_id
    await b.close()
    await poll(lambda: b_id not in a.links, timeout=2.0)


def _frames(peer: MeshPeer) -> dict[str, int]:
    return {
        pid: link.audio_in.frames for pid, link in peer.links.items() if link.audio_in is not None
    }


async def test_audio_flows_both_ways_on_every_link(make_peer: PeerMaker) -> None:
    peers = [make_peer(name, tone=hz) for name, hz in (("A", 330.0), ("B", 440.0), ("C", 550.0))]
    levels: dict[str, float] = {}
    peers[0].on("audiolevel", lambda pid, dbfs: levels.__setitem__(pid, dbfs))
    for peer in peers:
        await peer.start()
    await _full_mesh(peers)
    await poll(lambda: all(len(_frames(p)) == 2 for p in peers), timeout=MESH_DEADLINE)
    start = {p.signaling.name: _frames(p) for p in peers}
    started = asyncio.get_running_loop().time()
    await poll(lambda: all(min(_frames(p).values()) > 150 for p in peers), timeout=MESH_DEADLINE)
    elapsed = asyncio.get_running_loop().time() - started
    for peer in peers:
        for pid, frames in _frames(peer).items():
            received = frames - start[peer.signaling.name][pid]
            expected = elapsed / 0.020
            assert received >= 0.95 * expected, (peer.signaling.name, pid, received, expected)
    # A tone at 0.3 of full scale is about -13 dBFS: clearly speaking.
    await poll(lambda: len(levels) == 2 and min(levels.values()) > -30)


async def test_mesh_survives_a_server_restart(make_peer: PeerMaker) -> None:
    server = await start_server(ServerConfig(secret=TEST_SECRET))
    port = server.port
    a, b = make_peer("A", tone=330.0, url=server.url), make_peer("B", tone=440.0, url=server.url)
    await a.start()
    await b.start()
    await _full_mesh([a, b])
    ids = (a.peer_id, b.peer_id)
    pcs = (a.links[b.peer_id or ""].pc, b.links[a.peer_id or ""].pc)
    await poll(lambda: len(_frames(a)) == 1)

    heard: list[Chat] = []
    b.on("chat", lambda _sender, chat: heard.append(chat))
    await server.stop()
    await poll(lambda: a.signaling.connectionState == "reconnecting")
    during = _frames(a)[b.peer_id or ""]
    await poll(lambda: _frames(a)[b.peer_id or ""] > during + 25)
    sent = a.say("the server is down, we are not")
    await poll(lambda: [c.id for c in heard] == [sent.id])

    server = await start_server(ServerConfig(secret=TEST_SECRET), port=port)
    try:
        await poll(
            lambda: a.signaling.connectionState == b.signaling.connectionState == "connected"
        )
        assert (a.peer_id, b.peer_id) == ids
        await _full_mesh([a, b])
        # The same connections: nothing was renegotiated.
        assert (a.links[b.peer_id or ""].pc, b.links[a.peer_id or ""].pc) == pcs
        await poll(lambda: {m.peer_id for m in server.hub.members("mesh")} == set(ids))
    finally:
        await server.stop()


async def test_closing_leaves_no_tasks_or_threads(server: RunningServer) -> None:
    before = asyncio.all_tasks()
    threads_before = set(threading.enumerate())
    outs = [AudioOut(ToneSource(hz)) for hz in (300.0, 400.0)]
    peers = [
        MeshPeer("tidy", name, SignalingOptions(urls=[server.url]), audio=out)
        for name, out in zip(("A", "B"), outs, strict=True)
    ]
    for peer in peers:
        await peer.start()
    await _full_mesh(peers)
    await poll(lambda: all(len(_frames(p)) == 1 for p in peers))
    for peer in peers:
        await peer.close()
    for out in outs:
        out.stop()
    await poll(lambda: not (asyncio.all_tasks() - before - {asyncio.current_task()}))
    await poll(lambda: not (set(threading.enumerate()) - threads_before))


async def _open_pair(make_peer: PeerMaker) -> tuple[MeshPeer, MeshPeer, list[Position]]:
    """A and B meshed with both channels open; the positions B receives."""
    a, b = make_peer("A"), make_peer("B")
    moved: list[Position] = []
    b.on("position", lambda _sender, pos: moved.append(pos))
    await a.start()
    await b.start()
    await _full_mesh([a, b])
    link = a.links[b.peer_id or ""]
    await poll(
        lambda: all(c is not None and c.readyState == "open" for c in (link.chat, link.state))
    )
    return a, b, moved


async def test_garbage_on_the_data_channels_is_survived(make_peer: PeerMaker) -> None:
    a, b, moved = await _open_pair(make_peer)
    heard: list[Chat] = []
    b.on("chat", lambda _sender, chat: heard.append(chat))
    link = a.links[b.peer_id or ""]
    assert link.chat is not None
    assert link.state is not None
    garbage: list[str | bytes] = [
        "not json",
        "[]",
        '{"type": "chat"}',
        '{"type": "chat", "id": "x", "text": "", "ts": 1}',
        '{"type": "chat", "id": "x", "text": "' + "y" * 501 + '", "ts": 1}',
        '{"type": "pos", "x": "left", "y": 1, "seq": 1, "ts": 1}',
        '{"type": "dance"}',
        "[" * 5000,
        b"\x00\xff" * 3000,
    ]
    for junk in garbage:
        link.chat.send(junk)
        link.state.send(junk)
    sent = a.say("still standing")
    await poll(lambda: [c.id for c in heard] == [sent.id])
    # Positions are dropped, not queued, while the channel is backed up: move
    # once the junk has drained.
    await poll(lambda: link.state is not None and link.state.bufferedAmount == 0)
    a.move(1.0, 2.0)
    await poll(lambda: bool(moved))
    assert (moved[-1].x, moved[-1].y) == (1.0, 2.0)
    assert link.connected


async def test_positions_are_rate_limited_and_the_last_one_arrives(make_peer: PeerMaker) -> None:
    a, b, moved = await _open_pair(make_peer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for step in range(50):
        a.move(float(step) / 10, 1.0)
        await asyncio.sleep(0.005)
    await poll(lambda: bool(moved) and moved[-1].x == 4.9)
    elapsed = loop.time() - started
    assert len(moved) <= elapsed * 10 + 2, (len(moved), elapsed)
    # Both ends count what crossed the link, for the load test's delivery rate.
    sent = a.links[b.peer_id or ""].positions_sent
    received = b.links[a.peer_id or ""].positions_received
    assert sent == received == len(moved), (sent, received, len(moved))


async def test_trickled_candidates_from_a_browser_like_peer(
    server: RunningServer, make_peer: PeerMaker
) -> None:
    """Offer without candidates, then trickle them after a delay, then null: as browsers do."""
    bot = make_peer("Bot")
    await bot.start()
    browser = SignalingClient("mesh", "Browser", SignalingOptions(urls=[server.url]))
    answers: list[Any] = []
    browser.on("signal", lambda m: answers.append(json.loads(bytes(m.data))))
    links: list[p.Link] = []
    browser.on("link", links.append)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    try:
        await browser.connect()
        pc.addTransceiver("audio", direction="recvonly")
        chat = pc.createDataChannel("chat", negotiated=True, id=0)
        await pc.setLocalDescription(await pc.createOffer())
        lines = pc.localDescription.sdp.splitlines()
        # A trickling browser's offer has neither candidates nor end-of-candidates.
        trickled = ("a=candidate", "a=end-of-candidates")
        sdp = "\r\n".join(line for line in lines if not line.startswith(trickled)) + "\r\n"
        candidates = [line[2:] for line in lines if line.startswith("a=candidate")]
        assert bot.peer_id is not None
        # As a browser does, it offers once the server has linked the two: the
        # bot drops offers from peers it is not linked to.
        await poll(lambda: [(m.peer_id, m.offer) for m in links] == [(bot.peer_id, True)])

        # Early candidates first: the bot must hold them until the offer is applied.
        def candidate_signal(line: str) -> p.IceCandidate:
            return p.IceCandidate(candidate=line, sdp_mid="0", sdp_m_line_index=0)

        await browser.signal(bot.peer_id, candidate_signal(candidates[0]))
        await browser.signal(bot.peer_id, p.SessionDescription(type="offer", sdp=sdp))
        for candidate in candidates[1:]:
            await browser.signal(bot.peer_id, candidate_signal(candidate))
        await browser.signal(bot.peer_id, None)
        await poll(lambda: bool(answers))
        await pc.setRemoteDescription(
            RTCSessionDescription(sdp=answers[0]["sdp"], type=answers[0]["type"])
        )
        await poll(lambda: pc.connectionState == "connected", timeout=MESH_DEADLINE)
        heard: list[Chat] = []
        bot.on("chat", lambda _sender, message: heard.append(message))
        await poll(lambda: chat.readyState == "open")
        chat.send('{"type": "chat", "id": "b-1", "text": "hi from a browser", "ts": 1}')
        await poll(lambda: [m.text for m in heard] == ["hi from a browser"])
    finally:
        await pc.close()
        await browser.close()


async def test_a_link_that_never_connects_is_offered_again(
    server: RunningServer, make_peer: PeerMaker
) -> None:
    silent = SignalingClient("mesh", "Silent", SignalingOptions(urls=[server.url]))
    offers: list[Any] = []
    silent.on("signal", lambda m: offers.append(json.loads(bytes(m.data))))
    try:
        await silent.connect()
        bot = make_peer("Bot", options=PeerOptions(connect_timeout=0.5, retry_min=0.1))
        await bot.start()
        await poll(lambda: len(offers) >= 3)
        assert {o["type"] for o in offers} == {"offer"}
        assert len({o["sdp"] for o in offers}) == len(offers), "each retry is a new connection"
    finally:
        await silent.close()


async def test_malformed_signals_are_dropped_and_leave_the_link_untouched(
    server: RunningServer,
    make_peer: PeerMaker,
    connect: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatsubo.peer.mesh")
    bot = make_peer("Bot")
    await bot.start()
    raw = await connect(server)
    await raw.join("mesh", "Raw")
    await poll(lambda: raw.peer_id in bot.links)
    malformed: list[Any] = [
        {"type": "offer"},
        {"type": "rollback", "sdp": ""},
        {"candidate": 5},
        {"candidate": "typ host"},
        {"sdpMid": "0"},
        "offer",
        [1],
    ]
    for data in malformed:
        await raw.send({"type": "signal", "to": bot.peer_id, "data": data})
    await poll(lambda: caplog.text.count("dropping a malformed signal") == len(malformed))
    link = bot.links[raw.peer_id]
    assert link.pc.signalingState == "stable"
    assert link.pc.remoteDescription is None
    assert link.pending_candidates == []
