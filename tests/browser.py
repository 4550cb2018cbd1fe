"""Real-browser helpers: Debian's Chromium driven by Playwright, and bot processes.

A :class:`Person` is one visitor: their own browser context (so their own
localStorage), one page, and every console error and uncaught exception that
page produced. A :class:`Bot` is ``python -m chatsubo.client --json`` run as a
subprocess, its events collected as they arrive. :class:`Crowd` and
:class:`Bots` own several of each and close them all, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    expect,
)
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from chatsubo.space import BAR
from tests.conftest import RunningServer, poll

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"

#: Debian's Chromium: Playwright's own browser download is not used.
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]

#: Marks a test, or a module's ``pytestmark``, to run only where Chromium is installed.
NEEDS_CHROMIUM = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"the browser tests drive Debian's Chromium at {CHROMIUM}: apt-get install chromium",
)

#: An init script: every random draw is 0.5, so a page arrives in the middle
#: of the arrival area (MIDDLE), unless someone stands there.
ARRIVE_IN_THE_MIDDLE = "Math.random = () => 0.5;"
MIDDLE = BAR.map.arrival.center
#: Beside the middle, within a conversation: heard at full gain from there.
BESIDE_THE_MIDDLE = (MIDDLE[0] + 1.5, MIDDLE[1])

DESKTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)

#: Deadlines in seconds, generous: two shared cores run the server, the
#: browsers and the bots. Nothing waits this long unless something is wrong.
UI_DEADLINE = 15.0
MESH_DEADLINE = 30.0
BOT_DEADLINE = 30.0

#: Playwright's assertions and actions wait this long (milliseconds) unless told.
expect.set_options(timeout=UI_DEADLINE * 1000)

#: getUserMedia refused, as when the visitor says no or has no microphone.
DENY_MICROPHONE = """
navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException("denied", "NotAllowedError"));
"""

#: Inbound audio bytes per link of the page's MeshPeer, from getStats().
_INBOUND_AUDIO_BYTES = """
async () => {
  const bytes = {};
  for (const [peerId, link] of window.chatsubo.peer.links) {
    let total = 0;
    if (link.pc) {
      const stats = await link.pc.getStats();
      stats.forEach((report) => {
        if (report.type === "inbound-rtp" && report.kind === "audio") {
          total += report.bytesReceived || 0;
        }
      });
    }
    bytes[peerId] = total;
  }
  return bytes;
}
"""

#: The state of the page's RTCPeerConnection to a peer; null without one.
_LINK_STATE = """
id => window.chatsubo.peer.links.get(id)?.pc.connectionState ?? null
"""

#: The Opus fmtp parameters of the current local and remote descriptions of a link.
_OPUS_FMTP = """
id => {
  const pc = window.chatsubo.peer.links.get(id)?.pc;
  const fmtp = (description) => {
    if (!description) return null;
    const opus = /^a=rtpmap:(\\d+) opus\\//im.exec(description.sdp);
    if (opus === null) return null;
    const prefix = `a=fmtp:${opus[1]} `;
    const line = description.sdp.split("\\r\\n").find((l) => l.startsWith(prefix));
    return line === undefined ? "" : line.slice(prefix.length);
  };
  return pc ? [fmtp(pc.currentLocalDescription), fmtp(pc.currentRemoteDescription)] : null;
}
"""

#: Whether an element's data-x/data-y are within `tolerance` meters of (x, y).
_STANDS_NEAR = """
([selector, x, y, tolerance]) => {
  const element = document.querySelector(selector);
  if (element === null) return false;
  const dx = Number(element.dataset.x) - x;
  const dy = Number(element.dataset.y) - y;
  return Math.abs(dx) <= tolerance && Math.abs(dy) <= tolerance;
}
"""

#: What is wrong with the map as drawn: labels on top of each other or cut
#: off at its edge, avatars cut off or drawn away from where they stand.
_MAP_PROBLEMS = """
() => {
  const map = document.getElementById("map");
  const ctm = map.getScreenCTM();
  const rect = (element) => element.getBoundingClientRect();
  const bounds = rect(map);
  const inside = (r) =>
    r.left >= bounds.left && r.right <= bounds.right &&
    r.top >= bounds.top && r.bottom <= bounds.bottom;
  const apart = (a, b) =>
    a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top;
  const show = (r) => `[${[r.left, r.top, r.right, r.bottom].map((n) => n.toFixed(1))}]`;
  const problems = [];
  const labels = [];
  for (const avatar of map.querySelectorAll(".avatar")) {
    const name = avatar.querySelector("title")?.textContent ?? avatar.dataset.peer;
    const body = rect(avatar.querySelector("circle:not(.speaking-ring)"));
    const ring = rect(avatar.querySelector(".speaking-ring"));
    const label = rect(avatar.querySelector("text"));
    const stands = new DOMPoint(Number(avatar.dataset.x), Number(avatar.dataset.y));
    const at = stands.matrixTransform(ctm);
    const [cx, cy] = [(body.left + body.right) / 2, (body.top + body.bottom) / 2];
    if (Math.hypot(cx - at.x, cy - at.y) > 1) {
      problems.push(`${name}: drawn at (${cx}, ${cy}), stands at (${at.x}, ${at.y})`);
    }
    const edges = show(bounds);
    if (!inside(ring)) problems.push(`${name}: avatar ${show(ring)} cut off by the map ${edges}`);
    if (!inside(label)) problems.push(`${name}: label ${show(label)} cut off by the map ${edges}`);
    if (label.width === 0) problems.push(`${name}: no label`);
    for (const [other, box] of labels) {
      if (!apart(label, box)) {
        problems.push(`labels of ${name} ${show(label)} and ${other} ${show(box)} overlap`);
      }
    }
    labels.push([name, label]);
  }
  return problems;
}
"""

#: How far the page scrolls sideways, in CSS pixels: 0 when it fits the window.
_SIDEWAYS_SCROLL = """
() => document.documentElement.scrollWidth - document.documentElement.clientWidth
"""

#: The viewport point where map coordinates (x, y), in meters, are drawn.
_MAP_TO_CLIENT = """
([x, y]) => {
  const map = document.getElementById("map");
  const point = new DOMPoint(x, y).matrixTransform(map.getScreenCTM());
  return [point.x, point.y];
}
"""


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    what: Callable[[], str],
    interval: float = 0.25,
) -> None:
    """Wait until the asynchronous ``check()`` holds; after ``timeout``, fail saying ``what()``."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what()}") from None


#: Bots record at this rate (frames a second), in 16-bit stereo.
RATE = 48000
#: The recorder's WAV header (the wave module's): the frames follow.
HEADER = 44


class Recording:
    """A bot's WAV recording, read while the bot still writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def frames(self) -> int:
        """How many stereo frames are written so far."""
        if not self.path.exists():
            return 0
        return max(0, self.path.stat().st_size - HEADER) // 4

    def _pcm(self, start: int, end: int) -> NDArray[np.int32]:
        data = self.path.read_bytes()[HEADER + 4 * start : HEADER + 4 * end]
        return np.frombuffer(data[: len(data) // 4 * 4], dtype="<i2").astype(np.int32)

    def peak(self, start: int, end: int) -> int:
        """The loudest sample in frames ``[start, end)``, either channel."""
        return int(np.abs(self._pcm(start, end)).max(initial=0))

    def dbfs(self, start: int, end: int) -> float:
        """The RMS level of frames ``[start, end)``, both channels, in dBFS (-inf for silence)."""
        pcm = self._pcm(start, end).astype(np.float64) / 32768
        mean = float((pcm**2).mean()) if len(pcm) else 0.0
        return 10 * math.log10(mean) if mean > 0 else -math.inf

    async def reaches(self, frame: int) -> None:
        """Wait until the recording is ``frame`` frames long."""
        await eventually(
            lambda: _holds(self.frames() >= frame),
            MESH_DEADLINE,
            lambda: f"the recording stopped at {self.frames()} frames, waiting for {frame}",
            interval=0.05,
        )

    async def window(self, start: float, end: float, since: int) -> int:
        """The peak of seconds ``[start, end)`` after frame ``since``, once recorded."""
        first, last = since + int(start * RATE), since + int(end * RATE)
        await self.reaches(last)
        return self.peak(first, last)


async def _holds(value: bool) -> bool:
    return value


def css_string(text: str) -> str:
    """``text`` quoted for a CSS attribute selector."""
    return json.dumps(text)


async def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium with a fake microphone that needs no permission prompt."""
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)


@dataclass
class Person:
    """One visitor to the bar: a browser context of their own and one page."""

    name: str
    context: BrowserContext
    page: Page
    #: Console messages of type "error": "text (url:line)".
    console_errors: list[str] = field(default_factory=list)
    #: Uncaught exceptions and unhandled rejections.
    page_errors: list[str] = field(default_factory=list)

    @classmethod
    async def visit(
        cls,
        browser: Browser,
        url: str,
        name: str,
        *,
        viewport: ViewportSize = DESKTOP,
        touch: bool = False,
        init_script: str | None = None,
    ) -> Person:
        """Open a fresh context and load the page at ``url``; ``touch``: as on a phone."""
        context = await browser.new_context(viewport=viewport, has_touch=touch, is_mobile=touch)
        try:
            context.set_default_timeout(UI_DEADLINE * 1000)
            if init_script is not None:
                await context.add_init_script(init_script)
            page = await context.new_page()
            person = cls(name, context, page)
            page.on("console", person._on_console)
            page.on("pageerror", lambda error: person.page_errors.append(str(error)))
            await page.goto(url)
        except BaseException:
            await context.close()
            raise
        return person

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            self.console_errors.append(
                f"{message.text} ({where.get('url', '?')}:{where.get('lineNumber', '?')})"
            )

    async def close(self) -> None:
        await self.context.close()

    # --- the lobby -----------------------------------------------------------------

    @property
    def lobby(self) -> Locator:
        return self.page.locator("#lobby")

    @property
    def room_view(self) -> Locator:
        """The room view, ``<main id="room">``."""
        return self.page.locator("main#room")

    @property
    def lobby_error(self) -> Locator:
        return self.page.locator("#lobby-error")

    def room_entry(self, room: str) -> Locator:
        """The lobby's list item for ``room``."""
        return self.page.locator(f"#rooms li.room[data-room={css_string(room)}]")

    @property
    def name_field(self) -> Locator:
        return self.page.get_by_label("Your name", exact=True)

    @property
    def room_field(self) -> Locator:
        """The join form's room field, found by its label "Room"."""
        return self.page.get_by_label("Room", exact=True)

    async def tab_to(self, target: Locator, limit: int = 40) -> None:
        """Press Tab until ``target`` has the focus."""
        for _ in range(limit):
            if await target.evaluate("element => element === document.activeElement"):
                return
            await self.page.keyboard.press("Tab")
        raise AssertionError(f"{self.name}: Tab never reached {target} in {limit} presses")

    async def join(self, room: str) -> None:
        """Fill in the join form and submit it; does not wait for the room."""
        await self.name_field.fill(self.name)
        await self.room_field.fill(room)
        await self.page.locator("#join").click()

    async def in_room(self, room: str) -> str:
        """Wait until the room view is up and connected; my peer id."""
        try:
            await expect(self.room_view).to_be_visible()
            await expect(self.lobby).to_be_hidden()
            await expect(self.page.locator("#room-name")).to_have_text(room)
            await expect(self.status).to_have_attribute("data-state", "connected")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await self.diagnosis()}") from None
        return await self.peer_id()

    async def diagnosis(self) -> str:
        """What the page shows and logged, for a failure message."""
        lobby_error = await self.page.evaluate(
            """() => {
              const e = document.getElementById("lobby-error");
              return e && !e.hidden ? `${e.dataset.code}: ${e.textContent.trim()}` : null;
            }"""
        )
        return (
            f"{self.name}: lobby error {lobby_error!r}; "
            f"console errors {self.console_errors}; uncaught {self.page_errors}"
        )

    async def enter(self, room: str) -> str:
        """Join ``room`` from the lobby; my peer id once the room view is connected."""
        await self.join(room)
        return await self.in_room(room)

    # --- the room ------------------------------------------------------------------

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    @property
    def notices(self) -> Locator:
        return self.page.locator("#notices")

    @property
    def map(self) -> Locator:
        return self.page.locator("#map")

    async def peer_id(self) -> str:
        """My peer id, from the page's MeshPeer."""
        handle = await self.page.wait_for_function(
            "() => window.chatsubo && window.chatsubo.peer && window.chatsubo.peer.peerId"
        )
        peer_id = await handle.json_value()
        assert isinstance(peer_id, str), peer_id
        return peer_id

    def person(self, peer_id: str) -> Locator:
        """The #people entry of a remote peer."""
        return self.page.locator(f"#people li.person[data-peer={css_string(peer_id)}]")

    def avatar(self, peer_id: str) -> Locator:
        return self.page.locator(f"#map .avatar[data-peer={css_string(peer_id)}]")

    def chat_lines(self, peer_id: str) -> Locator:
        """The chat lines from ``peer_id``, mine included."""
        return self.page.locator(f"#chat-log li.chat-line[data-from={css_string(peer_id)}]")

    async def connected_to(self, *peer_ids: str, timeout: float = MESH_DEADLINE) -> None:
        """Wait until #people shows a connected link to each of ``peer_ids``."""
        for peer_id in peer_ids:
            await expect(self.person(peer_id)).to_have_attribute(
                "data-state", "connected", timeout=timeout * 1000
            )

    async def link_state(self, peer_id: str) -> str | None:
        """The connectionState of my RTCPeerConnection to ``peer_id``; None without one."""
        state = await self.page.evaluate(_LINK_STATE, peer_id)
        assert state is None or isinstance(state, str), state
        return state

    async def opus_parameters(self, peer_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """The Opus fmtp parameters of my link to ``peer_id``: my description's, then theirs."""
        found = await self.page.evaluate(_OPUS_FMTP, peer_id)
        assert found is not None, f"{self.name} has no link to {peer_id}"
        local, remote = found
        assert local is not None, f"no Opus in my description: {found}"
        assert remote is not None, f"no Opus in theirs: {found}"
        return fmtp_parameters(local), fmtp_parameters(remote)

    async def inbound_audio_bytes(self) -> dict[str, int]:
        """Audio bytes received so far on each link, from getStats()."""
        result = await self.page.evaluate(_INBOUND_AUDIO_BYTES)
        return {str(peer): int(count) for peer, count in result.items()}

    async def hears(self, *peer_ids: str, timeout: float = MESH_DEADLINE) -> None:
        """Wait until audio bytes from each of ``peer_ids`` are arriving and rising."""
        first = await self.inbound_audio_bytes()
        latest: dict[str, int] = {}

        async def rising() -> bool:
            nonlocal latest
            latest = await self.inbound_audio_bytes()
            return all(latest.get(peer, 0) > first.get(peer, 0) for peer in peer_ids)

        await eventually(
            rising, timeout, lambda: f"{self.name} hears {peer_ids}: bytes {first}, then {latest}"
        )

    async def say(self, text: str) -> None:
        """Type a chat line and send it with Enter."""
        field_ = self.page.locator("#chat-input")
        await field_.fill(text)
        await field_.press("Enter")

    async def click_map(self, x: float, y: float) -> None:
        """Click the map at (x, y) meters."""
        await expect(self.map).to_be_visible()
        client_x, client_y = await self.page.evaluate(_MAP_TO_CLIENT, [x, y])
        await self.page.mouse.click(client_x, client_y)

    async def tap_map(self, x: float, y: float) -> None:
        """Tap the map at (x, y) meters, as on a touch screen."""
        await expect(self.map).to_be_visible()
        client_x, client_y = await self.page.evaluate(_MAP_TO_CLIENT, [x, y])
        await self.page.touchscreen.tap(client_x, client_y)

    async def position_of(self, peer_id: str) -> tuple[float, float]:
        """Where the map draws ``peer_id`` now, in meters."""
        avatar = self.avatar(peer_id)
        x, y = await avatar.get_attribute("data-x"), await avatar.get_attribute("data-y")
        assert x is not None, f"avatar of {peer_id} has no data-x"
        assert y is not None, f"avatar of {peer_id} has no data-y"
        return float(x), float(y)

    async def sees_at(
        self, peer_id: str, x: float, y: float, tolerance: float, timeout: float = UI_DEADLINE
    ) -> None:
        """Wait until the map draws ``peer_id`` within ``tolerance`` meters of (x, y)."""
        selector = f"#map .avatar[data-peer={css_string(peer_id)}]"
        try:
            await self.page.wait_for_function(
                _STANDS_NEAR, arg=[selector, x, y, tolerance], timeout=timeout * 1000
            )
        except PlaywrightTimeoutError as exc:
            drawn = await self.avatar(peer_id).evaluate_all(
                "els => els.map(e => [e.dataset.x, e.dataset.y, e.dataset.zone])"
            )
            raise AssertionError(
                f"{self.name} does not see {peer_id} near ({x}, {y}): drawn at {drawn}"
            ) from exc

    async def map_is_legible(self, timeout: float = UI_DEADLINE) -> None:
        """Wait until no two labels on the map overlap and nothing on it is cut off."""
        problems: list[str] = []

        async def legible() -> bool:
            nonlocal problems
            problems = await self.page.evaluate(_MAP_PROBLEMS)
            return not problems

        await eventually(legible, timeout, lambda: f"{self.name}'s map is legible: {problems}")

    async def sideways_scroll(self) -> int:
        """How far the page scrolls sideways (CSS pixels); 0 when it fits the window."""
        return int(await self.page.evaluate(_SIDEWAYS_SCROLL))

    async def screenshot(self, filename: str) -> Path:
        """Save a screenshot under test-artifacts/screenshots/."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / filename
        await self.page.screenshot(path=path)
        assert path.stat().st_size > 0
        return path

    def assert_no_errors(self, allowed: re.Pattern[str] | None = None) -> None:
        """No uncaught exceptions and no console errors, bar those matching ``allowed``."""
        assert self.page_errors == [], f"{self.name}: uncaught errors {self.page_errors}"
        unexpected = [e for e in self.console_errors if allowed is None or not allowed.search(e)]
        assert unexpected == [], f"{self.name}: console errors {unexpected}"


class Crowd:
    """The people of one test; all their contexts are closed afterwards."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.people: list[Person] = []

    async def visit(
        self,
        server: RunningServer,
        name: str,
        *,
        viewport: ViewportSize = DESKTOP,
        touch: bool = False,
        init_script: str | None = None,
        path: str = "/",
    ) -> Person:
        """A new visitor with the page of ``server`` (at ``path``) open in the lobby."""
        person = await Person.visit(
            self.browser,
            server.url + path,
            name,
            viewport=viewport,
            touch=touch,
            init_script=init_script,
        )
        self.people.append(person)
        return person

    async def close(self) -> None:
        for person in self.people:
            with contextlib.suppress(Exception):
                await person.close()


@dataclass
class Bot:
    """``python -m chatsubo.client --json`` in a subprocess, its events collected."""

    name: str
    process: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls, server: RunningServer | str, room: str, name: str, *args: str, netns: str | None = None
    ) -> Bot:
        """A bot in ``room`` of ``server`` (or of any URL, reachable or not).

        ``netns``: run it in that network namespace (``ip netns exec``, as root).
        """
        url = server if isinstance(server, str) else server.url
        inside = ("ip", "netns", "exec", netns) if netns is not None else ()
        process = await asyncio.create_subprocess_exec(
            *inside, sys.executable, "-m", "chatsubo.client", "--server", url, "--room", room,
            "--name", name, "--json", *args,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        bot = cls(name, process)
        assert process.stdout is not None
        assert process.stderr is not None
        bot._readers = [
            asyncio.create_task(bot._read(process.stdout, bot._on_stdout)),
            asyncio.create_task(bot._read(process.stderr, bot.stderr.append)),
        ]
        return bot

    @staticmethod
    async def _read(stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
        async for line in stream:
            sink(line.decode(errors="replace").rstrip("\n"))

    def _on_stdout(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = {"event": "unparsed", "line": line}
        self.events.append(event)

    def matching(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The events so far of kind ``event`` whose fields have the given values."""
        return [
            record
            for record in self.events
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(
        self,
        event: str,
        timeout: float = BOT_DEADLINE,
        where: Callable[[dict[str, Any]], bool] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Wait for an event of kind ``event`` with ``fields`` (and ``where``, if given)."""

        def found() -> dict[str, Any] | None:
            for record in self.matching(event, **fields):
                if where is None or where(record):
                    return record
            return None

        with contextlib.suppress(TimeoutError):
            await poll(lambda: found() is not None or self.process.returncode is not None, timeout)
        record = found()
        if record is None:
            raise AssertionError(
                f"bot {self.name}: no {event} {fields} within {timeout:g} s "
                f"(exit {self.process.returncode}); events {self.events}; "
                f"stderr {self.stderr[-20:]}"
            )
        return record

    async def peer_id(self) -> str:
        return str((await self.wait_for("joined"))["peer"])

    async def ended(self, timeout: float) -> int:
        """The exit code once the process has ended by itself and its output is read."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.gather(*self._readers)
        return code

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; the readers finish at end of file."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


class Bots:
    """The bots of one test; all are stopped afterwards."""

    def __init__(self) -> None:
        self.bots: list[Bot] = []

    async def start(
        self,
        server: RunningServer | str,
        room: str,
        name: str,
        *args: str,
        netns: str | None = None,
    ) -> Bot:
        bot = await Bot.start(server, room, name, *args, netns=netns)
        self.bots.append(bot)
        return bot

    async def close(self) -> None:
        await asyncio.gather(*(bot.stop() for bot in self.bots), return_exceptions=True)


def fmtp_parameters(text: str) -> dict[str, str]:
    """An fmtp line's ``a=1;b=2`` parameters as a dict."""
    pairs = (item.partition("=") for item in text.split(";") if item.strip())
    return {key.strip(): value.strip() for key, _, value in pairs}


def near(a: float, b: float, tolerance: float) -> bool:
    return math.isclose(a, b, abs_tol=tolerance)
