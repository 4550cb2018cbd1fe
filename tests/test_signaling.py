"""The signaling flow over real WebSockets: join, discover, relay, leave."""

from __future__ import annotations

from tests.conftest import BOTH_BACKENDS, ClientFactory, RunningServer

pytestmark = BOTH_BACKENDS


async def test_seed_flow(server: RunningServer, connect: ClientFactory) -> None:
    a = await connect(server)
    listed = await a.join("chatsubo-main", "Alice")
    assert listed["roomId"] == "chatsubo-main"
    assert listed["peerId"] == a.peer_id
    assert listed["peers"] == []

    b = await connect(server)
    listed = await b.join("chatsubo-main", "Bob")
    assert [(p["peerId"], p["name"]) for p in listed["peers"]] == [(a.peer_id, "Alice")]

    joined = await a.expect("peer_joined")
    assert (joined["peerId"], joined["name"]) == (b.peer_id, "Bob")
    assert isinstance(joined["joinedAt"], int)

    offer = {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 300}
    await b.send({"type": "signal", "to": a.peer_id, "data": offer})
    relayed = await a.expect("signal")
    assert relayed == {"type": "signal", "from": b.peer_id, "data": offer}

    await a.send({"type": "leave"})
    left = await b.expect("peer_left")
    assert left == {"type": "peer_left", "peerId": a.peer_id, "reason": "leave"}
