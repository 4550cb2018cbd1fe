"""The shared room backend: rooms in one Redis, so that several server instances serve the same bar.

What lives where (every key starts with the prefix, ``chatsubo`` by default):

- ``m:{peer}``: a hash per member: room, name, joined, zone, owner, away.
- ``r:{room}``: a hash per room: ``n`` members, ``seq`` (its event counter),
  and ``z:{zone}`` counts; ``rm:{room}``: its members in the order they came.
- ``rooms``: the rooms that have members.
- ``i:{instance}``: an instance's lease, a key that expires unless renewed;
  ``ip:{instance}``: the members whose connection it holds; ``instances``.

Every change is one Lua script, so it is atomic (the last seat is checked and
taken in one step), numbers the room's event and publishes it on the room's
channel ``c:{room}`` in the same step, so every instance sees a room's events
in the order they happened. A signal goes to the one instance that holds its
addressee, on that instance's own channel ``inbox:{instance}``. Because both
channels reach an instance over the same subscriber connection, in the order
Redis ran the commands, a member never receives a newcomer's offer before
that newcomer's ``peer_joined``.

Each instance keeps a mirror of the rooms in which it holds a member, built
from those events: it answers lookups and routes signals without a round
trip. Pub/sub delivers at most once, so after every reconnect an instance
resynchronises the mirror from the hashes and tells its members the
difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from msgspec import UNSET, UnsetType
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .. import protocol as p
from .backend import (
    LinkChange,
    RoomBackend,
    RoomFull,
    RoomListener,
    Seated,
    Unavailable,
    away_peer,
)
from .backend import unknown_peer as unknown_peer_error
from .rooms import Member

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Functions every script shares: ARGV[1] is always the key prefix.
_PRELUDE = """
local P = ARGV[1]
local function snapshot(room)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', P..':rm:'..room, 0, -1)) do
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', P..':m:'..id)
  end
  return out
end
local function bump(room)
  local rk = P..':r:'..room
  if redis.call('HEXISTS', rk, 'seq') == 0 then
    -- A room's events are numbered from the time it began, in microseconds,
    -- so that numbers keep growing even when Redis forgot the room.
    local t = redis.call('TIME')
    redis.call('HSET', rk, 'seq', t[1] .. string.format('%06d', tonumber(t[2])))
  end
  return redis.call('HINCRBY', rk, 'seq', 1)
end
local function tell(room, event)
  -- As a string: cjson would round a 16-digit number.
  event.s = string.format('%.0f', event.s)
  local data = cjson.encode(event)
  redis.call('PUBLISH', P..':c:'..room, data)
  return data
end
local function count_zone(room, zone, by)
  if zone == false or zone == nil or zone == '' then return end
  if redis.call('HINCRBY', P..':r:'..room, 'z:'..zone, by) <= 0 then
    redis.call('HDEL', P..':r:'..room, 'z:'..zone)
  end
end
local function drop(id, reason, origin)
  local mk = P..':m:'..id
  local f = redis.call('HMGET', mk, 'room', 'owner', 'zone')
  local room = f[1]
  redis.call('DEL', mk)
  redis.call('ZREM', P..':rm:'..room, id)
  redis.call('SREM', P..':ip:'..f[2], id)
  count_zone(room, f[3], -1)
  local seq = bump(room)
  if redis.call('HINCRBY', P..':r:'..room, 'n', -1) <= 0 then
    redis.call('DEL', P..':r:'..room, P..':rm:'..room)
    redis.call('SREM', P..':rooms', room)
  end
  redis.call('PUBLISH', P..':lobby', room)
  return tell(room, {k = 'left', o = origin, s = seq, r = room, p = id, reason = reason})
end
local function add(id, room, name, joined, zone, owner, resumed)
  redis.call('HSET', P..':m:'..id, 'room', room, 'name', name, 'joined', joined,
    'zone', zone, 'owner', owner, 'away', '')
  local seq = bump(room)
  redis.call('HINCRBY', P..':r:'..room, 'n', 1)
  count_zone(room, zone, 1)
  redis.call('ZADD', P..':rm:'..room, seq, id)
  redis.call('SADD', P..':rooms', room)
  redis.call('SADD', P..':ip:'..owner, id)
  redis.call('PUBLISH', P..':lobby', room)
  return tell(room, {k = 'joined', o = owner, s = seq, r = room, p = id, name = name,
    joined = joined, zone = zone, resumed = resumed})
end
"""

#: ARGV: prefix, peer, room, name, joined, owner, capacity, resumed.
#: Returns {0} when full, else {1, events, seq, snapshot}.
_SEAT = """
local id, room, owner = ARGV[2], ARGV[3], ARGV[6]
local n = tonumber(redis.call('HGET', P..':r:'..room, 'n') or '0')
if n >= tonumber(ARGV[7]) then return {0} end
local events = {}
if redis.call('EXISTS', P..':m:'..id) == 1 then events[#events + 1] = drop(id, 'leave', owner) end
events[#events + 1] = add(id, room, ARGV[4], ARGV[5], '', owner, ARGV[8] == '1')
return {1, events, redis.call('HGET', P..':r:'..room, 'seq'), snapshot(room)}
"""

#: ARGV: prefix, peer, room, name, owner. Returns {0} if the peer is not in
#: that room, else {1, events, seq, snapshot}.
_REATTACH = """
local id, room, name, owner = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local mk = P..':m:'..id
local f = redis.call('HMGET', mk, 'room', 'owner', 'name', 'zone')
if f[1] ~= room then return {0} end
redis.call('HSET', mk, 'owner', owner, 'away', '')
redis.call('SREM', P..':ip:'..f[2], id)
redis.call('SADD', P..':ip:'..owner, id)
local events = {tell(room, {k = 'moved', o = owner, s = bump(room), r = room, p = id})}
if f[3] ~= name then
  redis.call('HSET', mk, 'name', name)
  events[#events + 1] = tell(room, {k = 'updated', o = owner, s = bump(room), r = room, p = id,
    name = name, zone = f[4]})
end
return {1, events, redis.call('HGET', P..':r:'..room, 'seq'), snapshot(room)}
"""

#: ARGV: prefix, peer, until, owner. Returns {events}.
_HOLD = """
local id, owner = ARGV[2], ARGV[4]
local f = redis.call('HMGET', P..':m:'..id, 'room', 'owner')
if f[2] ~= owner then return {} end
redis.call('HSET', P..':m:'..id, 'away', ARGV[3])
return {tell(f[1], {k = 'away', o = owner, s = bump(f[1]), r = f[1], p = id, away = ARGV[3]})}
"""

#: ARGV: prefix, peer, reason, origin, condition, owner. The condition is
#: 'mine' (held by ``owner``), 'away' (held by ``owner`` and away) or 'dead'
#: (held by ``owner``, whose lease is gone). Returns {events, fields}.
_REMOVE = """
local id, owner, condition = ARGV[2], ARGV[6], ARGV[5]
local mk = P..':m:'..id
local fields = redis.call('HGETALL', mk)
local f = redis.call('HMGET', mk, 'owner', 'away')
if f[1] ~= owner then return {{}, {}} end
if condition == 'away' and (f[2] == false or f[2] == '') then return {{}, {}} end
if condition == 'dead' and redis.call('EXISTS', P..':i:'..owner) == 1 then return {{}, {}} end
return {{drop(id, ARGV[3], ARGV[4])}, fields}
"""

#: ARGV: prefix, peer, origin, set name?, name, set zone?, zone ('' for none).
#: Returns {events, fields}.
_UPDATE = """
local id, origin = ARGV[2], ARGV[3]
local mk = P..':m:'..id
local f = redis.call('HMGET', mk, 'room', 'name', 'zone')
local room = f[1]
if not room then return {{}, {}} end
local name, zone = f[2], f[3]
if ARGV[4] == '1' then name = ARGV[5] end
if ARGV[6] == '1' and ARGV[7] ~= zone then
  count_zone(room, zone, -1)
  count_zone(room, ARGV[7], 1)
  zone = ARGV[7]
  redis.call('PUBLISH', P..':lobby', room)
end
redis.call('HSET', mk, 'name', name, 'zone', zone)
local event = tell(room, {k = 'updated', o = origin, s = bump(room), r = room, p = id,
  name = name, zone = zone})
return {{event}, redis.call('HGETALL', mk)}
"""

#: ARGV: prefix, owner, then (peer, room, name, joined, zone) for every member
#: the instance holds. Members of its own it no longer holds leave; held ones
#: Redis lost come back. Returns {events}.
_CLAIM = """
local owner = ARGV[2]
local held, events = {}, {}
for i = 3, #ARGV, 5 do
  local id, room = ARGV[i], ARGV[i + 1]
  held[id] = true
  local f = redis.call('HMGET', P..':m:'..id, 'room', 'owner')
  if not f[1] then
    events[#events + 1] = add(id, room, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], owner, true)
  elseif f[2] == owner then
    redis.call('SADD', P..':ip:'..owner, id)
  end
end
for _, id in ipairs(redis.call('SMEMBERS', P..':ip:'..owner)) do
  if not held[id] then
    if redis.call('HGET', P..':m:'..id, 'owner') == owner then
      events[#events + 1] = drop(id, 'timeout', owner)
    else
      redis.call('SREM', P..':ip:'..owner, id)
    end
  end
end
return events
"""

#: ARGV: prefix, room. Returns {seq, snapshot}.
_SNAPSHOT = """
return {redis.call('HGET', P..':r:'..ARGV[2], 'seq') or '0', snapshot(ARGV[2])}
"""

#: ARGV: prefix, instance. Forgets a dead instance that holds nobody any more.
_FORGET = """
local inst = ARGV[2]
if redis.call('EXISTS', P..':i:'..inst) == 0 and redis.call('SCARD', P..':ip:'..inst) == 0 then
  redis.call('SREM', P..':instances', inst)
end
return 0
"""


#: ARGV: prefix, room, instance, lease (ms). Takes or keeps the direction of a
#: room's links; 1 when this instance directs it.
_DIRECT = """
local k = P..':topo:'..ARGV[2]
local cur = redis.call('GET', k)
if cur == ARGV[3] then
  redis.call('PEXPIRE', k, ARGV[4])
  return 1
end
if not cur then
  redis.call('SET', k, ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
"""

#: ARGV: prefix, room, instance. Gives up the direction of a room, if this instance has it.
_UNDIRECT = """
local k = P..':topo:'..ARGV[2]
if redis.call('GET', k) == ARGV[3] then redis.call('DEL', k) end
return 0
"""

#: ARGV: prefix, room, instance, changes (JSON: {"add": [[a, b, offerer]],
#: "remove": [[a, b, offerer]]}). Records and publishes them, if this instance
#: still directs the room; 1 when it did.
_LINKS = """
local room = ARGV[2]
if redis.call('GET', P..':topo:'..room) ~= ARGV[3] then return 0 end
local lk = P..':links:'..room
local changes = cjson.decode(ARGV[4])
for _, c in ipairs(changes.add) do redis.call('HSET', lk, c[1]..' '..c[2], c[3]) end
for _, c in ipairs(changes.remove) do redis.call('HDEL', lk, c[1]..' '..c[2]) end
-- Forgotten an hour after the last change: an empty room's links are of no use.
redis.call('EXPIRE', lk, 3600)
redis.call('PUBLISH', P..':c:'..room, 'L'..ARGV[4])
return 1
"""


class _LinkChanges(msgspec.Struct, frozen=True):
    """The changes a room's director publishes: pairs ``[a, b, offerer]``."""

    add: list[tuple[str, str, str]]
    remove: list[tuple[str, str, str]]


_decode_links = msgspec.json.Decoder(_LinkChanges).decode


class _Event(msgspec.Struct, frozen=True):
    """A room event as the scripts publish it; ``k`` says which."""

    k: str
    o: str
    s: int
    r: str
    p: str
    name: str = ""
    joined: str = "0"
    zone: str = ""
    resumed: bool = False
    reason: str = ""
    away: str = ""


#: Not strict: the event number arrives as a string of digits.
_decode_event = msgspec.json.Decoder(_Event, strict=False).decode


def _member(peer_id: str, fields: Sequence[str]) -> Member | None:
    """A member from the flat field list of its hash; None for an empty one."""
    if not fields:
        return None
    f = dict(zip(fields[::2], fields[1::2], strict=True))
    return Member(
        peer_id=peer_id,
        name=f.get("name", ""),
        room_id=f["room"],
        joined_at=int(f.get("joined") or 0),
        zone=f.get("zone") or None,
        away_until=float(f["away"]) if f.get("away") else None,
        owner=f.get("owner", ""),
    )


def _snapshot(flat: Sequence[Any]) -> dict[str, Member]:
    members = (_member(flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
    return {m.peer_id: m for m in members if m is not None}


@dataclass
class _Room:
    """This instance's mirror of one room in which it holds a member."""

    members: dict[str, Member] = field(default_factory=dict)
    #: Events up to this number are already in ``members``.
    floor: int = 0
    #: Set once the room's channel is subscribed.
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Joins in progress here, which keep the mirror while it has no member yet.
    joining: int = 0


@dataclass(frozen=True)
class RedisOptions:
    """How the Redis backend reaches Redis, and how fast it notices a dead instance."""

    url: str
    prefix: str = "chatsubo"
    #: Seconds an instance's lease lasts unless renewed; renewed every third of it.
    lease: float = 6.0
    #: Seconds between two looks for dead instances.
    reap_interval: float = 1.0
    #: Seconds to wait for Redis before calling it unreachable.
    timeout: float = 2.0
    #: Connections to Redis at most, the subscriber's included.
    connections: int = 32

    @property
    def bound(self) -> float:
        """At most this many seconds after an instance dies, its rooms hear its peers left."""
        return self.lease + self.reap_interval + self.timeout


class RedisBackend(RoomBackend):
    """Rooms in Redis, shared with every instance that uses the same Redis and prefix."""

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self.instance_id = secrets.token_urlsafe(8)
        pool = aioredis.BlockingConnectionPool.from_url(
            options.url,
            # A burst of joins waits for a free connection rather than failing.
            max_connections=options.connections,
            timeout=options.timeout,
            decode_responses=True,
            # RESP2: redis-py parses its pub/sub messages with hiredis, and
            # faster than RESP3's push messages.
            protocol=2,
            socket_timeout=options.timeout,
            socket_connect_timeout=options.timeout,
            # A failed command fails at once; the reader's reconnect loop retries.
            retry=Retry(NoBackoff(), 0),
        )
        # from_pool: closing the client closes the pool too.
        self._redis = aioredis.Redis.from_pool(pool)
        self._scripts = {
            name: self._redis.register_script(_PRELUDE + body)
            for name, body in (
                ("seat", _SEAT),
                ("reattach", _REATTACH),
                ("hold", _HOLD),
                ("remove", _REMOVE),
                ("update", _UPDATE),
                ("claim", _CLAIM),
                ("snapshot", _SNAPSHOT),
                ("forget", _FORGET),
                ("direct", _DIRECT),
                ("links", _LINKS),
                ("undirect", _UNDIRECT),
            )
        }
        self._listener: RoomListener | None = None
        self._rooms: dict[str, _Room] = {}
        #: The room of each member in ``_rooms``, for lookups by peer id.
        self._where: dict[str, str] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._problem: str | None = "not connected to Redis yet"
        self._connected_once = False
        self._outage_told = False
        #: Set once the first resynchronisation is done.
        self._ready = asyncio.Event()
        self._resync_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        #: Frames for other instances' inboxes, waiting for _send_outbox.
        self._outbox: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._outbox_ready = asyncio.Event()
        prefix = options.prefix
        self._inbox = f"{prefix}:inbox:{self.instance_id}"
        self._lobby = f"{prefix}:lobby"
        self._lease = f"{prefix}:i:{self.instance_id}"
        #: Until when (monotonic) each room's direction is known to be ours.
        self._directing: dict[str, float] = {}

    # --- lifecycle -------------------------------------------------------------

    async def start(self, listener: RoomListener) -> None:
        """Start following Redis; waits a moment for it, then serves (with 503s) until it is up."""
        self._listener = listener
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._keep()),
            asyncio.create_task(self._send_outbox()),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.timeout):
                await self._ready.wait()

    async def close(self) -> None:
        # The lease is left to expire rather than deleted: clients that come
        # back on another instance within it keep their places. The rooms'
        # links are handed on at once.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.timeout):
                for room_id in list(self._directing):
                    await self._undirect(room_id)
        self._directing.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._listener = None
        for *_, sent in self._outbox:
            if not sent.done():
                sent.set_exception(Unavailable("the server is closing"))
        self._outbox = []
        await self._redis.aclose()

    @property
    def problem(self) -> str | None:
        return self._problem

    def _lost(self, exc: BaseException) -> None:
        """Note that Redis is unreachable; said once per outage, not once per message."""
        detail = str(exc).rstrip(".") or type(exc).__name__
        why = f"cannot reach Redis at {self._redacted_url()}: {detail}"
        if not self._outage_told:
            self._outage_told = True
            logger.warning("%s; retrying until it is back", why)
        self._problem = why

    def _redacted_url(self) -> str:
        pool = self._redis.connection_pool.connection_kwargs
        if "path" in pool:
            return f"unix://{pool['path']}"
        return f"redis://{pool.get('host', '?')}:{pool.get('port', '?')}/{pool.get('db', 0)}"

    async def _call(self, call: Awaitable[T]) -> T:
        """Run one Redis call, turning any failure to reach Redis into :class:`Unavailable`."""
        if self._problem is not None:
            if asyncio.iscoroutine(call):
                call.close()
            raise Unavailable(self._problem)
        try:
            return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach Redis: {exc or type(exc).__name__}") from exc

    async def _run(self, script: str, *args: object) -> Any:
        return await self._call(
            self._scripts[script](args=[self.options.prefix, *(str(a) for a in args)])
        )

    # --- the subscriber -------------------------------------------------------------

    async def _read(self) -> None:
        """Receive room events and signals; after each (re)connect, resynchronise."""
        while True:
            pubsub = self._redis.pubsub()
            try:
                channels = [self._inbox, self._lobby, *(self._channel(r) for r in self._rooms)]
                await pubsub.subscribe(*channels)
                self._pubsub = pubsub
                async for message in pubsub.listen():
                    kind = message["type"]
                    if kind == "message":
                        self._on_message(message["channel"], message["data"])
                    elif kind == "subscribe":
                        await self._subscribed(message["channel"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)
            except Exception as exc:
                logger.exception("the Redis subscriber failed")
                self._lost(exc)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                for room in self._rooms.values():
                    room.subscribed.clear()
            await asyncio.sleep(self.options.timeout / 4)

    async def _subscribed(self, channel: str) -> None:
        if channel == self._lobby:
            # Everything before this may have been missed: catch up.
            try:
                await self._resync()
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)
                raise
            return
        prefix = f"{self.options.prefix}:c:"
        if channel.startswith(prefix):
            room = self._rooms.get(channel[len(prefix) :])
            if room is not None:
                room.subscribed.set()

    def _channel(self, room_id: str) -> str:
        return f"{self.options.prefix}:c:{room_id}"

    def _on_message(self, channel: str, data: str) -> None:
        if channel == self._inbox:
            self._on_inbox(data)
        elif channel == self._lobby:
            if self._listener is not None:
                self._listener.lobby_changed()
        elif data[:1] == "L":
            self._on_links(channel, data[1:])
        elif data[:1] == "P":
            origin, _, frame = data[1:].partition("\n")
            if origin != self.instance_id and self._listener is not None:
                self._listener.positions_heard(self._room_of(channel), frame.encode())
        else:
            try:
                event = _decode_event(data)
            except msgspec.DecodeError:
                logger.warning("ignoring a malformed room event on %s", channel)
                return
            if event.o != self.instance_id:
                self._apply(event, local=False)

    def _room_of(self, channel: str) -> str:
        return channel[len(self.options.prefix) + 3 :]

    def _on_links(self, channel: str, data: str) -> None:
        try:
            changes = _decode_links(data)
        except msgspec.DecodeError:
            logger.warning("ignoring malformed link changes on %s", channel)
            return
        if self._listener is not None:
            self._listener.links_changed(
                self._room_of(channel),
                [LinkChange(*c) for c in changes.add],
                [LinkChange(*c) for c in changes.remove],
            )

    def _on_inbox(self, data: str) -> None:
        """A frame for a peer held here, or an error bounced back to one."""
        head, _, frame = data.partition("\n")
        to, _, sender = head.partition(" ")
        listener = self._listener
        if listener is None or listener.deliver(to, frame.encode()):
            return
        if sender:
            # The addressee dropped since the sender's instance last heard of
            # it: tell the sender, as a local relay would have.
            instance, _, peer = sender.partition(" ")
            error = away_peer(to)
            bounce = p.encode(p.Error(code=error.code, message=error.message))
            self._spawn(self._publish(instance, peer, bounce, None))

    async def _publish(self, instance: str, to: str, data: bytes, sender: Member | None) -> None:
        """Put a frame in another instance's inbox; returns once Redis has it."""
        if self._problem is not None:
            raise Unavailable(self._problem)
        head = to if sender is None else f"{to} {self.instance_id} {sender.peer_id}"
        sent = asyncio.get_running_loop().create_future()
        self._outbox.append(
            (f"{self.options.prefix}:inbox:{instance}", head.encode() + b"\n" + data, sent)
        )
        self._outbox_ready.set()
        await sent

    async def _send_outbox(self) -> None:
        """Publish the waiting frames, in order, as many at a time as are waiting.

        Under load one round trip carries many signals, and a signal never
        waits for a connection from the pool.
        """
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            pipe = self._redis.pipeline(transaction=False)
            for channel, payload, _ in batch:
                pipe.publish(channel, payload)
            failure: Unavailable | None = None
            try:
                await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                failure = Unavailable(f"cannot reach Redis: {exc or type(exc).__name__}")
            for *_, sent in batch:
                if sent.done():
                    continue  # its sender is gone
                if failure is None:
                    sent.set_result(None)
                else:
                    sent.set_exception(failure)

    # --- the mirror ------------------------------------------------------------

    def _apply(self, event: _Event, local: bool) -> None:
        """Bring the mirror up to ``event`` and pass it to the members here."""
        room = self._rooms.get(event.r)
        listener = self._listener
        if room is None or listener is None:
            return
        # Our own changes always count: nothing later about the member can
        # have come from elsewhere while we held it.
        fresh = local or event.s > room.floor
        peer_id = event.p
        old = room.members.get(peer_id)
        message: p.ServerMessage | None = None
        exclude: str | None = peer_id
        match event.k:
            case "joined":
                member = Member(
                    peer_id=peer_id,
                    name=event.name,
                    room_id=event.r,
                    joined_at=int(event.joined),
                    zone=event.zone or None,
                    owner=event.o,
                )
                if fresh:
                    room.members[peer_id] = member
                    self._where[peer_id] = event.r
                # A member we already knew, put back by its instance after
                # Redis lost it, is no news to anyone here.
                if not (fresh and old is not None):
                    message = p.PeerJoined(
                        peer_id=peer_id,
                        name=member.name,
                        joined_at=member.joined_at,
                        resumed=event.resumed,
                    )
            case "left":
                if fresh:
                    room.members.pop(peer_id, None)
                    if self._where.get(peer_id) == event.r:
                        del self._where[peer_id]
                message = p.PeerLeft(peer_id=peer_id, reason=p.LeaveReason(event.reason))
                # A move to another room made elsewhere; not a reap, after
                # which this instance puts its member back itself.
                if not local and event.reason == p.LeaveReason.LEAVE:
                    listener.replaced(peer_id)
            case "updated":
                if fresh and old is not None:
                    room.members[peer_id] = dataclasses.replace(
                        old, name=event.name, zone=event.zone or None
                    )
                message = p.PeerUpdated(peer_id=peer_id, name=event.name, zone=event.zone or None)
                exclude = None
            case "moved":
                if fresh and old is not None:
                    room.members[peer_id] = dataclasses.replace(old, owner=event.o, away_until=None)
                if not local:
                    listener.replaced(peer_id)
            case "away":
                if fresh and old is not None:
                    room.members[peer_id] = dataclasses.replace(old, away_until=float(event.away))
        if fresh:
            room.floor = max(room.floor, event.s)
        if message is not None:
            listener.room_event(event.r, event.s, p.encode(message), exclude)
        if event.k in ("left", "moved"):
            self._forget_if_idle(event.r)

    def _apply_all(self, events: Iterable[str]) -> None:
        for data in events:
            self._apply(_decode_event(data), local=True)

    def _forget_if_idle(self, room_id: str) -> None:
        """Stop following a room once this instance holds nobody in it."""
        room = self._rooms.get(room_id)
        if room is None or room.joining:
            return
        if any(m.owner == self.instance_id for m in room.members.values()):
            return
        self._set_members(room_id, room, {})
        del self._rooms[room_id]
        if self._directing.pop(room_id, None) is not None:
            # Hand the room on at once rather than when the lease runs out.
            self._spawn(self._undirect(room_id))
        if self._pubsub is not None:
            self._spawn(self._unsubscribe(room_id))

    async def _unsubscribe(self, room_id: str) -> None:
        pubsub = self._pubsub
        if pubsub is not None and room_id not in self._rooms:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe(self._channel(room_id))

    async def _follow(self, room_id: str) -> _Room:
        """The mirror of ``room_id``, subscribed to its channel before anything is changed."""
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room()
        room.joining += 1
        try:
            if not room.subscribed.is_set():
                pubsub = self._pubsub
                if pubsub is None:
                    raise Unavailable(self._problem or "not subscribed to Redis")
                try:
                    await pubsub.subscribe(self._channel(room_id))
                    async with asyncio.timeout(self.options.timeout):
                        await room.subscribed.wait()
                except (RedisError, OSError, TimeoutError) as exc:
                    raise Unavailable(f"cannot subscribe to room {room_id}: {exc}") from exc
        except BaseException:
            room.joining -= 1
            self._forget_if_idle(room_id)
            raise
        return room

    def _seated(self, room: _Room, member_id: str, result: Sequence[Any]) -> Seated:
        """Take a script's {events, seq, snapshot} into the mirror."""
        self._apply_all(result[1])
        seq, members = int(result[2]), _snapshot(result[3])
        member = members[member_id]
        if seq >= room.floor:
            self._set_members(member.room_id, room, members)
            room.floor = seq
        # Otherwise events after the snapshot are already in the mirror.
        return Seated(member, [m for m in members.values() if m.peer_id != member_id], seq)

    # --- lookups ---------------------------------------------------------------

    def known(self, peer_id: str) -> Member | None:
        room = self._rooms.get(self._where.get(peer_id, ""))
        return None if room is None else room.members.get(peer_id)

    def _set_members(self, room_id: str, room: _Room, members: dict[str, Member]) -> None:
        """Replace the mirror of a room's members, and the index of where they are."""
        where = self._where
        for peer_id in room.members:
            if where.get(peer_id) == room_id:
                del where[peer_id]
        for peer_id in members:
            where[peer_id] = room_id
        room.members = members

    def known_members(self, room_id: str | None = None) -> list[Member]:
        if room_id is not None:
            room = self._rooms.get(room_id)
            return [] if room is None else list(room.members.values())
        return [m for room in self._rooms.values() for m in room.members.values()]

    async def find(self, peer_id: str) -> Member | None:
        fields = await self._call(self._redis.hgetall(f"{self.options.prefix}:m:{peer_id}"))
        return _member(peer_id, [str(x) for kv in fields.items() for x in kv])

    async def members(self, room_id: str | None = None) -> list[Member]:
        rooms = [room_id] if room_id is not None else sorted(await self._room_ids())
        found: list[Member] = []
        for room in rooms:
            result = await self._run("snapshot", room)
            found.extend(_snapshot(result[1]).values())
        return found

    async def _room_ids(self) -> set[str]:
        ids = await self._call(self._redis.smembers(f"{self.options.prefix}:rooms"))
        return {str(i) for i in ids}

    async def room_list(self, capacity: int) -> list[p.RoomInfo]:
        ids = sorted(await self._room_ids())
        pipe = self._redis.pipeline(transaction=False)
        for room_id in ids:
            pipe.hgetall(f"{self.options.prefix}:r:{room_id}")
        listed = []
        for room_id, fields in zip(ids, await self._call(pipe.execute()), strict=True):
            count = int(fields.get("n", 0))
            if count <= 0:
                continue
            zones = {k[2:]: int(v) for k, v in fields.items() if k.startswith("z:") and int(v) > 0}
            listed.append(p.RoomInfo(room_id=room_id, count=count, capacity=capacity, zones=zones))
        return listed

    # --- changes ---------------------------------------------------------------

    async def seat(self, member: Member, capacity: int, resumed: bool) -> Seated:
        room = await self._follow(member.room_id)
        try:
            result = await self._run(
                "seat",
                member.peer_id,
                member.room_id,
                member.name,
                member.joined_at,
                self.instance_id,
                capacity,
                "1" if resumed else "0",
            )
            if result[0] == 0:
                raise RoomFull(member.room_id)
            return self._seated(room, member.peer_id, result)
        finally:
            room.joining -= 1
            self._forget_if_idle(member.room_id)

    async def reattach(self, peer_id: str, name: str) -> Seated | None:
        member = await self.find(peer_id)
        if member is None:
            return None
        room = await self._follow(member.room_id)
        try:
            result = await self._run("reattach", peer_id, member.room_id, name, self.instance_id)
            if result[0] == 0:
                return None
            return self._seated(room, peer_id, result)
        finally:
            room.joining -= 1
            self._forget_if_idle(member.room_id)

    async def hold(self, peer_id: str, until: float) -> None:
        self._apply_all(await self._run("hold", peer_id, until, self.instance_id))

    async def _remove(
        self, peer_id: str, reason: p.LeaveReason, condition: str, owner: str
    ) -> Member | None:
        events, fields = await self._run(
            "remove", peer_id, reason.value, self.instance_id, condition, owner
        )
        self._apply_all(events)
        return _member(peer_id, fields) if events else None

    async def remove(self, peer_id: str, reason: p.LeaveReason) -> Member | None:
        return await self._remove(peer_id, reason, "mine", self.instance_id)

    async def expire(self, peer_id: str) -> Member | None:
        return await self._remove(peer_id, p.LeaveReason.TIMEOUT, "away", self.instance_id)

    async def update(
        self, peer_id: str, name: str | UnsetType = UNSET, zone: str | UnsetType | None = UNSET
    ) -> Member:
        events, fields = await self._run(
            "update",
            peer_id,
            self.instance_id,
            "0" if isinstance(name, UnsetType) else "1",
            "" if isinstance(name, UnsetType) else name,
            "0" if isinstance(zone, UnsetType) else "1",
            zone if isinstance(zone, str) else "",
        )
        self._apply_all(events)
        member = _member(peer_id, fields)
        if member is None:
            raise p.ProtocolError(p.ErrorCode.NOT_IN_ROOM, "not in a room")
        return member

    async def send(self, sender: Member, to: str, data: bytes) -> None:
        room = self._rooms.get(sender.room_id)
        target = None if room is None else room.members.get(to)
        if target is None or to == sender.peer_id:
            raise unknown_peer_error(to, sender.room_id)
        if target.away:
            raise away_peer(to)
        if target.owner == self.instance_id:
            listener = self._listener
            if listener is None or not listener.deliver(to, data):
                raise away_peer(to)
            return
        await self._publish(target.owner, to, data, sender)

    # --- leases, dead instances, and catching up ----------------------------------

    async def _keep(self) -> None:
        """Renew the lease, and take the members of dead instances out of their rooms."""
        prefix, lease_ms = self.options.prefix, int(self.options.lease * 1000)
        renewed = 0.0
        while True:
            try:
                now = time.monotonic()
                if now - renewed >= self.options.lease / 3:
                    held = await self._redis.set(self._lease, "1", px=lease_ms, xx=True)
                    if not held:
                        await self._redis.set(self._lease, "1", px=lease_ms)
                        await self._redis.sadd(f"{prefix}:instances", self.instance_id)
                        if self._connected_once:
                            # The lease lapsed: others may have taken our members out.
                            await self._resync()
                    elif self._problem is not None and self._connected_once and self._pubsub:
                        # Only this loop lost Redis for a moment; the subscriber
                        # did not, so nothing was missed, but say we are back.
                        await self._resync()
                    renewed = now
                await self._reap()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError, Unavailable) as exc:
                self._lost(exc)
            except Exception:
                logger.exception("renewing the Redis lease failed")
            await asyncio.sleep(self.options.reap_interval)

    async def _reap(self) -> None:
        """Take the members of instances whose lease ran out out of their rooms, once each."""
        prefix = self.options.prefix
        instances = await self._redis.smembers(f"{prefix}:instances")
        others = [str(i) for i in instances if i != self.instance_id]
        if not others:
            return
        pipe = self._redis.pipeline(transaction=False)
        for instance in others:
            pipe.exists(f"{prefix}:i:{instance}")
        for instance, alive in zip(others, await pipe.execute(), strict=True):
            if alive:
                continue
            for peer_id in await self._redis.smembers(f"{prefix}:ip:{instance}"):
                member = await self._remove(str(peer_id), p.LeaveReason.TIMEOUT, "dead", instance)
                if member is not None:
                    logger.info(
                        "peer %s timed out with its dead instance %s (%s)",
                        member.peer_id,
                        instance,
                        member.room_id,
                    )
            await self._scripts["forget"](args=[prefix, instance])

    async def _resync(self) -> None:
        """Make Redis hold exactly our members, and tell our members what they missed."""
        listener = self._listener
        if listener is None:
            return
        async with self._resync_lock:
            held = [m for m in (self.known(peer_id) for peer_id in listener.holding()) if m]
            args: list[object] = [self.options.prefix, self.instance_id]
            for m in held:
                args += [m.peer_id, m.room_id, m.name, m.joined_at, m.zone or ""]
            # What the claim changes, the catching up below tells our members.
            await self._scripts["claim"](args=[str(a) for a in args])
            await self._redis.set(self._lease, "1", px=int(self.options.lease * 1000))
            await self._redis.sadd(f"{self.options.prefix}:instances", self.instance_id)
            self._problem = None
            await self._catch_up_all(final=False)
            if self._outage_told:
                logger.warning("Redis is back; %d rooms resynchronised", len(self._rooms))
            if self._connected_once:
                self._spawn(self._settle())
            self._connected_once, self._outage_told = True, False
            self._ready.set()

    async def _catch_up_all(self, final: bool) -> None:
        for room_id in list(self._rooms):
            result = await self._scripts["snapshot"](args=[self.options.prefix, room_id])
            self._catch_up(room_id, int(result[0]), _snapshot(result[1]), final)

    async def _settle(self) -> None:
        """Soon after a resynchronisation, tell our members who did not come back.

        Half a lease: the other instances reconnect within a second, and the
        lease runs out for those that do not.
        """
        await asyncio.sleep(self.options.lease / 2)
        try:
            async with self._resync_lock:
                await self._catch_up_all(final=True)
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, cancelled by :meth:`close`."""
        task = asyncio.create_task(work)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    def _catch_up(self, room_id: str, seq: int, truth: dict[str, Member], final: bool) -> None:
        """Tell the members here how ``room_id`` changed while events were lost.

        Until ``final``, members of other instances that Redis lacks are kept:
        if Redis lost everything, their instances are putting them back.
        """
        room, listener = self._rooms.get(room_id), self._listener
        if room is None or listener is None:
            return
        told = room.members
        kept = {
            peer_id: m
            for peer_id, m in told.items()
            if not final and peer_id not in truth and m.owner != self.instance_id
        }
        self._set_members(room_id, room, {**truth, **kept})
        room.floor = seq
        for peer_id, member in truth.items():
            before = told.get(peer_id)
            if before is None:
                joined = p.PeerJoined(
                    peer_id=peer_id, name=member.name, joined_at=member.joined_at, resumed=True
                )
                listener.room_event(room_id, None, p.encode(joined), peer_id)
            elif (before.name, before.zone) != (member.name, member.zone):
                updated = p.PeerUpdated(peer_id=peer_id, name=member.name, zone=member.zone)
                listener.room_event(room_id, None, p.encode(updated), None)
        for peer_id in told.keys() - truth.keys() - kept.keys():
            left = p.PeerLeft(peer_id=peer_id, reason=p.LeaveReason.TIMEOUT)
            listener.room_event(room_id, None, p.encode(left), peer_id)
        listener.rebase(room_id, seq)
        self._forget_if_idle(room_id)

    # --- links and positions -----------------------------------------------------------

    async def directs(self, room_id: str) -> bool:
        """Whether this instance holds the room's lease for its links, taking it if it is free.

        The lease lasts as long as an instance's own; it is renewed at most
        once a second, so a room that people walk in costs Redis little.
        """
        now = time.monotonic()
        if self._directing.get(room_id, 0.0) > now:
            return True
        lease_ms = int(self.options.lease * 1000)
        held = bool(await self._run("direct", room_id, self.instance_id, lease_ms) == 1)
        if held:
            self._directing[room_id] = now + min(1.0, self.options.lease / 3)
        else:
            self._directing.pop(room_id, None)
        return held

    async def _undirect(self, room_id: str) -> None:
        with contextlib.suppress(Unavailable):
            await self._run("undirect", room_id, self.instance_id)

    async def links(self, room_id: str) -> dict[tuple[str, str], str]:
        # decode_responses: keys and values arrive as str.
        flat = await self._call(self._redis.hgetall(f"{self.options.prefix}:links:{room_id}"))
        pairs: dict[tuple[str, str], str] = {}
        for key, offerer in flat.items():
            a, _, b = str(key).partition(" ")
            pairs[a, b] = str(offerer)
        return pairs

    async def tell_links(
        self, room_id: str, added: list[LinkChange], removed: list[LinkChange]
    ) -> bool:
        changes = _LinkChanges(
            add=[(c.a, c.b, c.offerer) for c in added],
            remove=[(c.a, c.b, c.offerer) for c in removed],
        )
        data = msgspec.json.encode(changes).decode()
        told = bool(await self._run("links", room_id, self.instance_id, data) == 1)
        if not told:
            self._directing.pop(room_id, None)
        return told

    async def tell_positions(self, room_id: str, frame: bytes) -> None:
        head = f"P{self.instance_id}\n".encode()
        sent = asyncio.get_running_loop().create_future()
        self._outbox.append((self._channel(room_id), head + frame, sent))
        self._outbox_ready.set()
        await sent
