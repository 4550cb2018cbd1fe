"""The seam between the hub and where rooms live: this process's memory, or a Redis shared by many.

The hub owns the connections of one server instance; a backend owns the
rooms, which several instances may share. Every change to a room goes through
the backend, which tells every instance with a member in that room what
happened, so that each instance can tell its own connections. Both
implementations are async, so the hub is written once for either.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol

from msgspec import UNSET, UnsetType

from .. import protocol as p
from .rooms import Member


class RoomFull(Exception):
    """The room has no seat left."""


class Unavailable(Exception):
    """The shared room state cannot be reached right now."""


@dataclass(frozen=True, slots=True)
class LinkChange:
    """A pair linked or unlinked by the link rule; ``offerer`` is the end that offers."""

    a: str
    b: str
    offerer: str


@dataclass(frozen=True, slots=True)
class Seated:
    """A member just seated, with the rest of its room as it stood at that moment."""

    member: Member
    others: list[Member]
    #: The room's event number at the seating: ``others`` already reflects
    #: every event up to it, so the member is sent only later ones.
    seq: int


class RoomListener(Protocol):
    """What a backend tells the hub of its instance (the hub implements this)."""

    def room_event(self, room_id: str, seq: int | None, data: bytes, exclude: str | None) -> None:
        """Send ``data`` to this instance's members of ``room_id`` but ``exclude``.

        Only members seated before event ``seq`` get it; None sends it to all.
        """

    def rebase(self, room_id: str, seq: int) -> None:
        """This instance's members of ``room_id`` now know the room as of event ``seq``."""

    def deliver(self, peer_id: str, data: bytes) -> bool:
        """Send ``data`` to ``peer_id``'s connection here; False when it has none here."""

    def replaced(self, peer_id: str) -> None:
        """``peer_id`` connected again on another instance: close the connection here, if any."""

    def lobby_changed(self) -> None:
        """Some room's counts changed."""

    def links_changed(
        self, room_id: str, added: list[LinkChange], removed: list[LinkChange]
    ) -> None:
        """Tell both ends of each pair here that it is now linked, or unlinked."""

    def positions_heard(self, room_id: str, frame: bytes) -> None:
        """Another instance's ``positions`` batch for ``room_id``: pass it on, and note them."""

    def holding(self) -> set[str]:
        """The peers whose connection is here, or was until it dropped a moment ago."""


class RoomBackend(abc.ABC):
    """Where rooms and members live, and how room events reach every instance."""

    #: This instance, as the owner of its members' connections.
    instance_id: str

    @abc.abstractmethod
    async def start(self, listener: RoomListener) -> None:
        """Start delivering events to ``listener``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work; members stay, for other instances or a restart to take over."""

    @property
    @abc.abstractmethod
    def problem(self) -> str | None:
        """Why the room state is unreachable, or None while it is reachable."""

    @abc.abstractmethod
    def known(self, peer_id: str) -> Member | None:
        """A member of a room that has a member on this instance, as this instance knows it."""

    @abc.abstractmethod
    def known_members(self, room_id: str | None = None) -> list[Member]:
        """The members of ``room_id`` (or of every room) that this instance knows of."""

    @abc.abstractmethod
    async def find(self, peer_id: str) -> Member | None:
        """The member ``peer_id``, wherever it is connected."""

    @abc.abstractmethod
    async def seat(self, member: Member, capacity: int, resumed: bool) -> Seated:
        """Seat a member, if the room has a seat, and tell the room.

        A member already in another room leaves it (with reason ``leave``), and
        its old connection, wherever it is, gives way. Raises
        :class:`RoomFull`, changing nothing, when ``capacity`` people are in.
        """

    @abc.abstractmethod
    async def reattach(self, peer_id: str, name: str) -> Seated | None:
        """Give a member its connection here, silently but for a new name; None if it is gone."""

    @abc.abstractmethod
    async def hold(self, peer_id: str, until: float) -> None:
        """Mark a member held here as away: its connection dropped and it may come back."""

    @abc.abstractmethod
    async def remove(self, peer_id: str, reason: p.LeaveReason) -> Member | None:
        """Take a member out of its room and tell the room; the member, if there was one."""

    @abc.abstractmethod
    async def expire(self, peer_id: str) -> Member | None:
        """Remove a member whose grace period ended, unless it came back (here or elsewhere)."""

    @abc.abstractmethod
    async def update(
        self, peer_id: str, name: str | UnsetType = UNSET, zone: str | UnsetType | None = UNSET
    ) -> Member:
        """Change a member's name or zone and tell the room."""

    @abc.abstractmethod
    async def send(self, sender: Member, to: str, data: bytes) -> None:
        """Deliver a frame to ``to`` in the sender's room, wherever it is connected.

        Raises :class:`protocol.ProtocolError` when there is no such peer, or it is away.
        """

    @abc.abstractmethod
    async def members(self, room_id: str | None = None) -> list[Member]:
        """Everyone in ``room_id``, or in every room, across every instance."""

    @abc.abstractmethod
    async def room_list(self, capacity: int) -> list[p.RoomInfo]:
        """Every room with its counts across every instance, sorted by name."""

    @abc.abstractmethod
    async def directs(self, room_id: str) -> bool:
        """Whether this instance runs the link rule for ``room_id`` (and may keep doing so)."""

    @abc.abstractmethod
    async def links(self, room_id: str) -> dict[tuple[str, str], str]:
        """The pairs linked in ``room_id`` as last told, each with its offerer."""

    @abc.abstractmethod
    async def tell_links(
        self, room_id: str, added: list[LinkChange], removed: list[LinkChange]
    ) -> bool:
        """Record the changes and tell both ends of each; False if another instance directs it."""

    @abc.abstractmethod
    async def tell_positions(self, room_id: str, frame: bytes) -> None:
        """Pass a ``positions`` batch of members here to the room's other instances."""


def unknown_peer(to: str, room_id: str) -> p.ProtocolError:
    """The error for a signal to someone who is not in the sender's room."""
    return p.ProtocolError(p.ErrorCode.UNKNOWN_PEER, f"no peer {to!r} in room {room_id}")


def away_peer(to: str) -> p.ProtocolError:
    """The error for a signal to someone whose connection dropped."""
    return p.ProtocolError(
        p.ErrorCode.UNKNOWN_PEER, f"peer {to!r} is reconnecting; signal not delivered"
    )
