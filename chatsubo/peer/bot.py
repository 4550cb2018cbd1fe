"""Headless bots: ``python -m chatsubo.client --room chatsubo-main``.

A bot is a mesh peer with a voice (a tone by default), a place on the map and
optionally a chat habit. Several can run in one process with ``--count``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..channels import POSITION_RATE, Chat, Position
from ..commandline import add_log_level, configure_logging, positive_float, positive_int
from ..space import BAR, Zone
from .audio import (
    AudioIn,
    AudioOut,
    AudioUnavailable,
    SpatialMixer,
    Speaker,
    WavRecorder,
    parse_source,
)
from .mesh import MeshPeer
from .signaling import SignalingError, SignalingOptions, websocket_url

logger = logging.getLogger("chatsubo.bot")


@dataclass
class BotOptions:
    """What one bot does, from the command line."""

    room: str
    name: str
    server: str
    insecure: bool
    audio: str
    seed: int
    record: str | None
    speaker: bool
    position: tuple[float, float]
    wander: bool
    say: str | None
    every: float
    echo: bool


class Bot:
    """One mesh peer with a voice, a place and manners; reports what happens to it."""

    def __init__(self, options: BotOptions, out: Any) -> None:
        self.options = options
        self._out = out
        self.audio = AudioOut(parse_source(options.audio, options.seed))
        self.peer = MeshPeer(
            options.room,
            options.name,
            SignalingOptions(url=options.server, insecure=options.insecure),
            audio=self.audio,
        )
        self.mixer = SpatialMixer(listener=options.position)
        self.position = options.position
        self._sinks: list[WavRecorder | Speaker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.peer.on("peerconnected", lambda pid: self._report("peer_connected", peer=pid))
        self.peer.on("peerdisconnected", self._on_gone)
        self.peer.on("chat", self._on_chat)
        self.peer.on("position", self._on_position)
        self.peer.on("audio", self._on_audio)
        signaling = self.peer.signaling
        signaling.on(
            "peer_joined", lambda m: self._report("peer_joined", peer=m.peer_id, name=m.name)
        )
        signaling.on(
            "peer_left", lambda m: self._report("peer_left", peer=m.peer_id, reason=m.reason.value)
        )
        signaling.on("connectionstatechange", lambda state: self._report("signaling", state=state))

    def _name_of(self, peer_id: str) -> str:
        return self.peer.present.get(peer_id, peer_id)

    def _report(self, event: str, **fields: Any) -> None:
        """One line per event: JSON for scripts, or a sentence for people."""
        if self._out is not None:
            record = {"event": event, "bot": self.options.name, "ts": time.time(), **fields}
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()
            return
        if "peer" in fields:
            fields["name"] = fields.get("name") or self._name_of(fields["peer"])
        details = " ".join(f"{k}={v}" for k, v in fields.items() if k != "peer")
        logger.info("[%s] %s %s", self.options.name, event, details)

    # --- events ------------------------------------------------------------------

    def _on_gone(self, peer_id: str) -> None:
        self.mixer.remove(peer_id)
        self._report("peer_disconnected", peer=peer_id)

    def _on_audio(self, peer_id: str, audio_in: AudioIn) -> None:
        link = self.peer.links.get(peer_id)
        where = (
            self.position
            if link is None or link.position is None
            else (
                link.position.x,
                link.position.y,
            )
        )
        self.mixer.add(peer_id, audio_in, where)

    def _on_position(self, peer_id: str, position: Position) -> None:
        self.mixer.move(peer_id, (position.x, position.y))
        self._report("position", peer=peer_id, x=position.x, y=position.y, zone=position.zone)

    def _on_chat(self, peer_id: str, chat: Chat) -> None:
        sender = self._name_of(peer_id)
        self._report("chat", peer=peer_id, name=sender, text=chat.text, id=chat.id)
        if self.options.echo and self.options.name.lower() in chat.text.lower():
            self.say(f"{sender}: {chat.text}")

    # --- doing things ------------------------------------------------------------

    def say(self, text: str) -> None:
        sent = self.peer.say(text)
        self._report("said", text=text, id=sent.id)

    def move(self, x: float, y: float) -> Zone | None:
        """Stand at (x, y), kept inside the bar; the zone we are now in."""
        self.position = BAR.map.clamp(x, y)
        zone = BAR.map.zone_at(*self.position)
        self.mixer.listener = self.position
        self.peer.move(*self.position, zone.name if zone else None)
        return zone

    async def start(self) -> None:
        """Open the sinks, join, and start the habits."""
        if self.options.speaker:
            self._sinks.append(Speaker(self.mixer))
        if self.options.record:
            self._sinks.append(WavRecorder(self.options.record, self.mixer))
        await self.peer.start()
        self._report("joined", peer=self.peer.peer_id, room=self.options.room)
        zone = self.move(*self.position)
        await self.peer.signaling.update(zone=zone.name if zone else None)
        if self.options.wander:
            self._tasks.append(asyncio.create_task(self._wander()))
        if self.options.say:
            self._tasks.append(asyncio.create_task(self._chatter(self.options.say)))

    async def _wander(self) -> None:
        """A random walk inside the bar, at a stroll."""
        heading = random.uniform(0, 2 * math.pi)
        zone = None
        while True:
            await asyncio.sleep(1 / POSITION_RATE)
            heading += random.gauss(0, 0.4)
            x, y = self.position
            here = self.move(x + 0.12 * math.cos(heading), y + 0.12 * math.sin(heading))
            if here is not zone:
                zone = here
                await self.peer.signaling.update(zone=here.name if here else None)

    async def _chatter(self, text: str) -> None:
        while True:
            self.say(text)
            await asyncio.sleep(self.options.every)

    async def close(self) -> None:
        """Leave cleanly: habits, links, sinks, then the voice."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.peer.close()
        for sink in self._sinks:
            await sink.stop()
        self.audio.stop()
        self._report("left")


def _position(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X,Y in meters, e.g. 4,3") from None
    return x, y


def build_parser() -> argparse.ArgumentParser:
    """The bot's command line."""
    zones = ", ".join(z.name for z in BAR.map.zones)
    parser = argparse.ArgumentParser(
        prog="python -m chatsubo.client",
        description="Run headless Chatsubo bots: each joins a room, connects to everyone there "
        "peer to peer, speaks (a tone by default), and stays until Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--room", default="chatsubo-main", help="room to join")
    parser.add_argument(
        "--server",
        default="http://127.0.0.1:8080",
        help="the page's URL (http://host:8080) or the socket's (ws://host:8080/ws)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="accept a self-signed TLS certificate"
    )
    parser.add_argument("--name", default="bot", help="display name (numbered with --count)")
    parser.add_argument(
        "--audio", default="tone", help="what to say: tone, tone:HZ, silence, mic, or a sound file"
    )
    parser.add_argument("--record", metavar="FILE.wav", help="record the spatial stereo mix heard")
    parser.add_argument("--speaker", action="store_true", help="play the mix on the speaker")
    place = parser.add_mutually_exclusive_group()
    place.add_argument(
        "--position",
        type=_position,
        metavar="X,Y",
        help=f"where to stand, meters (default: near the middle of the {BAR.map.arrival}, "
        "where newcomers arrive)",
    )
    place.add_argument("--zone", help=f"stand in the middle of a zone: {zones}")
    parser.add_argument("--wander", action="store_true", help="stroll around the bar")
    parser.add_argument("--say", metavar="TEXT", help="say TEXT in the chat, repeatedly")
    parser.add_argument(
        "--every", type=positive_float, default=10.0, metavar="SECONDS", help="how often to --say"
    )
    parser.add_argument(
        "--echo", action="store_true", help="answer chat that mentions the bot's name (a bartender)"
    )
    parser.add_argument(
        "--duration", type=positive_float, metavar="SECONDS", help="leave after this long"
    )
    parser.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    parser.add_argument(
        "--count", type=positive_int, default=1, metavar="N", help="bots in this process"
    )
    add_log_level(parser)
    return parser


def _bot_options(args: argparse.Namespace, index: int) -> BotOptions:
    name = args.name if args.count == 1 else f"{args.name}-{index + 1}"
    if args.zone:
        position = BAR.map.zone(args.zone).center
    elif args.position:
        position = BAR.map.clamp(*args.position)
    else:
        position = BAR.map.arrival_spot(random.Random(args.seed + index))
    return BotOptions(
        room=args.room,
        name=name,
        server=args.server,
        insecure=args.insecure,
        audio=args.audio,
        # Random, so that bots in separate processes also differ in pitch.
        seed=args.seed + index,
        record=_numbered(args.record, index) if args.record and args.count > 1 else args.record,
        speaker=args.speaker,
        position=position,
        wander=args.wander,
        say=args.say,
        every=args.every,
        echo=args.echo,
    )


def _numbered(path: str, index: int) -> str:
    stem, dot, suffix = path.rpartition(".")
    return f"{stem}-{index + 1}.{suffix}" if dot else f"{path}-{index + 1}"


async def run(args: argparse.Namespace) -> int:
    """Start the bots, wait for Ctrl-C, SIGTERM or ``--duration``, then leave cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bots: list[Bot] = []
    try:
        for index in range(args.count):
            bot = Bot(_bot_options(args, index), sys.stdout if args.json else None)
            bots.append(bot)
            await bot.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    except (SignalingError, AudioUnavailable, ValueError, OSError) as exc:
        print(f"chatsubo.client: {exc}", file=sys.stderr)
        return 1
    finally:
        await asyncio.gather(*(bot.close() for bot in bots), return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run bots from the command line; ``python -m chatsubo.client`` calls this."""
    args = build_parser().parse_args(argv)
    args.seed = random.randrange(1000)
    configure_logging(args.log_level)
    if args.log_level != "debug":
        # Their INFO lines are about ICE internals, not about the bar.
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.zone:
        try:
            BAR.map.zone(args.zone)
        except KeyError as exc:
            print(f"chatsubo.client: {exc.args[0]}", file=sys.stderr)
            return 2
    try:
        websocket_url(args.server)
    except ValueError as exc:
        print(f"chatsubo.client: --server: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(args))
