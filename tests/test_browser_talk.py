"""Talking in the page: push-to-talk, your own level, and the speaking lights.

Real Chromium with its fake microphone (a beep), a real server, and a bot
that records what it hears: the recording is read while it grows, and judged
by time windows relative to when Space went down and up.
"""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from tests.browser import (
    MESH_DEADLINE,
    NEEDS_CHROMIUM,
    RATE,
    UI_DEADLINE,
    Bots,
    Crowd,
    Person,
    Recording,
    eventually,
)
from tests.conftest import RunningServer

pytestmark = NEEDS_CHROMIUM

ROOM = "chatsubo-main"
#: Peaks (of 16-bit samples) at or below this are silence, above LOUD the page's beep.
QUIET = 200
LOUD = 2000
#: How long the voice takes to reach the recording, with room to spare (s).
LATENCY = 0.6


async def _true(value: bool) -> bool:
    return value


async def talk_button_says(person: Person, text: str) -> None:
    talk = person.page.locator("#talk")
    await expect(talk).to_have_text(text)
    await expect(talk).to_have_attribute("aria-pressed", str(text == "Talking").lower())


async def meter(person: Person) -> float:
    value: float = await person.page.locator("#mic-level").evaluate("(m) => m.value")
    return value


async def test_push_to_talk_sends_the_voice_only_while_space_is_held(
    server: RunningServer, crowd: Crowd, bots: Bots, tmp_path: Path
) -> None:
    recording = Recording(tmp_path / "heard.wav")
    ear = await bots.start(server, ROOM, "Ear", "--audio", "tone", "--record", str(recording.path))
    ear_id = await ear.peer_id()
    case = await crowd.visit(server, "Case")
    case_id = await case.enter(ROOM)
    await case.connected_to(ear_id)
    await ear.wait_for("peer_connected", peer=case_id, timeout=MESH_DEADLINE)

    # Off by default: the page's beep reaches the bot, and the bot's tone lights Case's list.
    ptt = case.page.locator("#ptt")
    await expect(ptt).not_to_be_checked()
    await expect(case.page.locator("#talk")).to_be_hidden()
    await eventually(
        lambda: _true(
            recording.frames() > RATE
            and recording.peak(recording.frames() - RATE, recording.frames()) > LOUD
        ),
        MESH_DEADLINE,
        lambda: "the bot never heard the page's beep",
        interval=0.1,
    )
    await expect(case.person(ear_id)).to_have_attribute(
        "data-speaking", "true", timeout=MESH_DEADLINE * 1000
    )
    # Your own level moves with the fake microphone.
    await eventually(lambda: _own_level_above(case, 0), UI_DEADLINE, lambda: "the meter stays at 0")

    # Push-to-talk on: silent while Space is up.
    await ptt.check()
    await talk_button_says(case, "Hold to talk")
    off = recording.frames()
    assert await recording.window(LATENCY, LATENCY + 2.0, off) <= QUIET

    # Held for 1.5 s: the beep goes out, and the button says so.
    await case.page.keyboard.down("Space")
    down = recording.frames()
    await talk_button_says(case, "Talking")
    await eventually(lambda: _own_level_above(case, 0), UI_DEADLINE, lambda: "the meter stays at 0")
    await recording.reaches(down + int(1.5 * RATE))
    await case.page.keyboard.up("Space")
    up = recording.frames()
    await talk_button_says(case, "Hold to talk")
    assert recording.peak(down + int(LATENCY * RATE), up) > LOUD
    # Space on the focused checkbox talked; it did not untick it.
    await expect(ptt).to_be_checked()
    # Let go: silent again.
    assert await recording.window(LATENCY, LATENCY + 1.5, up) <= QUIET

    # Typing a space in the chat box does not talk.
    chat = case.page.locator("#chat-input")
    await chat.click()
    await case.page.keyboard.down("Space")
    typing = recording.frames()
    await case.page.keyboard.type("a drink")
    await expect(chat).to_have_value(" a drink")
    await talk_button_says(case, "Hold to talk")
    assert await recording.window(LATENCY, LATENCY + 1.0, typing) <= QUIET
    await case.page.keyboard.up("Space")

    # Mute wins: held Space with Mute on stays silent.
    await case.page.locator("#mute").click()
    await case.map.focus()
    await case.page.keyboard.down("Space")
    muted = recording.frames()
    await talk_button_says(case, "Talking")
    assert await recording.window(LATENCY, LATENCY + 1.5, muted) <= QUIET
    assert await meter(case) == 0
    await case.page.keyboard.up("Space")
    await case.page.locator("#mute").click()

    case.assert_no_errors()


async def _own_level_above(person: Person, level: float) -> bool:
    return await meter(person) > level


async def test_push_to_talk_is_remembered_and_has_a_button_to_hold(
    server: RunningServer, crowd: Crowd
) -> None:
    case = await crowd.visit(server, "Case", touch=True)
    await case.enter(ROOM)
    await expect(case.page.locator("#ptt")).not_to_be_checked()
    await case.page.locator("#ptt").check()
    talk = case.page.locator("#talk")
    await expect(talk).to_be_visible()

    # Press and hold the button; let go, or have the press cancelled.
    await talk.hover()
    await case.page.mouse.down()
    await talk_button_says(case, "Talking")
    await eventually(lambda: _own_level_above(case, 0), UI_DEADLINE, lambda: "the meter stays at 0")
    await case.page.mouse.up()
    await talk_button_says(case, "Hold to talk")
    await case.page.mouse.down()
    await talk_button_says(case, "Talking")
    await talk.dispatch_event("pointercancel")
    await talk_button_says(case, "Hold to talk")
    await case.page.mouse.up()

    # Remembered after a reload, and off again when turned off.
    await case.page.reload()
    await case.enter(ROOM)
    await expect(case.page.locator("#ptt")).to_be_checked()
    await expect(talk).to_be_visible()
    await case.page.locator("#ptt").uncheck()
    await expect(talk).to_be_hidden()
    await case.page.reload()
    await case.enter(ROOM)
    await expect(case.page.locator("#ptt")).not_to_be_checked()
    await expect(talk).to_be_hidden()
    case.assert_no_errors()
