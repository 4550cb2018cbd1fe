"""The link director: where members stand, and which of them are linked peer to peer.

It keeps the latest position of every member this instance knows of, sends
the room a batch of those who moved twice a second, and, for every room this
instance directs, runs the link rule (:mod:`.topology`) whenever someone
joins or leaves and four times a second while people move. What changes, it
hands to the backend, which tells both ends of each pair wherever they are
connected. With Redis one instance at a time directs a room, under a lease
(:meth:`RoomBackend.directs`), so that both ends always hear the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import protocol as p
from ..space import BAR, Point
from .backend import LinkChange, RoomBackend, Unavailable
from .rooms import Member
from .topology import LinkRules, Pair, choose_links, pair

logger = logging.getLogger(__name__)

#: Seconds between two runs of the rule in a room where people move.
RULE_INTERVAL = 0.25
#: Seconds between two batches of positions.
POSITIONS_INTERVAL = 0.5
#: Seconds that close() waits for the loops to end.
CLOSE_TIMEOUT = 5.0


@dataclass
class _Directed:
    """A room this instance directs: its linked pairs, each with its offerer."""

    pairs: dict[Pair, str] = field(default_factory=dict)
    far_since: dict[Pair, float] = field(default_factory=dict)


def _offerer(a: Member, b: Member) -> str:
    """Who offers: the one who joined later, as a newcomer always has."""
    return max((a.joined_at, a.peer_id), (b.joined_at, b.peer_id))[1]


class LinkDirector:
    """Positions and links for the rooms with members on this instance."""

    def __init__(
        self,
        rules: LinkRules,
        backend: RoomBackend,
        to_room: Callable[[str, bytes], None],
    ) -> None:
        self.rules = rules
        self.backend = backend
        #: Sends a frame to this instance's members of a room.
        self._to_room = to_room
        #: Where every member this instance knows of stands, once it has said.
        self.positions: dict[str, Point] = {}
        #: Members of each room here who moved since the last batch.
        self._movers: dict[str, dict[str, Point]] = {}
        self._directed: dict[str, _Directed] = {}
        #: Rooms whose members changed (run the rule now) or moved (at the next tick).
        self._changed: set[str] = set()
        #: Rooms whose members here are all in the next batch, standing still or not:
        #: someone arrived, perhaps on another instance, who has not seen them yet.
        self._refresh: set[str] = set()
        #: Who was in each room when its members last changed, to tell arrivals.
        self._present: dict[str, set[str]] = {}
        self._moved: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def start(self) -> None:
        """Start running the rule and sending positions."""
        self._tasks = [
            asyncio.create_task(self._run_rule()),
            asyncio.create_task(self._run_positions()),
        ]

    async def close(self) -> None:
        """Stop; what was decided stays decided. Cannot hang.

        The loops also stop by themselves once closed: a cancel that arrives
        inside a Redis call may come out of redis-py as a connection error.
        """
        self._closed = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
            if stuck:
                logger.warning("the link director did not stop within %.0f s", CLOSE_TIMEOUT)
        self._tasks = []

    # --- what happens ------------------------------------------------------------

    def members_changed(self, room_id: str) -> None:
        """Someone joined, left, came back or changed name: run the rule for the room at once.

        An arrival also puts everyone here in the next batch of positions.
        """
        self._changed.add(room_id)
        present = {m.peer_id for m in self.backend.known_members(room_id)}
        if present - self._present.get(room_id, set()):
            self._refresh.add(room_id)
        if present:
            self._present[room_id] = present
        else:
            self._present.pop(room_id, None)
        self._wake.set()

    def moved(self, member: Member, position: Point) -> None:
        """A member here says where it stands now (put on the map if it is off)."""
        position = BAR.map.clamp(*position)
        self.positions[member.peer_id] = position
        self._movers.setdefault(member.room_id, {})[member.peer_id] = position
        self._moved.add(member.room_id)

    def heard(self, room_id: str, batch: p.Positions) -> None:
        """Another instance's batch of positions for ``room_id``."""
        for entry in batch.peers:
            self.positions[entry.peer_id] = (entry.x, entry.y)
        self._moved.add(room_id)

    # --- the rule ----------------------------------------------------------------

    async def _run_rule(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while not self._closed:
            timeout = max(0.0, next_tick - loop.time())
            # asyncio.timeout, not wait_for: wait_for can swallow a cancel
            # that comes as the event is set, and close() would then hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            rooms, self._changed = self._changed, set()
            if loop.time() >= next_tick:
                next_tick = loop.time() + RULE_INTERVAL
                # Rooms with far pairs waiting out the hysteresis need a run too.
                waiting = {room for room, d in self._directed.items() if d.far_since}
                rooms |= self._moved | waiting
                self._moved = set()
            for room_id in sorted(rooms):
                if self._closed:
                    return
                try:
                    await self.step(room_id)
                except Unavailable as exc:
                    logger.debug("links of %s not decided: %s", room_id, exc)
                    self._changed.add(room_id)
                except Exception:
                    logger.exception("deciding the links of %s failed", room_id)

    async def step(self, room_id: str) -> None:
        """Run the rule for ``room_id`` once, if this instance directs it, and tell what changed."""
        members = {m.peer_id: m for m in self.backend.known_members(room_id)}
        if not members or not await self.backend.directs(room_id):
            self._directed.pop(room_id, None)
            return
        directed = self._directed.get(room_id)
        if directed is None:
            directed = self._directed[room_id] = _Directed(await self.backend.links(room_id))
        # Pairs with someone who left end with the member; nobody is told.
        current = {k: v for k, v in directed.pairs.items() if k[0] in members and k[1] in members}
        placed = {peer: self.positions[peer] for peer in members if peer in self.positions}
        decided = choose_links(
            members.keys(), placed, current.keys(), directed.far_since, time.monotonic(), self.rules
        )
        added = [
            LinkChange(a, b, _offerer(members[a], members[b]))
            for a, b in sorted(decided.pairs - current.keys())
        ]
        gone = sorted(current.keys() - decided.pairs)
        removed = [LinkChange(a, b, current[a, b]) for a, b in gone]
        if (added or removed) and not await self.backend.tell_links(room_id, added, removed):
            # Another instance took the room over meanwhile.
            self._directed.pop(room_id, None)
            return
        directed.pairs = {k: current[k] for k in decided.pairs & current.keys()}
        directed.pairs.update({pair(c.a, c.b): c.offerer for c in added})
        directed.far_since = dict(decided.far_since)

    # --- positions ---------------------------------------------------------------

    async def _run_positions(self) -> None:
        while not self._closed:
            await asyncio.sleep(POSITIONS_INTERVAL)
            movers, self._movers = self._movers, {}
            refresh, self._refresh = self._refresh, set()
            here = self.backend.instance_id
            for room_id in refresh:
                moved = movers.setdefault(room_id, {})
                for member in self.backend.known_members(room_id):
                    position = self.positions.get(member.peer_id)
                    if member.owner == here and position is not None:
                        moved[member.peer_id] = position
            movers = {room: moved for room, moved in movers.items() if moved}
            for room_id, moved in movers.items():
                if self._closed:
                    return
                batch = p.Positions(
                    peers=[
                        p.PeerPosition(peer, round(x, 2), round(y, 2))
                        for peer, (x, y) in moved.items()
                    ]
                )
                frame = p.encode(batch)
                self._to_room(room_id, frame)
                try:
                    await self.backend.tell_positions(room_id, frame)
                except Unavailable as exc:
                    logger.debug("positions in %s not shared: %s", room_id, exc)
                except Exception:
                    logger.exception("sharing positions in %s failed", room_id)
            known = {m.peer_id for m in self.backend.known_members()}
            for peer in self.positions.keys() - known:
                del self.positions[peer]
