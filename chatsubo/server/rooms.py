"""Rooms and their members: the in-memory state of who is where."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..protocol import PeerInfo, RoomInfo

if TYPE_CHECKING:
    from .session import Session


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, as ``joinedAt`` carries it."""
    return int(time.time() * 1000)


@dataclass(eq=False)
class Member:
    """A peer's place in a room. It outlives its connection during the grace period."""

    peer_id: str
    name: str
    room: Room
    joined_at: int = field(default_factory=now_ms)
    zone: str | None = None
    #: The live connection, or None while the peer is away within its grace period.
    session: Session | None = None
    #: Removes the member when the grace period runs out.
    expiry: asyncio.Task[None] | None = None

    def info(self) -> PeerInfo:
        """How the others see this member."""
        return PeerInfo(
            peer_id=self.peer_id, name=self.name, joined_at=self.joined_at, zone=self.zone
        )


@dataclass(eq=False)
class Room:
    """A named set of members who are meant to connect to each other."""

    room_id: str
    members: dict[str, Member] = field(default_factory=dict)

    def others(self, member: Member) -> list[Member]:
        """Everyone in the room but ``member``."""
        return [m for m in self.members.values() if m is not member]

    def info(self, capacity: int) -> RoomInfo:
        """The room as the lobby sees it."""
        zones = Counter(m.zone for m in self.members.values() if m.zone is not None)
        return RoomInfo(
            room_id=self.room_id, count=len(self.members), capacity=capacity, zones=dict(zones)
        )
