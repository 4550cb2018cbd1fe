"""The hub: every connection, room and member of one server, and the rules that move them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .. import protocol as p
from .config import ServerConfig
from .identity import TokenSigner
from .metrics import Metrics
from .rooms import Member, RoomState
from .session import HEARTBEAT_TICKS, Ending

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger(__name__)


class Hub:
    """Owns the server's state and alone changes membership.

    Sessions call it with what their clients asked for and with how their
    sockets ended; it decides, and tells the others. Rooms and members are
    plain data in :class:`RoomState`; beside them the hub keeps what is live:
    the socket that speaks for each member, and the timer that ends a dropped
    member's grace period.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.signer = TokenSigner(config.secret)
        self.state = RoomState()
        self._sessions: set[Session] = set()
        #: The live connection of each member that has one.
        self._live: dict[str, Session] = {}
        #: Ends the grace period of each member that is away.
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._watchers: set[Session] = set()
        self.metrics = Metrics(
            connections=self.connections,
            rooms=lambda: self.state.room_count,
            peers=lambda: self.state.member_count,
        )
        self.limits = p.Limits(
            max_room_size=config.max_room_size,
            max_message_bytes=config.max_message_bytes,
            messages_per_second=config.messages_per_second,
            grace=config.grace,
        )
        self.closing = False
        self._lobby_dirty = asyncio.Event()
        self._lobby_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None

    # --- queries -------------------------------------------------------------

    def connections(self) -> int:
        """Open signaling sockets."""
        return len(self._sessions)

    def member(self, peer_id: str) -> Member | None:
        """Where ``peer_id`` is, as data: its room, name, zone, and whether it is away."""
        return self.state.member(peer_id)

    def members(self, room_id: str | None = None) -> list[Member]:
        """Everyone in ``room_id``, or everyone anywhere, those away included."""
        return self.state.members(room_id)

    def room_list(self) -> list[p.RoomInfo]:
        """Every room with its counts, sorted by name."""
        return self.state.room_list(self.config.max_room_size)

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
        for timer in self._expiry.values():
            timer.cancel()
        self._expiry.clear()
        await asyncio.gather(
            *(
                s.close(p.CloseCode.SERVICE_RESTART, "server restarting")
                for s in list(self._sessions)
            ),
            return_exceptions=True,
        )

    # --- connections -------------------------------------------------------

    def welcome(self, session: Session) -> p.Welcome:
        """Register a new connection and greet it."""
        self._sessions.add(session)
        self.metrics.connections_total.inc()
        return p.Welcome(
            peer_id=session.peer_id,
            resume_token=self.signer.issue(session.peer_id),
            ice_servers=self.config.ice_servers,
            limits=self.limits,
        )

    def disconnect(self, session: Session, ending: Ending) -> None:
        """A connection ended. A clean close leaves the room; a drop keeps the place a while.

        Called again for the same session (a kick, then the socket's end), it does nothing.
        """
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        self._watchers.discard(session)
        peer_id = session.peer_id
        if self._live.get(peer_id) is not session or self.closing:
            return
        del self._live[peer_id]
        if ending is Ending.DROPPED:
            self._hold(peer_id)
        else:
            reason = p.LeaveReason.KICKED if ending is Ending.KICKED else p.LeaveReason.CLOSED
            self._remove(peer_id, reason)

    def _hold(self, peer_id: str) -> None:
        """Keep a dropped member's place for the grace period, silently for the room."""
        grace = self.config.grace
        member = self.state.update(peer_id, away_until=time.time() + grace)
        self._expiry[peer_id] = asyncio.get_running_loop().call_later(grace, self._expire, peer_id)
        logger.info("peer %s dropped from %s; holding its place", peer_id, member.room_id)

    def _expire(self, peer_id: str) -> None:
        self._expiry.pop(peer_id, None)
        try:
            self._remove(peer_id, p.LeaveReason.TIMEOUT)
        except Exception:
            logger.exception("failed to remove peer %s after its grace period", peer_id)

    async def _run_heartbeat(self) -> None:
        """Give every session its heartbeat check, ``HEARTBEAT_TICKS`` times a period."""
        while True:
            await asyncio.sleep(self.config.heartbeat / HEARTBEAT_TICKS)
            for session in list(self._sessions):
                try:
                    session.heartbeat()
                except Exception:
                    logger.exception("heartbeat of peer %s failed", session.peer_id)

    # --- rooms ---------------------------------------------------------------

    def seat(self, session: Session) -> Member | None:
        """The member ``session`` speaks for, if it is in a room."""
        if self._live.get(session.peer_id) is not session:
            return None
        return self.state.member(session.peer_id)

    def _seat_of(self, session: Session) -> Member:
        member = self.seat(session)
        if member is None:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, "join a room first")
        return member

    def join(self, session: Session, msg: p.Join) -> None:
        """Put ``session`` in a room, resuming its old identity if it proves one."""
        started = time.perf_counter()
        seated = self.seat(session)
        if seated is not None:
            raise p.ProtocolError(
                p.ErrorCode.ALREADY_JOINED,
                f"already in room {seated.room_id}; send leave first",
            )
        peer_id = session.peer_id
        if msg.resume is not None:
            claimed = self.signer.verify(msg.resume)
            if claimed is None:
                raise p.ProtocolError(
                    p.ErrorCode.BAD_RESUME, "resume token is invalid or expired; join without it"
                )
            peer_id = claimed
        member = self.state.member(peer_id)
        if member is not None and member.room_id == msg.room_id:
            member = self._reattach(session, member, msg.name)
        else:
            if self.state.size(msg.room_id) >= self.config.max_room_size:
                raise p.ProtocolError(
                    p.ErrorCode.ROOM_FULL,
                    f"room {msg.room_id} is full ({self.config.max_room_size} people)",
                )
            if member is not None:
                # The token's peer is in another room: it moves, and its old
                # connection, if any, gives way to this one.
                previous = self._live.get(peer_id)
                self._remove(peer_id, p.LeaveReason.LEAVE)
                if previous is not None:
                    previous.end(p.CloseCode.REPLACED, "replaced by a newer connection")
            member = Member(peer_id=peer_id, name=msg.name, room_id=msg.room_id)
            self.state.add(member)
            self._live[peer_id] = session
            session.peer_id = peer_id
            self._broadcast(
                member.room_id,
                p.PeerJoined(
                    peer_id=peer_id,
                    name=member.name,
                    joined_at=member.joined_at,
                    resumed=msg.resume is not None,
                ),
                exclude=peer_id,
            )
            logger.info("peer %s (%s) joined %s", peer_id, member.name, member.room_id)
        session.send_message(
            p.PeerList(
                room_id=member.room_id,
                peer_id=peer_id,
                peers=[m.info() for m in self.state.members(member.room_id) if m is not member],
                resume_token=self.signer.issue(peer_id),
            )
        )
        self.metrics.join_latency.observe(time.perf_counter() - started)
        self._lobby_dirty.set()

    def _reattach(self, session: Session, member: Member, name: str) -> Member:
        """Give a member who is still in the room its new connection, silently for the others."""
        peer_id = member.peer_id
        timer = self._expiry.pop(peer_id, None)
        if timer is not None:
            timer.cancel()
        previous = self._live.get(peer_id)
        self._live[peer_id] = session
        session.peer_id = peer_id
        if previous is not None:
            previous.end(p.CloseCode.REPLACED, "replaced by a newer connection")
        logger.info("peer %s resumed in %s", peer_id, member.room_id)
        member = self.state.update(peer_id, away_until=None)
        if name != member.name:
            member = self.state.update(peer_id, name=name)
            self._announce_update(member)
        return member

    def leave(self, session: Session) -> None:
        """Take ``session`` out of its room."""
        member = self.seat(session)
        if member is None:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, "not in a room")
        self._remove(member.peer_id, p.LeaveReason.LEAVE)

    def _remove(self, peer_id: str, reason: p.LeaveReason) -> None:
        """Remove a member, with its live connection and grace timer, and tell the room at once."""
        timer = self._expiry.pop(peer_id, None)
        if timer is not None:
            timer.cancel()
        self._live.pop(peer_id, None)
        member = self.state.remove(peer_id)
        if member is None:
            return
        logger.info("peer %s left %s (%s)", peer_id, member.room_id, reason.value)
        self._broadcast(member.room_id, p.PeerLeft(peer_id=peer_id, reason=reason))
        self._lobby_dirty.set()

    def update(self, session: Session, msg: p.Update) -> None:
        """Change a member's name or zone and tell the room."""
        member = self._seat_of(session)
        member = self.state.update(member.peer_id, name=msg.name, zone=msg.zone)
        self._announce_update(member)
        self._lobby_dirty.set()

    def _announce_update(self, member: Member) -> None:
        self._broadcast(
            member.room_id,
            p.PeerUpdated(peer_id=member.peer_id, name=member.name, zone=member.zone),
        )

    def relay(self, session: Session, msg: p.Signal) -> None:
        """Pass a signal to its addressee, if and only if it is in the sender's room."""
        sender = self._seat_of(session)
        target = self.state.member(msg.to)
        if target is None or target.room_id != sender.room_id or target.peer_id == sender.peer_id:
            raise p.ProtocolError(
                p.ErrorCode.UNKNOWN_PEER, f"no peer {msg.to!r} in room {sender.room_id}"
            )
        connection = self._live.get(msg.to)
        if connection is None:
            raise p.ProtocolError(
                p.ErrorCode.UNKNOWN_PEER, f"peer {msg.to!r} is reconnecting; signal not delivered"
            )
        connection.send(p.encode(p.RelayedSignal(from_=sender.peer_id, data=msg.data)))
        self.metrics.relayed += 1

    def _broadcast(
        self, room_id: str, message: p.ServerMessage, exclude: str | None = None
    ) -> None:
        data = p.encode(message)
        for member in self.state.members(room_id):
            connection = self._live.get(member.peer_id)
            if connection is not None and member.peer_id != exclude:
                connection.send(data)

    # --- lobby ---------------------------------------------------------------

    def watch(self, session: Session) -> None:
        """Send the room list now and on every change."""
        self._watchers.add(session)
        session.send_message(p.Rooms(rooms=self.room_list()))

    def unwatch(self, session: Session) -> None:
        """Stop sending the room list to ``session``."""
        self._watchers.discard(session)

    async def _run_lobby(self) -> None:
        """Broadcast the room list after changes, at most once per ``lobby_interval``."""
        while True:
            await self._lobby_dirty.wait()
            self._lobby_dirty.clear()
            if self._watchers:
                try:
                    data = p.encode(p.Rooms(rooms=self.room_list()))
                    for watcher in list(self._watchers):
                        watcher.send(data)
                except Exception:
                    logger.exception("room list broadcast failed")
            await asyncio.sleep(self.config.lobby_interval)
