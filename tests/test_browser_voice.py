"""The voice in the page: the echo-cancelling loopback, and choosing devices.

A test cannot hear echo without a speaker and a microphone in one room, so
these test the wiring that lets Chrome's echo canceller work: the spatial
mix reaches an <audio> element through two local RTCPeerConnections that
connect and carry it (an analyser on what the element plays hears the bot's
pitch), the page falls back to playing directly when the loopback falls or is
switched off, and rebuilds it. Devices are Chromium's fake ones: three
microphones (each with the fake beep) and three outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from tests.browser import (
    ARRIVE_IN_THE_MIDDLE,
    BESIDE_THE_MIDDLE,
    MESH_DEADLINE,
    NEEDS_CHROMIUM,
    RATE,
    UI_DEADLINE,
    Bot,
    Bots,
    Crowd,
    Person,
    Recording,
    eventually,
)
from tests.conftest import RunningServer
from tests.test_browser_talk import LOUD

pytestmark = NEEDS_CHROMIUM

ROOM = "chatsubo-main"
#: The bot's pitch: what the page's ear listens for.
PITCH = 660.0
BESIDE = BESIDE_THE_MIDDLE

#: Counts every RTCPeerConnection the page makes, the loopback's too.
COUNT_CONNECTIONS = """
window.__connectionsMade = 0;
const Made = window.RTCPeerConnection;
window.RTCPeerConnection = class extends Made {
  constructor(...args) {
    super(...args);
    window.__connectionsMade += 1;
  }
};
"""

#: Keeps window.__toSpeakers: the Web Audio nodes connected straight to a context's speakers.
WATCH_SPEAKERS = """
window.__toSpeakers = new Set();
const connect = AudioNode.prototype.connect;
const disconnect = AudioNode.prototype.disconnect;
AudioNode.prototype.connect = function (target, ...rest) {
  if (target instanceof AudioDestinationNode) window.__toSpeakers.add(this);
  return connect.call(this, target, ...rest);
};
AudioNode.prototype.disconnect = function (...args) {
  const all = args.length === 0;
  if (all || args[0] instanceof AudioDestinationNode) window.__toSpeakers.delete(this);
  return disconnect.apply(this, args);
};
"""

#: The loopback cannot be built: the browser refuses to send the mix's track (as if unsupported).
BREAK_LOOPBACK = """
const addTransceiver = RTCPeerConnection.prototype.addTransceiver;
RTCPeerConnection.prototype.addTransceiver = function (what, init) {
  if (what instanceof MediaStreamTrack && init?.direction === "sendonly") {
    throw new DOMException("not here", "NotSupportedError");
  }
  return addTransceiver.call(this, what, init);
};
"""

#: What plays straight to the speakers: "mix" for the page's mix, else the node's name.
_TO_SPEAKERS = """
() => [...window.__toSpeakers].map((node) =>
  node === window.chatsubo.audio.mix ? "mix" : String(node))
"""

#: An analyser on `node` (an expression), kept as window.__ear for `_EAR_HEARS`.
_LISTEN = """
(node) => {
  const audio = window.chatsubo.audio;
  const context = audio.context;
  window.__earSource?.disconnect();
  const source = node === "element"
    ? context.createMediaStreamSource(audio.speakers.loopback.element.srcObject)
    : audio.mix;
  const analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  source.connect(analyser);
  window.__earSource = node === "element" ? source : null;
  window.__ear = analyser;
}
"""

#: The loudest frequency the ear hears right now, and how loud: [hz, dB].
_EAR_HEARS = """
() => {
  const analyser = window.__ear;
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  let peak = 1;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
  return [(peak * analyser.context.sampleRate) / analyser.fftSize, bins[peak]];
}
"""

#: Left and right meters on the mix and on what the loopback's element plays.
_LISTEN_STEREO = """
() => {
  const audio = window.chatsubo.audio;
  const context = audio.context;
  const element = context.createMediaStreamSource(audio.speakers.loopback.element.srcObject);
  window.__sides = {};
  for (const [name, node] of [["mix", audio.mix], ["element", element]]) {
    const split = context.createChannelSplitter(2);
    node.connect(split);
    const sides = [context.createAnalyser(), context.createAnalyser()];
    sides.forEach((analyser, channel) => split.connect(analyser, channel));
    window.__sides[name] = sides;
  }
}
"""

#: The RMS level (dBFS) of each side: {mix: [left, right], element: [left, right]}.
_STEREO_LEVELS = """
() => Object.fromEntries(Object.entries(window.__sides).map(([name, sides]) => [
  name,
  sides.map((analyser) => {
    const samples = new Float32Array(analyser.fftSize);
    analyser.getFloatTimeDomainData(samples);
    return 10 * Math.log10(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
  }),
]))
"""

#: What the loopback is doing: its two connections, bytes both ways, and its Opus line.
_LOOPBACK = """
async () => {
  const audio = window.chatsubo.audio;
  const { loopback, output } = audio.speakers;
  if (loopback === null) return { output, loopback: null };
  let sent = 0;
  (await loopback.sending.getStats()).forEach((report) => {
    if (report.type === "outbound-rtp" && report.kind === "audio") sent += report.bytesSent;
  });
  const opus = loopback.receiving.currentLocalDescription.sdp
    .split("\\r\\n").find((line) => /^a=fmtp:\\d+ .*useinbandfec/.test(line));
  const encodings = loopback.sending.getSenders()[0].getParameters().encodings;
  return {
    output,
    loopback: {
      states: [loopback.sending.connectionState, loopback.receiving.connectionState],
      sent,
      received: await loopback.bytesReceived(),
      opus,
      maxBitrate: encodings[0].maxBitrate,
      playing: !loopback.element.paused && !loopback.element.muted,
      sinkId: loopback.element.sinkId,
    },
  };
}
"""

#: Our voice as each link sends it: [pc, track id, the track's settings].
_SENT_VOICE = """
() => [...window.chatsubo.peer.links.values()].map((link) => {
  const track = link.pc.getSenders().find((s) => s.track?.kind === "audio")?.track ?? null;
  return [link.pc.connectionState, track?.id ?? null, track?.getSettings() ?? null];
})
"""


#: Remembers the links' connections, and how many connections the page made so far.
_REMEMBER_CONNECTIONS = """
() => {
  window.__before = [...window.chatsubo.peer.links.values()].map((link) => link.pc);
  window.__madeBefore = window.__connectionsMade;
}
"""

#: Whether every link has the connection remembered, unrenegotiated, and no other was made.
_SAME_CONNECTIONS = """
() => {
  const links = [...window.chatsubo.peer.links.values()];
  const same = (link, i) => link.pc === window.__before[i] && link.pc.signalingState === "stable";
  return links.every(same) && window.__connectionsMade === window.__madeBefore;
}
"""

#: The loopback's far end closes, as if it failed; the loopback is kept as window.__fallen.
_CLOSE_THE_FAR_END = """
() => {
  window.__fallen = window.chatsubo.audio.speakers.loopback;
  window.__fallen.receiving.close();
}
"""

#: Where the mix plays: the AudioContext's and the loopback element's sinkId.
_SINKS = """
() => {
  const { context, speakers } = window.chatsubo.audio;
  return [context.sinkId, speakers.loopback?.element.sinkId];
}
"""


async def loopback(person: Person) -> dict[str, Any]:
    state: dict[str, Any] = await person.page.evaluate(_LOOPBACK)
    return state


async def _output_is(person: Person, output: str) -> bool:
    return bool(await person.page.evaluate("() => window.chatsubo.audio.speakers.output") == output)


async def loopback_is_up(person: Person) -> None:
    """Wait until the page's mix plays through the loopback."""
    await eventually(
        lambda: _output_is(person, "loopback"), UI_DEADLINE, lambda: "the loopback is never up"
    )


async def to_speakers(person: Person) -> list[str]:
    """What the page plays straight from Web Audio to the speakers (``WATCH_SPEAKERS``)."""
    found: list[str] = await person.page.evaluate(_TO_SPEAKERS)
    return found


async def hears_pitch(person: Person, what: str, pitch: float = PITCH) -> None:
    """Wait until the page's ear (``_LISTEN``) hears ``pitch`` as its loudest frequency."""
    heard: list[float] = []

    async def check() -> bool:
        nonlocal heard
        heard = await person.page.evaluate(_EAR_HEARS)
        hz, level = heard
        return abs(hz - pitch) < 15 and level > -70

    await eventually(check, MESH_DEADLINE, lambda: f"{what} hears {pitch} Hz: [Hz, dB] {heard}")


async def beside_a_bot(
    server: RunningServer, crowd: Crowd, bots: Bots, path: str = "/", init_script: str = ""
) -> tuple[Person, Bot, str]:
    """A page connected to a bot that stands beside it and sings at PITCH."""
    bot = await bots.start(
        server, ROOM, "Barkeep", "--audio", f"tone:{PITCH:g}",
        "--position", f"{BESIDE[0]},{BESIDE[1]}",
    )  # fmt: skip
    bot_id = await bot.peer_id()
    case = await crowd.visit(
        server, "Case", init_script=ARRIVE_IN_THE_MIDDLE + WATCH_SPEAKERS + init_script, path=path
    )
    await case.enter(ROOM)
    await case.connected_to(bot_id)
    await case.hears(bot_id)
    return case, bot, bot_id


async def test_the_mix_plays_through_the_echo_cancelling_loopback(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    case, _, _ = await beside_a_bot(server, crowd, bots)

    # Built at once: two local connections, both connected, carrying stereo Opus well above a voice.
    await loopback_is_up(case)
    first = await loopback(case)
    state = first["loopback"]
    assert state["states"] == ["connected", "connected"], state
    assert state["playing"], state
    assert "stereo=1" in state["opus"], state
    assert "maxaveragebitrate=128000" in state["opus"], state
    assert "usedtx=0" in state["opus"], state
    assert state["maxBitrate"] == 128000, state
    later: dict[str, Any] = {}

    async def carrying() -> bool:
        nonlocal later
        later = (await loopback(case))["loopback"]
        return bool(later["sent"] > state["sent"] and later["received"] > state["received"])

    await eventually(carrying, UI_DEADLINE, lambda: f"bytes {state}, then {later}")

    # Nothing plays straight from Web Audio; what the <audio> element plays is the bot's voice.
    assert await to_speakers(case) == []
    await case.page.evaluate(_LISTEN, "element")
    await hears_pitch(case, "the loopback's <audio> element")

    # In stereo: the bot stands to the east, heard on the right, through the loopback as in the mix.
    await case.page.evaluate(_LISTEN_STEREO)
    levels: dict[str, list[float]] = {}

    async def placed() -> bool:
        nonlocal levels
        levels = await case.page.evaluate(_STEREO_LEVELS)
        (mix_left, mix_right), (left, right) = levels["mix"], levels["element"]
        return right - left > 3 and abs(left - mix_left) < 1 and abs(right - mix_right) < 1

    await eventually(placed, UI_DEADLINE, lambda: f"left and right (dBFS): {levels}")

    # Where echo is cancelled, the page doesn't nag about headphones.
    await expect(case.page.locator("#echo-hint")).to_be_hidden()
    # The microphone was asked for its echo canceller, noise suppression and gain control by name.
    ((_, track_id, settings),) = await case.page.evaluate(_SENT_VOICE)
    assert track_id is not None
    assert settings["echoCancellation"] is True, settings
    assert settings["noiseSuppression"] is True, settings
    assert settings["autoGainControl"] is True, settings
    case.assert_no_errors()


async def test_the_mix_plays_directly_when_the_loopback_falls_and_it_is_rebuilt(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    case, _, _ = await beside_a_bot(server, crowd, bots)
    await loopback_is_up(case)
    await case.page.evaluate(_LISTEN, "mix")
    await hears_pitch(case, "the mix")

    # Its far end goes: the mix plays directly straight away, and the page says headphones help.
    await case.page.evaluate(_CLOSE_THE_FAR_END)
    await eventually(
        lambda: _output_is(case, "direct"), 3.0, lambda: "the page never played directly"
    )
    await expect(case.page.locator("#echo-hint")).to_be_visible()
    assert await to_speakers(case) == ["mix"]
    await hears_pitch(case, "the mix, played directly")

    # Built again: a new loopback, carrying the bot's voice, and the hint goes.
    await eventually(
        lambda: _output_is(case, "loopback"), UI_DEADLINE, lambda: "the loopback is never rebuilt"
    )
    rebuilt = await case.page.evaluate(
        "() => window.chatsubo.audio.speakers.loopback !== window.__fallen"
        " && window.__fallen.sending.connectionState === 'closed'"
    )
    assert rebuilt, "the fallen loopback is still in use, or still open"
    await case.page.evaluate(_LISTEN, "element")
    await hears_pitch(case, "the rebuilt loopback's <audio> element")
    assert await to_speakers(case) == []
    await expect(case.page.locator("#echo-hint")).to_be_hidden()
    case.assert_no_errors()


async def test_with_the_loopback_switched_off_the_mix_plays_directly(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    case, _, _ = await beside_a_bot(server, crowd, bots, path="/?loopback=off")
    assert await loopback(case) == {"output": "direct", "loopback": None}
    assert await to_speakers(case) == ["mix"]
    await case.page.evaluate(_LISTEN, "mix")
    await hears_pitch(case, "the mix, played directly")
    await expect(case.page.locator("#echo-hint")).to_be_visible()
    await expect(case.page.locator("#echo-hint")).to_contain_text("Headphones help")
    # No loopback, not even one tried: the page made its link to the bot and no more.
    assert await case.page.evaluate("() => window.chatsubo.audio.speakers.loopback") is None
    case.assert_no_errors()


async def test_when_the_loopback_cannot_be_built_the_mix_plays_directly_and_it_gives_up(
    server: RunningServer, crowd: Crowd, bots: Bots
) -> None:
    case, _, _ = await beside_a_bot(server, crowd, bots, init_script=BREAK_LOOPBACK)
    await expect(case.page.locator("#echo-hint")).to_be_visible()
    assert await loopback(case) == {"output": "direct", "loopback": None}
    assert await to_speakers(case) == ["mix"]
    await case.page.evaluate(_LISTEN, "mix")
    await hears_pitch(case, "the mix, played directly")

    # It tries again, with backoff, and then stops: each try costs two of Chrome's
    # 500 connections a tab. (1 + 2 + 4 + 8 s of waits: 5 tries.)
    gave_up: list[Any] = []

    async def given_up() -> bool:
        nonlocal gave_up
        gave_up = await case.page.evaluate(
            "() => [window.chatsubo.audio.speakers.gaveUp, window.chatsubo.audio.speakers.builds]"
        )
        return bool(gave_up[0])

    await eventually(given_up, 15.0 + MESH_DEADLINE, lambda: f"[gave up, tries] {gave_up}")
    assert gave_up == [True, 5]
    assert await loopback(case) == {"output": "direct", "loopback": None}
    await expect(case.page.locator("#echo-hint")).to_be_visible()
    await hears_pitch(case, "the mix, played directly")
    case.assert_no_errors()


# --- devices ---------------------------------------------------------------------


async def options(person: Person, select: str) -> dict[str, str]:
    """The options of ``select``: label -> deviceId."""
    found: dict[str, str] = await person.page.locator(select).evaluate(
        "(s) => Object.fromEntries([...s.options].map((o) => [o.textContent, o.value]))"
    )
    return found


async def named_options(person: Person, select: str, label: str) -> dict[str, str]:
    """Wait until ``select`` names the device ``label``; its options then."""
    found: dict[str, str] = {}

    async def named() -> bool:
        nonlocal found
        found = await options(person, select)
        return label in found

    await eventually(named, UI_DEADLINE, lambda: f"{select} never names {label}: {found}")
    return found


async def test_switching_the_microphone_keeps_every_link_and_the_choices_are_remembered(
    server: RunningServer, crowd: Crowd, bots: Bots, tmp_path: Path
) -> None:
    recording = Recording(tmp_path / "heard.wav")
    bot = await bots.start(
        server, ROOM, "Ear", "--audio", "silence", "--record", str(recording.path)
    )
    bot_id = await bot.peer_id()
    case = await crowd.visit(server, "Case", init_script=COUNT_CONNECTIONS)
    case_id = await case.enter(ROOM)
    await case.connected_to(bot_id)
    await bot.wait_for("peer_connected", peer=case_id, timeout=MESH_DEADLINE)
    await loopback_is_up(case)
    ((_, default_track, settings),) = await case.page.evaluate(_SENT_VOICE)
    assert default_track is not None

    # Choose another microphone in the room.
    await case.page.locator("#room-devices summary").click()
    devices = await named_options(case, "#room-microphone", "Fake Audio Input 1")
    chosen = devices["Fake Audio Input 1"]
    assert settings["deviceId"] != chosen, "the page already used the microphone to choose"
    await case.page.evaluate(_REMEMBER_CONNECTIONS)
    switched = recording.frames()
    await case.page.locator("#room-microphone").select_option(chosen)

    sent: list[Any] = []

    async def sends_the_new_one() -> bool:
        nonlocal sent
        sent = await case.page.evaluate(_SENT_VOICE)
        return (
            len(sent) == 1
            and sent[0][1] not in (None, default_track)
            and sent[0][2]["deviceId"] == chosen
        )

    await eventually(sends_the_new_one, UI_DEADLINE, lambda: f"the links send {sent}")
    # The same connection, still connected; no connection made, none renegotiated.
    same = await case.page.evaluate(_SAME_CONNECTIONS)
    assert same, "switching the microphone made or renegotiated a connection"
    assert sent[0][0] == "connected"
    # And the bot hears the new microphone's beep.
    await eventually(
        lambda: _loud_since(recording, switched),
        MESH_DEADLINE,
        lambda: "the bot never heard the new microphone",
        interval=0.1,
    )

    # Choose speakers too: the mix plays on them, through the loopback and the AudioContext.
    speakers = await named_options(case, "#room-speakers", "Fake Audio Output 1")
    await case.page.locator("#room-speakers").select_option(speakers["Fake Audio Output 1"])
    await eventually(
        lambda: _sinks_are(case, speakers["Fake Audio Output 1"]),
        UI_DEADLINE,
        lambda: "the mix never moved to the chosen speakers",
    )

    # Remembered: after a reload the lobby shows both choices, and the room uses them.
    await case.page.reload()
    await expect(case.page.locator("#lobby-microphone")).to_have_value(chosen)
    await expect(case.page.locator("#lobby-speakers")).to_have_value(
        speakers["Fake Audio Output 1"]
    )
    await case.enter(ROOM)
    await eventually(
        lambda: _sends_from(case, chosen),
        MESH_DEADLINE,
        lambda: "the room opened another microphone",
    )
    await eventually(
        lambda: _sinks_are(case, speakers["Fake Audio Output 1"]),
        UI_DEADLINE,
        lambda: "the room forgot the speakers",
    )
    case.assert_no_errors()


async def _loud_since(recording: Recording, since: int) -> bool:
    end = recording.frames()
    return end > since + RATE and recording.peak(since + RATE // 2, end) > LOUD


async def _sinks_are(person: Person, sink: str) -> bool:
    sinks = await person.page.evaluate(_SINKS)
    return bool(sinks == [sink, sink])


async def _sends_from(person: Person, device: str) -> bool:
    sent = await person.page.evaluate(_SENT_VOICE)
    return any(settings is not None and settings["deviceId"] == device for _, _, settings in sent)


async def test_the_lobby_checks_the_microphone_and_says_when_a_chosen_one_is_unplugged(
    server: RunningServer, crowd: Crowd
) -> None:
    headset = json.dumps({"deviceId": "gone", "label": "Old Headset"})
    case = await crowd.visit(
        server,
        "Case",
        init_script=f"localStorage.setItem('chatsubo.microphone', {json.dumps(headset)});",
    )
    await case.page.locator("#lobby-devices summary").click()
    check = case.page.locator("#mic-check")
    meter = case.page.locator("#lobby-mic-level")
    await check.click()
    await expect(check).to_have_text("Stop the check")
    # The unplugged choice is said, and the default microphone is checked meanwhile.
    await expect(case.page.locator("#lobby-microphone option").first).to_have_text(
        "System default (Old Headset is not plugged in)"
    )
    await expect(case.page.locator("#lobby-microphone")).to_have_value("")
    await eventually(lambda: _above(meter, 0), UI_DEADLINE, lambda: "the lobby's meter stays at 0")

    # Another microphone: the check follows it, and says which it hears.
    devices = await named_options(case, "#lobby-microphone", "Fake Audio Input 2")
    await case.page.locator("#lobby-microphone").select_option(devices["Fake Audio Input 2"])
    await expect(case.page.locator("#mic-check-text")).to_contain_text("Fake Audio Input 2")
    await eventually(lambda: _above(meter, 0), UI_DEADLINE, lambda: "the lobby's meter stays at 0")

    # Stopped: the meter falls to 0; joining works as ever, with the chosen microphone.
    await check.click()
    await expect(check).to_have_text("Check the microphone")
    assert await meter.evaluate("(m) => m.value") == 0
    await case.page.locator("#mic-check").click()
    await expect(check).to_have_text("Stop the check")
    await case.enter(ROOM)
    await eventually(
        lambda: _mic_is(case, devices["Fake Audio Input 2"]),
        UI_DEADLINE,
        lambda: "the room opened another microphone",
    )
    await case.page.locator("#leave").click()
    await expect(check).to_have_text("Check the microphone")
    case.assert_no_errors()


async def _above(meter: Any, level: float) -> bool:
    return bool(await meter.evaluate("(m) => m.value") > level)


async def _mic_is(person: Person, device: str) -> bool:
    """Whether the room's own meter listens to ``device`` (no links needed)."""
    found = await person.page.evaluate(
        "() => window.chatsubo.audio.microphone?.getSettings().deviceId"
    )
    return bool(found == device)
