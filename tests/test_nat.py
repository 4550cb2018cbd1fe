"""Peers in homes behind real NATs (tests/netlab.py): through our STUN, through coturn, or not.

Every test builds its own small internet of network namespaces, with the
server and coturn on the public side, and runs bots (and once Chromium) in
the homes. The routes ICE selected come from the bots' ``peer_connected``
events; what was heard, from their recordings.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from numpy.typing import NDArray
from playwright.async_api import async_playwright, expect

from chatsubo.peer.audio import FRAME_SAMPLES, SAMPLE_RATE
from chatsubo.protocol import IceServer
from chatsubo.server.turn import TurnCredentials
from tests.browser import BOT_DEADLINE, CHROMIUM, LAUNCH_ARGS, MESH_DEADLINE, Bot, Bots, Person
from tests.conftest import DEADLINE, poll
from tests.netlab import TURN_IP, TURN_PORT, Home, Lab, Nat, Service, call_in, missing, netlab
from tests.test_audio import peak_hz

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

ROOM = "r"
#: Where the two bots stand: a metre apart, so each hears the other at full volume.
SPOTS = ("11,4.5", "12,4.5")
#: A voice louder than this (RMS of a 20 ms block, full scale 1) is being heard.
AUDIBLE = 0.01
#: What the mesh logs when a link's ICE checks have not succeeded within its timeout.
NO_ROUTE = "did not connect in time"

LabFactory = Callable[..., Lab]


@pytest.fixture
def labs() -> Iterator[LabFactory]:
    """Build labs: ``labs(Nat..., stun=True, turn=True)``; all are removed afterwards."""
    with contextlib.ExitStack() as stack:

        def build(*nats: Nat, stun: bool = True, turn: bool = True) -> Lab:
            return stack.enter_context(netlab(nats, stun=stun, turn=turn))

        yield build


@pytest.fixture
async def bots(labs: LabFactory) -> AsyncIterator[Bots]:
    """Bot processes, stopped before the labs they run in are removed."""
    running = Bots()
    try:
        yield running
    finally:
        await running.close()


async def talking_pair(
    lab: Lab, bots: Bots, tmp_path: Path, *homes: Home
) -> tuple[tuple[Bot, Path], tuple[Bot, Path]]:
    """Bots a (440 Hz) and b (660 Hz), recording, a in the first home, b in the other.

    b arrives once a is in, so that a hears of b over signaling.
    """
    started: list[tuple[Bot, Path]] = []
    for home, name, hz, spot in zip(homes, "ab", (440, 660), SPOTS, strict=True):
        record = tmp_path / f"{name}.wav"
        bot = await bots.start(
            lab.url, ROOM, name, "--audio", f"tone:{hz}", "--record", str(record),
            "--position", spot, netns=home.ns,
        )  # fmt: skip
        await bot.peer_id()
        started.append((bot, record))
    a, b = started
    return a, b


async def until(check: Callable[[], bool], what: Callable[[], str], timeout: float) -> None:
    """Wait until ``check()``; after ``timeout`` seconds, fail saying ``what()``."""
    try:
        await poll(check, timeout)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what()}") from None


async def logged(service: Service | None, text: str) -> None:
    """Wait until ``service`` has logged a line containing ``text``."""
    assert service is not None
    await until(lambda: text in service.log(), lambda: f"{text!r} in\n{service.log()}", DEADLINE)


async def never_connect(a: Bot, b: Bot) -> None:
    """They meet over signaling, and then ICE finds no route between them."""
    await a.wait_for("peer_joined", peer=await b.peer_id())
    await until(
        lambda: any(NO_ROUTE in line for line in a.stderr + b.stderr),
        lambda: f"{NO_ROUTE!r} logged: {a.stderr[-10:]} {b.stderr[-10:]}",
        BOT_DEADLINE,
    )
    assert a.matching("peer_connected") == []
    assert b.matching("peer_connected") == []


def samples(path: Path) -> NDArray[np.float64]:
    """A bot's recording as mono, full scale 1; also while it is still being written."""
    with path.open("rb") as f:
        f.seek(44)  # the WAV header the wave module writes first
        data = np.frombuffer(f.read(), "<i2")
    stereo = data[: len(data) // 2 * 2].reshape(-1, 2).astype(np.float64) / 32768
    mono: NDArray[np.float64] = stereo.mean(axis=1)
    return mono


def audible_seconds(path: Path) -> float:
    """How much of a recording so far has someone's voice in it."""
    x = samples(path) if path.exists() else np.zeros(0)
    blocks = x[: len(x) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    loud = np.count_nonzero(np.sqrt((blocks**2).mean(axis=1)) > AUDIBLE)
    return float(loud * FRAME_SAMPLES / SAMPLE_RATE)


def voice(path: Path) -> NDArray[np.float64]:
    """The finished recording from the first audible moment to the last."""
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, SAMPLE_RATE)
    x = samples(path)
    loud = np.flatnonzero(np.abs(x) > AUDIBLE)
    assert len(loud), f"{path.name} is silent"
    return x[loud[0] : loud[-1] + 1]


async def hear_each_other(a: tuple[Bot, Path], b: tuple[Bot, Path], seconds: float = 2.0) -> None:
    """Both recordings get ``seconds`` of voice; the bots stopped, each has the other's pitch."""
    (bot_a, wav_a), (bot_b, wav_b) = a, b
    await until(
        lambda: min(audible_seconds(wav_a), audible_seconds(wav_b)) >= seconds,
        lambda: (
            f"{seconds} s heard: {audible_seconds(wav_a)} s by a, {audible_seconds(wav_b)} s by b"
        ),
        BOT_DEADLINE,
    )
    await asyncio.gather(bot_a.stop(), bot_b.stop())
    assert abs(peak_hz(voice(wav_a)) - 660) < 15
    assert abs(peak_hz(voice(wav_b)) - 440) < 15


def public_address(event: dict[str, Any]) -> str:
    return str(event["remote_address"]).rsplit(":", 1)[0]


async def test_without_ice_servers_homes_behind_nats_never_connect(
    labs: LabFactory, bots: Bots, tmp_path: Path
) -> None:
    lab = labs(Nat.PORT_PRESERVING, Nat.PORT_PRESERVING, stun=False, turn=False)
    (a, _), (b, _) = await talking_pair(lab, bots, tmp_path, *lab.homes)
    await never_connect(a, b)


async def test_port_preserving_nats_connect_through_our_stun(
    labs: LabFactory, bots: Bots, tmp_path: Path
) -> None:
    lab = labs(Nat.PORT_PRESERVING, Nat.PORT_PRESERVING, turn=False)
    home_a, home_b = lab.homes
    a, b = await talking_pair(lab, bots, tmp_path, home_a, home_b)
    for (bot, _), (other, _), there in ((a, b, home_b), (b, a, home_a)):
        event = await bot.wait_for("peer_connected", peer=await other.peer_id())
        # Hole punched: to the other router's mapping, learnt from STUN or from its checks.
        assert event["local"] == "host", event
        assert event["remote"] in ("srflx", "prflx"), event
        assert public_address(event) == there.public_address, event
    await hear_each_other(a, b)


async def test_symmetric_nats_defeat_stun(labs: LabFactory, bots: Bots, tmp_path: Path) -> None:
    lab = labs(Nat.SYMMETRIC, Nat.SYMMETRIC, turn=False)
    (a, _), (b, _) = await talking_pair(lab, bots, tmp_path, *lab.homes)
    await never_connect(a, b)


async def test_symmetric_nats_connect_through_coturn(
    labs: LabFactory, bots: Bots, tmp_path: Path
) -> None:
    lab = labs(Nat.SYMMETRIC, Nat.SYMMETRIC)
    a, b = await talking_pair(lab, bots, tmp_path, *lab.homes)
    for (bot, _), (other, _) in ((a, b), (b, a)):
        event = await bot.wait_for("peer_connected", peer=await other.peer_id())
        assert "relay" in (event["local"], event["remote"]), event
    await hear_each_other(a, b)


def tone_file(path: Path, hz: float) -> Path:
    """Two seconds of a tone in bursts as a 48 kHz mono WAV, for Chromium's fake microphone.

    Bursts (0.3 s in every 0.5 s), as speech comes: Chrome's noise suppression
    takes a steady tone for noise and turns it down by some 17 dB within 3 s.
    """
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    bursts = (t % 0.5) < 0.3
    pcm = (0.5 * 32767 * np.sin(2 * np.pi * hz * t) * bursts).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm.tobytes())
    return path


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian's Chromium at {CHROMIUM}")
async def test_a_browser_and_a_bot_behind_symmetric_nats_talk_through_coturn(
    labs: LabFactory, bots: Bots, tmp_path: Path
) -> None:
    lab = labs(Nat.SYMMETRIC, Nat.SYMMETRIC)
    browser_home, bot_home = lab.homes
    record = tmp_path / "bot.wav"
    bot = await bots.start(
        lab.url, ROOM, "Barkeep", "--audio", "tone:440", "--record", str(record),
        netns=bot_home.ns,
    )  # fmt: skip
    bot_id = await bot.peer_id()
    microphone = tone_file(tmp_path / "mic.wav", 660)
    args = [
        *LAUNCH_ARGS,
        # The page is on plain http at a public address: let it have the microphone.
        f"--unsafely-treat-insecure-origin-as-secure={lab.url}",
        f"--use-file-for-fake-audio-capture={microphone}",
    ]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(lab.chromium(browser_home)), args=args
        )
        try:
            case = await Person.visit(browser, lab.url, "Case")
            case_id = await case.enter(ROOM)
            event = await bot.wait_for("peer_connected", peer=case_id, timeout=MESH_DEADLINE)
            assert "relay" in (event["local"], event["remote"]), event
            await case.connected_to(bot_id)
            # The page says so beside the bot's name (web/quality.js, from getStats).
            quality = case.person(bot_id).locator(".quality")
            await expect(quality).to_have_attribute("data-route", "relayed")
            await expect(quality.locator(".relayed")).to_be_visible()
            await expect(quality).to_have_attribute("title", re.compile("relayed through TURN"))
            # The bot's tone reaches the page's Web Audio, and the page's reaches the bot.
            await case.hears(bot_id)
            await expect(case.person(bot_id)).to_have_attribute(
                "data-speaking", "true", timeout=MESH_DEADLINE * 1000
            )
            await until(
                lambda: audible_seconds(record) >= 2.0,
                lambda: f"the bot hears the page: {audible_seconds(record)} s; {bot.events}",
                BOT_DEADLINE,
            )
            case.assert_no_errors()
        finally:
            await browser.close()
    await bot.stop()
    assert abs(peak_hz(voice(record)) - 660) < 15


class Refused(Exception):
    """A TURN request answered with an error."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


async def turn_request(credentials: IceServer, peer: tuple[str, int] | None = None) -> str:
    """Allocate a relay on coturn (and bind a channel to ``peer``); the relayed address."""
    loop = asyncio.get_running_loop()
    server = (TURN_IP, TURN_PORT)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            server,
            credentials.username,
            credentials.credential,
            lifetime=600,
            channel_refresh_time=500,
        ),
        remote_addr=server,
    )
    try:
        host, _ = await protocol.connect()
        if peer is not None:
            await protocol.channel_bind(0x4000, peer)
        return host
    except stun.TransactionFailed as exc:
        raise Refused(exc.response.error_code) from None
    finally:
        transport.close()


def from_home(home: Home, credentials: IceServer, peer: tuple[str, int] | None = None) -> str:
    """:func:`turn_request`, made from inside ``home`` on an event loop of its own."""
    return call_in(home.ns, lambda: asyncio.run(turn_request(credentials, peer)))


async def test_coturn_refuses_bad_credentials_and_private_peers(labs: LabFactory) -> None:
    lab = labs(Nat.PORT_PRESERVING, Nat.PORT_PRESERVING)
    home, other = lab.homes
    ours = TurnCredentials(urls=[], secret=lab.turn_secret.encode(), ttl=600)
    forged = TurnCredentials(urls=[], secret=b"not coturn's", ttl=600).server_for("forger")
    expired = ours.server_for("late", now=time.time() - 1200)
    for bad in (forged, expired):
        with pytest.raises(Refused) as refused:
            await asyncio.to_thread(from_home, home, bad)
        assert refused.value.code == 401
        await logged(lab.turn, f"Cannot find credentials of user <{bad.username}>")

    valid = ours.server_for("ok")
    assert await asyncio.to_thread(from_home, home, valid) == TURN_IP
    # A relay to the other home's public address is fine; to its private one, refused.
    await asyncio.to_thread(from_home, home, valid, (other.public_address, 9))
    with pytest.raises(Refused) as refused:
        await asyncio.to_thread(from_home, home, valid, (other.address, 9))
    assert refused.value.code == 403
    await logged(lab.turn, f"A peer IP {other.address} denied")


def holes(x: NDArray[np.float64]) -> list[int]:
    """The runs of near-zero samples (below -60 dBFS) longer than 2 ms in ``x``: their lengths."""
    quiet = np.concatenate([[False], np.abs(x) < 1e-3, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    lengths = edges[1::2] - edges[::2]
    return [int(n) for n in lengths if n > 0.002 * SAMPLE_RATE]


async def test_five_percent_loss_is_concealed(labs: LabFactory, bots: Bots, tmp_path: Path) -> None:
    lab = labs(Nat.PORT_PRESERVING, Nat.PORT_PRESERVING, turn=False)
    a, b = await talking_pair(lab, bots, tmp_path, *lab.homes)
    (bot_a, wav_a), (bot_b, wav_b) = a, b
    links = [(bot_a, await bot_b.peer_id()), (bot_b, await bot_a.peer_id())]
    # The call is up, and each knows where the other stands (told once, unreliably).
    for bot, peer in links:
        await bot.wait_for("peer_connected", peer=peer)
        await bot.wait_for("position", peer=peer)

    def reports() -> list[list[dict[str, Any]]]:
        """Each bot's audio reports on its one link so far."""
        return [bot.matching("audio", peer=peer) for bot, peer in links]

    await until(
        lambda: all(reports()),
        lambda: f"audio reports: {[bot.events for bot, _ in links]}",
        BOT_DEADLINE,
    )
    before = [r[-1] for r in reports()]
    lab.lose(lab.homes[0], 5)
    # About ten seconds of talk more, 50 frames a second each way, through the lossy router.
    await until(
        lambda: all(
            r[-1]["received"] >= f["received"] + 500 for r, f in zip(reports(), before, strict=True)
        ),
        lambda: f"500 more frames each way: {[r[-1:] for r in reports()]}",
        BOT_DEADLINE,
    )
    for sent, first in zip(reports(), before, strict=True):
        last = sent[-1]
        made_up = last["concealed"] + last["recovered"]
        lost = last["lost"] - first["lost"]
        assert 0.01 < lost / (last["received"] - first["received"] + lost) < 0.15, (first, last)
        assert 0 < made_up <= last["lost"], last
        assert made_up > first["concealed"] + first["recovered"], (first, last)
    await asyncio.gather(bot_a.stop(), bot_b.stop())
    for (bot, peer), wav in zip(links, (wav_a, wav_b), strict=True):
        final = bot.matching("audio", peer=peer)[-1]
        heard = voice(wav)
        assert len(heard) > 8 * SAMPLE_RATE
        # Each lost frame would leave a 20 ms hole; concealed, few leave any. (Those
        # that do ran the playout buffer dry: made up only when the next packet came,
        # a concealed frame is a frame late.)
        missing = sum(holes(heard)) / FRAME_SAMPLES
        assert missing <= 0.25 * final["lost"], (wav.name, holes(heard), final)
