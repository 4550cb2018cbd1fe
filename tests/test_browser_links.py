"""Proximity links in the page: the server links the near, unlinks the far, and shows everyone.

A big room here is any room of more than one person (``full_mesh_up_to=1``),
so that a page and a bot are enough to see links follow distance. Real
Chromium, real server, real bots.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import replace

import pytest
from playwright.async_api import expect

from chatsubo.protocol import POSITION_UPDATES_PER_SECOND
from chatsubo.server.config import ServerConfig
from chatsubo.server.topology import LinkRules
from chatsubo.space import BAR
from tests.browser import (
    ARRIVE_IN_THE_MIDDLE,
    MESH_DEADLINE,
    MIDDLE,
    NEEDS_CHROMIUM,
    UI_DEADLINE,
    Bots,
    Crowd,
    Person,
    eventually,
)
from tests.conftest import TEST_SECRET, RunningServer, ServerFactory, start_server

pytestmark = NEEDS_CHROMIUM

ROOM = "chatsubo-main"
RULES = LinkRules()

#: What Chromium itself logs while the server is down: not the page's doing.
SOCKET_REFUSED = re.compile(r"WebSocket connection to '[^']*' failed")

#: The Booths' corner, beyond the link range of the middle of the arrival area.
CORNER = (1.0, 15.0)
#: Next to the corner: within a conversation of whoever stands there.
BESIDE_CORNER = (1.5, 14.5)
#: Past the unlink range from the corner, on the edge of the Dance Floor.
AWAY = (16.5, 8.0)


#: The server's `link` once more for a linked peer: whether the very same connection stays.
LINK_AGAIN = """
id => {
  const peer = window.chatsubo.peer;
  const pc = peer.links.get(id).pc;
  window.chatsubo.signaling.emit("link", { type: "link", peerId: id, offer: true });
  return peer.links.get(id).pc === pc && pc.signalingState === "stable";
}
"""

#: An offer from an unlinked peer, as if late: whether it opened a link.
LATE_OFFER = """
id => {
  const offer = { type: "offer", sdp: window.__pc.localDescription.sdp };
  window.chatsubo.signaling.emit("signal", { type: "signal", from: id, data: offer });
  return window.chatsubo.peer.links.has(id);
}
"""


#: Records every position the page sends the server: [ms, x, y].
RECORD_POSITION_UPDATES = """
window.__updates = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  const message = JSON.parse(data);
  if (message.type === "update" && "x" in message) {
    window.__updates.push([performance.now(), message.x, message.y]);
  }
  return send.call(this, data);
};
"""


def distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5)


def test_the_spots_are_where_the_rule_needs_them() -> None:
    assert distance(MIDDLE, CORNER) > RULES.link_range
    assert distance(BESIDE_CORNER, CORNER) < BAR.distance_model.ref_distance
    assert distance(AWAY, CORNER) > RULES.unlink_range + 1.5
    assert BAR.map.is_free(*MIDDLE, [CORNER])


async def big_room(make_server: ServerFactory) -> RunningServer:
    """A server on which every room of two or more links by distance."""
    return await make_server(links=replace(RULES, full_mesh_up_to=1), max_room_size=100)


async def walk(person: Person, peer_id: str, spot: tuple[float, float]) -> None:
    """Click ``spot`` on the map and wait until ``person`` stands there."""
    await person.click_map(*spot)
    await person.sees_at(peer_id, *spot, tolerance=0.05)


async def across_the_room(person: Person, peer_id: str) -> None:
    """``person`` has no connection to ``peer_id``, and the people list says it is far."""
    entry = person.person(peer_id)
    await expect(entry).to_have_attribute("data-earshot", "far")
    await expect(entry.locator(".earshot")).to_have_text("across the room")
    await expect(entry).to_have_attribute("data-state", "unlinked")
    assert await person.link_state(peer_id) is None


async def in_earshot(person: Person, peer_id: str) -> None:
    """``person`` is connected to ``peer_id``, and the people list says it is near."""
    await person.connected_to(peer_id)
    entry = person.person(peer_id)
    await expect(entry).to_have_attribute("data-earshot", "near")
    await expect(entry.locator(".earshot")).to_have_text("in earshot")
    assert await person.link_state(peer_id) == "connected"


async def test_walking_up_to_a_bot_links_to_it_and_walking_away_unlinks(
    make_server: ServerFactory, crowd: Crowd, bots: Bots
) -> None:
    server = await big_room(make_server)
    bot = await bots.start(
        server, ROOM, "Corner", "--audio", "tone", "--position", f"{CORNER[0]},{CORNER[1]}"
    )
    bot_id = await bot.peer_id()
    case = await crowd.visit(server, "Case", init_script=ARRIVE_IN_THE_MIDDLE)
    case_id = await case.enter(ROOM)
    await case.sees_at(case_id, *MIDDLE, tolerance=0.05)

    # Too far to link: the bot is on the map all the same, where the server says it stands.
    await case.sees_at(bot_id, *CORNER, tolerance=0.05, timeout=MESH_DEADLINE)
    await across_the_room(case, bot_id)

    # Up close the link forms, and the bot's tone plays.
    await walk(case, case_id, BESIDE_CORNER)
    await in_earshot(case, bot_id)
    await bot.wait_for("peer_connected", peer=case_id)
    await case.hears(bot_id)
    await expect(case.person(bot_id)).to_have_attribute(
        "data-speaking", "true", timeout=MESH_DEADLINE * 1000
    )
    await case.page.evaluate(
        "id => { window.__pc = window.chatsubo.peer.links.get(id).pc }", bot_id
    )
    # The server saying so again (as after a rejoin) keeps the connection as it is.
    assert await case.page.evaluate(LINK_AGAIN, bot_id), "a second link to the bot"

    # Well past the unlink range the link holds a few seconds, then closes: the
    # connection itself, not just what the list says.
    await walk(case, case_id, AWAY)
    arrived = time.monotonic()

    async def closed() -> bool:
        state: str = await case.page.evaluate("() => window.__pc.connectionState")
        return state == "closed"

    await eventually(closed, MESH_DEADLINE, lambda: "the link to the far bot to close")
    held = time.monotonic() - arrived
    assert held > 1.0, f"unlinked {held:.1f} s after arriving, {RULES.hysteresis} s after leaving"
    await across_the_room(case, bot_id)
    assert not await case.page.evaluate(LATE_OFFER, bot_id), "a link from a late offer"
    await bot.wait_for("peer_disconnected", peer=case_id)
    # Still on the map, where it stands.
    await case.sees_at(bot_id, *CORNER, tolerance=0.05)
    await expect(case.page.locator("#map .avatar")).to_have_count(2)
    case.assert_no_errors()


async def test_far_people_move_on_the_map_without_a_connection(
    make_server: ServerFactory, crowd: Crowd
) -> None:
    server = await big_room(make_server)
    case = await crowd.visit(server, "Case", init_script=ARRIVE_IN_THE_MIDDLE)
    case_id = await case.enter(ROOM)
    await walk(case, case_id, CORNER)
    molly = await crowd.visit(
        server, "Molly", init_script=ARRIVE_IN_THE_MIDDLE + RECORD_POSITION_UPDATES
    )
    molly_id = await molly.enter(ROOM)
    await molly.sees_at(molly_id, *MIDDLE, tolerance=0.05)

    # Molly sees where Case stands as she walks in: the server told her.
    await molly.sees_at(case_id, *CORNER, tolerance=0.05)
    await case.sees_at(molly_id, *MIDDLE, tolerance=0.05)
    await across_the_room(molly, case_id)
    await across_the_room(case, molly_id)
    await molly.screenshot("room-across-the-room.png")

    # She strolls along the far side of the bar; Case watches her go, still unlinked.
    for spot in [(20.0, 4.0), (22.5, 1.0)]:
        await walk(molly, molly_id, spot)
        await case.sees_at(molly_id, *spot, tolerance=0.05)
        await expect(case.avatar(molly_id)).to_have_attribute("data-zone", "Lounge")
        await across_the_room(case, molly_id)
        await across_the_room(molly, case_id)

    # She told the server where she went, from where she came in: at most 4
    # times a second, each time somewhere new, and the spot she stopped at last.
    updates: list[list[float]] = []
    stopped = await molly.position_of(molly_id)

    async def told_the_last_spot() -> bool:
        nonlocal updates
        updates = await molly.page.evaluate("() => window.__updates")
        return updates[-1][1:] == pytest.approx(stopped, abs=0.011)

    await eventually(told_the_last_spot, UI_DEADLINE, lambda: f"the last spot in {updates}")
    spots = [(x, y) for _, x, y in updates]
    assert spots[0] == pytest.approx(MIDDLE, abs=0.01), spots
    assert all(a != b for a, b in itertools.pairwise(spots)), spots
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(updates)]
    assert min(gaps) >= 1000 / POSITION_UPDATES_PER_SECOND - 5, gaps

    # She walks over to Case: now they are linked, and in earshot of each other.
    await walk(molly, molly_id, BESIDE_CORNER)
    await in_earshot(case, molly_id)
    await in_earshot(molly, case_id)
    await case.sees_at(molly_id, *BESIDE_CORNER, tolerance=0.05)
    case.assert_no_errors()
    molly.assert_no_errors()


async def test_opus_asks_for_dtx_on_every_link(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    case = await crowd.visit(server, "Case")
    molly = await crowd.visit(server, "Molly")
    case_id = await case.enter(ROOM)
    molly_id = await molly.enter(ROOM)
    # A bot after them: it offers, and both pages answer it.
    barkeep = await bots.start(server, ROOM, "Barkeep", "--audio", "tone")
    bot_id = await barkeep.peer_id()
    await case.connected_to(molly_id, bot_id)
    await molly.connected_to(case_id, bot_id)

    # Molly offered to Case and Case answered: each description asks for DTX,
    # and keeps the browser's own parameters.
    for person, other in ((case, molly_id), (molly, case_id)):
        mine, theirs = await person.opus_parameters(other)
        for parameters in (mine, theirs):
            assert parameters.get("usedtx") == "1", (person.name, parameters)
            assert parameters.get("useinbandfec") == "1", (person.name, parameters)
    for person in (case, molly):
        answer, _ = await person.opus_parameters(bot_id)
        assert answer.get("usedtx") == "1", (person.name, answer)
    case.assert_no_errors()
    molly.assert_no_errors()


async def test_after_a_restart_the_page_tells_the_server_again_where_it_stands(
    crowd: Crowd,
) -> None:
    config = ServerConfig(
        secret=TEST_SECRET, links=replace(RULES, full_mesh_up_to=1), max_room_size=100
    )
    server = await start_server(config)
    try:
        case = await crowd.visit(server, "Case", init_script=ARRIVE_IN_THE_MIDDLE)
        case_id = await case.enter(ROOM)
        await walk(case, case_id, CORNER)
        await server.stop()
        await expect(case.status).to_have_attribute("data-state", "reconnecting")
        server = await start_server(config, server.port)
        await expect(case.status).to_have_attribute(
            "data-state", "connected", timeout=MESH_DEADLINE * 1000
        )
        # The restarted server knew nothing of Case, who has not moved since:
        # a newcomer sees Case in the corner all the same.
        linda = await crowd.visit(server, "Linda", init_script=ARRIVE_IN_THE_MIDDLE)
        await linda.enter(ROOM)
        await linda.sees_at(case_id, *CORNER, tolerance=0.05)
        await across_the_room(linda, case_id)
        case.assert_no_errors(allowed=SOCKET_REFUSED)
        linda.assert_no_errors()
    finally:
        await crowd.close()
        await server.stop()
