"""The lobby: live room counts, zone counts and the HTTP room list."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from tests.conftest import BOTH_BACKENDS, Client, ClientFactory, RunningServer, ServerFactory, pair

pytestmark = BOTH_BACKENDS


async def _rooms_until(watcher: Client, expected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Read room lists until one equals ``expected``; the lists seen on the way."""
    seen = []
    while True:
        rooms = (await watcher.expect("rooms"))["rooms"]
        seen.append(rooms)
        if rooms == expected:
            return seen


def _room(room_id: str, count: int, zones: dict[str, int] | None = None) -> dict[str, Any]:
    return {"roomId": room_id, "count": count, "capacity": 10, "zones": zones or {}}


async def test_watcher_sees_live_counts(server: RunningServer, connect: ClientFactory) -> None:
    watcher = await connect(server)
    await watcher.send({"type": "watch_rooms"})
    assert (await watcher.expect("rooms"))["rooms"] == []

    a, b = await connect(server), await connect(server)
    await a.join("chatsubo-main", "A")
    await _rooms_until(watcher, [_room("chatsubo-main", 1)])

    await a.send({"type": "update", "zone": "Gaming Zone"})
    await b.join("chatsubo-main", "B")
    await b.send({"type": "update", "zone": "Central Bar"})
    await _rooms_until(watcher, [_room("chatsubo-main", 2, {"Gaming Zone": 1, "Central Bar": 1})])

    await a.send({"type": "update", "zone": "Central Bar"})
    await _rooms_until(watcher, [_room("chatsubo-main", 2, {"Central Bar": 2})])

    await a.send({"type": "leave"})
    await _rooms_until(watcher, [_room("chatsubo-main", 1, {"Central Bar": 1})])
    await b.ws.close()
    await _rooms_until(watcher, [])


async def test_http_room_list_matches(server: RunningServer, connect: ClientFactory) -> None:
    a = await connect(server)
    await a.join("lounge", "A")
    await a.send({"type": "update", "zone": "Booths"})
    await a.expect("peer_updated")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/rooms") as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["rooms"] == [_room("lounge", 1, {"Booths": 1})]


async def test_room_list_updates_are_coalesced(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    interval = 0.5
    server = await make_server(lobby_interval=interval)
    watcher = await connect(server)
    await watcher.send({"type": "watch_rooms"})
    await watcher.expect("rooms")
    started = time.monotonic()
    clients = [await connect(server) for _ in range(10)]
    for i, client in enumerate(clients):
        await client.join("busy", f"guest{i}")
    seen = await _rooms_until(watcher, [_room("busy", 10)])
    elapsed = time.monotonic() - started
    assert len(seen) <= elapsed / interval + 2, (len(seen), elapsed)


async def test_unwatch_stops_the_list(server: RunningServer, connect: ClientFactory) -> None:
    watcher, control = await connect(server), await connect(server)
    for client in (watcher, control):
        await client.send({"type": "watch_rooms"})
        await client.expect("rooms")
    await watcher.send({"type": "unwatch_rooms"})
    await watcher.sync()
    a = await connect(server)
    await a.join("r", "A")
    # One broadcast goes to every watcher at once: once the control watcher
    # has it, the unsubscribed one would have it too.
    await _rooms_until(control, [_room("r", 1)])
    assert [m for m in await watcher.sync() if m["type"] == "rooms"] == []


async def test_presence_updates_reach_the_room(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server)
    await b.send({"type": "update", "name": "Bea", "zone": "Lounge"})
    expected = {"type": "peer_updated", "peerId": b.peer_id, "name": "Bea", "zone": "Lounge"}
    assert await a.expect("peer_updated") == expected
    assert await b.expect("peer_updated") == expected

    c = await connect(server)
    listed = await c.join("r", "C")
    by_id = {p["peerId"]: p for p in listed["peers"]}
    assert by_id[b.peer_id]["zone"] == "Lounge"
    assert by_id[b.peer_id]["name"] == "Bea"

    await b.send({"type": "update", "zone": None})
    cleared = await a.expect("peer_updated")
    assert "zone" not in cleared


async def test_ping_is_answered(server: RunningServer, connect: ClientFactory) -> None:
    a = await connect(server)
    await a.send({"type": "ping", "t": 1234.5})
    assert await a.expect("pong") == {"type": "pong", "t": 1234.5}


async def test_welcome_carries_limits_and_no_stun(
    server: RunningServer, connect: ClientFactory
) -> None:
    a = await connect(server)
    assert a.welcome["iceServers"] == []
    assert a.welcome["limits"] == {
        "maxRoomSize": 10,
        "maxMessageBytes": 65536,
        "messagesPerSecond": 200.0,
        "grace": 20.0,
    }
    assert len(a.peer_id) >= 22
