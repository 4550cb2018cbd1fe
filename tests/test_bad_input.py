"""Bad input over real WebSockets: each mistake gets its own error code, and nothing breaks.

Every case runs against a real server on loopback. A refusal is checked with
``sync()``: the server handles one connection's frames in order, so the answer
to a bad frame is in by the time the pong to the following ping arrives. That
proves at once which error came back, that nothing else came back, and that
the connection is still open and usable. Whatever a test does, the server must
not log an error or a traceback (the autouse fixture ``no_server_trouble``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from chatsubo import protocol as p
from chatsubo.protocol import CloseCode, ErrorCode
from chatsubo.server.identity import TokenSigner
from tests.conftest import (
    BOTH_BACKENDS,
    DEADLINE,
    TEST_SECRET,
    Client,
    ClientFactory,
    RunningServer,
    ServerFactory,
    pair,
    poll,
    relays,
)

pytestmark = BOTH_BACKENDS

#: Loggers whose errors and tracebacks mean the server mishandled something.
WATCHED_LOGGERS = ("chatsubo", "aiohttp", "asyncio")

KIB = 1024
MIB = 1024 * KIB


def server_trouble(records: list[logging.LogRecord]) -> list[str]:
    """The records that show the server failing: errors, or anything with a traceback."""
    return [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in records
        if r.name.split(".")[0] in WATCHED_LOGGERS
        and (r.levelno >= logging.ERROR or r.exc_info is not None)
    ]


@pytest.fixture(autouse=True)
def no_server_trouble(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a case whose server logged an error or a traceback, shutdown included.

    Autouse fixtures are set up first and so torn down last: by then the
    servers and clients of the case are gone and their teardown was logged too.
    """
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    trouble = server_trouble(records)
    assert not trouble, f"the server logged trouble: {trouble}"


# --- helpers -------------------------------------------------------------------


async def refused(client: Client, frame: dict[str, Any] | str, code: ErrorCode) -> dict[str, Any]:
    """Send ``frame``; the one and only answer must be an ``error`` with ``code``."""
    await client.send(frame)
    received = await client.sync()
    assert [(m["type"], m.get("code")) for m in received] == [("error", code)], received
    assert isinstance(received[0]["message"], str)
    assert received[0]["message"]
    return received[0]


async def receive_raw(client: Client, type_: str) -> str:
    """The next frame of ``type_`` exactly as it came off the wire; others go to the backlog."""
    async with asyncio.timeout(DEADLINE):
        while True:
            msg = await client.ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            parsed = json.loads(msg.data)
            if parsed["type"] == type_:
                return str(msg.data)
            client.backlog.append(parsed)


async def next_message(client: Client) -> dict[str, Any]:
    """The next message, whatever its type but a directive: the backlog first, then the wire."""
    if client.backlog:
        return client.backlog.pop(0)
    return await client.next_message(DEADLINE)


async def healthz(server: RunningServer) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/healthz") as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


# --- malformed frames ----------------------------------------------------------

#: Deep enough to exhaust any recursive decoder, yet well under the size limit.
DEEP = 5000

BAD_FRAMES = [
    pytest.param("hello", id="not-json"),
    pytest.param("", id="empty-frame"),
    pytest.param('{"type": "ping", "t": 1', id="truncated-json"),
    pytest.param('{"type": "ping", "t": 1} {}', id="trailing-garbage"),
    pytest.param('{"type": "ping", "t": NaN}', id="nan-literal"),
    pytest.param('\ufeff{"type": "ping", "t": 1}', id="byte-order-mark"),
    pytest.param("[]", id="array"),
    pytest.param('"join"', id="string"),
    pytest.param("42", id="number"),
    pytest.param("null", id="null"),
    pytest.param("[" * DEEP + "]" * DEEP, id="deeply-nested-array"),
    pytest.param({"type": "shout", "text": "hi"}, id="unknown-type"),
    pytest.param({"type": "Join", "roomId": "bar", "name": "Case"}, id="type-wrong-case"),
    pytest.param({"type": 7}, id="type-not-a-string"),
    pytest.param({"type": None}, id="type-null"),
    pytest.param({"roomId": "bar", "name": "Case"}, id="missing-type"),
    pytest.param({}, id="empty-object"),
    pytest.param({"type": "join"}, id="join-missing-fields"),
    pytest.param({"type": "join", "roomId": "bar"}, id="join-missing-name"),
    pytest.param({"type": "join", "name": "Case"}, id="join-missing-room"),
    pytest.param({"type": "join", "roomId": 5, "name": "Case"}, id="join-room-a-number"),
    pytest.param({"type": "join", "roomId": ["bar"], "name": "Case"}, id="join-room-a-list"),
    pytest.param({"type": "join", "roomId": "bar", "name": None}, id="join-name-null"),
    pytest.param({"type": "join", "roomId": "bar", "name": "C", "resume": 5}, id="join-resume-int"),
    pytest.param({"type": "join", "roomId": "bar", "name": "C", "resume": ""}, id="resume-empty"),
    pytest.param(
        {"type": "join", "roomId": "bar", "name": "C", "resume": "x" * (p.TOKEN_MAX_CHARS + 1)},
        id="resume-too-long",
    ),
    pytest.param({"type": "join", "roomId": "bar", "name": "C", "token": ""}, id="token-empty"),
    pytest.param(
        {"type": "join", "roomId": "bar", "name": "C", "token": "x" * (p.TOKEN_MAX_CHARS + 1)},
        id="token-too-long",
    ),
    pytest.param({"type": "watch_rooms", "token": 7}, id="watch-token-int"),
    pytest.param({"type": "signal", "to": "someone"}, id="signal-missing-data"),
    pytest.param({"type": "signal", "data": {"sdp": "v=0"}}, id="signal-missing-to"),
    pytest.param({"type": "signal", "to": 12, "data": None}, id="signal-to-a-number"),
    pytest.param({"type": "signal", "to": "", "data": None}, id="signal-to-empty"),
    pytest.param({"type": "signal", "to": "p" * 65, "data": None}, id="signal-to-65-chars"),
    pytest.param(
        '{"type": "signal", "to": "someone", "data": ' + "[" * DEEP + "]" * DEEP + "}",
        id="signal-data-deeply-nested",
    ),
    pytest.param(
        '{"type": "ping", "t": 1, "extra": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}",
        id="unknown-field-deeply-nested",
    ),
    pytest.param({"type": "ping"}, id="ping-missing-t"),
    pytest.param({"type": "ping", "t": "now"}, id="ping-t-a-string"),
    pytest.param({"type": "ping", "t": None}, id="ping-t-null"),
    pytest.param({"type": "ping", "t": True}, id="ping-t-a-bool"),
    pytest.param('{"type": "ping", "t": 1e400}', id="ping-t-out-of-range"),
    pytest.param({"type": "update", "name": 5}, id="update-name-a-number"),
    pytest.param({"type": "update", "name": None}, id="update-name-null"),
    pytest.param({"type": "update", "zone": ""}, id="update-zone-empty"),
    pytest.param({"type": "update", "zone": "z" * 33}, id="update-zone-33-chars"),
    pytest.param({"type": "update", "zone": "bar\nstage"}, id="update-zone-newline"),
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_malformed_frame_is_bad_message(
    server: RunningServer, connect: ClientFactory, frame: dict[str, Any] | str
) -> None:
    client = await connect(server)
    await refused(client, frame, ErrorCode.BAD_MESSAGE)
    listed = await client.join("bar", "Case")
    assert listed["peerId"] == client.peer_id


@pytest.mark.parametrize("frame", BAD_FRAMES[:12])
async def test_malformed_frame_in_a_room_is_bad_message(
    server: RunningServer, connect: ClientFactory, frame: dict[str, Any] | str
) -> None:
    """Garbage from a member reaches nobody, and the member keeps its place."""
    a, b = await pair(connect, server, "bar")
    await refused(a, frame, ErrorCode.BAD_MESSAGE)
    assert await b.sync() == []
    await relays(a, b, {"candidate": "after the garbage"})


async def test_unknown_fields_are_ignored(server: RunningServer, connect: ClientFactory) -> None:
    client = await connect(server)
    await client.send({"type": "ping", "t": 5, "future": {"feature": [1, 2]}})
    assert await client.expect("pong") == {"type": "pong", "t": 5}


async def test_binary_frame_is_bad_message(server: RunningServer, connect: ClientFactory) -> None:
    a, b = await pair(connect, server, "bar")
    for payload in (b"", b"\x00\xff", json.dumps({"type": "ping", "t": 1}).encode()):
        await a.ws.send_bytes(payload)
        received = await a.sync()
        assert [(m["type"], m["code"]) for m in received] == [("error", ErrorCode.BAD_MESSAGE)]
    assert await b.sync() == []
    await relays(a, b, "still here")


# --- size limits ---------------------------------------------------------------


def padded_ping(size: int, t: int) -> str:
    """A valid ping of exactly ``size`` bytes of UTF-8 (JSON allows trailing whitespace)."""
    frame = json.dumps({"type": "ping", "t": t})
    return frame + " " * (size - len(frame.encode()))


async def test_frame_over_soft_limit_is_too_large_and_connection_stays(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server, "bar")
    limit = server.config.max_message_bytes
    assert limit == 64 * KIB

    # Exactly at the limit is fine; one byte over is not.
    await a.send(padded_ping(limit, 1))
    assert await a.expect("pong") == {"type": "pong", "t": 1}
    await refused(a, padded_ping(limit + 1, 2), ErrorCode.TOO_LARGE)

    # Counted in bytes, not characters: 20 000 four-byte characters are 80 000 bytes.
    big = {"type": "signal", "to": b.peer_id, "data": "\U0001f378" * 20_000}
    assert len(json.dumps(big, ensure_ascii=False)) < limit
    await refused(a, json.dumps(big, ensure_ascii=False), ErrorCode.TOO_LARGE)
    await refused(a, {"type": "signal", "to": b.peer_id, "data": "x" * limit}, ErrorCode.TOO_LARGE)
    assert await b.sync() == []

    await relays(a, b, "x" * (limit - 200))


async def test_frame_over_hard_limit_closes_with_1009(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server, "bar")
    await a.ws.send_str(padded_ping(server.config.hard_message_bytes + 1, 1))
    assert await a.closed() == CloseCode.MESSAGE_TOO_BIG
    assert [m["type"] for m in a.backlog] == []
    # The server is fine, and b is unaffected (the dropped peer keeps its place a while).
    assert await b.sync() == []
    c = await connect(server)
    await c.join("bar", "Carol")
    await b.expect("peer_joined")
    await relays(b, c, "after the big one")


# --- room and display names ----------------------------------------------------

ROOM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


@pytest.mark.parametrize(
    "room",
    [
        pytest.param("", id="empty"),
        pytest.param("r" * 65, id="65-chars"),
        pytest.param("the bar", id="space"),
        pytest.param("bar/../admin", id="slash"),
        pytest.param("caf\u00e9", id="latin-1"),
        pytest.param("\u30d0\u30fc", id="katakana"),
        pytest.param("bar\U0001f378", id="emoji"),
        pytest.param("\uff42\uff41\uff52", id="fullwidth-letters"),
        pytest.param("bar\n", id="trailing-newline"),
        pytest.param("\nbar", id="leading-newline"),
        pytest.param("bar\x00", id="nul"),
        pytest.param("<bar>", id="angle-brackets"),
    ],
)
async def test_bad_room_name(server: RunningServer, connect: ClientFactory, room: str) -> None:
    client = await connect(server)
    await refused(client, {"type": "join", "roomId": room, "name": "Case"}, ErrorCode.BAD_MESSAGE)
    assert (await healthz(server))["rooms"] == 0
    await client.join("bar", "Case")


async def test_longest_room_name_is_accepted(server: RunningServer, connect: ClientFactory) -> None:
    room = (ROOM_CHARS * 2)[:64]
    assert len(room) == 64
    a = await connect(server)
    listed = await a.join(room, "Case")
    assert listed["roomId"] == room
    b = await connect(server)
    assert (await b.join(room, "Molly"))["peers"][0]["peerId"] == a.peer_id


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("n" * 33, id="33-chars"),
        pytest.param("\u00e9" * 33, id="33-non-ascii-chars"),
        pytest.param(" ", id="space"),
        pytest.param("   \t  ", id="whitespace"),
        pytest.param("\u3000\u00a0", id="unicode-whitespace"),
        pytest.param("Case\n", id="newline"),
        pytest.param("Ca\x00se", id="nul"),
        pytest.param("\x1b[31mCase", id="escape"),
        pytest.param("Case\x7f", id="delete"),
        pytest.param("\u202eesaC", id="bidi-override"),
        pytest.param("Ca\u200bse", id="zero-width-space"),
    ],
)
async def test_bad_display_name(server: RunningServer, connect: ClientFactory, name: str) -> None:
    a, b = await pair(connect, server, "bar")
    c = await connect(server)
    await refused(c, {"type": "join", "roomId": "bar", "name": name}, ErrorCode.BAD_MESSAGE)
    await refused(a, {"type": "update", "name": name}, ErrorCode.BAD_MESSAGE)
    # Neither the refused join nor the refused rename reached the room.
    assert await b.sync() == []
    listed = await c.join("bar", "Carol")
    assert sorted(p["name"] for p in listed["peers"]) == ["Alice", "Bob"]


async def test_longest_display_name_with_non_ascii_is_accepted(
    server: RunningServer, connect: ClientFactory
) -> None:
    name = "Zo\u00eb \u00c5ngstr\u00f6m \u6771\u4eac \U0001f378 \u0416\u043e\u043f\u0430 xyz!?"
    name = (name + "." * 32)[:32]
    assert len(name) == 32
    assert name.isprintable()
    a = await connect(server)
    await a.join("bar", name)
    b = await connect(server)
    listed = await b.join("bar", "Bob")
    assert [p["name"] for p in listed["peers"]] == [name]
    await a.expect("peer_joined")
    await b.send({"type": "update", "name": name})
    assert (await a.expect("peer_updated"))["name"] == name


async def test_html_looking_names_are_plain_text_byte_for_byte(
    server: RunningServer, connect: ClientFactory
) -> None:
    html = "<b>x</b>"
    script = "<img src=x onerror=alert(1)>"
    entity = "&lt;i&gt;\"quoted\" & 'sq'"
    a = await connect(server)
    await a.join("bar", html)
    b = await connect(server)
    await b.send({"type": "join", "roomId": "bar", "name": script})

    listed = await receive_raw(b, "peer_list")
    assert f'"name":"{html}"' in listed
    assert json.loads(listed)["peers"][0]["name"] == html

    joined = await receive_raw(a, "peer_joined")
    assert f'"name":"{script}"' in joined
    assert json.loads(joined)["name"] == script

    await a.send({"type": "update", "name": entity})
    updated = await receive_raw(b, "peer_updated")
    assert json.loads(updated)["name"] == entity
    assert '"name":"&lt;i&gt;\\"quoted\\" & \'sq\'"' in updated


# --- who may be signalled, and when -------------------------------------------


async def test_signal_only_reaches_peers_in_the_same_room(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server, "bar")
    other = await connect(server)
    await other.join("lounge", "Eve")
    loner = await connect(server)  # connected, but in no room
    offer = {"type": "offer", "sdp": "v=0"}

    for target in (other.peer_id, loner.peer_id, "no-such-peer", "x" * 64, a.peer_id):
        await refused(a, {"type": "signal", "to": target, "data": offer}, ErrorCode.UNKNOWN_PEER)
    # From the other room, too.
    await refused(other, {"type": "signal", "to": a.peer_id, "data": offer}, ErrorCode.UNKNOWN_PEER)

    assert await other.sync() == []
    assert await loner.sync() == []
    assert await b.sync() == []
    await relays(a, b, offer)


async def test_signal_to_a_peer_that_left_is_unknown(
    server: RunningServer, connect: ClientFactory
) -> None:
    a, b = await pair(connect, server, "bar")
    await b.send({"type": "leave"})
    await a.expect("peer_left")
    await refused(a, {"type": "signal", "to": b.peer_id, "data": None}, ErrorCode.UNKNOWN_PEER)
    assert await b.sync() == []


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param({"type": "signal", "to": "someone", "data": {"sdp": "v=0"}}, id="signal"),
        pytest.param({"type": "update", "name": "Case"}, id="update-name"),
        pytest.param({"type": "update", "zone": "Central Bar"}, id="update-zone"),
        pytest.param({"type": "update"}, id="update-nothing"),
        pytest.param({"type": "leave"}, id="leave"),
    ],
)
async def test_before_join_is_not_in_room(
    server: RunningServer, connect: ClientFactory, frame: dict[str, Any]
) -> None:
    a, b = await pair(connect, server, "bar")
    loner = await connect(server)
    frame = {**frame, "to": a.peer_id} if frame["type"] == "signal" else frame
    await refused(loner, frame, ErrorCode.NOT_IN_ROOM)
    assert await a.sync() == []
    assert await b.sync() == []


async def test_leave_twice_is_not_in_room(server: RunningServer, connect: ClientFactory) -> None:
    a, b = await pair(connect, server, "bar")
    await a.send({"type": "leave"})
    assert (await b.expect("peer_left"))["reason"] == "leave"
    await refused(a, {"type": "leave"}, ErrorCode.NOT_IN_ROOM)
    await refused(a, {"type": "signal", "to": b.peer_id, "data": 1}, ErrorCode.NOT_IN_ROOM)
    assert await b.sync() == []
    await a.join("bar", "Alice again")
    await b.expect("peer_joined")


async def test_join_twice_is_already_joined(server: RunningServer, connect: ClientFactory) -> None:
    a, b = await pair(connect, server, "bar")
    for room in ("bar", "lounge"):
        await refused(
            a, {"type": "join", "roomId": room, "name": "Alice"}, ErrorCode.ALREADY_JOINED
        )
    assert await b.sync() == []
    assert (await healthz(server))["rooms"] == 1
    await relays(a, b, "still in bar")


TokenForger = Callable[[str, str], str]

FORGED_TOKENS: list[Any] = [
    pytest.param(lambda peer, token: "garbage", id="garbage"),
    pytest.param(lambda peer, token: "a.b.c", id="three-parts"),
    pytest.param(lambda peer, token: f"{peer}..", id="empty-parts"),
    pytest.param(lambda peer, token: token + ".x", id="four-parts"),
    pytest.param(lambda peer, token: token[:-2], id="truncated"),
    pytest.param(lambda peer, token: f"{peer}.{int(time.time())}.{'A' * 22}", id="made-up-sig"),
    pytest.param(lambda peer, token: "someone-else" + token[token.index(".") :], id="other-id"),
    pytest.param(
        lambda peer, token: TokenSigner(b"some other secret").issue(peer), id="other-secret"
    ),
    pytest.param(
        lambda peer, token: TokenSigner(TEST_SECRET).issue(peer, now=time.time() - 8 * 86400),
        id="expired",
    ),
    pytest.param(lambda peer, token: f"{peer}.\u0661\u0662\u0663.AAAA", id="arabic-digits"),
    pytest.param(lambda peer, token: f"{peer}.\u00b2.AAAA", id="superscript-digit"),
    pytest.param(lambda peer, token: token[:-1] + "\u00e9", id="non-ascii-signature"),
]


@pytest.mark.parametrize("forge", FORGED_TOKENS)
async def test_forged_resume_token_is_bad_resume(
    server: RunningServer, connect: ClientFactory, forge: TokenForger
) -> None:
    victim, witness = await pair(connect, server, "bar")
    attacker = await connect(server)
    token = forge(victim.peer_id, str(victim.welcome["resumeToken"]))
    join = {"type": "join", "roomId": "bar", "name": "Mallory", "resume": token}
    await refused(attacker, join, ErrorCode.BAD_RESUME)
    # The victim keeps its place and its connection; the room heard nothing.
    assert await victim.sync() == []
    assert await witness.sync() == []
    await relays(witness, victim, "still you")
    # The attacker may still join as itself.
    listed = await attacker.join("bar", "Mallory")
    assert listed["peerId"] == attacker.peer_id


# --- rate limits ---------------------------------------------------------------


async def test_honest_burst_is_delivered_in_order(
    server: RunningServer, connect: ClientFactory
) -> None:
    """300 signals back to back, as a browser joining a room of ten trickles them."""
    a, b = await pair(connect, server, "bar")
    count = 300
    for seq in range(count):
        candidate = {"candidate": f"candidate:{seq} 1 udp 2122260223 10.0.0.{seq % 250} 5{seq:04}"}
        await a.send({"type": "signal", "to": b.peer_id, "data": {"seq": seq, **candidate}})
    received = [await b.expect("signal") for _ in range(count)]
    assert [m["data"]["seq"] for m in received] == list(range(count))
    assert {m["from"] for m in received} == {a.peer_id}
    assert await a.sync() == []
    assert await b.sync() == []


async def test_flood_is_refused_then_closed_while_others_keep_working(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    # One message a second in bursts of 20, and 30 refused frames (refilling at
    # 3 a second) before a flooder is cut off. Honest clients here send < 20.
    rate, burst = 1.0, 20
    server = await make_server(messages_per_second=rate, message_burst=burst, flood_tolerance=30)
    a, b = await pair(connect, server, "bar")
    flooder = await connect(server)
    await flooder.join("bar", "Flood")
    await a.expect("peer_joined")
    await b.expect("peer_joined")
    started = time.monotonic()

    # 1. Over the burst (the join took one token): every ping gets exactly one
    # answer, a pong or a rate_limited, in order.
    allowed, sent = burst - 1, 30
    for t in range(sent):
        await flooder.send({"type": "ping", "t": t})
    replies = [await next_message(flooder) for _ in range(sent)]
    refills = 1 + int((time.monotonic() - started) * rate)
    assert replies[:allowed] == [{"type": "pong", "t": t} for t in range(allowed)]
    assert {(m["type"], m.get("code")) for m in replies[allowed:]} <= {
        ("error", ErrorCode.RATE_LIMITED),
        ("pong", None),
    }
    errors = [m for m in replies if m["type"] == "error"]
    assert len(errors) >= sent - allowed - refills
    assert await b.sync() == []

    # Meanwhile the honest ones are unaffected.
    await relays(a, b, {"candidate": "during"})

    # 2. A sustained flood of signals at a: refused, then the flooder is closed.
    async def flood() -> None:
        for seq in range(300):
            try:
                await flooder.send({"type": "signal", "to": a.peer_id, "data": {"seq": seq}})
            except ConnectionError:
                return

    flooding = asyncio.create_task(flood())
    await relays(b, a, {"candidate": "while flooded"})
    await flooding
    assert await flooder.closed() == CloseCode.POLICY_VIOLATION
    codes = {(m["type"], m.get("code")) for m in flooder.backlog}
    assert codes == {("error", ErrorCode.RATE_LIMITED)}

    # The room hears that the flooder was kicked; the little it got through came in order.
    for honest in (a, b):
        left = await honest.expect("peer_left")
        assert left == {"type": "peer_left", "peerId": flooder.peer_id, "reason": "kicked"}
    leaked = [m["data"]["seq"] for m in a.backlog if m["type"] == "signal"]
    assert {m["type"] for m in a.backlog} <= {"signal"}
    assert leaked == sorted(leaked)
    assert len(leaked) <= 1 + int((time.monotonic() - started) * rate)
    a.backlog.clear()
    await relays(a, b, {"candidate": "after"})
    await relays(b, a, {"candidate": "after"})


async def test_websocket_ping_flood_is_closed(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    """Protocol-level pings count against the limit too: each one costs the server a pong."""
    server = await make_server(messages_per_second=5.0, message_burst=10, flood_tolerance=10)
    a, b = await pair(connect, server, "bar")
    flooder = await connect(server)
    await flooder.join("bar", "Pinger")
    await a.expect("peer_joined")
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(DEADLINE):
            while True:
                await flooder.ws.ping(b"x")
                await asyncio.sleep(0)
    # The flooder, still writing pings, may see only the dropped TCP connection;
    # the room's "kicked" is what proves the server closed it for the flood.
    left = await a.expect("peer_left")
    assert left == {"type": "peer_left", "peerId": flooder.peer_id, "reason": "kicked"}
    await relays(a, b, {"candidate": "after"})


# --- capacity ------------------------------------------------------------------


async def test_full_room(make_server: ServerFactory, connect: ClientFactory) -> None:
    server = await make_server(max_room_size=2)
    a, b = await pair(connect, server, "bar")
    c = await connect(server)
    await refused(c, {"type": "join", "roomId": "bar", "name": "Carol"}, ErrorCode.ROOM_FULL)
    assert await a.sync() == []
    assert await b.sync() == []
    # Another room is fine on the same connection.
    listed = await c.join("lounge", "Carol")
    assert (listed["roomId"], listed["peers"]) == ("lounge", [])
    # And once there is room again, so is the first one.
    await b.send({"type": "leave"})
    await a.expect("peer_left")
    await c.send({"type": "leave"})
    assert await c.sync() == []
    listed = await c.join("bar", "Carol")
    assert [p["peerId"] for p in listed["peers"]] == [a.peer_id]


async def test_resumed_join_into_full_room_changes_nothing(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    """An error means nothing else changed (docs/protocol.md), resume or not."""
    server = await make_server(max_room_size=2)
    a, b = await pair(connect, server, "bar")
    await pair(connect, server, "lounge")  # full
    token = b.welcome["resumeToken"]
    again = await connect(server)
    join = {"type": "join", "roomId": "lounge", "name": "Bob", "resume": token}
    await refused(again, join, ErrorCode.ROOM_FULL)
    # b is still in bar, on its own connection.
    assert await a.sync() == []
    assert await b.sync() == []
    await relays(a, b, "still here")


async def test_connection_cap(make_server: ServerFactory, connect: ClientFactory) -> None:
    server = await make_server(max_connections=2)
    a = await connect(server)
    b = await connect(server)
    c = await connect(server)
    error = await c.error()
    assert error["code"] == ErrorCode.SERVER_FULL
    assert await c.closed() == CloseCode.TRY_AGAIN_LATER
    assert "welcome" not in {m["type"] for m in c.backlog}
    assert c.welcome["type"] == "error"
    # The ones already in keep working; a place that frees up can be taken.
    assert await a.sync() == []
    assert await b.sync() == []
    await a.close()
    await poll(lambda: server.hub.connections() == 1)
    d = await connect(server)
    assert d.welcome["type"] == "welcome"
    await d.join("bar", "Dixie")


# --- origins -------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param("https://evil.example", id="other-site"),
        pytest.param("http://localhost:{port}", id="other-host-name"),
        pytest.param("http://127.0.0.1:{other_port}", id="other-port"),
        pytest.param("http://127.0.0.1", id="default-port"),
        pytest.param("http://127.0.0.1:{port}.evil.example", id="port-prefix"),
        pytest.param("http://127.0.0.1:{port}@evil.example", id="userinfo"),
        pytest.param("null", id="null"),
        pytest.param("http://[::1", id="garbled"),
        pytest.param("not an origin", id="not-a-url"),
    ],
)
async def test_foreign_origin_is_refused(
    server: RunningServer, connect: ClientFactory, origin: str
) -> None:
    origin = origin.format(port=server.port, other_port=server.port + 1)
    client = await connect(server, origin=origin)
    error = await client.error()
    assert error["code"] == ErrorCode.BAD_ORIGIN
    assert await client.closed() == CloseCode.POLICY_VIOLATION
    assert client.welcome["type"] == "error"
    assert (await healthz(server))["connections"] == 0


async def test_same_origin_and_no_origin_are_accepted(
    server: RunningServer, connect: ClientFactory
) -> None:
    same = await connect(server, origin=server.url)
    bot = await connect(server)
    assert same.welcome["type"] == bot.welcome["type"] == "welcome"
    await same.join("bar", "Browser")
    await bot.join("bar", "Bot")
    await same.expect("peer_joined")
    await relays(same, bot, "hi")


async def test_allowed_origin_is_accepted(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await make_server(allowed_origins=["https://bar.example"])
    allowed = await connect(server, origin="https://bar.example")
    assert allowed.welcome["type"] == "welcome"
    same = await connect(server, origin=server.url)
    assert same.welcome["type"] == "welcome"
    other = await connect(server, origin="https://evil.example")
    assert (await other.error())["code"] == ErrorCode.BAD_ORIGIN
    assert await other.closed() == CloseCode.POLICY_VIOLATION
    await allowed.join("bar", "Case")
    await same.join("bar", "Molly")
    await allowed.expect("peer_joined")
    await relays(allowed, same, "hi")


# --- a client that does not read ------------------------------------------------


#: Far more than all the buffers between the server and a stalled reader can hold.
SLOW_READER_BYTES = 48 * MIB


@pytest.mark.parametrize(
    ("max_send_buffer", "signal_bytes"),
    [
        pytest.param(64 * KIB, 60_000, id="backlog-limit-above-frame-size"),
        pytest.param(KIB, 300_000, id="frame-larger-than-backlog-limit"),
    ],
)
async def test_slow_reader_is_cut_off_without_stalling_the_sender(
    make_server: ServerFactory,
    connect: ClientFactory,
    connect_slow_reader: Callable[[RunningServer], Awaitable[Client]],
    caplog: pytest.LogCaptureFixture,
    max_send_buffer: int,
    signal_bytes: int,
) -> None:
    """Large signals to a client that never reads: the sender's pings keep being answered.

    Every signal is followed by a ping that must be answered, which is the
    proof that the sender never waits on the slow reader's network. The limit
    on messages is lifted so that the pings are never what gets refused.
    """
    caplog.set_level(logging.INFO, logger="chatsubo")
    server = await make_server(
        max_send_buffer=max_send_buffer,
        max_message_bytes=max(64 * KIB, signal_bytes + KIB),
        messages_per_second=100_000.0,
        message_burst=100_000.0,
        heartbeat=600.0,
    )
    sender, other = await pair(connect, server, "bar")
    slow = await connect_slow_reader(server)
    await slow.join("bar", "Slow")
    await sender.expect("peer_joined")
    await other.expect("peer_joined")

    def slow_is_connected() -> bool:
        member = server.hub.member(slow.peer_id)
        return member is not None and not member.away

    blob = "x" * signal_bytes
    sent = 0
    while slow_is_connected():
        assert sent * signal_bytes < SLOW_READER_BYTES, "the slow reader was never cut off"
        await sender.send({"type": "signal", "to": slow.peer_id, "data": blob})
        sent += 1
        try:
            answered = await sender.sync()
        except TimeoutError:
            pytest.fail(f"signal {sent} to a slow reader stalled the sender: no pong in time")
        # Once cut off the slow reader keeps its place a while, as "reconnecting".
        assert [m.get("code") for m in answered] in ([], [ErrorCode.UNKNOWN_PEER]), answered

    assert any("does not read" in r.getMessage() for r in caplog.records), "cut off, but why?"
    await refused(sender, {"type": "signal", "to": slow.peer_id, "data": 1}, ErrorCode.UNKNOWN_PEER)
    await relays(sender, other, blob)
    await relays(other, sender, "fine")


# --- after all that -------------------------------------------------------------


async def test_honest_pair_works_after_all_the_garbage(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await make_server(messages_per_second=1.0, message_burst=100, flood_tolerance=10)
    garbage = await connect(server)
    await garbage.join("bar", "Garbage")
    for param in BAD_FRAMES:
        (frame,) = param.values
        assert isinstance(frame, str | dict)
        await garbage.send(frame)
    await garbage.ws.send_bytes(b"\x00" * 100)
    await garbage.send(padded_ping(100 * KIB, 1))
    for target in ("nobody", garbage.peer_id):
        await garbage.send({"type": "signal", "to": target, "data": None})
    await garbage.send({"type": "join", "roomId": "bar", "name": "Again"})
    await garbage.send({"type": "join", "roomId": "x", "name": "G", "resume": "a.1.b"})
    await garbage.sync()

    huge = await connect(server)
    await huge.ws.send_str(padded_ping(2 * MIB, 1))
    assert await huge.closed() == CloseCode.MESSAGE_TOO_BIG

    foreign = await connect(server, origin="https://evil.example")
    assert await foreign.closed() == CloseCode.POLICY_VIOLATION

    for seq in range(1000):
        try:
            await garbage.send({"type": "ping", "t": seq})
        except ConnectionError:
            break
    assert await garbage.closed() == CloseCode.POLICY_VIOLATION

    assert (await healthz(server))["status"] == "ok"
    a, b = await pair(connect, server, "bar")
    await relays(a, b, {"type": "offer", "sdp": "v=0\r\n"})
    await relays(b, a, {"type": "answer", "sdp": "v=0\r\n"})
    await relays(a, b, None)
