"""Identity that survives drops, dead sockets and server restarts."""

from __future__ import annotations

import time

from chatsubo.server.config import ServerConfig
from tests.conftest import (
    BOTH_BACKENDS,
    TEST_SECRET,
    ClientFactory,
    RunningServer,
    ServerFactory,
    pair,
    poll,
    start_server,
)

pytestmark = BOTH_BACKENDS


async def test_clean_close_leaves_at_once(server: RunningServer, connect: ClientFactory) -> None:
    a, b = await pair(connect, server)
    await b.ws.close()
    left = await a.expect("peer_left")
    assert left == {"type": "peer_left", "peerId": b.peer_id, "reason": "closed"}


async def test_resume_within_grace_keeps_identity_silently(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server)
    token = b.welcome["resumeToken"]

    b.drop()
    await _poll_away(server, b.peer_id)
    assert await a.sync() == [], "the room must not hear about a drop within the grace period"

    b2 = await connect(server)
    listed = await b2.join("r", "Bob", resume=token)
    assert listed["peerId"] == b.peer_id
    assert [p["peerId"] for p in listed["peers"]] == [a.peer_id]
    assert listed["resumeToken"]
    assert await a.sync() == [], "a resume within grace is invisible to the room"

    await a.send({"type": "signal", "to": b.peer_id, "data": {"candidate": None}})
    assert await b2.expect("signal") == {
        "type": "signal",
        "from": a.peer_id,
        "data": {"candidate": None},
    }


async def test_signal_to_peer_within_grace_is_refused(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server)
    b.drop()
    await _poll_away(server, b.peer_id)
    await a.send({"type": "signal", "to": b.peer_id, "data": None})
    error = await a.error()
    assert error["code"] == "unknown_peer"
    assert "reconnecting" in error["message"]


async def test_grace_expiry_announces_timeout(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await make_server(grace=0.3)
    a, b = await pair(connect, server)
    b.drop()
    left = await a.expect("peer_left")
    assert left == {"type": "peer_left", "peerId": b.peer_id, "reason": "timeout"}
    assert [m.peer_id for m in server.hub.members()] == [a.peer_id]


async def test_resume_replaces_a_half_open_connection(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server)
    b2 = await connect(server)
    listed = await b2.join("r", "Bob", resume=b.welcome["resumeToken"])
    assert listed["peerId"] == b.peer_id
    assert await b.closed() == 4000
    assert await a.sync() == []
    member = server.hub.member(b.peer_id)
    assert member is not None
    assert member.room_id == "r"
    assert not member.away


async def test_resume_with_new_name_announces_the_update(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server)
    b.drop()
    await _poll_away(server, b.peer_id)
    b2 = await connect(server)
    await b2.join("r", "Bea", resume=b.welcome["resumeToken"])
    updated = await a.expect("peer_updated")
    assert (updated["peerId"], updated["name"]) == (b.peer_id, "Bea")


async def test_heartbeat_evicts_a_dead_socket_within_ten_seconds(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await make_server(grace=0.5)
    a = await connect(server)
    # autoping=False and no reads: the client never answers the server's pings.
    dead = await connect(server, autoping=False)
    await a.join("r", "A")
    await dead.send({"type": "join", "roomId": "r", "name": "Ghost"})
    await a.expect("peer_joined")
    silent_since = time.monotonic()
    left = await a.expect("peer_left", timeout=10 + 0.5 + 5)
    assert left == {"type": "peer_left", "peerId": dead.peer_id, "reason": "timeout"}
    assert time.monotonic() - silent_since < 10 + 0.5 + 2


async def test_identity_survives_a_server_restart(connect: ClientFactory) -> None:
    first = await start_server(_config())
    port = first.port
    a, b = await connect(first), await connect(first)
    await a.join("r", "A")
    await b.join("r", "B")
    tokens = {a.peer_id: a.welcome["resumeToken"], b.peer_id: b.welcome["resumeToken"]}

    await first.stop()
    assert await a.closed() == 1012
    assert await b.closed() == 1012

    second = await start_server(_config(), port=port)
    try:
        a2, b2 = await connect(second), await connect(second)
        listed_a = await a2.join("r", "A", resume=tokens[a.peer_id])
        assert listed_a["peerId"] == a.peer_id
        assert listed_a["peers"] == []
        listed_b = await b2.join("r", "Bob", resume=tokens[b.peer_id])
        assert listed_b["peerId"] == b.peer_id
        assert [p["peerId"] for p in listed_b["peers"]] == [a.peer_id]
        joined = await a2.expect("peer_joined")
        assert (joined["peerId"], joined["resumed"]) == (b.peer_id, True)
    finally:
        await second.stop()


async def test_token_from_another_secret_is_refused(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    other = await make_server(secret=b"some-other-secret")
    stranger = await connect(other)
    server = await make_server()
    client = await connect(server)
    await client.send(
        {"type": "join", "roomId": "r", "name": "X", "resume": stranger.welcome["resumeToken"]}
    )
    assert (await client.error())["code"] == "bad_resume"
    listed = await client.join("r", "X")
    assert listed["peerId"] == client.peer_id


def _config() -> ServerConfig:
    return ServerConfig(secret=TEST_SECRET)


async def _poll_away(server: RunningServer, peer_id: str) -> None:
    """Wait until the server has noticed that ``peer_id``'s socket is gone."""

    def away() -> bool:
        member = server.hub.member(peer_id)
        return member is not None and member.away

    await poll(away)
