"""Property-based tests: the decoder and a live server against random and malformed frames."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chatsubo import protocol as p
from chatsubo.server.config import ServerConfig
from tests.conftest import DEADLINE, TEST_SECRET, Client, RunningServer, start_server
from tests.test_bad_input import server_trouble

T = TypeVar("T")

#: The ``type`` of every client message, and every field any of them has.
CLIENT_TAGS = ["join", "leave", "signal", "update", "watch_rooms", "unwatch_rooms", "ping"]
CLIENT_FIELDS = ["roomId", "name", "resume", "to", "data", "zone", "t"]
ROOM_A = "a"

#: Deep enough to exhaust a recursive decoder, yet far below the 64 KiB frame limit.
DEEP_NESTING = 3000
#: Nesting depths to try. A few fixed ones rather than a range: near the
#: interpreter's recursion limit the outcome would depend on the stack depth of
#: the caller, and a shrinker walking down to it would make the failure flaky.
depths = st.sampled_from([0, 1, 2, 64, DEEP_NESTING])


# --- strategies ----------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
#: JSON text, including what ``json.dumps`` never writes: nesting thousands deep.
json_texts = json_values.map(json.dumps) | depths.map(lambda depth: "[" * depth + "]" * depth)

#: Text that would render as itself: no control, format or separator characters but space.
printable = st.characters(exclude_categories=("C", "Z")) | st.just(" ")


def display_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(printable, min_size=1, max_size=max_size).filter(lambda s: bool(s.strip()))


room_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
names = display_text(p.NAME_MAX_CHARS)
zones = display_text(p.ZONE_MAX_CHARS)
peer_ids = st.text(min_size=1, max_size=p.PEER_ID_MAX_CHARS)
raw_json = json_values.map(lambda v: msgspec.Raw(msgspec.json.encode(v)))

valid_messages: st.SearchStrategy[p.ClientMessage] = st.one_of(
    st.builds(
        p.Join,
        room_id=room_ids,
        name=names,
        resume=st.none() | st.text(min_size=1, max_size=p.TOKEN_MAX_CHARS),
        token=st.none() | st.text(min_size=1, max_size=p.TOKEN_MAX_CHARS),
    ),
    st.builds(p.Leave),
    st.builds(p.Signal, to=peer_ids, data=raw_json),
    st.builds(
        p.Update,
        name=st.just(msgspec.UNSET) | names,
        zone=st.just(msgspec.UNSET) | st.none() | zones,
    ),
    st.builds(p.WatchRooms, token=st.none() | st.text(min_size=1, max_size=p.TOKEN_MAX_CHARS)),
    st.builds(p.UnwatchRooms),
    st.builds(p.Ping, t=st.floats(allow_nan=False, allow_infinity=False)),
)

#: Objects with a real ``type`` and any subset of the real fields, valued at random.
typed_dicts = st.builds(
    lambda tag, fields, extra: {**extra, "type": tag, **fields},
    st.sampled_from(CLIENT_TAGS),
    st.dictionaries(st.sampled_from(CLIENT_FIELDS), json_values, max_size=4),
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)


def with_nested_field(message: dict[str, Any], field: str, depth: int) -> str:
    """``message`` as JSON, with ``field`` set to arrays nested ``depth`` deep."""
    frame = json.dumps({k: v for k, v in message.items() if k != field})
    return f'{frame[:-1]}, "{field}": {"[" * depth + "]" * depth}}}'


# --- the decoder ---------------------------------------------------------------


def decodes_or_refuses(frame: str | bytes) -> p.ClientMessage | None:
    """Decode ``frame``: a message, or None for a ``ProtocolError``. Anything else escapes."""
    try:
        return p.decode_client(frame)
    except p.ProtocolError as exc:
        refusal = exc
    assert refusal.code is p.ErrorCode.BAD_MESSAGE
    assert refusal.message
    return None


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary())
def test_decoder_on_arbitrary_text_and_bytes(frame: str | bytes) -> None:
    """Any frame a WebSocket can carry (text frames are valid UTF-8, so no lone surrogates)."""
    decodes_or_refuses(frame)


@settings(max_examples=300, deadline=None)
@given(json_texts)
@example("[" * DEEP_NESTING + "]" * DEEP_NESTING)
def test_decoder_on_arbitrary_json(frame: str) -> None:
    decodes_or_refuses(frame)


@settings(max_examples=500, deadline=None)
@given(typed_dicts, st.sampled_from(CLIENT_FIELDS), depths)
@example(
    message={"type": "signal", "to": "someone", "data": None}, field="data", depth=DEEP_NESTING
)
@example(message={"type": "ping", "t": 1}, field="extra", depth=DEEP_NESTING)
def test_decoder_on_random_fields_of_real_types(
    message: dict[str, Any], field: str, depth: int
) -> None:
    decodes_or_refuses(json.dumps(message))
    # The same again with one field, known or not, holding a deeply nested value.
    decodes_or_refuses(with_nested_field(message, field, depth))


@settings(max_examples=500, deadline=None)
@given(valid_messages)
def test_valid_messages_round_trip(message: p.ClientMessage) -> None:
    assert p.decode_client(p.encode(message)) == message


# --- the handler, against one live server --------------------------------------

#: Placeholders for peer ids, which are only known once the clients have connected.
ROLES = ["<a1>", "<a2>", "<b>", "<self>"]
targets = st.sampled_from(ROLES) | st.text(max_size=70)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

well_typed_frames = st.one_of(
    st.builds(
        lambda room, name, resume: {"type": "join", "roomId": room, "name": name, **resume},
        room_ids,
        names,
        st.just({}) | st.builds(lambda r: {"resume": r}, st.text(max_size=80)),
    ),
    st.just({"type": "leave"}),
    st.builds(lambda to, data: {"type": "signal", "to": to, "data": data}, targets, json_values),
    st.builds(
        lambda u: {"type": "update", **u}, json_objects | st.fixed_dictionaries({"name": names})
    ),
    st.sampled_from([{"type": "watch_rooms"}, {"type": "unwatch_rooms"}]),
    st.builds(lambda t: {"type": "ping", "t": t}, json_values),
)

Frame = str | bytes | dict[str, Any]

fuzz_frames: st.SearchStrategy[Frame] = st.one_of(
    st.text(max_size=200),
    json_texts,
    st.builds(
        lambda d, to: {**d, **to}, typed_dicts, st.just({}) | targets.map(lambda t: {"to": t})
    ),
    st.builds(
        with_nested_field,
        typed_dicts,
        st.sampled_from([*CLIENT_FIELDS, "extra"]),
        depths,
    ),
    well_typed_frames,
    st.binary(max_size=200),
)


def joins_room_a(frame: Frame) -> bool:
    """Whether ``frame`` is a valid join to room a, which would legitimately reach it."""
    if isinstance(frame, bytes):
        return False
    try:
        message = p.decode_client(frame if isinstance(frame, str) else json.dumps(frame))
    except Exception:  # refused, or worse: the decoder tests' business, not this filter's
        return False
    return isinstance(message, p.Join) and message.room_id == ROOM_A


class RecordingHandler(logging.Handler):
    """Keeps every record; attached to the root logger for the length of the test."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Rig:
    """A server with two clients in room a, one in room b, and a fuzzer in room b."""

    loop: asyncio.AbstractEventLoop
    server: RunningServer
    http: aiohttp.ClientSession
    a1: Client
    a2: Client
    b: Client
    fuzzer: Client
    log: RecordingHandler = field(default_factory=RecordingHandler)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 3 * DEADLINE))

    @property
    def peers(self) -> dict[str, str]:
        return {
            "<a1>": self.a1.peer_id,
            "<a2>": self.a2.peer_id,
            "<b>": self.b.peer_id,
            "<self>": self.fuzzer.peer_id,
        }

    async def send(self, frame: Frame) -> None:
        if isinstance(frame, bytes):
            await self.fuzzer.ws.send_bytes(frame)
        elif isinstance(frame, str):
            await self.fuzzer.send(frame)
        else:
            to = frame.get("to")
            if isinstance(to, str) and to in self.peers:
                frame = {**frame, "to": self.peers[to]}
            await self.fuzzer.send(frame)

    async def reset(self) -> None:
        """Back to the starting line, whatever an earlier (maybe failed) example left."""
        await self.fuzzer.send({"type": "leave"})
        await self.fuzzer.send({"type": "unwatch_rooms"})
        await self.fuzzer.join("b", "Fuzzer")
        for client in (self.fuzzer, self.a1, self.a2, self.b):
            await client.sync()
            client.backlog.clear()
        self.log.records.clear()

    async def check(self, frames: list[Frame]) -> None:
        await self.reset()
        fuzzer, b = self.fuzzer, self.b
        for frame in frames:
            await self.send(frame)
        # Every answer to the fuzzer is one the protocol has; it is still connected.
        for message in await fuzzer.sync():
            assert message["type"] in {
                "error",
                "pong",
                "peer_list",
                "peer_joined",
                "peer_left",
                "peer_updated",
                "rooms",
            }, message
            if message["type"] == "error":
                assert message["code"] in set(p.ErrorCode), message
                assert message["code"] not in {p.ErrorCode.RATE_LIMITED, p.ErrorCode.TOO_LARGE}
        # Room a hears nothing at all.
        assert await self.a1.sync() == []
        assert await self.a2.sync() == []
        # Room b hears only about the fuzzer, and only what it was told to.
        for message in await b.sync():
            about = message.get("from", message.get("peerId"))
            assert about == fuzzer.peer_id, message
        # The server is healthy and logged no trouble.
        async with self.http.get(f"{self.server.url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        assert server_trouble(self.log.records) == []


async def open_client(server: RunningServer, http: aiohttp.ClientSession) -> Client:
    ws = await http.ws_connect(server.ws_url)
    msg = await ws.receive(timeout=DEADLINE)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return Client(ws, http, json.loads(msg.data))


async def start_rig(loop: asyncio.AbstractEventLoop) -> Rig:
    server = await start_server(
        ServerConfig(
            secret=TEST_SECRET,
            # Random frames come fast; this is not a test of the rate limit.
            messages_per_second=1e6,
            message_burst=1e6,
            # The loop stands still while hypothesis thinks; no heartbeat may lapse meanwhile.
            heartbeat=3600.0,
        )
    )
    http = aiohttp.ClientSession()
    a1, a2, b, fuzzer = [await open_client(server, http) for _ in range(4)]
    rig = Rig(loop, server, http, a1=a1, a2=a2, b=b, fuzzer=fuzzer)
    await rig.a1.join(ROOM_A, "A one")
    await rig.a2.join(ROOM_A, "A two")
    await rig.b.join("b", "B")
    await rig.fuzzer.join("b", "Fuzzer")
    for client in (a1, a2, b, fuzzer):
        await client.sync()
        client.backlog.clear()
    return rig


async def stop_rig(rig: Rig) -> None:
    for client in (rig.a1, rig.a2, rig.b, rig.fuzzer):
        await client.ws.close()
    await rig.http.close()
    await rig.server.stop()


@pytest.fixture
def rig() -> Iterator[Rig]:
    """One live server for the whole test function, on an event loop of the test's own.

    Hypothesis calls a ``@given`` test once per example, synchronously, and
    shrinks a failure by calling it again. pytest-asyncio's fixtures live on a
    loop that runs only while an async test runs, and its support for async
    ``@given`` tests rests on plugin internals. A sync test that owns its loop
    needs neither: this fixture starts the server and the clients with
    ``run_until_complete`` once, each example runs its frames the same way, and
    between examples the loop just stands still (with the heartbeat turned off,
    nothing can time out meanwhile). Function scope is deliberate; hence the
    suppressed ``function_scoped_fixture`` health check.
    """
    loop = asyncio.new_event_loop()
    rig = loop.run_until_complete(start_rig(loop))
    logging.getLogger().addHandler(rig.log)
    try:
        yield rig
        rig.log.records.clear()  # each example checked its own
        loop.run_until_complete(stop_rig(rig))
    finally:
        logging.getLogger().removeHandler(rig.log)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert server_trouble(rig.log.records) == [], "trouble while shutting down"


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(fuzz_frames.filter(lambda f: not joins_room_a(f)), min_size=1, max_size=8))
@example(frames=[with_nested_field({"type": "signal", "to": "someone"}, "data", DEEP_NESTING)])
def test_fuzzed_frames_never_reach_another_room_nor_break_the_server(
    rig: Rig, frames: list[Frame]
) -> None:
    """Random frames from a member of room b; the server stays up and room a hears nothing.

    Each example first puts the fuzzer back in room b (so a failure found and
    shrunk does not depend on the examples before it) but the server is the same
    throughout, and whatever the fuzzer made of it (rooms made and emptied, say) carries over.
    """
    rig.run(rig.check(frames))
