"""The hub: every connection, room and member of one server, and the rules that move them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from msgspec import UnsetType

from .. import protocol as p
from .config import ServerConfig
from .identity import TokenSigner
from .metrics import Metrics
from .rooms import Member, Room
from .session import HEARTBEAT_TICKS

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger(__name__)


class Hub:
    """Owns the server's state. Sessions call it; it decides and tells the others."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.signer = TokenSigner(config.secret)
        self.sessions: set[Session] = set()
        self.rooms: dict[str, Room] = {}
        self.members: dict[str, Member] = {}
        self.watchers: set[Session] = set()
        self.metrics = Metrics(
            connections=lambda: len(self.sessions),
            rooms=lambda: len(self.rooms),
            peers=lambda: len(self.members),
        )
        self.limits = p.Limits(
            max_room_size=config.max_room_size,
            max_message_bytes=config.max_message_bytes,
            messages_per_second=config.messages_per_second,
        )
        self.closing = False
        self._lobby_dirty = asyncio.Event()
        self._lobby_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the background work: the coalesced room list broadcast and the heartbeat."""
        self._lobby_task = asyncio.create_task(self._run_lobby())
        self._heartbeat_task = asyncio.create_task(self._run_heartbeat())

    async def close(self) -> None:
        """Close every connection with 1012 so clients reconnect at once; stop background work."""
        self.closing = True
        for task in (self._lobby_task, self._heartbeat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for member in self.members.values():
            if member.expiry is not None:
                member.expiry.cancel()
        await asyncio.gather(
            *(
                s.close(p.CloseCode.SERVICE_RESTART, "server restarting")
                for s in list(self.sessions)
            ),
            return_exceptions=True,
        )

    # --- connections -------------------------------------------------------

    def welcome(self, session: Session) -> p.Welcome:
        """Register a new connection and greet it."""
        self.sessions.add(session)
        self.metrics.connections_total.inc()
        return p.Welcome(
            peer_id=session.peer_id,
            resume_token=self.signer.issue(session.peer_id),
            ice_servers=self.config.ice_servers,
            limits=self.limits,
        )

    def disconnect(self, session: Session, *, clean: bool) -> None:
        """A connection ended. A clean close leaves the room; any other keeps the place a while."""
        self.sessions.discard(session)
        self.watchers.discard(session)
        member = session.member
        session.member = None
        if member is None or member.session is not session or self.closing:
            return
        if clean:
            self.remove(member, p.LeaveReason.CLOSED)
            return
        member.session = None
        member.expiry = asyncio.create_task(self._expire(member))
        logger.info(
            "peer %s dropped from %s; holding its place", member.peer_id, member.room.room_id
        )

    async def _run_heartbeat(self) -> None:
        """Give every session its heartbeat check, ``HEARTBEAT_TICKS`` times a period."""
        while True:
            await asyncio.sleep(self.config.heartbeat / HEARTBEAT_TICKS)
            for session in list(self.sessions):
                try:
                    session.heartbeat()
                except Exception:
                    logger.exception("heartbeat of peer %s failed", session.peer_id)

    async def _expire(self, member: Member) -> None:
        await asyncio.sleep(self.config.grace)
        member.expiry = None
        try:
            self.remove(member, p.LeaveReason.TIMEOUT)
        except Exception:
            logger.exception("failed to remove peer %s after its grace period", member.peer_id)

    # --- rooms ---------------------------------------------------------------

    def join(self, session: Session, msg: p.Join) -> None:
        """Put ``session`` in a room, resuming its old identity if it proves one."""
        started = time.perf_counter()
        if session.member is not None:
            raise p.ProtocolError(
                p.ErrorCode.ALREADY_JOINED,
                f"already in room {session.member.room.room_id}; send leave first",
            )
        peer_id = session.peer_id
        if msg.resume is not None:
            claimed = self.signer.verify(msg.resume)
            if claimed is None:
                raise p.ProtocolError(
                    p.ErrorCode.BAD_RESUME, "resume token is invalid or expired; join without it"
                )
            peer_id = claimed
        member = self.members.get(peer_id)
        if member is not None and member.room.room_id == msg.room_id:
            self._reattach(session, member, msg.name)
        else:
            room = self.rooms.get(msg.room_id)
            if room is not None and len(room.members) >= self.config.max_room_size:
                raise p.ProtocolError(
                    p.ErrorCode.ROOM_FULL,
                    f"room {msg.room_id} is full ({self.config.max_room_size} people)",
                )
            if member is not None:
                # The token's peer is in another room: it moves, and its old
                # connection, if any, gives way to this one.
                previous = member.session
                self.remove(member, p.LeaveReason.LEAVE)
                if previous is not None and previous is not session:
                    previous.end(p.CloseCode.REPLACED, "replaced by a newer connection")
            if room is None:
                room = self.rooms[msg.room_id] = Room(msg.room_id)
            member = Member(peer_id=peer_id, name=msg.name, room=room, session=session)
            room.members[peer_id] = member
            self.members[peer_id] = member
            session.member = member
            session.peer_id = peer_id
            self._broadcast(
                room,
                p.PeerJoined(
                    peer_id=peer_id,
                    name=member.name,
                    joined_at=member.joined_at,
                    resumed=msg.resume is not None,
                ),
                exclude=member,
            )
            logger.info("peer %s (%s) joined %s", peer_id, member.name, room.room_id)
        session.send_message(
            p.PeerList(
                room_id=member.room.room_id,
                peer_id=peer_id,
                peers=[m.info() for m in member.room.others(member)],
                resume_token=self.signer.issue(peer_id),
            )
        )
        self.metrics.join_latency.observe(time.perf_counter() - started)
        self._lobby_dirty.set()

    def _reattach(self, session: Session, member: Member, name: str) -> None:
        """Give a member who is still in the room its new connection, silently for the others."""
        if member.expiry is not None:
            member.expiry.cancel()
            member.expiry = None
        previous = member.session
        member.session = session
        session.member = member
        session.peer_id = member.peer_id
        if previous is not None:
            previous.member = None
            previous.end(p.CloseCode.REPLACED, "replaced by a newer connection")
        logger.info("peer %s resumed in %s", member.peer_id, member.room.room_id)
        if name != member.name:
            member.name = name
            self._announce_update(member)

    def leave(self, session: Session, reason: p.LeaveReason) -> None:
        """Take ``session`` out of its room."""
        member = session.member
        if member is None:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, "not in a room")
        session.member = None
        self.remove(member, reason)

    def remove(self, member: Member, reason: p.LeaveReason) -> None:
        """Remove a member and tell the room at once."""
        room = member.room
        if room.members.get(member.peer_id) is not member:
            return
        if member.expiry is not None:
            member.expiry.cancel()
            member.expiry = None
        if member.session is not None and member.session.member is member:
            member.session.member = None
        member.session = None
        del room.members[member.peer_id]
        self.members.pop(member.peer_id, None)
        if not room.members:
            del self.rooms[room.room_id]
        logger.info("peer %s left %s (%s)", member.peer_id, room.room_id, reason.value)
        self._broadcast(room, p.PeerLeft(peer_id=member.peer_id, reason=reason))
        self._lobby_dirty.set()

    def update(self, session: Session, msg: p.Update) -> None:
        """Change a member's name or zone and tell the room."""
        member = self._member_of(session)
        if isinstance(msg.name, str):
            member.name = msg.name
        if not isinstance(msg.zone, UnsetType):
            member.zone = msg.zone
        self._announce_update(member)
        self._lobby_dirty.set()

    def _announce_update(self, member: Member) -> None:
        self._broadcast(
            member.room, p.PeerUpdated(peer_id=member.peer_id, name=member.name, zone=member.zone)
        )

    def relay(self, session: Session, msg: p.Signal) -> None:
        """Pass a signal to its addressee, if and only if it is in the sender's room."""
        member = self._member_of(session)
        target = member.room.members.get(msg.to)
        if target is None or target is member:
            raise p.ProtocolError(
                p.ErrorCode.UNKNOWN_PEER, f"no peer {msg.to!r} in room {member.room.room_id}"
            )
        if target.session is None:
            raise p.ProtocolError(
                p.ErrorCode.UNKNOWN_PEER, f"peer {msg.to!r} is reconnecting; signal not delivered"
            )
        target.session.send(p.encode(p.RelayedSignal(from_=member.peer_id, data=msg.data)))
        self.metrics.relayed += 1

    def _member_of(self, session: Session) -> Member:
        if session.member is None:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, "join a room first")
        return session.member

    def _broadcast(
        self, room: Room, message: p.ServerMessage, exclude: Member | None = None
    ) -> None:
        data = p.encode(message)
        for m in list(room.members.values()):
            if m is not exclude and m.session is not None:
                m.session.send(data)

    # --- lobby ---------------------------------------------------------------

    def room_list(self) -> list[p.RoomInfo]:
        """Every room with its counts, sorted by name."""
        capacity = self.config.max_room_size
        return [self.rooms[r].info(capacity) for r in sorted(self.rooms)]

    def watch(self, session: Session) -> None:
        """Send the room list now and on every change."""
        self.watchers.add(session)
        session.send_message(p.Rooms(rooms=self.room_list()))

    def unwatch(self, session: Session) -> None:
        """Stop sending the room list to ``session``."""
        self.watchers.discard(session)

    async def _run_lobby(self) -> None:
        """Broadcast the room list after changes, at most once per ``lobby_interval``."""
        while True:
            await self._lobby_dirty.wait()
            self._lobby_dirty.clear()
            if self.watchers:
                try:
                    data = p.encode(p.Rooms(rooms=self.room_list()))
                    for watcher in list(self.watchers):
                        watcher.send(data)
                except Exception:
                    logger.exception("room list broadcast failed")
            await asyncio.sleep(self.config.lobby_interval)
