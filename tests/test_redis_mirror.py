"""The Redis backend's mirror of its rooms, fed events by hand: the ordering rules it keeps.

These are unit tests: a fake listener stands in for the hub, and no Redis is
contacted. The backend against a real Redis is in test_instances.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from chatsubo.server.backend import LinkChange
from chatsubo.server.redis_backend import RedisBackend, RedisOptions, _decode_event, _Room
from chatsubo.server.rooms import Member


@dataclass
class Listener:
    """Records what the backend tells the hub."""

    events: list[tuple[str, int | None, dict[str, object], str | None]] = field(
        default_factory=list
    )
    replaced_peers: list[str] = field(default_factory=list)
    held: set[str] = field(default_factory=set)

    def room_event(self, room_id: str, seq: int | None, data: bytes, exclude: str | None) -> None:
        self.events.append((room_id, seq, json.loads(data), exclude))

    def rebase(self, room_id: str, seq: int) -> None:
        pass

    def deliver(self, peer_id: str, data: bytes) -> bool:
        return False

    def replaced(self, peer_id: str) -> None:
        self.replaced_peers.append(peer_id)

    def lobby_changed(self) -> None:
        pass

    def holding(self) -> set[str]:
        return self.held

    def links_changed(
        self, room_id: str, added: list[LinkChange], removed: list[LinkChange]
    ) -> None:
        pass

    def positions_heard(self, room_id: str, frame: bytes) -> None:
        pass

    def told(self) -> list[tuple[str, object]]:
        return [(str(e[2]["type"]), e[2].get("peerId")) for e in self.events]


def backend_with_room(*members: Member, floor: int = 10) -> tuple[RedisBackend, Listener]:
    backend = RedisBackend(RedisOptions(url="redis://127.0.0.1:1/0"))
    listener = Listener()
    backend._listener = listener
    room = backend._rooms["bar"] = _Room(floor=floor)
    backend._set_members("bar", room, {m.peer_id: m for m in members})
    return backend, listener


def event(kind: str, seq: int, peer: str, origin: str = "elsewhere", **fields: object) -> str:
    return json.dumps({"k": kind, "o": origin, "s": str(seq), "r": "bar", "p": peer, **fields})


def test_an_event_number_arrives_as_digits_and_keeps_all_sixteen() -> None:
    assert _decode_event(event("away", 1733050000123456, "a")).s == 1733050000123456


def test_a_seat_snapshot_older_than_the_mirror_does_not_bring_back_who_left() -> None:
    x = Member("x", "X", "bar", owner="elsewhere")
    backend, _ = backend_with_room(x, floor=10)
    backend._rooms["bar"].joining = 1  # as during seat()
    # X's departure (11) was read before the reply to our seat (snapshot at 10).
    backend._on_message("chatsubo:c:bar", event("left", 11, "x", reason="leave"))
    joined = event("joined", 10, "me", origin=backend.instance_id, name="Me", joined="1")
    snapshot = ["x", ["room", "bar", "name", "X", "owner", "elsewhere"]]
    snapshot += ["me", ["room", "bar", "name", "Me", "owner", backend.instance_id]]
    seated = backend._seated(backend._rooms["bar"], "me", [1, [joined], "10", snapshot])
    assert seated.member.peer_id == "me"
    assert set(backend._rooms["bar"].members) == {"me"}
    known = backend.known("me")
    assert known is not None
    assert known.owner == backend.instance_id
    assert backend.known("x") is None


def test_a_member_put_back_by_its_instance_is_no_news() -> None:
    x = Member("x", "X", "bar", owner="elsewhere")
    backend, listener = backend_with_room(x)
    backend._on_message("chatsubo:c:bar", event("joined", 11, "x", name="X", resumed=True))
    backend._on_message("chatsubo:c:bar", event("joined", 12, "y", name="Y"))
    assert listener.told() == [("peer_joined", "y")]


def test_our_own_events_from_redis_are_not_passed_on_twice() -> None:
    backend, listener = backend_with_room()
    backend._on_message(
        "chatsubo:c:bar", event("joined", 11, "y", origin=backend.instance_id, name="Y")
    )
    assert listener.events == []


def test_a_move_elsewhere_closes_the_connection_here() -> None:
    mine = Member("a", "A", "bar")
    backend, listener = backend_with_room(mine)
    backend._rooms["bar"].members["a"] = Member("a", "A", "bar", owner=backend.instance_id)
    backend._on_message("chatsubo:c:bar", event("moved", 11, "a"))
    assert listener.replaced_peers == ["a"]
    # Nobody is held here any more: the room is no longer followed.
    assert "bar" not in backend._rooms


def test_a_reap_of_our_own_member_does_not_close_it() -> None:
    backend, listener = backend_with_room()
    backend._rooms["bar"].members["a"] = Member("a", "A", "bar", owner=backend.instance_id)
    backend._rooms["bar"].members["b"] = Member("b", "B", "bar", owner=backend.instance_id)
    backend._on_message("chatsubo:c:bar", event("left", 11, "a", reason="timeout"))
    assert listener.replaced_peers == []
    assert listener.told() == [("peer_left", "a")]


def test_catching_up_keeps_others_members_a_while_then_lets_them_go() -> None:
    backend, listener = backend_with_room()
    ours = Member("a", "A", "bar", owner=backend.instance_id)
    theirs = Member("b", "B", "bar", owner="elsewhere")
    gone = Member("c", "C", "bar", owner=backend.instance_id)
    backend._rooms["bar"].members = {"a": ours, "b": theirs, "c": gone}
    newcomer = Member("d", "D", "bar", owner="elsewhere")
    backend._catch_up("bar", 20, {"a": ours, "d": newcomer}, final=False)
    assert listener.told() == [("peer_joined", "d"), ("peer_left", "c")]
    assert set(backend._rooms["bar"].members) == {"a", "b", "d"}
    listener.events.clear()
    backend._catch_up("bar", 21, {"a": ours, "d": newcomer}, final=True)
    assert listener.told() == [("peer_left", "b")]
