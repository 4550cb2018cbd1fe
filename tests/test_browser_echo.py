"""Echo, measured in a virtual room: does a page on speakers send the others back?

Chromium plays into a PulseAudio null sink whose monitor is its microphone
(tests/soundroom.py): a laptop on speakers, with no room in between. A bot
talks (a steady tone) and records what it hears from the page. Whatever of
its own tone comes back is echo.

Chrome's canceller was blind to Web Audio (Chromium bug 687574), and the
loopback is what lets it see the page's mix. Chromium 156's
``echoCancellation: true`` also cancels what Chrome itself plays, Web Audio
included; its ``"remote-only"`` is the old behaviour, the one the loopback was
built for, so the test uses it to show that the loopback cancels the echo
on its own, and then checks the page as it ships. Noise suppression and
gain control are off in every case: noise suppression takes a steady tone
for noise and turns it down too, which would hide whether the echo
canceller did anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.browser import NEEDS_CHROMIUM, Bots, Recording
from tests.conftest import RunningServer
from tests.soundroom import BESIDE, ROOM, echo_dbfs, launch_on_speakers, missing, sound_room

#: The echo without cancelling must be plain, and cancelling must take this off it.
AUDIBLE_DBFS = -40.0
CANCELLED_DB = 30.0

pytestmark = [NEEDS_CHROMIUM, pytest.mark.skipif(missing() is not None, reason=str(missing()))]


@pytest.fixture
async def speakers_browser() -> AsyncIterator[Browser]:
    """Chromium on the sound room's speakers and microphone, not muted."""
    with sound_room() as pulse:
        async with async_playwright() as playwright:
            browser = await launch_on_speakers(playwright, pulse)
            try:
                yield browser
            finally:
                await browser.close()


async def test_a_page_on_speakers_does_not_send_the_others_back(
    server: RunningServer, speakers_browser: Browser, bots: Bots, tmp_path: Path
) -> None:
    recording = Recording(tmp_path / "heard.wav")
    bot = await bots.start(
        server, ROOM, "Talker", "--audio", "tone:440", "--record", str(recording.path),
        "--position", f"{BESIDE[0]},{BESIDE[1]}",
    )  # fmt: skip

    async def echo(path: str, mode: bool | str) -> float:
        level, output, settled = await echo_dbfs(
            speakers_browser, server.url, bot, recording, path, mode
        )
        assert settled == mode, f"asked for echoCancellation {mode!r}, got {settled!r}"
        assert output == ("direct" if "loopback=off" in path else "loopback"), output
        return level

    # The old canceller, and the mix played straight from Web Audio: the echo comes back.
    blind = await echo("/?loopback=off", "remote-only")
    assert blind > AUDIBLE_DBFS, f"no echo in the sound room: {blind:.1f} dBFS"
    # The same canceller, with the mix through the loopback: it hears the mix and takes it out.
    through_loopback = await echo("/", "remote-only")
    # The canceller as the page asks for it (true), with the loopback.
    shipped = await echo("/", True)
    levels = f"{blind:.1f}, {through_loopback:.1f} and {shipped:.1f} dBFS"
    assert through_loopback < blind - CANCELLED_DB, levels
    assert shipped < blind - CANCELLED_DB, levels
