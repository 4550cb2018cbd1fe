"""Room state as plain data: what the hub stores, without sockets or timers in it."""

from __future__ import annotations

import dataclasses

import pytest

from chatsubo.server.rooms import Member, RoomState


def test_members_hold_only_data() -> None:
    kinds = {field.name: field.type for field in dataclasses.fields(Member)}
    assert kinds == {
        "peer_id": "str",
        "name": "str",
        "room_id": "str",
        "joined_at": "int",
        "zone": "str | None",
        "away_until": "float | None",
        "owner": "str",
    }


def test_rooms_come_and_go_with_their_members() -> None:
    state = RoomState()
    state.add(Member("a", "Alice", "bar", joined_at=1))
    state.add(Member("b", "Bob", "bar", joined_at=2))
    state.add(Member("c", "Case", "loft", joined_at=3))
    assert [m.peer_id for m in state.members("bar")] == ["a", "b"]
    assert (state.room_count, state.member_count, state.size("loft")) == (2, 3, 1)
    removed = state.remove("c")
    assert removed is not None
    assert removed.room_id == "loft"
    assert state.room_count == 1
    assert state.size("loft") == 0
    assert state.remove("c") is None


def test_an_update_replaces_the_record_and_keeps_what_is_not_given() -> None:
    state = RoomState()
    before = Member("a", "Alice", "bar", zone="Lounge")
    state.add(before)
    after = state.update("a", away_until=123.0)
    assert (after.name, after.zone, after.away) == ("Alice", "Lounge", True)
    assert not before.away, "what a caller held is a snapshot"
    cleared = state.update("a", zone=None, away_until=None)
    assert (cleared.zone, cleared.away) == (None, False)
    assert state.members("bar") == [cleared]


def test_a_member_is_in_one_room_at_a_time() -> None:
    state = RoomState()
    state.add(Member("a", "Alice", "bar"))
    with pytest.raises(ValueError, match="already in a room"):
        state.add(Member("a", "Alice", "loft"))


def test_the_room_list_counts_by_zone() -> None:
    state = RoomState()
    for peer_id, zone in (("a", "Lounge"), ("b", "Lounge"), ("c", None)):
        state.add(Member(peer_id, peer_id, "bar", zone=zone))
    state.add(Member("d", "d", "attic"))
    listed = state.room_list(capacity=10)
    assert [(r.room_id, r.count, r.zones) for r in listed] == [
        ("attic", 1, {}),
        ("bar", 3, {"Lounge": 2}),
    ]
