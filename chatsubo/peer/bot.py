"""Headless bots: ``python -m chatsubo.client --room chatsubo-main``.

A bot is a mesh peer with a voice (a tone by default), a place on the map and
optionally a chat habit. Several can run in one process with ``--count``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from .. import protocol as p
from ..channels import POSITION_RATE, Chat, Position
from ..commandline import add_log_level, configure_logging, positive_float, positive_int
from ..space import BAR, Point, Rect, Zone
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
from .receiving import InlineAudioPath
from .route import selected_route
from .signaling import DEFAULT_URL, SignalingError, SignalingOptions, read_invite, websocket_url

logger = logging.getLogger("chatsubo.bot")

#: How often the ``audio`` event reports each connected peer's receive counters.
AUDIO_REPORT_SECONDS = 2.0


@dataclass
class BotOptions:
    """What one bot does, from the command line."""

    room: str
    name: str
    #: The server's URLs, tried in turn (see :class:`SignalingOptions`).
    servers: list[str]
    insecure: bool
    audio: str
    seed: int
    record: str | None
    speaker: bool
    position: Point
    #: Where to look for a free spot should someone stand too close on arrival;
    #: None for a bot told exactly where to stand.
    settle_in: Rect | None
    wander: bool
    say: str | None
    every: float
    echo: bool
    #: The invite the room needs, on a server run with ``--require-token``.
    token: str | None = None


class Bot:
    """One mesh peer with a voice, a place and manners; reports what happens to it."""

    def __init__(self, options: BotOptions, out: Any) -> None:
        self.options = options
        self._out = out
        self.audio = AudioOut(parse_source(options.audio, options.seed))
        self.peer = MeshPeer(
            options.room,
            options.name,
            SignalingOptions(urls=options.servers, insecure=options.insecure),
            audio=self.audio,
            token=options.token,
        )
        self.mixer = SpatialMixer(listener=options.position)
        self.position = options.position
        self._rng = random.Random(options.seed)
        #: Where we appeared, while we still stand there and may step aside
        #: (see _settle); None for a bot told exactly where to stand.
        self._arrived_at = None if options.settle_in is None else options.position
        #: Who was in the room before us and has not told us yet where they stand.
        self._unplaced: set[str] | None = None
        self._sinks: list[WavRecorder | Speaker] = []
        self._tasks: list[asyncio.Task[None]] = []
        #: Each peer's current receive path, and which peers are connected now.
        self._receiving: dict[str, InlineAudioPath] = {}
        self._connected: set[str] = set()
        self.peer.on("peerconnected", self._connected.add)
        self.peer.on("peerconnected", self._on_connected)
        self.peer.on("peerdisconnected", self._on_gone)
        self.peer.on("chat", self._on_chat)
        self.peer.on("position", self._on_position)
        self.peer.on("farposition", self._on_far_position)
        self.peer.on("audio", self._on_audio)
        signaling = self.peer.signaling
        signaling.on(
            "peer_joined", lambda m: self._report("peer_joined", peer=m.peer_id, name=m.name)
        )
        signaling.on(
            "peer_left", lambda m: self._report("peer_left", peer=m.peer_id, reason=m.reason.value)
        )
        signaling.on("peer_updated", self._on_updated)
        signaling.on("peer_list", self._on_peer_list)
        signaling.on(
            "retrying",
            lambda url, why, wait: self._report("retrying", url=url, why=why, seconds=wait),
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

    def _on_connected(self, peer_id: str) -> None:
        """Report the link, with the candidate types and addresses it took (or None)."""
        link = self.peer.links.get(peer_id)
        route = None if link is None else selected_route(link.pc)
        self._report(
            "peer_connected",
            peer=peer_id,
            local=route and route.local,
            remote=route and route.remote,
            local_address=route and route.local_address,
            remote_address=route and route.remote_address,
        )

    def _on_gone(self, peer_id: str) -> None:
        self.mixer.remove(peer_id)
        path = self._receiving.pop(peer_id, None)
        if peer_id in self._connected and path is not None:
            # The link's last word: what came through since the last report.
            self._report_audio(peer_id, path)
        self._connected.discard(peer_id)
        self._report("peer_disconnected", peer=peer_id)

    def _report_audio(self, peer_id: str, path: InlineAudioPath) -> None:
        self._report("audio", peer=peer_id, **dataclasses.asdict(path.stats()))

    async def _audio_reports(self) -> None:
        while True:
            await asyncio.sleep(AUDIO_REPORT_SECONDS)
            for peer_id in sorted(self._connected):
                path = self._receiving.get(peer_id)
                if path is not None:
                    self._report_audio(peer_id, path)

    def _on_audio(self, peer_id: str, audio_in: AudioIn) -> None:
        link = self.peer.links.get(peer_id)
        if link is not None and link.audio_path is not None:
            self._receiving[peer_id] = link.audio_path
        where = (
            None if link is None or link.position is None else (link.position.x, link.position.y)
        )
        self.mixer.add(peer_id, audio_in, where)

    def _on_position(self, peer_id: str, position: Position) -> None:
        """A linked peer moved: heard from there, and reported (``position``)."""
        self.mixer.move(peer_id, (position.x, position.y))
        self._report("position", peer=peer_id, x=position.x, y=position.y, zone=position.zone)
        self._settle(peer_id)

    def _on_far_position(self, peer_id: str, where: Point) -> None:
        """Where the server says a member stands: one to avoid, not reported.

        In a big room most members are out of earshot and move all the time;
        their batches would flood ``--json``. A linked peer is heard from
        there until its own positions come.
        """
        self.mixer.move(peer_id, where)
        self._settle(peer_id)

    def _on_peer_list(self, message: p.PeerList) -> None:
        if self._unplaced is None:
            self._unplaced = {info.peer_id for info in message.peers}
            # The server told us already where some of them stand.
            for peer_id in self._unplaced & self.peer.positions.keys():
                self._settle(peer_id)

    def _on_updated(self, message: p.PeerUpdated) -> None:
        self._report("peer_updated", peer=message.peer_id, name=message.name, zone=message.zone)

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

    def _others(self) -> list[Point]:
        """Where everyone in the room stands, as far as we have heard (linked or not)."""
        return list(self.peer.positions.values())

    def _settle(self, peer_id: str) -> None:
        """Step aside if someone who was here first turns out to stand where we appeared.

        A newcomer's first spot ignores them: we learn where people stand
        only from ``peer_list`` (those who have told the server) and then
        from their positions. Each one who was here before us is checked
        once, on their first position, and only while we still stand where
        we appeared; they never move for us.
        """
        if self._unplaced is None or peer_id not in self._unplaced:
            return
        self._unplaced.discard(peer_id)
        area = self.options.settle_in
        if area is None or self.position != self._arrived_at:
            return
        others = self._others()
        if BAR.map.is_free(*self.position, others):
            return
        zone = self.move(*BAR.map.free_spot(self._rng, others, area))
        self._arrived_at = self.position
        self._spawn_update(zone)

    def _spawn_update(self, zone: Zone | None) -> None:
        task = asyncio.create_task(self._tell_zone(zone))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _tell_zone(self, zone: Zone | None) -> None:
        await self.peer.signaling.update(zone=zone.name if zone else None)

    async def start(self) -> None:
        """Open the sinks, join, and start the habits."""
        if self.options.speaker:
            self._sinks.append(Speaker(self.mixer))
        if self.options.record:
            self._sinks.append(WavRecorder(self.options.record, self.mixer))
        # Said with the join: the server links a big room's members by where they stand.
        self.move(*self.position)
        await self.peer.start()
        self._report("joined", peer=self.peer.peer_id, room=self.options.room)
        # Of where we stand now: the join may have made us step aside already.
        await self._tell_zone(BAR.map.zone_at(*self.position))
        self._tasks.append(asyncio.create_task(self._audio_reports()))
        if self.options.wander:
            self._tasks.append(asyncio.create_task(self._wander()))
        if self.options.say:
            self._tasks.append(asyncio.create_task(self._chatter(self.options.say)))

    async def _wander(self) -> None:
        """A random walk at a stroll, around furniture and people rather than into them."""
        heading = self._rng.uniform(0, 2 * math.pi)
        zone = BAR.map.zone_at(*self.position)
        while True:
            await asyncio.sleep(1 / POSITION_RATE)
            heading += self._rng.gauss(0, 0.4)
            x, y = self.position
            step = (x + 0.12 * math.cos(heading), y + 0.12 * math.sin(heading))
            others = self._others()
            blocked = not BAR.map.is_free(*step, others)
            # Off furniture it steers clear; told to stand on some, it just walks off.
            if blocked and BAR.map.is_free(x, y, []) and not _roomier(step, (x, y), others):
                # Blocked: turn somewhere else and try again next time.
                heading += self._rng.uniform(math.pi / 2, 3 * math.pi / 2)
                continue
            here = self.move(*step)
            if here is not zone:
                zone = here
                await self._tell_zone(here)

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


def _roomier(step: Point, here: Point, others: list[Point]) -> bool:
    """Whether ``step`` is off furniture and farther from the nearest person than ``here``.

    Lets a bot that someone walked up to step away, though the step is not yet free.
    """
    if not BAR.map.is_free(*step, []):
        return False

    def nearest(point: Point) -> float:
        return min((math.hypot(point[0] - x, point[1] - y) for x, y in others), default=math.inf)

    return nearest(step) > nearest(here)


def _middle(zone: Zone) -> Rect:
    """The middle of a zone, where ``--zone`` looks for a free spot first."""
    x, y = zone.center
    side = min(3.0, zone.width, zone.height)
    return Rect(x - side / 2, y - side / 2, side, side)


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
        description="Run headless Chatsubo bots: each joins a room, connects peer to peer to "
        "the people near it (everyone, in a small room), speaks (a tone by default), and "
        "stays until Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--room",
        help=f"room to join (default: the invite link's, else {p.CLIENT_RULES.default_room})",
        default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--server",
        action="append",
        dest="servers",
        # Not the default URL: "append" would add to it rather than replace it.
        # parse_args() fills it in when no --server is given.
        default=argparse.SUPPRESS,
        metavar="URL",
        help="the page's URL (http://host:8080), the socket's (ws://host:8080/ws), or an "
        "invite link (https://host/?room=NAME#token=...); give --server several times to "
        f"fail over to the next when one goes away (default: {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="the invite a room of a server run with --require-token needs "
        "(default: the invite link's)",
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
        help="stand exactly here, in meters on the 24 x 16 m map (default: a free spot "
        "in front of the bar counter, where newcomers arrive)",
    )
    place.add_argument("--zone", help=f"stand at a free spot in the middle of a zone: {zones}")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bot's command line: the default server when no ``--server`` is given, and
    the room and token from an invite link given as ``--server`` unless named themselves."""
    args = build_parser().parse_args(argv)
    args.servers = getattr(args, "servers", [DEFAULT_URL])
    invites = [read_invite(url) for url in args.servers]
    links = [invite.room for invite in invites if invite.room]
    args.room = getattr(args, "room", links[0] if links else p.CLIENT_RULES.default_room)
    tokens = [invite.token for invite in invites if invite.token]
    args.token = getattr(args, "token", tokens[0] if tokens else None)
    return args


def _bot_options(args: argparse.Namespace, index: int, others: list[Point]) -> BotOptions:
    """One bot's options; ``others`` are the spots of the bots made before it."""
    name = args.name if args.count == 1 else f"{args.name}-{index + 1}"
    rng = random.Random(args.seed + index)
    area: Rect | None = _middle(BAR.map.zone(args.zone)) if args.zone else BAR.map.arrival
    if args.position:
        position, area = BAR.map.clamp(*args.position), None
    else:
        position = BAR.map.free_spot(rng, others, area)
    return BotOptions(
        room=args.room,
        name=name,
        servers=args.servers,
        token=args.token,
        insecure=args.insecure,
        audio=args.audio,
        # Random, so that bots in separate processes also differ in pitch.
        seed=args.seed + index,
        record=_numbered(args.record, index) if args.record and args.count > 1 else args.record,
        speaker=args.speaker,
        position=position,
        settle_in=area,
        wander=args.wander,
        say=args.say,
        every=args.every,
        echo=args.echo,
    )


def _numbered(path: str, index: int) -> str:
    stem, dot, suffix = path.rpartition(".")
    return f"{stem}-{index + 1}.{suffix}" if dot else f"{path}-{index + 1}"


async def _start(bots: list[Bot], args: argparse.Namespace) -> None:
    spots: list[Point] = []
    for index in range(args.count):
        options = _bot_options(args, index, spots)
        spots.append(options.position)
        bot = Bot(options, sys.stdout if args.json else None)
        bots.append(bot)
        await bot.start()


async def run(args: argparse.Namespace) -> int:
    """Start the bots, stay until Ctrl-C, SIGTERM or ``--duration``, then leave cleanly.

    Ctrl-C, SIGTERM and the duration end the bots at any moment, also while
    they are still trying to reach the server.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.duration is not None:
        loop.call_later(args.duration, stop.set)
    bots: list[Bot] = []
    starting = asyncio.create_task(_start(bots, args))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            await stopping
    except SignalingError as exc:
        hint = ""
        if exc.code == p.ErrorCode.UNAUTHORIZED:
            hint = " (give the invite link as --server, or its token as --token)"
        print(f"chatsubo.client: {exc}{hint}", file=sys.stderr)
        return 1
    except (AudioUnavailable, ValueError, OSError) as exc:
        print(f"chatsubo.client: {exc}", file=sys.stderr)
        return 1
    finally:
        for task in (starting, stopping):
            task.cancel()
        await asyncio.gather(starting, stopping, return_exceptions=True)
        await asyncio.gather(*(bot.close() for bot in bots), return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run bots from the command line; ``python -m chatsubo.client`` calls this."""
    args = parse_args(argv)
    args.seed = random.randrange(1000)
    configure_logging(args.log_level)
    if args.log_level != "debug":
        # Their INFO lines are about ICE internals, not about the bar.
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    problem = _check(args)
    if problem is not None:
        print(f"chatsubo.client: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


def _check(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, in plain words, before anything connects."""
    if args.zone:
        try:
            BAR.map.zone(args.zone)
        except KeyError as exc:
            return f"--zone: {exc.args[0]}"
    for server in args.servers:
        try:
            websocket_url(server)
        except ValueError as exc:
            return f"--server: {exc}"
    if not p.is_valid_room_id(args.room):
        return (
            f"--room {args.room!r}: a room name is 1 to {p.ROOM_ID_MAX_CHARS} letters, digits, "
            "dots, dashes or underscores, with no spaces"
        )
    longest = args.name if args.count == 1 else f"{args.name}-{args.count}"
    problem = p.text_problem(longest, "a name", p.NAME_MAX_CHARS)
    if problem is not None:
        numbered = " with its number (--count)" if args.count > 1 else ""
        return f"--name {args.name!r}{numbered}: {problem}"
    return None
