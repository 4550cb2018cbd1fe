"""Rooms and their members as plain data, and the in-memory store of who is where."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass

from msgspec import UNSET, UnsetType

from ..protocol import PeerInfo, RoomInfo


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, as ``joinedAt`` carries it."""
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Member:
    """A peer's place in a room: ids, names and times only, nothing live.

    It outlives its connection for a grace period; the socket and the timer
    that ends the grace period are the hub's, kept beside this, not in it.
    Only :meth:`info` is ever shown to clients.
    """

    peer_id: str
    name: str
    room_id: str
    joined_at: int = dataclasses.field(default_factory=now_ms)
    zone: str | None = None
    #: Wall-clock seconds at which a member whose connection dropped loses its
    #: place; None while it is connected.
    away_until: float | None = None
    #: The server instance that holds (or held, until it dropped) its connection.
    owner: str = ""

    @property
    def away(self) -> bool:
        """Whether the member's connection dropped and it has not come back yet."""
        return self.away_until is not None

    def info(self) -> PeerInfo:
        """How the others see this member."""
        return PeerInfo(
            peer_id=self.peer_id, name=self.name, joined_at=self.joined_at, zone=self.zone
        )


class RoomState:
    """Every room and member of one server, in memory; only the hub changes it.

    A room exists while it has members. Members are immutable: a change
    replaces the record, so what a caller holds is a snapshot.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, Member]] = {}
        self._members: dict[str, Member] = {}

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def member_count(self) -> int:
        return len(self._members)

    def member(self, peer_id: str) -> Member | None:
        """The member with this id, in whichever room."""
        return self._members.get(peer_id)

    def members(self, room_id: str | None = None) -> list[Member]:
        """Everyone in ``room_id``, in the order they joined; everyone anywhere without it."""
        if room_id is None:
            return list(self._members.values())
        return list(self._rooms.get(room_id, {}).values())

    def size(self, room_id: str) -> int:
        """How many people are in ``room_id``."""
        return len(self._rooms.get(room_id, ()))

    def add(self, member: Member) -> None:
        """Seat a member who is in no room."""
        if member.peer_id in self._members:
            raise ValueError(f"peer {member.peer_id} is already in a room")
        self._rooms.setdefault(member.room_id, {})[member.peer_id] = member
        self._members[member.peer_id] = member

    def update(
        self,
        peer_id: str,
        *,
        name: str | UnsetType = UNSET,
        zone: str | UnsetType | None = UNSET,
        away_until: float | UnsetType | None = UNSET,
    ) -> Member:
        """Change what is given of a member's name, zone and ``away_until``; the new record."""
        old = self._members[peer_id]
        member = dataclasses.replace(
            old,
            name=old.name if isinstance(name, UnsetType) else name,
            zone=old.zone if isinstance(zone, UnsetType) else zone,
            away_until=old.away_until if isinstance(away_until, UnsetType) else away_until,
        )
        self._members[peer_id] = self._rooms[member.room_id][peer_id] = member
        return member

    def remove(self, peer_id: str) -> Member | None:
        """Take a member out of its room (a room left empty goes); the member, if there was one."""
        member = self._members.pop(peer_id, None)
        if member is not None:
            room = self._rooms[member.room_id]
            del room[peer_id]
            if not room:
                del self._rooms[member.room_id]
        return member

    def room_list(self, capacity: int) -> list[RoomInfo]:
        """Every room with its counts by zone, sorted by name."""
        rooms = []
        for room_id in sorted(self._rooms):
            members = self._rooms[room_id].values()
            zones = Counter(m.zone for m in members if m.zone is not None)
            rooms.append(
                RoomInfo(room_id=room_id, count=len(members), capacity=capacity, zones=dict(zones))
            )
        return rooms
