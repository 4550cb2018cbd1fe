"""Several server instances sharing rooms through one real redis-server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from chatsubo.peer.audio import AudioOut, ToneSource
from chatsubo.peer.mesh import MeshPeer
from chatsubo.peer.signaling import SignalingOptions
from chatsubo.server.redis_backend import RedisOptions
from tests.browser import MESH_DEADLINE, Bots, Crowd
from tests.conftest import (
    DEADLINE,
    TEST_SECRET,
    Client,
    ClientFactory,
    Loopback,
    RedisServer,
    RunningServer,
    ServerFactory,
    SlowReaderFactory,
    free_port,
    poll,
    relays,
)

#: How soon the others must hear that a killed instance's peers are gone.
BOUND = RedisOptions(url="").bound
REPO = Path(__file__).resolve().parent.parent


async def two(
    make_server: ServerFactory, redis: RedisServer, **overrides: object
) -> tuple[RunningServer, RunningServer]:
    """Two instances sharing ``redis``."""
    first = await make_server(redis_url=redis.url, **overrides)
    second = await make_server(redis_url=redis.url, **overrides)
    return first, second


async def test_discovery_relay_and_leaving_across_instances(
    make_server: ServerFactory, redis: RedisServer, connect: ClientFactory
) -> None:
    one, other = await two(make_server, redis)
    a = await connect(one)
    await a.join("bar", "Alice")
    b = await connect(other)
    listed = await b.join("bar", "Bob")
    assert [peer["peerId"] for peer in listed["peers"]] == [a.peer_id]
    joined = await a.expect("peer_joined")
    assert (joined["peerId"], joined["name"]) == (b.peer_id, "Bob")

    await relays(b, a, {"type": "offer", "sdp": "v=0\r\n"})
    await relays(a, b, {"type": "answer", "sdp": "x"})

    await a.send({"type": "update", "zone": "Lounge"})
    updated = await b.expect("peer_updated")
    assert (updated["peerId"], updated["zone"]) == (a.peer_id, "Lounge")

    await a.send({"type": "leave"})
    left = await b.expect("peer_left")
    assert (left["peerId"], left["reason"]) == (a.peer_id, "leave")
    # Nothing twice: the one who stays saw each thing once.
    assert [m for m in await b.sync() if m["type"].startswith("peer_")] == []


async def test_a_newcomers_join_comes_before_its_offer_on_every_instance(
    make_server: ServerFactory, redis: RedisServer, connect: ClientFactory
) -> None:
    one, other = await two(make_server, redis)
    host = await connect(one)
    await host.join("bar", "Host")
    local_host = await connect(other)
    await local_host.join("bar", "Local host")
    for i in range(20):
        newcomer = await connect(other if i % 2 else one)
        await newcomer.send({"type": "join", "roomId": "bar", "name": f"N{i}"})
        listed = await newcomer.expect("peer_list")
        for peer in listed["peers"]:
            signal_ = {"type": "signal", "to": peer["peerId"], "data": {"type": "offer", "sdp": i}}
            await newcomer.send(signal_)
        for member in (host, local_host):
            about = [
                m["type"]
                for m in await _until_signal(member, newcomer.peer_id)
                if m.get("peerId") == newcomer.peer_id or m.get("from") == newcomer.peer_id
            ]
            assert about == ["peer_joined", "signal"], (i, about)
        await newcomer.close()


async def _hears_nothing(client: Client, kind: str, seconds: float) -> None:
    """Assert that ``client`` receives no message whose type starts with ``kind`` for a while.

    It keeps reading meanwhile, so that it answers the server's pings.
    """
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        assert [m for m in await client.sync() if m["type"].startswith(kind)] == []
        await asyncio.sleep(0.25)


async def _until_signal(client: Client, sender: str) -> list[dict[str, object]]:
    """Everything ``client`` receives up to and including a signal from ``sender``."""
    received: list[dict[str, object]] = []
    async with asyncio.timeout(DEADLINE):
        while True:
            message = (
                client.backlog.pop(0) if client.backlog else await client.next_message(DEADLINE)
            )
            received.append(message)
            if message["type"] == "signal" and message["from"] == sender:
                return received


async def test_the_lobby_counts_everyone_on_every_instance(
    make_server: ServerFactory, redis: RedisServer, connect: ClientFactory
) -> None:
    one, other = await two(make_server, redis)
    watcher = await connect(one)
    await watcher.send({"type": "watch_rooms"})
    assert (await watcher.expect("rooms"))["rooms"] == []
    for i, server in enumerate((one, other, other)):
        client = await connect(server)
        await client.join("bar", f"P{i}")
        if i:
            await client.send({"type": "update", "zone": "Lounge"})

    def counted(rooms: list[dict[str, object]]) -> bool:
        return rooms == [{"roomId": "bar", "count": 3, "capacity": 10, "zones": {"Lounge": 2}}]

    async with asyncio.timeout(DEADLINE):
        while not counted((await watcher.expect("rooms"))["rooms"]):
            pass
    async with aiohttp.ClientSession() as http:
        for server in (one, other):
            async with http.get(f"{server.url}/api/rooms") as response:
                assert counted((await response.json())["rooms"])


async def test_exactly_one_of_two_racing_joins_gets_the_last_seat(
    make_server: ServerFactory, redis: RedisServer, connect: ClientFactory
) -> None:
    one, other = await two(make_server, redis, max_room_size=2)
    for attempt in range(30):
        room = f"snug-{attempt}"
        seated = await connect(one)
        await seated.join(room, "Regular")
        racers = [await connect(one), await connect(other)]
        await asyncio.gather(
            *(r.send({"type": "join", "roomId": room, "name": "Racer"}) for r in racers)
        )
        outcomes = []
        for racer in racers:
            async with asyncio.timeout(DEADLINE):
                while True:
                    message = await racer.next_message(DEADLINE)
                    if message["type"] in ("peer_list", "error"):
                        outcomes.append(message.get("code", "joined"))
                        break
        assert sorted(outcomes) == ["joined", "room_full"], (attempt, outcomes)
        assert len(await one.hub.backend.members(room)) == 2
        for client in (seated, *racers):
            await client.close()


async def test_a_resume_token_works_on_another_instance(
    make_server: ServerFactory, redis: RedisServer, connect: ClientFactory
) -> None:
    one, other = await two(make_server, redis)
    a = await connect(one)
    listed = await a.join("bar", "Alice")
    b = await connect(other)
    await b.join("bar", "Bob")
    await a.expect("peer_joined")

    again = await connect(other)
    resumed = await again.join("bar", "Alice", resume=listed["resumeToken"])
    assert resumed["peerId"] == a.peer_id
    assert [peer["peerId"] for peer in resumed["peers"]] == [b.peer_id]
    # The old connection, still open on the first instance, gives way.
    assert await a.closed() == 4000
    # Bob noticed nothing, and the moved peer is reachable where it is now.
    assert [m for m in await b.sync() if m["type"].startswith("peer_")] == []
    await b.send({"type": "signal", "to": a.peer_id, "data": {"type": "offer", "sdp": ""}})
    assert (await again.expect("signal"))["from"] == b.peer_id


async def test_a_dropped_peer_that_comes_back_elsewhere_is_not_timed_out(
    make_server: ServerFactory, redis: RedisServer, connect: ClientFactory
) -> None:
    one, other = await two(make_server, redis, grace=1.0)
    a = await connect(one)
    listed = await a.join("bar", "Alice")
    b = await connect(other)
    await b.join("bar", "Bob")
    a.drop()
    await poll(lambda: (m := one.hub.member(a.peer_id)) is not None and m.away)
    again = await connect(other)
    await again.join("bar", "Alice", resume=listed["resumeToken"])
    # Well past the grace period the first instance gave it, nobody left.
    await _hears_nothing(b, "peer_left", 3.0)
    assert {m.peer_id for m in await other.hub.backend.members("bar")} == {a.peer_id, b.peer_id}


@dataclass
class Instance(Loopback):
    """``chatsubo serve --redis-url`` in its own process."""

    process: asyncio.subprocess.Process


@pytest.fixture
async def instances(redis: RedisServer, tmp_path: Path) -> AsyncIterator[list[Instance]]:
    """Three server processes sharing ``redis``; all are killed after the test."""
    secret = tmp_path / "secret"
    secret.write_bytes(TEST_SECRET)
    started: list[Instance] = []
    for _ in range(3):
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatsubo", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--redis-url", redis.url, "--secret-file", str(secret),
            "--no-uvloop", "--log-level", "warning",
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        started.append(Instance(port, process))
    try:
        async with aiohttp.ClientSession() as http:
            for instance in started:
                await _healthy(http, instance.url, 200)
        yield started
    finally:
        for instance in started:
            if instance.process.returncode is None:
                instance.process.kill()
                await instance.process.wait()


async def _healthy(http: aiohttp.ClientSession, url: str, status: int) -> None:
    """Wait until ``/healthz`` answers ``status``."""
    async with asyncio.timeout(DEADLINE * 2):
        while True:
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == status:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def test_a_killed_instance_s_peers_time_out_once_for_everyone(
    instances: list[Instance], connect: ClientFactory
) -> None:
    doomed, *survivors = instances
    lost = await connect(doomed.ws_url)
    await lost.join("bar", "Doomed")
    stayers = []
    for i, instance in enumerate(survivors):
        stayer = await connect(instance.ws_url)
        await stayer.join("bar", f"Stayer {i}")
        stayers.append(stayer)
    await stayers[0].expect("peer_joined")

    doomed.process.send_signal(signal.SIGKILL)
    await doomed.process.wait()
    killed_at = asyncio.get_running_loop().time()
    for stayer in stayers:
        left = await stayer.expect("peer_left", timeout=BOUND + DEADLINE)
        assert (left["peerId"], left["reason"]) == (lost.peer_id, "timeout")
        assert asyncio.get_running_loop().time() - killed_at < BOUND + 2
    # Exactly once: no instance repeats it.
    for stayer in stayers:
        await _hears_nothing(stayer, "peer_left", 2 * RedisOptions(url="").reap_interval)


async def test_sigterm_drains_an_instance_and_its_peers_resume_on_another(
    instances: list[Instance], connect: ClientFactory
) -> None:
    draining, staying, _ = instances
    a = await connect(draining.ws_url)
    listed = await a.join("bar", "Alice")
    b = await connect(staying.ws_url)
    await b.join("bar", "Bob")
    draining.process.send_signal(signal.SIGTERM)
    assert await a.closed() == 1012
    # What a client behind a load balancer does: straight to another instance.
    again = await connect(staying.ws_url)
    resumed = await again.join("bar", "Alice", resume=listed["resumeToken"])
    assert resumed["peerId"] == a.peer_id
    assert await draining.process.wait() == 0
    # Past the drained instance's lease, Alice is still in: she moved, silently.
    await _hears_nothing(b, "peer_", BOUND)


async def test_losing_redis_turns_healthz_503_and_the_rooms_converge_after(
    own_redis: RedisServer,
    make_server: ServerFactory,
    connect: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="chatsubo.server.redis_backend")
    one, other = await two(make_server, own_redis)
    a = await connect(one)
    await a.join("bar", "Alice")
    b = await connect(other)
    await b.join("bar", "Bob")
    c = await connect(other)
    await c.join("bar", "Case")
    d = await connect(one)
    await d.join("bar", "Dixie")
    for _ in range(3):
        await a.expect("peer_joined")

    own_redis.stop()
    async with aiohttp.ClientSession() as http:
        for server in (one, other):
            await _healthy(http, server.url, 503)
        # While it is away: Bob leaves, and a newcomer is turned back for later.
        await b.close()
        late = await connect(one)
        await late.send({"type": "join", "roomId": "bar", "name": "Late"})
        assert (await late.error())["code"] == "unavailable"
        assert await late.closed() == 1013
        for _ in range(20):
            await a.send({"type": "signal", "to": b.peer_id, "data": {"type": "offer", "sdp": ""}})
        # Two peers on one instance still reach each other.
        await a.send({"type": "signal", "to": d.peer_id, "data": {"type": "offer", "sdp": ""}})
        assert (await d.expect("signal"))["from"] == a.peer_id

        own_redis.start()  # empty: everything it held is gone
        for server in (one, other):
            await _healthy(http, server.url, 200)
    # Alice hears that Bob left, once Bob's instance had its chance to put him
    # back; Case is still there; Redis holds the truth again.
    left = await a.expect("peer_left", timeout=BOUND + DEADLINE)
    assert left["peerId"] == b.peer_id
    assert [m["peerId"] for m in await a.sync() if m["type"].startswith("peer_")] == []
    everyone = {a.peer_id, c.peer_id, d.peer_id}
    await poll(lambda: {m.peer_id for m in one.hub.members("bar")} == everyone)
    assert {m.peer_id for m in await one.hub.backend.members("bar")} == everyone
    await c.send({"type": "signal", "to": a.peer_id, "data": {"type": "offer", "sdp": ""}})
    assert (await a.expect("signal"))["from"] == c.peer_id
    # Each instance said once that Redis was gone, not once per message.
    lost = [r for r in caplog.records if "cannot reach Redis" in r.getMessage()]
    assert len(lost) == 2, [r.getMessage() for r in lost]


async def test_two_bots_on_two_instances_connect_and_hear_each_other(
    make_server: ServerFactory, redis: RedisServer
) -> None:
    one, other = await two(make_server, redis)
    outs = [AudioOut(ToneSource(hz)) for hz in (330.0, 440.0)]
    peers = [
        MeshPeer("bar", name, SignalingOptions(urls=[server.url]), audio=out)
        for name, server, out in zip(("A", "B"), (one, other), outs, strict=True)
    ]
    levels: dict[str, dict[str, float]] = {"A": {}, "B": {}}
    try:
        for peer in peers:
            peer.on(
                "audiolevel",
                lambda pid, dbfs, heard=levels[peer.signaling.name]: heard.__setitem__(pid, dbfs),
            )
            await peer.start()
        a, b = peers
        # A tone at 0.3 of full scale is about -13 dBFS: each clearly hears the other.
        await poll(
            lambda: (
                levels["A"].get(b.peer_id or "", -99) > -30
                and levels["B"].get(a.peer_id or "", -99) > -30
            ),
            timeout=MESH_DEADLINE,
        )
        assert one.hub.backend.known(b.peer_id or "") is not None
    finally:
        await asyncio.gather(*(peer.close() for peer in peers))
        for out in outs:
            out.stop()


async def test_a_page_on_one_instance_and_a_bot_on_another_hear_each_other(
    make_server: ServerFactory, redis: RedisServer, crowd: Crowd, bots: Bots
) -> None:
    one, other = await two(make_server, redis)
    barkeep = await bots.start(other, "bar", "Barkeep", "--audio", "tone")
    bot_id = await barkeep.peer_id()
    case = await crowd.visit(one, "Case")
    case_id = await case.enter("bar")
    await asyncio.gather(
        case.connected_to(bot_id), barkeep.wait_for("peer_connected", peer=case_id)
    )
    await case.hears(bot_id)
    await expect(case.person(bot_id)).to_have_attribute(
        "data-speaking", "true", timeout=MESH_DEADLINE * 1000
    )
    case.assert_no_errors()


async def test_a_reader_that_stalls_on_one_instance_holds_up_nobody(
    make_server: ServerFactory,
    redis: RedisServer,
    connect: ClientFactory,
    connect_slow_reader: SlowReaderFactory,
) -> None:
    """Signals through Redis to a client that never reads: its neighbours still get theirs."""
    limits = {"max_send_buffer": 64 * 1024, "messages_per_second": 1e5, "message_burst": 1e5}
    one, other = await two(make_server, redis, max_message_bytes=128 * 1024, **limits)
    sender = await connect(one)
    await sender.join("bar", "Sender")
    honest = await connect(other)
    await honest.join("bar", "Honest")
    slow = await connect_slow_reader(other)
    await slow.join("bar", "Slow")
    await sender.expect("peer_joined")
    await sender.expect("peer_joined")

    def slow_is_connected() -> bool:
        member = other.hub.member(slow.peer_id)
        return member is not None and not member.away

    blob, sent = "x" * 60_000, 0
    while slow_is_connected():
        assert sent < 1000, "the slow reader was never cut off"
        await sender.send({"type": "signal", "to": slow.peer_id, "data": blob})
        await sender.send({"type": "signal", "to": honest.peer_id, "data": sent})
        # The other instance's subscriber is never held up on the slow socket.
        assert (await honest.expect("signal"))["data"] == sent
        sent += 1
    await sender.send({"type": "signal", "to": honest.peer_id, "data": "after"})
    assert (await honest.expect("signal"))["data"] == "after"
