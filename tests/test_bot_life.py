"""A bot's life as people run it: leaving when told, coming back quickly, plain words.

Real bot processes (``python -m chatsubo.client``), a real server on loopback,
and real restarts of that server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import signal
import socket
import subprocess
import sys
import time

import pytest

from chatsubo import protocol as p
from chatsubo.peer.bot import Bot, BotOptions, parse_args
from chatsubo.peer.signaling import DEFAULT_URL
from chatsubo.space import BAR, Point, Zone
from tests.browser import BOT_DEADLINE, Bots
from tests.conftest import ClientFactory, RunningServer, poll

ROOM = "r"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- an unreachable server ---------------------------------------------------------


async def test_a_bot_that_cannot_connect_says_why_and_leaves_at_its_duration(bots: Bots) -> None:
    port = _closed_port()
    started = time.monotonic()
    bot = await bots.start(f"http://127.0.0.1:{port}", ROOM, "Early", "--duration", "3")
    assert await bot.ended(15) == 0
    took = time.monotonic() - started
    assert took < 3 + 5, f"the bot took {took:.1f} s to leave at --duration 3"
    retries = [line for line in bot.stderr if "trying again in" in line]
    assert len(retries) >= 2, bot.stderr
    assert f"ws://127.0.0.1:{port}/ws" in retries[0]
    assert "cannot connect" in retries[0]
    assert bot.matching("retrying"), "the JSON events say it is retrying too"
    assert not any("Traceback" in line for line in bot.stderr), bot.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_bot_that_cannot_connect_leaves_on_a_signal(
    bots: Bots, sig: signal.Signals
) -> None:
    bot = await bots.start(f"http://127.0.0.1:{_closed_port()}", ROOM, "Early")
    await poll(lambda: any("trying again in" in line for line in bot.stderr), BOT_DEADLINE)
    told = time.monotonic()
    bot.process.send_signal(sig)
    assert await bot.ended(10) == 0
    assert time.monotonic() - told < 1 + 2, "leaves within about a second"


async def test_a_bot_given_two_servers_fails_over_to_the_one_that_is_up(
    server: RunningServer, bots: Bots
) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    bot = await bots.start(down, ROOM, "Failover", "--server", server.url)
    await bot.wait_for("joined")
    (retrying, *_) = bot.matching("retrying")
    assert retrying["url"] == server.ws_url
    assert "cannot connect" in retrying["why"]
    # The log line names both: the one that failed and the one tried next.
    said = f"ws://{down.removeprefix('http://')}/ws: cannot connect"
    await poll(lambda: any(said in line for line in bot.stderr), BOT_DEADLINE)
    assert any(f"trying {server.ws_url} in" in line for line in bot.stderr), bot.stderr


def test_server_is_repeatable_and_defaults_to_this_machine() -> None:
    assert parse_args([]).servers == [DEFAULT_URL]
    given = ["http://10.0.0.1:8080", "ws://10.0.0.2:8080/ws"]
    assert parse_args(["--server", given[0], "--server", given[1]]).servers == given


def test_reconnect_waits_stay_short_for_the_first_minute() -> None:
    rules = p.CLIENT_RULES
    waits = [p.reconnect_delay(n, 0.5 * n, 0.0) for n in range(100)]
    assert waits[0] == 0.0
    assert max(waits) <= 2.0, "back within about 2 s of the server's return"
    assert p.reconnect_delay(3, rules.fast_reconnect_for, 0.0) == rules.reconnect_max
    jittered = p.reconnect_delay(2, 1.0, 0.999)
    assert (1 - rules.reconnect_jitter) * 1.0 < jittered < 1.0


# --- what the bot hears and says ---------------------------------------------------


async def test_a_bot_hears_renames(
    server: RunningServer, bots: Bots, connect: ClientFactory
) -> None:
    bot = await bots.start(server, ROOM, "Listener")
    await bot.peer_id()
    molly = await connect(server)
    await molly.join(ROOM, "Molly")
    await bot.wait_for("peer_joined", peer=molly.peer_id, name="Molly")
    await molly.send({"type": "update", "name": "Case", "zone": "Lounge"})
    updated = await bot.wait_for("peer_updated", peer=molly.peer_id)
    assert (updated["name"], updated["zone"]) == ("Case", "Lounge")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--name", "n" * 40], "a name is at most 32 characters, and this one has 40"),
        (["--name", "n" * 31, "--count", "12"], "with its number (--count)"),
        (["--name", "tab\there"], "printable text"),
        (["--room", "the back room"], "a room name is 1 to 64 letters"),
        (["--zone", "Kitchen"], "no zone 'Kitchen'; the zones are"),
        # The command already has one good --server: this is a bad second one.
        (["--server", "ftp://b/"], "--server: 'ftp://b/' is not an http(s):// or ws(s):// URL"),
    ],
)
def test_bad_names_and_rooms_get_plain_words_before_connecting(args: list[str], words: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatsubo.client", "--server", "http://127.0.0.1:9", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert words in result.stderr
    assert "Expected" not in result.stderr
    assert "Traceback" not in result.stderr


def test_help_describes_every_option() -> None:
    for command in (["chatsubo.client"], ["chatsubo", "serve"]):
        result = subprocess.run(
            [sys.executable, "-m", *command, "--help"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert "--log-level" in result.stdout
        assert "how much to log" in result.stdout
        assert "one silent" not in result.stdout


# --- where bots stand ----------------------------------------------------------------


async def test_bots_arrive_on_free_spots_apart_from_each_other(
    server: RunningServer, bots: Bots
) -> None:
    first = await bots.start(server, ROOM, "A", "--count", "3")
    await poll(lambda: len(first.matching("joined")) == 3, BOT_DEADLINE)
    second = await bots.start(server, ROOM, "B")
    await poll(lambda: len(second.matching("peer_connected")) == 3, BOT_DEADLINE)

    def spots() -> dict[str, tuple[float, float]]:
        seen: dict[str, tuple[float, float]] = {}
        for event in first.events + second.events:
            if event["event"] == "position":
                seen[event["peer"]] = (event["x"], event["y"])
        return seen

    # The newcomer may step aside once it learns where the others stand.
    async def settled() -> bool:
        places = list(spots().values())
        return len(places) == 4 and all(
            BAR.map.is_free(*a, [b for b in places if b is not a]) for a in places
        )

    deadline = time.monotonic() + BOT_DEADLINE
    while not await settled():
        assert time.monotonic() < deadline, f"bots stand too close: {spots()}"
        await asyncio.sleep(0.1)
    for x, y in spots().values():
        assert BAR.map.arrival.contains(x, y) or BAR.map.is_free(x, y, [])


def _options(name: str, server: RunningServer, position: Point, settle: bool) -> BotOptions:
    return BotOptions(
        room=ROOM,
        name=name,
        servers=[server.url],
        insecure=False,
        audio="silence",
        seed=1,
        record=None,
        speaker=False,
        position=position,
        settle_in=BAR.map.arrival if settle else None,
        wander=False,
        say=None,
        every=10.0,
        echo=False,
    )


async def test_a_newcomer_on_someone_s_spot_steps_aside_and_the_other_stays(
    server: RunningServer,
) -> None:
    spot = BAR.map.arrival.center
    here = Bot(_options("Here", server, spot, settle=False), None)
    newcomer = Bot(_options("Newcomer", server, spot, settle=True), None)
    try:
        await here.start()
        await newcomer.start()
        await poll(lambda: newcomer.position != spot, BOT_DEADLINE)
        assert BAR.map.is_free(*newcomer.position, [spot])
        assert here.position == spot
    finally:
        await asyncio.gather(here.close(), newcomer.close())


async def test_a_wandering_bot_walks_around_furniture_and_people(server: RunningServer) -> None:
    # In front of the stools at the counter, with someone a little further along.
    stool = next(item for item in BAR.map.furniture if item.kind == "stool")
    start = (stool.x + 0.5, stool.y + stool.height + BAR.map.margin + 0.3)
    assert BAR.map.is_free(*start, [])
    still = (start[0] + 1.5, start[1])
    other = Bot(_options("Still", server, still, settle=False), None)
    walker = Bot(
        dataclasses.replace(_options("Walker", server, start, settle=False), wander=True), None
    )
    #: Each step, and whether the walker knew by then where the other stands.
    steps: list[tuple[Point, bool]] = []
    move = walker.move

    def recording_move(x: float, y: float) -> Zone | None:
        zone = move(x, y)
        steps.append((walker.position, bool(walker._others())))
        return zone

    walker.move = recording_move  # type: ignore[method-assign]
    try:
        await other.start()
        await walker.start()
        await poll(lambda: sum(known for _, known in steps) >= 60, BOT_DEADLINE)
    finally:
        await asyncio.gather(walker.close(), other.close())
    assert all(BAR.map.is_free(x, y, []) for (x, y), _ in steps), "never on furniture"
    assert len({spot for spot, _ in steps}) > 20, "it does walk"
    known = [math.dist(spot, still) for spot, knows in steps if knows]
    # Never closer than personal space, or than it was when it learned where the other stands.
    assert min(known) >= min(BAR.map.personal_space, known[0]) - 1e-9


async def test_a_wandering_bot_told_to_stand_on_furniture_walks_off_it(
    server: RunningServer,
) -> None:
    counter = next(item for item in BAR.map.furniture if item.kind == "counter")
    walker = Bot(
        dataclasses.replace(_options("Up", server, counter.center, settle=False), wander=True),
        None,
    )
    try:
        await walker.start()
        await poll(lambda: BAR.map.is_free(*walker.position, []), BOT_DEADLINE)
    finally:
        await walker.close()
