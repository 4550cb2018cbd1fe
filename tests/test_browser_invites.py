"""Invite links in the page: the room and the invite from the URL, one click, kept for the room."""

from __future__ import annotations

import time

from playwright.async_api import expect

from chatsubo.server.cli import invite_link
from chatsubo.server.identity import ANY_ROOM, TokenSigner
from tests.browser import Bots, Crowd
from tests.conftest import TEST_SECRET, ServerFactory

SIGNER = TokenSigner(TEST_SECRET)


def link_path(room: str | None, token: str) -> str:
    """The path and fragment of an invite link, as ``chatsubo token`` prints it."""
    return invite_link("", room or ANY_ROOM, token)


async def test_an_invite_link_opens_its_room_in_one_click(
    make_server: ServerFactory, crowd: Crowd, bots: Bots
) -> None:
    server = await make_server(require_token=True)
    barkeep = await bots.start(
        invite_link(server.url, "vip", SIGNER.invite("vip")), "vip", "barkeep", "--audio", "silence"
    )
    await barkeep.wait_for("joined")
    ann = await crowd.visit(server, "Ann", path=link_path("vip", SIGNER.invite("vip", name="Ann")))
    page = ann.page
    # The invite leaves the address bar; the room stays in it.
    await expect(page).to_have_url(f"{server.url}/?room=vip")
    await expect(ann.room_field).to_have_value("vip")
    await expect(ann.name_field).to_have_value("Ann")
    await expect(ann.name_field).to_have_js_property("readOnly", True)
    # The lobby shows the room the invite opens, and no door to new rooms.
    await expect(ann.room_entry("vip")).to_be_visible()
    await expect(page.locator("#create")).to_be_hidden()
    await page.locator("#join").click()
    await ann.in_room("vip")
    await barkeep.wait_for("peer_joined", name="Ann")
    # The invite was kept for the room: the plain deep link works after a reload.
    await page.locator("#leave").click()
    await page.goto(f"{server.url}/?room=vip")
    await expect(ann.name_field).to_have_value("Ann")
    await page.locator("#join").click()
    await ann.in_room("vip")
    ann.assert_no_errors()


async def test_without_an_invite_the_page_says_the_bar_is_invite_only(
    make_server: ServerFactory, crowd: Crowd
) -> None:
    server = await make_server(require_token=True)
    insider = await crowd.visit(server, "Insider", path=link_path(None, SIGNER.invite(ANY_ROOM)))
    await insider.enter("vip")
    stranger = await crowd.visit(server, "Stranger")
    rooms = stranger.page.locator("#rooms")
    await expect(rooms).to_have_text(
        "This bar is invite-only. To come in, open the invite link its host gave you."
    )
    await stranger.join("vip")
    await expect(stranger.lobby_error).to_be_visible()
    await expect(stranger.page.locator("#lobby-error-text")).to_have_text(
        "Room vip is invite-only: join with an invite link from the bar's host."
    )
    await expect(stranger.lobby).to_be_visible()
    stranger.assert_no_errors()


async def test_an_expired_invite_is_explained_and_dropped(
    make_server: ServerFactory, crowd: Crowd
) -> None:
    server = await make_server(require_token=True)
    person = await crowd.visit(server, "Late")
    late = SIGNER.invite("vip", ttl=30, now=time.time() - 200)
    await person.page.evaluate(
        "token => localStorage.setItem('chatsubo.invites', JSON.stringify({vip: token}))", late
    )
    await person.page.reload()
    # Expired invites are dropped once the page has started; the server would refuse them anyway.
    await person.page.wait_for_function("() => localStorage.getItem('chatsubo.invites') === '{}'")
    await person.page.goto(f"{server.url}{link_path('vip', late)}")
    # Filed again from the link: the server's refusal says why, and drops it.
    await person.page.locator("#join").click()
    await expect(person.page.locator("#lobby-error-text")).to_have_text(
        "The invite does not open room vip: it has expired. "
        "Ask the bar's host for a new invite link."
    )
    kept = await person.page.evaluate("() => localStorage.getItem('chatsubo.invites')")
    assert kept == "{}"
    person.assert_no_errors()


async def test_a_deep_link_fills_the_room_on_an_open_server(
    make_server: ServerFactory, crowd: Crowd
) -> None:
    server = await make_server()
    person = await crowd.visit(server, "Case", path="/?room=lounge")
    await expect(person.room_field).to_have_value("lounge")
    await expect(person.page.locator("#create")).to_be_visible()
    await person.page.locator("#join").click()
    await person.in_room("lounge")
    plain = await crowd.visit(server, "Molly")
    await expect(plain.room_field).to_have_value("chatsubo-main")
    await expect(plain.room_entry("lounge")).to_be_visible()
    person.assert_no_errors()
