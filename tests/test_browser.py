"""The page in a real browser: Debian's Chromium, real server, real bots, real WebRTC.

Every visitor has a browser context of their own (their own localStorage) and
a fake microphone. Nothing is mocked: pages and bots meet on loopback through
the signaling server and then talk peer to peer.
"""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import Locator, expect

from chatsubo.server.config import ServerConfig
from tests.browser import (
    DENY_MICROPHONE,
    MESH_DEADLINE,
    NEEDS_CHROMIUM,
    PHONE,
    Bots,
    Crowd,
    Person,
    near,
)
from tests.conftest import RunningServer, ServerFactory, poll, start_server

pytestmark = NEEDS_CHROMIUM

ROOM = "chatsubo-main"

#: What Chromium itself logs while the server is down: not the page's doing.
SOCKET_REFUSED = re.compile(r"WebSocket connection to '[^']*' failed")


async def test_two_people_and_a_bartender_hear_chat_and_watch_each_other_move(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    barkeep = await bots.start(server, ROOM, "Barkeep", "--audio", "tone", "--echo")
    bot_id = await barkeep.peer_id()
    case = await crowd.visit(server, "Case")
    molly = await crowd.visit(server, "Molly")
    case_id = await case.enter(ROOM)
    molly_id = await molly.enter(ROOM)
    assert len({bot_id, case_id, molly_id}) == 3

    # Everyone connects to everyone.
    await asyncio.gather(
        case.connected_to(molly_id, bot_id),
        molly.connected_to(case_id, bot_id),
        barkeep.wait_for("peer_connected", peer=case_id),
        barkeep.wait_for("peer_connected", peer=molly_id),
    )
    await expect(case.person(molly_id)).to_contain_text("Molly")
    await expect(case.person(bot_id)).to_contain_text("Barkeep")
    await expect(molly.person(case_id)).to_contain_text("Case")
    await expect(molly.person(bot_id)).to_contain_text("Barkeep")
    await expect(case.page.get_by_label("Volume for Barkeep")).to_be_visible()
    await expect(molly.page.get_by_label("Volume for Case")).to_be_visible()

    # Everyone hears everyone: audio bytes keep arriving on every link.
    assert (await case.inbound_audio_bytes()).keys() == {molly_id, bot_id}
    assert (await molly.inbound_audio_bytes()).keys() == {case_id, bot_id}
    await asyncio.gather(case.hears(molly_id, bot_id), molly.hears(case_id, bot_id))
    # The bartender's steady tone reaches Web Audio, not just the network.
    for person in (case, molly):
        await expect(person.person(bot_id)).to_have_attribute(
            "data-speaking", "true", timeout=MESH_DEADLINE * 1000
        )

    # Everyone is on the map, and I am marked as me.
    for person in (case, molly):
        await expect(person.page.locator("#map .avatar")).to_have_count(3)
    await expect(case.page.locator("#map .avatar.me")).to_have_attribute("data-peer", case_id)
    await expect(case.avatar(bot_id)).to_contain_text("Barkeep")
    await case.screenshot("room-three-people.png")

    # Chat reaches the other page and the bot, and the bot's answer reaches both pages.
    await case.say("hello Barkeep")
    for person in (case, molly):
        line = person.chat_lines(case_id).filter(has_text="hello Barkeep")
        await expect(line.locator(".who")).to_have_text("Case")
        await expect(line.locator(".text")).to_have_text("hello Barkeep")
    await barkeep.wait_for("chat", peer=case_id, text="hello Barkeep")
    await barkeep.wait_for("said", text="Case: hello Barkeep")
    for person in (case, molly):
        answer = person.chat_lines(bot_id).filter(has_text="Case: hello Barkeep")
        await expect(answer.locator(".who")).to_have_text("Barkeep")
        await expect(answer.locator(".text")).to_have_text("Case: hello Barkeep")
    await expect(case.page.locator("#chat-input")).to_have_value("")

    # Case walks to the middle of the Lounge; Molly and the bot see where Case went.
    lounge = (20.0, 4.0)
    await case.click_map(*lounge)
    await case.sees_at(case_id, *lounge, tolerance=0.5)
    await molly.sees_at(case_id, *lounge, tolerance=0.75)
    await expect(molly.avatar(case_id)).to_have_attribute("data-zone", "Lounge")
    await barkeep.wait_for(
        "position",
        peer=case_id,
        zone="Lounge",
        where=lambda e: near(e["x"], lounge[0], 0.75) and near(e["y"], lounge[1], 0.75),
    )

    # Case leaves: back to the lobby, and gone from Molly's room.
    await case.page.locator("#leave").click()
    await expect(case.lobby).to_be_visible()
    await expect(case.room_view).to_be_hidden()
    await expect(molly.person(case_id)).to_have_count(0)
    await expect(molly.avatar(case_id)).to_have_count(0)
    await expect(molly.notices).to_contain_text("Case left")
    await barkeep.wait_for("peer_left", peer=case_id)
    await expect(molly.person(bot_id)).to_have_attribute("data-state", "connected")

    case.assert_no_errors()
    molly.assert_no_errors()


async def test_lobby_follows_a_room_live(server: RunningServer, crowd: Crowd, bots: Bots) -> None:
    room = "neon-lounge"
    watcher = await crowd.visit(server, "Watcher")
    page = watcher.page
    # A reload would lose this: the list must change in place.
    await page.evaluate("() => { window.__sameDocument = true }")
    empty = page.locator("#rooms li.empty")
    entry = watcher.room_entry(room)
    await expect(empty).to_be_visible()
    await expect(page.locator("#rooms li.room")).to_have_count(0)

    barkeep = await bots.start(server, room, "Barkeep", "--audio", "silence")
    await expect(entry).to_have_attribute("data-count", "1", timeout=MESH_DEADLINE * 1000)
    await expect(entry).to_contain_text(room)
    await expect(entry).to_contain_text("Central Bar")
    await expect(empty).to_have_count(0)

    # A second visitor joins from the list's own button.
    linda = await crowd.visit(server, "Linda")
    await linda.name_field.fill("Linda")
    button = linda.room_entry(room).locator("button.join-room")
    await expect(button).to_have_text("Join")
    await expect(button).to_have_attribute("aria-label", f"Join {room}")
    await button.click()
    await linda.in_room(room)
    await expect(entry).to_have_attribute("data-count", "2")
    await expect(entry).to_contain_text("2 of 10")
    await watcher.screenshot("lobby.png")

    await linda.page.locator("#leave").click()
    await expect(linda.lobby).to_be_visible()
    await expect(entry).to_have_attribute("data-count", "1")
    await barkeep.stop()
    await expect(entry).to_have_count(0)
    await expect(empty).to_be_visible()
    assert await page.evaluate("() => window.__sameDocument") is True

    watcher.assert_no_errors()
    linda.assert_no_errors()


async def test_lobby_shuts_its_doors_while_the_server_is_away(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    room = "neon-lounge"
    barkeep = await bots.start(server, room, "Barkeep", "--audio", "silence")
    await barkeep.peer_id()
    watchers = [
        await crowd.visit(server, "Watcher"),
        await crowd.visit(server, "Linda", viewport=PHONE, touch=True),
    ]

    def doors(person: Person) -> list[Locator]:
        """Every way in: the form's Join, a new room, and the listed room's own Join."""
        page = person.page
        own = person.room_entry(room).locator("button.join-room")
        return [page.locator("#join"), page.locator("#create"), own]

    for person in watchers:
        for door in doors(person):
            await expect(door).to_be_enabled(timeout=MESH_DEADLINE * 1000)

    await server.stop()
    for person in watchers:
        status = person.page.locator("#lobby-status")
        await expect(status).to_be_visible()
        await expect(status).to_contain_text("Can't reach the server")
        await expect(status).to_contain_text("trying again")
        # What the list still shows is from before: marked so, and nobody can use it.
        await expect(person.page.locator("#rooms")).to_have_attribute("data-stale", "true")
        for door in doors(person):
            await expect(door).to_be_disabled()
    await watchers[0].screenshot("lobby-server-away.png")
    await watchers[1].screenshot("lobby-server-away-phone.png")

    restarted = await start_server(server.config, server.port)
    try:
        for person in watchers:
            await expect(person.page.locator("#lobby-status")).to_be_hidden(
                timeout=MESH_DEADLINE * 1000
            )
            # The bot is back in its room, and the fresh list opens every door again.
            for door in doors(person):
                await expect(door).to_be_enabled(timeout=MESH_DEADLINE * 1000)
            await expect(person.page.locator("#rooms")).to_have_attribute("data-stale", "false")
    finally:
        await bots.close()
        await restarted.stop()

    for person in watchers:
        person.assert_no_errors(allowed=SOCKET_REFUSED)


async def test_full_room_is_explained_with_a_way_to_try_again(
    make_server: ServerFactory, crowd: Crowd, bots: Bots
) -> None:
    server = await make_server(max_room_size=1)
    barkeep = await bots.start(server, "snug", "Barkeep", "--audio", "silence")
    await barkeep.peer_id()
    case = await crowd.visit(server, "Case")
    linda = await crowd.visit(server, "Linda", viewport=PHONE, touch=True)
    for person in (case, linda):
        # The list says so: its button is shut, reads "Full", and looks unlike Join.
        button = person.room_entry("snug").locator("button.join-room")
        await expect(button).to_have_text("Full")
        await expect(button).to_be_disabled()
        await expect(button).to_have_attribute("aria-label", "snug is full")
        looks = "e => getComputedStyle(e).backgroundColor"
        join = person.page.locator("#join")
        await expect(join).to_be_enabled()
        assert await button.evaluate(looks) != await join.evaluate(looks), person.name
    await linda.screenshot("lobby-full-phone.png")
    # The form still knocks, and the answer explains.
    await case.join("snug")

    error = case.lobby_error
    await expect(error).to_be_visible()
    await expect(error).to_have_attribute("data-code", "room_full")
    await expect(error).to_have_attribute("role", "alert")
    await expect(error).to_contain_text(re.compile("full", re.IGNORECASE))
    retry = error.locator("#retry")
    await expect(retry).to_have_text("Try again")
    await expect(retry).to_be_visible()
    await retry.focus()
    await expect(retry).to_be_focused()
    await expect(case.room_view).to_be_hidden()
    assert barkeep.matching("peer_joined") == [], "nobody got into the full room"

    # A full room is an ordinary answer, not a fault: the page logs no error for it.
    case.assert_no_errors()
    linda.assert_no_errors()


async def test_listening_without_a_microphone(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    barkeep = await bots.start(server, ROOM, "Barkeep", "--audio", "tone")
    bot_id = await barkeep.peer_id()
    # The page offers to the bot already there: with nothing to send, it must still receive.
    case = await crowd.visit(server, "Case", viewport=PHONE, init_script=DENY_MICROPHONE)
    case_id = await case.enter(ROOM)

    await expect(case.page.locator("#mic-notice")).to_be_visible()
    await case.connected_to(bot_id)
    await barkeep.wait_for("peer_connected", peer=case_id)
    await case.hears(bot_id)
    await expect(case.avatar(bot_id)).to_have_count(1)
    await case.screenshot("room-phone.png")

    case.assert_no_errors()


async def test_page_rides_out_a_server_restart(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    barkeep = await bots.start(server, ROOM, "Barkeep", "--audio", "tone")
    bot_id = await barkeep.peer_id()
    case = await crowd.visit(server, "Case")
    case_id = await case.enter(ROOM)
    await case.connected_to(bot_id)
    await barkeep.wait_for("peer_connected", peer=case_id)
    await case.page.evaluate(
        "id => { window.__pc = window.chatsubo.peer.links.get(id).pc }", bot_id
    )
    assert await case.page.evaluate("() => window.__pc instanceof RTCPeerConnection")

    await server.stop()
    await expect(case.status).to_have_attribute("data-state", "reconnecting")
    await expect(case.status).to_contain_text("Reconnecting")

    config: ServerConfig = server.config
    restarted = await start_server(config, server.port)
    try:
        await expect(case.status).to_have_attribute(
            "data-state", "connected", timeout=MESH_DEADLINE * 1000
        )
        await expect(case.status).not_to_contain_text("Reconnecting")
        # Both came back under their old ids, and the link between them never noticed.
        await poll(lambda: {case_id, bot_id} <= restarted.peer_ids(), MESH_DEADLINE)
        assert await case.page.evaluate(
            "id => window.chatsubo.peer.links.get(id).pc === window.__pc", bot_id
        ), "the link to the bot was replaced"
        await expect(case.person(bot_id)).to_have_attribute("data-state", "connected")
        await case.hears(bot_id)
        assert len(barkeep.matching("peer_connected", peer=case_id)) == 1, "a second link"
        assert barkeep.matching("peer_disconnected", peer=case_id) == []
        assert barkeep.matching("peer_left", peer=case_id) == []
    finally:
        await bots.close()
        await restarted.stop()

    case.assert_no_errors(allowed=SOCKET_REFUSED)


EVIL_NAME = "<img src=x onerror=__xss=1>"
EVIL_TEXT = '<b>hi</b><img src=x onerror="window.__xss=2"><script>window.__xss=3</script>'


async def test_names_and_chat_are_shown_as_plain_text(server: RunningServer, crowd: Crowd) -> None:
    molly = await crowd.visit(server, "Molly")
    evil = await crowd.visit(server, EVIL_NAME)
    molly_id = await molly.enter(ROOM)
    evil_id = await evil.enter(ROOM)
    await asyncio.gather(molly.connected_to(evil_id), evil.connected_to(molly_id))

    await expect(molly.person(evil_id)).to_contain_text(EVIL_NAME)
    await expect(molly.avatar(evil_id)).to_contain_text(EVIL_NAME)
    await expect(molly.notices).to_contain_text(f"{EVIL_NAME} joined")
    await evil.say(EVIL_TEXT)
    for person in (molly, evil):
        line = person.chat_lines(evil_id)
        await expect(line.locator(".who")).to_have_text(EVIL_NAME)
        await expect(line.locator(".text")).to_have_text(EVIL_TEXT)

    for person in (molly, evil):
        assert await person.page.evaluate("() => window.__xss") is None, person.name
        markup = person.page.locator(
            "#people img, #people b, #chat-log img, #chat-log b, #chat-log script, "
            "#notices img, #map img"
        )
        await expect(markup).to_have_count(0)
        person.assert_no_errors()


async def test_keyboard_alone_joins_and_walks(server: RunningServer, crowd: Crowd) -> None:
    case = await crowd.visit(server, "Case")
    page = case.page
    keyboard = page.keyboard

    await case.tab_to(case.name_field)
    await keyboard.press("Control+A")
    await keyboard.type("Case")
    await keyboard.press("Tab")
    await expect(case.room_field).to_be_focused()
    await keyboard.press("Control+A")
    await keyboard.type("keys-only")
    # A form whose Join is shut (until the server answers) ignores Enter.
    await expect(page.locator("#join")).to_be_enabled()
    await keyboard.press("Enter")
    case_id = await case.in_room("keys-only")
    await expect(page.locator("#map .avatar.me")).to_have_attribute("data-peer", case_id)
    await expect(case.avatar(case_id)).to_contain_text("Case")

    await case.tab_to(case.map)
    x, y = await case.position_of(case_id)
    for key in ("d", "d", "ArrowRight", "ArrowRight"):
        await keyboard.press(key)
    # Four steps of half a meter to the right.
    await case.sees_at(case_id, x + 2.0, y, tolerance=0.3)

    mute = page.locator("#mute")
    await case.tab_to(mute)
    await keyboard.press("Space")
    await expect(mute).to_have_attribute("aria-pressed", "true")
    await expect(mute).to_have_text("Unmute")
    await keyboard.press("Enter")
    await expect(mute).to_have_attribute("aria-pressed", "false")
    await expect(mute).to_have_text("Mute")

    case.assert_no_errors()


#: Two names as long as a name may be, with no spaces to break them at; the
#: second, of the widest letter, is wider than the people list on any screen.
LONG_NAMES = ("WintermuteStraylightTessierAshpo", "W" * 32)
CORNER_NAME = "Corner Case Name"
#: Whether an element ends before the right edge of the list holding it.
ENDS_IN_ITS_LIST = (
    "e => e.getBoundingClientRect().right <= e.closest('ul').getBoundingClientRect().right"
)


async def test_a_crowded_room_stays_legible_on_a_desktop_and_a_phone(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    """Five people: three on one spot (two with the longest names) and one in a corner."""
    assert all(len(name) == 32 for name in LONG_NAMES)
    spot = (12.0, 9.0)
    corner = (0.0, 16.0)
    case = await crowd.visit(server, "Case")
    linda = await crowd.visit(server, "Linda", viewport=PHONE, touch=True)
    case_id = await case.enter(ROOM)
    linda_id = await linda.enter(ROOM)
    # The bots come in after the pages, so that both announce them.
    bot_args = ("--audio", "silence", "--position")
    chatter = ("--say", "hi", "--every", "2")
    long_ones = [
        await bots.start(server, ROOM, LONG_NAMES[0], *bot_args, "12,9"),
        await bots.start(server, ROOM, LONG_NAMES[1], *chatter, *bot_args, "12,9"),
    ]
    cornered = await bots.start(server, ROOM, CORNER_NAME, *bot_args, "0,16")
    long_ids = [await bot.peer_id() for bot in long_ones]
    corner_id = await cornered.peer_id()
    await asyncio.gather(
        case.connected_to(linda_id, *long_ids, corner_id),
        linda.connected_to(case_id, *long_ids, corner_id),
    )
    # Linda taps her way onto the spot where the two long names stand.
    await linda.tap_map(*spot)
    for person in (case, linda):
        for peer_id in long_ids:
            await person.sees_at(peer_id, *spot, tolerance=0.01)
        await person.sees_at(corner_id, *corner, tolerance=0.01)
        await person.sees_at(linda_id, *spot, tolerance=0.25)
    await case.say("Cheers")

    for person in (case, linda):
        page = person.page
        await expect(page.locator("#map .avatar")).to_have_count(5)
        # Labels never cover each other, and no one is cut off at the edge.
        await person.map_is_legible()
        for name, peer_id in zip(LONG_NAMES, long_ids, strict=True):
            # The map may cut a name short; the avatar's title has it whole.
            await expect(person.avatar(peer_id).locator("title")).to_have_text(name)
            # The people list cuts it short on screen only: the text and the title are whole.
            who = person.person(peer_id).locator(".who")
            await expect(who).to_have_text(name)
            await expect(who).to_have_attribute("title", name)
            assert await who.evaluate(ENDS_IN_ITS_LIST), f"{name} overflows {person.name}'s list"
        cut_short = "e => e.scrollWidth > e.clientWidth"
        assert await person.person(long_ids[1]).locator(".who").evaluate(cut_short), person.name
        # The colon is part of the line, mine and others': copied or read aloud, "name: text".
        await expect(person.chat_lines(case_id)).to_have_text("Case: Cheers")
        await expect(person.chat_lines(long_ids[1]).first).to_have_text(f"{LONG_NAMES[1]}: hi")
        await expect(person.notices).to_contain_text(f"{LONG_NAMES[0]} joined")
        await expect(person.notices).to_contain_text(f"{CORNER_NAME} joined")
        assert await person.sideways_scroll() == 0, f"{person.name}'s page scrolls sideways"

    # A phone is tapped, not clicked.
    mouse, touch = case.page.locator("#room .hint"), linda.page.locator("#room .hint")
    await expect(mouse).to_have_text(re.compile("^Click to walk"), use_inner_text=True)
    await expect(touch).to_have_text(re.compile("^Tap to walk"), use_inner_text=True)
    await expect(touch).not_to_contain_text("Click", use_inner_text=True)
    # Chat arriving scrolls the log, not the phone's page away from the map.
    assert await linda.page.evaluate("() => window.scrollY") == 0

    await case.screenshot("room-crowded-desktop.png")
    # Not full_page: Chromium drops the touch emulation for those, and says "Click".
    await linda.screenshot("room-crowded-phone.png")
    case.assert_no_errors()
    linda.assert_no_errors()
