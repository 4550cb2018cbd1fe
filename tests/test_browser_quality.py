"""The connection indicator in the people list, driven by real stats over a really bad path.

The server and Chromium share the public namespace of a lab (tests/netlab.py);
a bot sits on a far host whose one link there is a :class:`~tests.netlab.Wire`,
which delays and drops packets as told. The wire impairs only what the bot
sends toward the page: then every figure the page reads (the round trip of
RTCP reports and of ICE checks, the loss and jitter of the bot's audio)
changes at the next report, without waiting for one that left before.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest
from playwright.async_api import Locator, async_playwright, expect

from chatsubo.space import BAR
from tests.browser import CHROMIUM, LAUNCH_ARGS, MESH_DEADLINE, Bots, Person, eventually
from tests.netlab import FarHost, Impairment, Lab, netlab, wire_missing

pytestmark = [
    pytest.mark.skipif(wire_missing() is not None, reason=str(wire_missing())),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Debian's Chromium at {CHROMIUM}: apt-get install chromium",
    ),
]

ROOM = "r"
LIMITS = BAR.peer.quality
#: Seconds for the indicator to show a change on the wire: the next reading
#: after the next RTCP report (about every second), with room for two busy cores.
SETTLE = 20.0
#: The hover title, as web/quality.js words it when every figure is known.
TITLE = re.compile(
    r"Round trip (?P<rtt>\d+) ms · loss (?P<loss>[\d.]+) % · jitter (?P<jitter>\d+) ms"
    r" · (?P<route>direct|relayed through TURN)"
)


@dataclass(frozen=True)
class Figures:
    """The figures of the hover title: round trip and jitter in ms, loss as a fraction."""

    rtt: float
    loss: float
    jitter: float
    route: str


@dataclass(frozen=True)
class Shown:
    """What the indicator shows: its level and route, its words, and the figures of its title."""

    level: str | None
    route: str | None
    label: str
    title: str
    figures: Figures | None


async def shown(indicator: Locator) -> Shown:
    title = await indicator.get_attribute("title") or ""
    match = TITLE.fullmatch(title)
    figures = None
    if match is not None:
        loss = float(match["loss"]) / 100
        figures = Figures(float(match["rtt"]), loss, float(match["jitter"]), match["route"])
    return Shown(
        level=await indicator.get_attribute("data-level"),
        route=await indicator.get_attribute("data-route"),
        label=await indicator.locator(".visually-hidden").text_content() or "",
        title=title,
        figures=figures,
    )


async def shows(indicator: Locator, levels: set[str], holds: Callable[[Figures], bool]) -> Figures:
    """Wait until the indicator shows one of ``levels``, and figures that hold; those figures."""
    last = Shown(None, None, "", "", None)

    async def check() -> bool:
        nonlocal last
        last = await shown(indicator)
        return last.level in levels and last.figures is not None and holds(last.figures)

    await eventually(check, SETTLE, lambda: f"the indicator shows {levels}: it shows {last}")
    assert last.figures is not None
    assert last.label.startswith(f"connection {last.level}"), last
    return last.figures


def beyond(figures: Figures, *names: str) -> bool:
    """Whether any of the figures ``names`` is beyond its poor limit."""
    return any(getattr(figures, name) > getattr(LIMITS.poor, name) for name in names)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """The server on the public side, nothing else; removed afterwards, however the test ends."""
    with netlab([], stun=False, turn=False) as built:
        yield built


@pytest.fixture
def far(lab: Lab) -> FarHost:
    return lab.add_far_host()


@pytest.fixture
async def bots(lab: Lab) -> AsyncIterator[Bots]:
    """Bot processes, stopped before the lab they run in is removed."""
    running = Bots()
    try:
        yield running
    finally:
        await running.close()


async def test_the_indicator_follows_round_trip_loss_and_jitter(
    lab: Lab, far: FarHost, bots: Bots
) -> None:
    bot = await bots.start(lab.url, ROOM, "Faraway", "--audio", "tone:440", netns=far.ns)
    bot_id = await bot.peer_id()
    # The page is on plain http at a lab address: let it have the (fake) microphone,
    # so that it sends audio and gets RTCP reports back.
    args = [*LAUNCH_ARGS, f"--unsafely-treat-insecure-origin-as-secure={lab.url}"]
    async with contextlib.AsyncExitStack() as stack:
        playwright = await stack.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(
            executable_path=str(lab.chromium(lab.public)), args=args
        )
        stack.push_async_callback(browser.close)
        case = await Person.visit(browser, lab.url, "Case")
        await case.enter(ROOM)
        await case.connected_to(bot_id, timeout=MESH_DEADLINE)
        indicator = case.person(bot_id).locator(".quality")
        await expect(indicator).to_be_visible()

        # A clean path: good, and direct (host to host, no TURN).
        clean = await shows(indicator, {"good"}, lambda f: True)
        assert clean.route == "direct", clean
        assert await indicator.get_attribute("data-route") == "direct"
        await expect(indicator.locator(".relayed")).to_be_hidden()

        # A quarter of a second on the way back: a fair round trip.
        toward_page = lab.public
        far.wire.impair(toward_page, Impairment(delay=0.25))
        await shows(indicator, {"fair"}, lambda f: 250 <= f.rtt <= LIMITS.poor.rtt)
        await case.screenshot("room-quality-fair.png")

        # Over half a second, as by satellite: poor by the round trip alone.
        far.wire.impair(toward_page, Impairment(delay=0.6))
        await shows(indicator, {"poor"}, lambda f: f.rtt >= 600 and not beyond(f, "loss", "jitter"))

        # Packets held up to 0.4 s each, at random, overtaking each other: the
        # jitter the page reports rises past its good limit. (The round trip of
        # each RTCP report varies as much, so it may be fair or poor.)
        far.wire.impair(toward_page, Impairment(jitter=0.4))
        await shows(indicator, {"fair", "poor"}, lambda f: f.jitter > LIMITS.good.jitter)

        # No delay, but a fifth of the bot's packets lost: poor by loss alone.
        far.wire.impair(toward_page, Impairment(loss=0.2))
        await shows(
            indicator, {"poor"}, lambda f: 0.1 < f.loss < 0.4 and not beyond(f, "rtt", "jitter")
        )

        # A path that heals is good again.
        far.wire.impair(toward_page, Impairment())
        await shows(indicator, {"good"}, lambda f: True)
        case.assert_no_errors()
