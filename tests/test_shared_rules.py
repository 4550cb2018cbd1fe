"""Rules the browser and Python share: defined once, served to the page, and decoded alike.

``tests/fixtures/peer-messages.json`` holds valid and invalid data channel
messages and signal payloads. Every case goes through the Python decoders
here, and through the page's own modules in real Chromium, and both must
reach the verdict the fixture records. ``tests/fixtures/quality.json`` does
the same for the levels of the connection indicator.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser

from chatsubo import channels
from chatsubo import protocol as p
from chatsubo.peer.signaling import SignalingOptions
from chatsubo.space import BAR
from tests.conftest import RunningServer

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = json.loads((FIXTURES / "peer-messages.json").read_text())
QUALITY = json.loads((FIXTURES / "quality.json").read_text())["cases"]


def _signal_kind(data: Any) -> str:
    try:
        signal = p.decode_peer_signal(json.dumps(data))
    except p.ProtocolError:
        return "invalid"
    if signal is None:
        return "end"
    return "description" if isinstance(signal, p.SessionDescription) else "candidate"


def _valid(decode: Any, data: str) -> bool:
    try:
        decode(data)
    except channels.ChannelError:
        return False
    return True


@pytest.mark.parametrize("case", FIXTURE["chat"], ids=lambda c: c["case"])
def test_python_decodes_chat_as_the_fixture_says(case: dict[str, Any]) -> None:
    assert _valid(channels.decode_chat, case["data"]) is case["valid"]


@pytest.mark.parametrize("case", FIXTURE["pos"], ids=lambda c: c["case"])
def test_python_decodes_positions_as_the_fixture_says(case: dict[str, Any]) -> None:
    assert _valid(channels.decode_position, case["data"]) is case["valid"]


@pytest.mark.parametrize("case", FIXTURE["signal"], ids=lambda c: c["case"])
def test_python_decodes_signals_as_the_fixture_says(case: dict[str, Any]) -> None:
    assert _signal_kind(case["data"]) == case["kind"]


def test_a_decoded_candidate_keeps_its_fields() -> None:
    (case,) = [c for c in FIXTURE["signal"] if c["case"] == "a trickled candidate"]
    signal = p.decode_peer_signal(json.dumps(case["data"]))
    assert isinstance(signal, p.IceCandidate)
    assert json.loads(p.encode(signal)) == case["data"]


#: Runs every fixture case through the page's modules; returns the verdicts.
_BROWSER_VERDICTS = """
async (fixture) => {
  const { decodeChat, decodePosition } = await import("/channels.js");
  const { decodeSignal } = await import("/protocol.js");
  const rules = (await (await fetch("/api/space")).json()).peer;
  const kind = (s) =>
    s === null ? "invalid" : s.end ? "end" : s.description ? "description" : "candidate";
  return {
    chat: fixture.chat.map((c) => decodeChat(c.data, rules) !== null),
    pos: fixture.pos.map((c) => decodePosition(c.data, rules) !== null),
    signal: fixture.signal.map((c) => kind(decodeSignal(c.data))),
  };
}
"""


async def test_the_browser_decodes_every_case_as_the_fixture_says(
    server: RunningServer, browser: Browser
) -> None:
    page = await browser.new_page()
    await page.goto(f"{server.url}/healthz")
    verdicts = await page.evaluate(_BROWSER_VERDICTS, FIXTURE)
    wrong = [
        f"{group}: {case['case']}: browser says {got!r}"
        for group, key in (("chat", "valid"), ("pos", "valid"), ("signal", "kind"))
        for case, got in zip(FIXTURE[group], verdicts[group], strict=True)
        if got != case[key]
    ]
    assert not wrong, "\n".join(wrong)


#: Runs the page's twins of Python's pure rules on the same arguments.
_BROWSER_RULES = """
async (cases) => {
  const protocol = await import("/protocol.js");
  const space = await import("/space.js");
  const rules = await protocol.loadProtocol();
  const bar = await space.loadSpace();
  return {
    gains: cases.distances.map((d) => space.distanceGain(bar.distanceModel, d)),
    delays: cases.delays.map(([n, t, draw]) => protocol.reconnectDelay(rules, n, t, draw)),
    closing: cases.closing.map(([code, error]) => protocol.closeMessage(rules, code, error)),
    free: cases.free.map(([x, y, others]) => space.isFree(bar.map, x, y, others)),
  };
}
"""


async def test_the_browser_computes_the_shared_rules_as_python_does(
    server: RunningServer, browser: Browser
) -> None:
    bar = BAR.map
    rng = random.Random(3)
    others = [(rng.uniform(0, bar.width), rng.uniform(0, bar.height)) for _ in range(6)]
    cases: dict[str, list[Any]] = {
        "distances": [0.05 * i for i in range(300)],
        "delays": [
            [n, outage, draw]
            for n in range(6)
            for outage in (0, 59.9, 60)
            for draw in (0, 0.5, 0.99)
        ],
        "closing": [
            [1008, "bad_origin"],
            [1008, "rate_limited"],
            [1008, None],
            [4000, None],
            [1012, "bad_origin"],
            [1006, None],
            [None, None],
        ],
        "free": [
            [x, y, others]
            for x, y in [(rng.uniform(-1, 25), rng.uniform(-1, 17)) for _ in range(400)]
        ],
    }
    page = await browser.new_page()
    await page.goto(f"{server.url}/healthz")
    got = await page.evaluate(_BROWSER_RULES, cases)
    model = BAR.distance_model
    assert got["gains"] == pytest.approx([model.gain(d) for d in cases["distances"]], abs=1e-12)
    assert got["delays"] == pytest.approx([p.reconnect_delay(*c) for c in cases["delays"]])
    assert got["closing"] == [p.closing_words(*c) for c in cases["closing"]]
    expected_free = [bar.is_free(x, y, others) for x, y, _ in cases["free"]]
    assert got["free"] == expected_free
    assert any(expected_free)
    assert not all(expected_free)


@pytest.mark.parametrize("case", QUALITY, ids=lambda c: c["case"])
def test_python_grades_links_as_the_fixture_says(case: dict[str, Any]) -> None:
    assert BAR.peer.quality.level(case["rtt"], case["loss"], case["jitter"]) == case["level"]


def test_the_quality_fixture_sits_on_every_limit() -> None:
    """Each limit appears exactly in some case, so a changed limit shows up here first."""
    quality = BAR.peer.quality
    for figure in ("rtt", "loss", "jitter"):
        for limits in (quality.good, quality.poor):
            assert getattr(limits, figure) in {case[figure] for case in QUALITY}, (figure, limits)
    assert {case["level"] for case in QUALITY} == {"good", "fair", "poor", "unknown"}


#: Grades every fixture case with the page's module and the served limits.
_BROWSER_LEVELS = """
async (cases) => {
  const { qualityLevel } = await import("/quality.js");
  const rules = (await (await fetch("/api/space")).json()).peer.quality;
  return cases.map((c) => qualityLevel(rules, c.rtt, c.loss, c.jitter));
}
"""


async def test_the_browser_grades_links_as_the_fixture_says(
    server: RunningServer, browser: Browser
) -> None:
    page = await browser.new_page()
    await page.goto(f"{server.url}/healthz")
    levels = await page.evaluate(_BROWSER_LEVELS, QUALITY)
    wrong = [
        f"{case['case']}: browser says {got!r}, not {case['level']!r}"
        for case, got in zip(QUALITY, levels, strict=True)
        if got != case["level"]
    ]
    assert not wrong, "\n".join(wrong)


async def test_the_client_rules_are_served_as_python_defines_them(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/protocol") as response:
            served = await response.json()
        async with http.get(f"{server.url}/api/space") as response:
            space = await response.json()
    assert served == json.loads(p.rules_json())
    assert {rule["code"]: rule["reconnect"] for rule in served["closeCodes"]} == {
        1008: "never",
        1009: "backoff",
        1012: "at_once",
        1013: "backoff",
        4000: "never",
    }
    assert served["nameMaxChars"] == p.NAME_MAX_CHARS
    assert space["peer"]["chatIdMaxChars"] == channels.CHAT_ID_MAX_CHARS
    assert space["peer"]["zoneMaxChars"] == p.ZONE_MAX_CHARS
    assert space["map"]["personalSpace"] == BAR.map.personal_space
    defaults = SignalingOptions()
    assert defaults.heartbeat == served["pingInterval"]


def test_close_codes_tell_a_client_what_to_do() -> None:
    assert p.reconnect_after(p.CloseCode.REPLACED) is p.Reconnect.NEVER
    assert p.reconnect_after(p.CloseCode.SERVICE_RESTART) is p.Reconnect.AT_ONCE
    assert p.reconnect_after(1006) is p.Reconnect.BACKOFF
    assert p.reconnect_after(None) is p.Reconnect.BACKOFF


def test_newcomers_get_free_spots_in_front_of_the_counter() -> None:
    bar = BAR.map
    rng = random.Random(7)
    spots: list[tuple[float, float]] = []
    for _ in range(8):
        spots.append(bar.free_spot(rng, spots))
    assert all(bar.arrival.contains(x, y) for x, y in spots)
    for i, (x, y) in enumerate(spots):
        assert bar.is_free(x, y, spots[:i] + spots[i + 1 :]), (x, y)
        assert not any(item.blocks(x, y, 0.0) for item in bar.furniture)


def test_a_crowded_arrival_area_sends_newcomers_elsewhere_free() -> None:
    bar = BAR.map
    a = bar.arrival
    crowd = [(a.x + 0.5 * i, a.y + 0.5 * j) for i in range(11) for j in range(6)]
    x, y = bar.free_spot(random.Random(1), crowd)
    assert bar.is_free(x, y, crowd)
    assert not a.contains(x, y)
