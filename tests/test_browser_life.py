"""The page through distance, restarts and refusals: real Chromium, real server, real bots."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from playwright.async_api import Browser, expect

from chatsubo.server.config import ServerConfig
from chatsubo.space import BAR
from tests.browser import (
    ARRIVE_IN_THE_MIDDLE,
    MESH_DEADLINE,
    NEEDS_CHROMIUM,
    Bots,
    Crowd,
    Person,
    eventually,
)
from tests.conftest import TEST_SECRET, RunningServer, ServerFactory, poll, start_server

pytestmark = NEEDS_CHROMIUM

ROOM = "chatsubo-main"

#: The gain the page has set on a voice right now.
_VOICE_GAIN = "id => window.chatsubo.audio.voices.get(id)?.gain.gain.value ?? null"


async def test_a_voice_is_silent_beyond_the_hearing_range_and_full_up_close(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    far = (1.0, 15.0)  # the Booths' corner, far from the arrival area by the counter
    bot = await bots.start(server, ROOM, "Far", "--position", f"{far[0]},{far[1]}")
    bot_id = await bot.peer_id()
    case = await crowd.visit(server, "Case")
    await case.enter(ROOM)
    await case.sees_at(bot_id, *far, tolerance=0.1, timeout=MESH_DEADLINE)

    gains: list[float | None] = []

    def gain_is(expected: float) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            gains.append(await case.page.evaluate(_VOICE_GAIN, bot_id))
            return gains[-1] == expected

        return check

    # Exactly 0 and exactly 1: the gain ramps to its target, it does not creep.
    await eventually(gain_is(0.0), MESH_DEADLINE, lambda: f"silence far away; gains {gains[-5:]}")
    await case.click_map(far[0] + 0.5, far[1] - 0.5)
    await eventually(gain_is(1.0), MESH_DEADLINE, lambda: f"full gain up close; gains {gains[-5:]}")


async def test_page_and_bot_are_back_within_seconds_of_a_restart_and_forget_who_never_came_back(
    crowd: Crowd, bots: Bots
) -> None:
    config = ServerConfig(secret=TEST_SECRET, grace=3.0)
    server = await start_server(config)
    port = server.port
    try:
        stays = await bots.start(server, ROOM, "Stays")
        stays_id = await stays.peer_id()
        goes = await bots.start(server, ROOM, "Goes")
        goes_id = await goes.peer_id()
        case = await crowd.visit(server, "Case")
        case_id = await case.enter(ROOM)
        await case.connected_to(stays_id, goes_id)
        await server.stop()
        await expect(case.status).to_have_attribute("data-state", "reconnecting")
        await goes.stop()
        # Long enough that the backoff of old had grown to several seconds.
        await _wait(8.0)
        server = await start_server(config, port=port)
        returned = time.monotonic()
        await poll(lambda: {case_id, stays_id} <= server.peer_ids(), MESH_DEADLINE)
        back = time.monotonic() - returned
        assert back < 3 + 1.5, f"the last of them was back {back:.1f} s after the server"
        # Goes never came back: the page drops it after the server's grace period.
        await eventually(
            lambda: _gone(case, goes_id),
            MESH_DEADLINE,
            lambda: "the page to forget the peer that never came back",
        )
        assert await case.page.evaluate("id => window.chatsubo.peer.links.has(id)", stays_id)
        # And so does the bot, with the reason the server would have given.
        left = await stays.wait_for("peer_left", peer=goes_id)
        assert left["reason"] == "timeout"
        await stays.wait_for("peer_disconnected", peer=goes_id)
    finally:
        await server.stop()


async def _wait(seconds: float) -> None:
    """An outage of a set length: the thing under test is what happens after it."""
    deadline = time.monotonic() + seconds
    await poll(lambda: time.monotonic() >= deadline, seconds + 5)


async def _gone(person: Person, peer_id: str) -> bool:
    links = await person.page.evaluate("id => window.chatsubo.peer.links.has(id)", peer_id)
    return not links and await person.person(peer_id).count() == 0


_SIGNAL_AS = """
async ([url, flood]) => {
  const { loadProtocol } = await import("/protocol.js");
  const { SignalingClient } = await import("/signaling.js");
  const client = new SignalingClient(await loadProtocol(), url);
  // The server's own error comes first; the words for the close come last.
  const said = new Promise((resolve) =>
    client.on("server_error", (e) => e.code === "closed" && resolve(e.message)),
  );
  client.on("connectionstatechange", (state) => {
    if (state !== "connected" || !flood) return;
    for (let i = 0; i < 3000; i++) client._write({ type: "ping", t: i });
  });
  client.start();
  return await said;
}
"""


async def test_the_page_says_why_the_server_closed_it(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server(messages_per_second=20.0, message_burst=20.0)
    elsewhere = await make_server()
    page = await browser.new_page()
    await page.goto(f"{elsewhere.url}/healthz")
    refused = await page.evaluate(_SIGNAL_AS, [server.ws_url, False])
    assert (
        refused == "Disconnected: the server does not accept connections from this page's address."
    )
    await page.goto(f"{server.url}/healthz")
    flooded = await page.evaluate(_SIGNAL_AS, [server.ws_url, True])
    assert flooded == "Disconnected: too many messages were sent too fast."


async def test_a_newcomer_on_someone_s_spot_steps_aside(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    spot = BAR.map.arrival.center
    bot = await bots.start(server, ROOM, "Here", "--position", f"{spot[0]},{spot[1]}")
    bot_id = await bot.peer_id()
    # Every random draw is 0.5: the page's first pick is the middle of the
    # arrival area, which is where the bot stands.
    case = await crowd.visit(server, "Case", init_script=ARRIVE_IN_THE_MIDDLE)
    case_id = await case.enter(ROOM)
    await case.sees_at(bot_id, *spot, tolerance=0.05, timeout=MESH_DEADLINE)

    async def apart() -> bool:
        x, y = await case.position_of(case_id)
        return BAR.map.is_free(x, y, [spot])

    await eventually(apart, MESH_DEADLINE, lambda: "the newcomer to step aside")
    await case.sees_at(bot_id, *spot, tolerance=0.05)
