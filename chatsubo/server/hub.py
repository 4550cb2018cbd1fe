"""The hub: the connections of one server instance, and the rules that seat them in rooms."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from msgspec import UnsetType

from .. import protocol as p
from .backend import LinkChange, RoomBackend, RoomFull, Seated, Unavailable
from .config import ServerConfig
from .identity import ANY_ROOM, Resume, TokenRejected, TokenSigner
from .links import LinkDirector
from .memory import MemoryBackend
from .metrics import Metrics
from .rooms import Member
from .session import HEARTBEAT_TICKS, Ending
from .stun import StunServer

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger(__name__)


class Hub:
    """Owns this instance's connections and alone changes membership.

    Sessions call it with what their clients asked for and with how their
    sockets ended; it decides, has the :class:`RoomBackend` change the rooms,
    and passes on to its own connections what the backend reports. Beside
    the backend's data it keeps what is live here: the socket that speaks for
    each member, and the timer that ends a dropped member's grace period.
    """

    def __init__(self, config: ServerConfig, backend: RoomBackend | None = None) -> None:
        self.config = config
        self.backend: RoomBackend = backend if backend is not None else MemoryBackend()
        self.signer = TokenSigner(config.secret)
        self._sessions: set[Session] = set()
        #: The live connection of each member that has one here.
        self._live: dict[str, Session] = {}
        #: The live connections here of each room, for its events.
        self._rooms: dict[str, dict[str, Session]] = {}
        #: Ends the grace period of each member held here while it is away.
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        #: The latest room change in flight for each peer; the next waits for it.
        self._pending: dict[str, asyncio.Task[Any]] = {}
        self._watchers: set[Session] = set()
        #: Where everyone stands, and who is linked to whom.
        self.director = LinkDirector(config.links, self.backend, self._to_room)
        self.metrics = Metrics(
            connections=self.connections,
            rooms=lambda: len({m.room_id for m in self.members_here()}),
            peers=lambda: len(self.holding()),
        )
        self.limits = p.Limits(
            max_room_size=config.max_room_size,
            max_message_bytes=config.max_message_bytes,
            messages_per_second=config.messages_per_second,
            grace=config.grace,
        )
        #: Our own STUN port, when configured.
        self.stun = (
            StunServer(config.stun_host, config.stun_port) if config.stun_port is not None else None
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
        """Where ``peer_id`` is, as this instance knows it: room, name, zone, whether away."""
        return self.backend.known(peer_id)

    def members(self, room_id: str | None = None) -> list[Member]:
        """Everyone this instance knows in ``room_id``, or anywhere, those away included."""
        return self.backend.known_members(room_id)

    def members_here(self) -> list[Member]:
        """The members whose connection is here, or was until it dropped."""
        known = (self.backend.known(peer_id) for peer_id in self.holding())
        return [m for m in known if m is not None]

    def holding(self) -> set[str]:
        """The peers whose connection is here, or was here until it dropped a moment ago."""
        return self._live.keys() | self._expiry.keys()

    async def room_list(self, token: str | None = None) -> list[p.RoomInfo]:
        """The rooms the lobby shows with ``token``, with their counts, sorted by name.

        That is every room, except on an invite-only server: there only the
        rooms the invite opens.
        """
        rooms = await self.backend.room_list(self.config.max_room_size)
        return self._visible(rooms, self.opens(token))

    def opens(self, token: str | None) -> str | None:
        """Which rooms the lobby shows with ``token``: ``*`` for all, else one, or none."""
        if not self.config.require_token:
            return ANY_ROOM
        return None if token is None else self.signer.opens(token)

    @staticmethod
    def _visible(rooms: list[p.RoomInfo], opens: str | None) -> list[p.RoomInfo]:
        if opens == ANY_ROOM:
            return rooms
        return [room for room in rooms if room.room_id == opens]

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the backend and the background work: the room list broadcast and the heartbeat."""
        await self.backend.start(self)
        self.director.start()
        if self.stun is not None:
            await self.stun.start()
        self._lobby_task = asyncio.create_task(self._run_lobby())
        self._heartbeat_task = asyncio.create_task(self._run_heartbeat())

    async def close(self) -> None:
        """Close every connection with 1012 so clients reconnect at once; stop background work.

        Members keep their places: their clients come back here after a
        restart, or to another instance sharing the rooms.
        """
        self.closing = True
        if self.stun is not None:
            self.stun.close()
        background = [self._lobby_task, self._heartbeat_task, *self._pending.values()]
        tasks = [task for task in background if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Their outcome is of no interest now; _settle has logged any failure.
            # Bounded: a cancel that reaches a Redis call may come out of
            # redis-py as a connection error, which a loop would carry on from.
            await asyncio.wait(tasks, timeout=5.0)
        await self.director.close()
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
        await self.backend.close()

    def _after(self, peer_id: str, change: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a room change for ``peer_id`` once the one before it is done.

        A drop, a rejoin and the end of a grace period may follow each other
        faster than the backend answers; they must reach it in that order.
        """
        previous = self._pending.get(peer_id)

        async def run() -> Any:
            if previous is not None:
                await asyncio.wait({previous})
            return await change

        task = asyncio.create_task(run())
        self._pending[peer_id] = task
        task.add_done_callback(lambda done: self._settle(peer_id, done))
        return task

    def _settle(self, peer_id: str, task: asyncio.Task[Any]) -> None:
        if self._pending.get(peer_id) is task:
            del self._pending[peer_id]
        if task.cancelled() or isinstance(exc := task.exception(), p.ProtocolError | None):
            return
        if isinstance(exc, Unavailable):
            logger.info("could not record a change for peer %s: %s", peer_id, exc)
        else:
            logger.error("a change for peer %s failed", peer_id, exc_info=exc)

    # --- connections -------------------------------------------------------

    def welcome(self, session: Session) -> p.Welcome:
        """Register a new connection and greet it."""
        self._sessions.add(session)
        self.metrics.connections_total.inc()
        return p.Welcome(
            peer_id=session.peer_id,
            resume_token=self.signer.issue(session.peer_id),
            ice_servers=self._ice_servers_for(session),
            limits=self.limits,
            invite_only=self.config.require_token,
        )

    def ice_servers(self, session: Session) -> list[p.IceServer]:
        """The ICE servers for ``session``: our STUN, its own TURN credentials, then the rest.

        aiortc uses only the first STUN and the first TURN server it is given;
        ours share the client's route to us.
        """
        servers = []
        host = session.host
        if self.stun is not None and host:
            where = f"[{host}]" if ":" in host else host
            servers.append(p.IceServer(urls=[f"stun:{where}:{self.stun.port}"]))
        if self.config.turn is not None:
            servers.append(self.config.turn.server_for(session.peer_id))
        return [*servers, *self.config.ice_servers]

    def _ice_servers_for(self, session: Session) -> list[p.IceServer]:
        """:meth:`ice_servers`, noting when the session is due fresh TURN credentials."""
        if self.config.turn is not None:
            session.renew_ice_at = time.monotonic() + 0.75 * self.config.turn.ttl
        return self.ice_servers(session)

    def _renew_ice(self, session: Session, now: float) -> None:
        """Send fresh TURN credentials to a session whose current ones are getting old."""
        if session.renew_ice_at is not None and now >= session.renew_ice_at:
            update = p.IceServersUpdate(ice_servers=self._ice_servers_for(session))
            session.send_message(update)

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
        self._unseat(session)
        if ending is Ending.DROPPED:
            self._hold(peer_id)
        else:
            reason = p.LeaveReason.KICKED if ending is Ending.KICKED else p.LeaveReason.CLOSED
            self._after(peer_id, self._remove(peer_id, reason))

    def _unseat(self, session: Session) -> None:
        """Forget ``session`` as the live connection of its member."""
        if self._live.get(session.peer_id) is session:
            del self._live[session.peer_id]
        if session.room_id is not None:
            room = self._rooms.get(session.room_id, {})
            if room.get(session.peer_id) is session:
                del room[session.peer_id]
                if not room:
                    del self._rooms[session.room_id]
        session.room_id = None
        session.since = None

    def _hold(self, peer_id: str) -> None:
        """Keep a dropped member's place for the grace period, silently for the room."""
        grace = self.config.grace
        self._expiry[peer_id] = asyncio.get_running_loop().call_later(grace, self._expire, peer_id)
        self._after(peer_id, self.backend.hold(peer_id, time.time() + grace))
        logger.info("peer %s dropped; holding its place", peer_id)

    def _expire(self, peer_id: str) -> None:
        del self._expiry[peer_id]
        self._after(peer_id, self._time_out(peer_id))

    async def _time_out(self, peer_id: str) -> None:
        member = await self.backend.expire(peer_id)
        if member is not None:
            logger.info("peer %s left %s (timeout)", peer_id, member.room_id)

    def _stop_holding(self, peer_id: str) -> None:
        timer = self._expiry.pop(peer_id, None)
        if timer is not None:
            timer.cancel()

    async def _run_heartbeat(self) -> None:
        """Give every session its heartbeat check, ``HEARTBEAT_TICKS`` times a period.

        The same sweep hands out fresh TURN credentials when they are due.
        """
        while not self.closing:
            await asyncio.sleep(self.config.heartbeat / HEARTBEAT_TICKS)
            now = time.monotonic()
            for session in list(self._sessions):
                try:
                    session.heartbeat()
                    self._renew_ice(session, now)
                except Exception:
                    logger.exception("heartbeat of peer %s failed", session.peer_id)

    # --- rooms ---------------------------------------------------------------

    def seat(self, session: Session) -> Member | None:
        """The member ``session`` speaks for, if it is in a room."""
        if session.since is None or self._live.get(session.peer_id) is not session:
            return None
        return self.backend.known(session.peer_id)

    def _seat_of(self, session: Session) -> Member:
        member = self.seat(session)
        if member is None:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, "join a room first")
        return member

    async def join(self, session: Session, msg: p.Join) -> None:
        """Put ``session`` in a room, resuming its old identity if it proves one."""
        started = time.perf_counter()
        if session.room_id is not None:
            raise p.ProtocolError(
                p.ErrorCode.ALREADY_JOINED,
                f"already in room {session.room_id}; send leave first",
            )
        peer_id = session.peer_id
        resume = None
        if msg.resume is not None:
            resume = self.signer.verify(msg.resume)
            if resume is None:
                raise p.ProtocolError(
                    p.ErrorCode.BAD_RESUME, "resume token is invalid or expired; join without it"
                )
            peer_id = resume.peer_id
        fixed_name = self._admit(msg, resume)
        name = msg.name if fixed_name is None else fixed_name
        previous, own_id = self._live.get(peer_id), session.peer_id
        # Events for the room that arrive while the backend seats us are kept
        # for the session until it has its peer list (Session.early).
        session.peer_id, session.room_id = peer_id, msg.room_id
        self._rooms.setdefault(msg.room_id, {})[peer_id] = session
        try:
            seated = await self._after(peer_id, self._seat(peer_id, msg, name))
        except BaseException:
            self._unseat(session)
            session.peer_id = own_id
            if previous is not None and previous.room_id == msg.room_id:
                self._rooms.setdefault(msg.room_id, {})[peer_id] = previous
            raise
        self._stop_holding(peer_id)
        self._live[peer_id] = session
        session.fixed_name = fixed_name
        if previous is not None and previous is not session:
            self._unseat(previous)
            previous.end(p.CloseCode.REPLACED, "replaced by a newer connection")
        session.send_message(
            p.PeerList(
                room_id=msg.room_id,
                peer_id=peer_id,
                peers=[self._placed(m) for m in seated.others],
                resume_token=self.signer.issue(peer_id, msg.room_id, fixed_name),
                name=fixed_name,
            )
        )
        session.since = seated.seq
        for seq, data in session.early:
            if seq is None or seq > seated.seq:
                session.send(data)
        session.early.clear()
        if msg.resume is not None:
            await self._tell_links(session, msg.room_id)
        self.metrics.join_latency.observe(time.perf_counter() - started)

    def _admit(self, msg: p.Join, resume: Resume | None) -> str | None:
        """Check that the joiner may enter ``msg.room_id``; the display name it must use, if any.

        On an invite-only server that takes an invite to the room, or a
        resume token from a seat in it, which keeps the name the invite fixed.
        Elsewhere invites are not looked at: an old link still works.
        """
        if not self.config.require_token:
            return None
        room = msg.room_id
        if resume is not None and resume.room == room:
            return resume.name
        if msg.token is None:
            raise p.ProtocolError(
                p.ErrorCode.UNAUTHORIZED,
                f"room {room} is invite-only: join with an invite link from the bar's host",
            )
        try:
            return self.signer.admit(msg.token, room).name
        except TokenRejected as exc:
            raise p.ProtocolError(
                p.ErrorCode.UNAUTHORIZED, f"the invite does not open room {room}: {exc}"
            ) from None

    async def _tell_links(self, session: Session, room_id: str) -> None:
        """Tell a member who came back whom it is linked to: the links it keeps.

        After a rejoin a client closes the links it is not told of again
        (the server may have restarted and forgotten them).
        """
        try:
            pairs = await self.backend.links(room_id)
        except Unavailable as exc:
            logger.debug("links of %s not told again: %s", session.peer_id, exc)
            return
        me = session.peer_id
        for (a, b), offerer in sorted(pairs.items()):
            if me in (a, b):
                other = b if me == a else a
                session.send_message(p.Link(peer_id=other, offer=me == offerer))

    def _placed(self, member: Member) -> p.PeerInfo:
        """How others see ``member``, with where it stands if it has said."""
        info = member.info()
        position = self.director.positions.get(member.peer_id)
        if position is not None:
            info.x, info.y = position
        return info

    async def _seat(self, peer_id: str, msg: p.Join, name: str) -> Seated:
        """Seat ``peer_id`` as ``name`` in the room ``msg`` asks for, wherever it was before."""
        backend = self.backend
        resumed = msg.resume is not None
        member = await backend.find(peer_id) if resumed else None
        if member is not None and member.room_id == msg.room_id:
            seated = await backend.reattach(peer_id, name)
            if seated is not None:
                logger.info("peer %s resumed in %s", peer_id, msg.room_id)
                return seated
        capacity = self.config.max_room_size
        try:
            seated = await backend.seat(
                Member(peer_id=peer_id, name=name, room_id=msg.room_id, owner=backend.instance_id),
                capacity,
                resumed,
            )
        except RoomFull:
            raise p.ProtocolError(
                p.ErrorCode.ROOM_FULL, f"room {msg.room_id} is full ({capacity} people)"
            ) from None
        logger.info("peer %s (%s) joined %s", peer_id, name, msg.room_id)
        return seated

    async def leave(self, session: Session) -> None:
        """Take ``session`` out of its room."""
        member = self.seat(session)
        if member is None:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, "not in a room")
        self._unseat(session)
        await self._after(member.peer_id, self._remove(member.peer_id, p.LeaveReason.LEAVE))

    async def _remove(self, peer_id: str, reason: p.LeaveReason) -> None:
        member = await self.backend.remove(peer_id, reason)
        if member is not None:
            logger.info("peer %s left %s (%s)", peer_id, member.room_id, reason.value)

    async def update(self, session: Session, msg: p.Update) -> None:
        """Change a member's name or zone and tell the room; note where it stands."""
        member = self._seat_of(session)
        position = msg.position
        if position is not None:
            self.director.moved(member, position)
            if isinstance(msg.name, UnsetType) and isinstance(msg.zone, UnsetType):
                return
        fixed = session.fixed_name
        if fixed is not None and isinstance(msg.name, str) and msg.name != fixed:
            raise p.ProtocolError(
                p.ErrorCode.UNAUTHORIZED, f"your invite fixes your name as {fixed}"
            )
        await self.backend.update(member.peer_id, name=msg.name, zone=msg.zone)

    async def relay(self, session: Session, msg: p.Signal) -> None:
        """Pass a signal to its addressee, if and only if it is in the sender's room."""
        # self.seat(), spelt out: this runs for every relayed message.
        sender = self.backend.known(session.peer_id)
        if sender is None or session.since is None or self._live.get(sender.peer_id) is not session:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, "join a room first")
        data = p.encode(p.RelayedSignal(from_=sender.peer_id, data=msg.data))
        await self.backend.send(sender, msg.to, data)
        self.metrics.relayed += 1

    # --- what the backend reports (RoomListener) -------------------------------

    def room_event(self, room_id: str, seq: int | None, data: bytes, exclude: str | None) -> None:
        """Pass a room's event to its members connected here."""
        self.director.members_changed(room_id)
        for peer_id, session in self._rooms.get(room_id, {}).items():
            if peer_id == exclude:
                continue
            since = session.since
            if since is None:
                session.early.append((seq, data))
            elif seq is None or seq > since:
                session.send(data)

    def rebase(self, room_id: str, seq: int) -> None:
        """After a resynchronisation, the members here know the room as of event ``seq``."""
        self.director.members_changed(room_id)
        for session in self._rooms.get(room_id, {}).values():
            if session.since is not None:
                session.since = seq

    def deliver(self, peer_id: str, data: bytes) -> bool:
        """Send a frame to ``peer_id``'s live connection here, if it has one."""
        session = self._live.get(peer_id)
        if session is None or session.since is None:
            return False
        session.send(data)
        return True

    def replaced(self, peer_id: str) -> None:
        """The member connected again on another instance: close its connection here with 4000."""
        self._stop_holding(peer_id)
        session = self._live.get(peer_id)
        if session is not None:
            self._unseat(session)
            session.end(p.CloseCode.REPLACED, "replaced by a newer connection")

    def lobby_changed(self) -> None:
        """Some room's counts changed: the watchers get a fresh list soon."""
        self._lobby_dirty.set()

    def links_changed(
        self, room_id: str, added: list[LinkChange], removed: list[LinkChange]
    ) -> None:
        """Tell the ends here of each pair to unlink, or to link (naming the offerer).

        Unlinks go first, so that nobody holds more than its share of links
        even for a moment.
        """
        here = self._rooms.get(room_id)
        if not here:
            return
        for change in removed:
            for end, other in ((change.a, change.b), (change.b, change.a)):
                session = here.get(end)
                if session is not None:
                    self._send_in_order(session, p.encode(p.Unlink(peer_id=other)))
        for change in added:
            for end, other in ((change.a, change.b), (change.b, change.a)):
                session = here.get(end)
                if session is not None:
                    link = p.Link(peer_id=other, offer=end == change.offerer)
                    self._send_in_order(session, p.encode(link))

    def positions_heard(self, room_id: str, frame: bytes) -> None:
        """Pass another instance's batch of positions to the room here, and note them."""
        try:
            batch = p.decode_server(frame)
        except p.ProtocolError:
            logger.warning("ignoring a malformed positions batch for %s", room_id)
            return
        if isinstance(batch, p.Positions):
            self.director.heard(room_id, batch)
            self._to_room(room_id, frame)

    def _to_room(self, room_id: str, data: bytes) -> None:
        """Send ``data`` to the members of ``room_id`` connected here."""
        for session in self._rooms.get(room_id, {}).values():
            self._send_in_order(session, data)

    @staticmethod
    def _send_in_order(session: Session, data: bytes) -> None:
        """Send now, or after the peer list to a session still being seated."""
        if session.since is None:
            session.early.append((None, data))
        else:
            session.send(data)

    # --- lobby ---------------------------------------------------------------

    async def watch(self, session: Session, msg: p.WatchRooms) -> None:
        """Send the room list (what ``msg.token`` opens of it) now and on every change."""
        session.lobby = self.opens(msg.token)
        self._watchers.add(session)
        rooms = await self.backend.room_list(self.config.max_room_size)
        session.send_message(p.Rooms(rooms=self._visible(rooms, session.lobby)))

    def unwatch(self, session: Session) -> None:
        """Stop sending the room list to ``session``."""
        self._watchers.discard(session)

    async def _run_lobby(self) -> None:
        """Broadcast the room list after changes, at most once per ``lobby_interval``."""
        while not self.closing:
            await self._lobby_dirty.wait()
            self._lobby_dirty.clear()
            if self._watchers:
                try:
                    rooms = await self.backend.room_list(self.config.max_room_size)
                    # One frame for each view of the list: on an open server, one for all.
                    frames: dict[str | None, bytes] = {}
                    for watcher in list(self._watchers):
                        data = frames.get(watcher.lobby)
                        if data is None:
                            visible = self._visible(rooms, watcher.lobby)
                            data = frames[watcher.lobby] = p.encode(p.Rooms(rooms=visible))
                        watcher.send(data)
                except Unavailable as exc:
                    logger.debug("room list not sent: %s", exc)
                    self._lobby_dirty.set()
                except Exception:
                    logger.exception("room list broadcast failed")
            await asyncio.sleep(self.config.lobby_interval)
