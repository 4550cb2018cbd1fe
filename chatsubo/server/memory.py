"""The embedded room backend: rooms in this process's memory, for a server that runs alone."""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from .. import protocol as p
from .backend import (
    LinkChange,
    RoomBackend,
    RoomFull,
    RoomListener,
    Seated,
    away_peer,
    unknown_peer,
)
from .rooms import Member, RoomState


class MemoryBackend(RoomBackend):
    """Rooms in a :class:`RoomState`; events reach the hub as they happen, within the call."""

    instance_id = "local"

    def __init__(self) -> None:
        self.state = RoomState()
        self._listener: RoomListener | None = None
        self._seq: dict[str, int] = {}
        #: Each room's linked pairs with their offerers, as last told.
        self._links: dict[str, dict[tuple[str, str], str]] = {}

    async def start(self, listener: RoomListener) -> None:
        self._listener = listener

    async def close(self) -> None:
        self._listener = None

    @property
    def problem(self) -> str | None:
        return None

    def known(self, peer_id: str) -> Member | None:
        return self.state.member(peer_id)

    def known_members(self, room_id: str | None = None) -> list[Member]:
        return self.state.members(room_id)

    async def find(self, peer_id: str) -> Member | None:
        return self.state.member(peer_id)

    def _tell(self, room_id: str, message: p.ServerMessage, exclude: str | None) -> int:
        """Number the room's next event and hand it to the hub; its number."""
        if self.state.size(room_id):
            seq = self._seq[room_id] = self._seq.get(room_id, 0) + 1
        else:
            seq = self._seq.pop(room_id, 0) + 1
        if self._listener is not None:
            self._listener.room_event(room_id, seq, p.encode(message), exclude)
        return seq

    def _lobby_changed(self) -> None:
        if self._listener is not None:
            self._listener.lobby_changed()

    async def seat(self, member: Member, capacity: int, resumed: bool) -> Seated:
        if self.state.size(member.room_id) >= capacity:
            raise RoomFull(member.room_id)
        await self.remove(member.peer_id, p.LeaveReason.LEAVE)
        self.state.add(member)
        joined = p.PeerJoined(
            peer_id=member.peer_id, name=member.name, joined_at=member.joined_at, resumed=resumed
        )
        seq = self._tell(member.room_id, joined, member.peer_id)
        self._lobby_changed()
        others = [m for m in self.state.members(member.room_id) if m.peer_id != member.peer_id]
        return Seated(member, others, seq)

    async def reattach(self, peer_id: str, name: str) -> Seated | None:
        member = self.state.member(peer_id)
        if member is None:
            return None
        member = self.state.update(peer_id, away_until=None)
        seq = self._seq.get(member.room_id, 0)
        if name != member.name:
            member = await self.update(peer_id, name=name)
            seq = self._seq[member.room_id]
        others = [m for m in self.state.members(member.room_id) if m.peer_id != peer_id]
        return Seated(member, others, seq)

    async def hold(self, peer_id: str, until: float) -> None:
        if self.state.member(peer_id) is not None:
            self.state.update(peer_id, away_until=until)

    async def remove(self, peer_id: str, reason: p.LeaveReason) -> Member | None:
        member = self.state.remove(peer_id)
        if member is None:
            return None
        self._tell(member.room_id, p.PeerLeft(peer_id=peer_id, reason=reason), peer_id)
        if not self.state.size(member.room_id):
            self._links.pop(member.room_id, None)
        self._lobby_changed()
        return member

    async def expire(self, peer_id: str) -> Member | None:
        member = self.state.member(peer_id)
        if member is None or not member.away:
            return None
        return await self.remove(peer_id, p.LeaveReason.TIMEOUT)

    async def update(
        self, peer_id: str, name: str | UnsetType = UNSET, zone: str | UnsetType | None = UNSET
    ) -> Member:
        member = self.state.update(peer_id, name=name, zone=zone)
        updated = p.PeerUpdated(peer_id=peer_id, name=member.name, zone=member.zone)
        self._tell(member.room_id, updated, None)
        self._lobby_changed()
        return member

    async def send(self, sender: Member, to: str, data: bytes) -> None:
        target = self.state.member(to)
        if target is None or target.room_id != sender.room_id or to == sender.peer_id:
            raise unknown_peer(to, sender.room_id)
        listener = self._listener
        if target.away or listener is None or not listener.deliver(to, data):
            raise away_peer(to)

    async def members(self, room_id: str | None = None) -> list[Member]:
        return self.state.members(room_id)

    async def room_list(self, capacity: int) -> list[p.RoomInfo]:
        return self.state.room_list(capacity)

    async def directs(self, room_id: str) -> bool:
        return True

    async def links(self, room_id: str) -> dict[tuple[str, str], str]:
        return dict(self._links.get(room_id, {}))

    async def tell_links(
        self, room_id: str, added: list[LinkChange], removed: list[LinkChange]
    ) -> bool:
        links = self._links.setdefault(room_id, {})
        for change in removed:
            links.pop((change.a, change.b), None)
        for change in added:
            links[change.a, change.b] = change.offerer
        if self._listener is not None:
            self._listener.links_changed(room_id, added, removed)
        return True

    async def tell_positions(self, room_id: str, frame: bytes) -> None:
        """Nobody else to tell: the hub has passed the batch to the room."""
