"""The Python signaling client against the real server: join, relay, survive restarts, fail over."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chatsubo import protocol as p
from chatsubo.peer.signaling import SignalingClient, SignalingError, SignalingOptions, websocket_url
from chatsubo.server.config import ServerConfig
from tests.conftest import (
    DEADLINE,
    TEST_SECRET,
    RunningServer,
    ServerFactory,
    poll,
    start_server,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://host:8080", "ws://host:8080/ws"),
        ("http://host:8080/", "ws://host:8080/ws"),
        ("https://bar.example", "wss://bar.example/ws"),
        ("ws://host:8080/ws", "ws://host:8080/ws"),
        ("wss://host/ws?x=1", "wss://host/ws"),
        ("127.0.0.1:9000", "ws://127.0.0.1:9000/ws"),
    ],
)
def test_websocket_url(given: str, expected: str) -> None:
    assert websocket_url(given) == expected


def test_websocket_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="not an http"):
        websocket_url("ftp://host/")


class Recorder:
    """Collects a client's events so a test can wait for them."""

    def __init__(self, client: SignalingClient) -> None:
        self.events: list[tuple[str, Any]] = []
        for name in (
            "peer_list",
            "peer_joined",
            "peer_left",
            "peer_updated",
            "signal",
            "rooms",
            "server_error",
            "connectionstatechange",
        ):
            client.on(name, self._recorder(name))
        client.on(
            "retrying", lambda url, why, wait: self.events.append(("retrying", (url, why, wait)))
        )

    def _recorder(self, name: str) -> Callable[[Any], None]:
        return lambda value: self.events.append((name, value))

    def of(self, name: str) -> list[Any]:
        return [value for event, value in self.events if event == name]

    async def wait(self, name: str, count: int = 1) -> list[Any]:
        await poll(lambda: len(self.of(name)) >= count)
        return self.of(name)


ClientMaker = Callable[..., tuple[SignalingClient, Recorder]]
Target = RunningServer | str


@pytest.fixture
async def make_client() -> AsyncIterator[ClientMaker]:
    clients: list[SignalingClient] = []

    def make(
        target: Target | list[Target], name: str, room: str = "r", **options: Any
    ) -> tuple[SignalingClient, Recorder]:
        targets = target if isinstance(target, list) else [target]
        urls = [t if isinstance(t, str) else t.url for t in targets]
        client = SignalingClient(room, name, SignalingOptions(urls=urls, **options))
        clients.append(client)
        return client, Recorder(client)

    yield make
    for client in clients:
        await client.close()


async def test_join_discover_and_relay(server: RunningServer, make_client: ClientMaker) -> None:
    a, a_events = make_client(server, "A")
    await a.connect()
    assert a.connectionState == "connected"
    assert a_events.of("peer_list")[0].peers == []

    b, b_events = make_client(server, "B")
    await b.connect()
    (listed,) = b_events.of("peer_list")
    assert [peer.peer_id for peer in listed.peers] == [a.peer_id]
    (joined,) = await a_events.wait("peer_joined")
    assert (joined.peer_id, joined.name) == (b.peer_id, "B")

    assert a.peer_id is not None
    assert await b.signal(a.peer_id, p.SessionDescription(type="offer", sdp="v=0"))
    (signal,) = await a_events.wait("signal")
    assert signal.from_ == b.peer_id
    assert json.loads(bytes(signal.data)) == {"type": "offer", "sdp": "v=0"}

    assert await a.update(zone="Lounge")
    updated = await b_events.wait("peer_updated")
    assert updated[-1].zone == "Lounge"

    await b.close()
    (left,) = await a_events.wait("peer_left")
    assert (left.peer_id, left.reason) == (b.peer_id, p.LeaveReason.LEAVE)
    assert b.connectionState == "closed"


async def test_full_room_is_refused(make_server: ServerFactory, make_client: ClientMaker) -> None:
    server = await make_server(max_room_size=1)
    a, _ = make_client(server, "A")
    await a.connect()
    b, _ = make_client(server, "B")
    with pytest.raises(SignalingError) as caught:
        await b.connect()
    assert caught.value.code == "room_full"
    assert b.connectionState == "closed"


async def test_restart_keeps_identities(make_client: ClientMaker) -> None:
    server = await start_server(ServerConfig(secret=TEST_SECRET))
    port = server.port
    a, a_events = make_client(server, "A")
    b, b_events = make_client(server, "B")
    await a.connect()
    await b.connect()
    assert await a.update(zone="Terrace")
    await poll(lambda: server.zone_of(a.peer_id) == "Terrace")
    ids = (a.peer_id, b.peer_id)

    await server.stop()
    await poll(lambda: "reconnecting" in a_events.of("connectionstatechange"))
    server = await start_server(ServerConfig(secret=TEST_SECRET), port=port)
    try:
        await poll(lambda: a.connectionState == b.connectionState == "connected")
        assert (a.peer_id, b.peer_id) == ids
        assert len(a_events.of("peer_list")) == len(b_events.of("peer_list")) == 2
        assert server.peer_ids() == set(ids)
        # The restarted server learns the zone again, for the lobby's counts.
        await poll(lambda: server.zone_of(a.peer_id) == "Terrace")
        assert b.peer_id is not None
        assert await a.signal(b.peer_id, None)
        await b_events.wait("signal")
    finally:
        await server.stop()


def _closed_port() -> int:
    """A port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_waits_for_a_server_that_is_not_up_yet(make_client: ClientMaker) -> None:
    port = _closed_port()
    client, events = make_client(f"http://127.0.0.1:{port}", "Early")
    connecting = asyncio.create_task(client.connect())
    await poll(lambda: events.of("connectionstatechange") == ["connecting"])
    assert not connecting.done()
    server = await start_server(ServerConfig(secret=TEST_SECRET), port=port)
    try:
        await asyncio.wait_for(connecting, DEADLINE)
        assert client.connectionState == "connected"
    finally:
        await server.stop()


async def test_refused_resume_joins_as_a_new_peer(make_client: ClientMaker) -> None:
    server = await start_server(ServerConfig(secret=b"old-secret"))
    port = server.port
    client, events = make_client(server, "A")
    await client.connect()
    old_id = client.peer_id
    await server.stop()
    server = await start_server(ServerConfig(secret=b"new-secret"), port=port)
    try:
        await events.wait("peer_list", count=2)
        assert client.connectionState == "connected"
        assert client.peer_id != old_id
        assert [m.peer_id for m in server.hub.members()] == [client.peer_id]
    finally:
        await server.stop()


async def test_a_restarting_server_fails_over_to_the_next_at_once(
    make_server: ServerFactory, make_client: ClientMaker
) -> None:
    first, second = await make_server(), await make_server()
    a, a_events = make_client([first, second], "A")
    b, b_events = make_client([second], "B")
    await a.connect()
    await b.connect()
    assert a.url == first.ws_url
    peer_id = a.peer_id

    await first.stop()
    await poll(lambda: a.peer_id in second.peer_ids())
    await poll(lambda: a.connectionState == "connected")
    assert a.peer_id == peer_id
    assert a.url == second.ws_url
    assert a_events.of("retrying") == [(second.ws_url, "the server is restarting", 0.0)]
    assert a_events.of("connectionstatechange") == [
        "connecting",
        "connected",
        "reconnecting",
        "connected",
    ]
    assert second.peer_ids() == {a.peer_id, b.peer_id}
    (back,) = await b_events.wait("peer_joined")
    assert (back.peer_id, back.resumed) == (peer_id, True)

    # Round robin: when the second restarts too, back to the first, up again.
    restarted = await start_server(ServerConfig(secret=TEST_SECRET), port=first.port)
    try:
        await second.stop()
        await poll(lambda: restarted.peer_ids() == {peer_id})
        await poll(lambda: a.connectionState == "connected")
        assert a.url == first.ws_url
        assert a_events.of("retrying")[-1] == (first.ws_url, "the server is restarting", 0.0)
    finally:
        await restarted.stop()


async def test_an_unreachable_server_fails_over_to_the_next(
    server: RunningServer, make_client: ClientMaker
) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    client, events = make_client([down, server], "A")
    await asyncio.wait_for(client.connect(), DEADLINE)
    assert client.url == server.ws_url
    assert server.peer_ids() == {client.peer_id}
    ((url, why, wait),) = events.of("retrying")
    assert url == server.ws_url
    assert why.startswith("cannot connect")
    assert wait == p.reconnect_delay(0, 0.0, 0.0), "the first retry of an outage waits no time"


def test_the_client_needs_a_server_url() -> None:
    with pytest.raises(ValueError, match="no server URL"):
        SignalingClient("r", "A", SignalingOptions(urls=[]))
    with pytest.raises(ValueError, match="'ftp://host/' is not an http"):
        SignalingClient("r", "A", SignalingOptions(urls=["http://host:8080", "ftp://host/"]))
