"""A mesh peer: one RTCPeerConnection to each peer of a room that the server links it to.

The server decides who is connected to whom (everyone in a small room, the
people near each other in a big one) and says so with ``link`` and
``unlink``; this module connects to those peers directly. ``link`` names the
end that offers, so offers never cross; offers from peers we are not linked
to are dropped. A link that does not connect in time, or fails later, is
replaced with backoff; ``unlink`` closes it for good. Links survive
signaling outages: a ``link`` for a peer we are linked to already keeps the
connection as it is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.sdp import candidate_from_sdp
from pyee.asyncio import AsyncIOEventEmitter

from .. import channels
from .. import protocol as p
from ..space import BAR
from .audio import AudioIn, AudioOut
from .receiving import InlineAudioPath, use_inline_audio_path
from .signaling import SignalingClient, SignalingOptions

logger = logging.getLogger(__name__)

#: Audio level reports per second and remote peer.
LEVEL_RATE = 4.0


@dataclass
class PeerOptions:
    """Timing of the mesh; the defaults are the ones every peer shares (``BAR.peer``)."""

    #: A link not connected this many seconds after it was made is replaced.
    connect_timeout: float = BAR.peer.connect_timeout
    retry_min: float = BAR.peer.retry_min
    retry_max: float = BAR.peer.retry_max
    #: Decode received audio on arrival, in the event loop, rather than through
    #: aiortc's 80 ms jitter buffer and a thread per stream (see :mod:`chatsubo.peer.receiving`).
    inline_audio: bool = True


@dataclass(eq=False)
class Link:
    """The connection to one remote peer, with its channels and its place in negotiation."""

    peer_id: str
    name: str
    #: Whether we make the offers on this link, as the server's ``link`` said.
    offerer: bool
    pc: RTCPeerConnection
    #: The data channels, made once the media sections exist (see ``_open_channels``).
    chat: RTCDataChannel | None = None
    state: RTCDataChannel | None = None
    audio_in: AudioIn | None = None
    #: What decodes the remote audio on arrival, and counts what was lost (None
    #: with ``PeerOptions.inline_audio`` off); it goes with the connection.
    audio_path: InlineAudioPath | None = None
    signals: asyncio.Queue[p.PeerSignal] = field(default_factory=asyncio.Queue)
    #: Candidates that came before the remote description; None is the end of them.
    pending_candidates: list[p.IceCandidate | None] = field(default_factory=list)
    failures: int = 0
    position: channels.Position | None = None
    #: Position updates sent on this link, and received (valid ones, stale or not).
    positions_sent: int = 0
    positions_received: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def connected(self) -> bool:
        """Whether the link is usable: connected, and chat can be sent on it."""
        return (
            self.pc.connectionState == "connected"
            and self.chat is not None
            and self.chat.readyState == "open"
        )


class MeshPeer(AsyncIOEventEmitter):
    """Joins a room and keeps a peer connection with each peer the server links it to.

    Events: ``peerconnected(peer_id)`` once a link can carry chat,
    ``peerdisconnected(peer_id)`` when it fails or goes (unlinked, or the
    peer left), ``chat(peer_id, Chat)``, ``position(peer_id, Position)``
    from a linked peer itself, ``farposition(peer_id, (x, y))`` from the
    server for a member that has told us nothing itself yet (see
    :attr:`positions`), ``audio(peer_id, AudioIn)`` for each remote audio
    track, which is read (and its frames counted) whether or not anyone
    listens, and ``audiolevel(peer_id, dbfs)`` for each of them
    ``LEVEL_RATE`` times a second, for speaking indicators. ``audio`` is the
    peer's one encoded outgoing stream, shared by every link; without it the
    peer only listens.
    """

    def __init__(
        self,
        room_id: str,
        name: str,
        signaling: SignalingOptions | None = None,
        options: PeerOptions | None = None,
        audio: AudioOut | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__()
        self.options = options or PeerOptions()
        self.signaling = SignalingClient(room_id, name, signaling, token)
        self.links: dict[str, Link] = {}
        #: Peers the server says are in the room (or were, before an outage).
        self.present: dict[str, str] = {}
        #: Where each member stands, as far as we know: for a linked peer, from
        #: its own ``pos`` messages (ten a second, what the mixer follows) once
        #: they come; for everyone else from the server (``peer_list`` and the
        #: ``positions`` batches, twice a second).
        self.positions: dict[str, tuple[float, float]] = {}
        self._audio = audio
        self._chat_ids = itertools.count(1)
        self._position_seq = itertools.count()
        self._position: channels.Position | None = None
        self._position_sent_at = -math.inf
        self._position_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._levels: asyncio.Task[None] | None = None
        #: After a rejoin, the links the server has not named again yet, and
        #: the timer that closes them (the server may have restarted).
        self._joined = False
        self._unconfirmed: set[str] = set()
        self._confirm_timer: asyncio.TimerHandle | None = None
        self.signaling.on("peer_list", self._on_peer_list)
        self.signaling.on("peer_joined", self._on_peer_joined)
        self.signaling.on("peer_left", self._on_peer_left)
        self.signaling.on("peer_updated", self._on_peer_updated)
        self.signaling.on("signal", self._on_signal)
        self.signaling.on("link", self._on_link)
        self.signaling.on("unlink", self._on_unlink)
        self.signaling.on("positions", self._on_positions)

    @property
    def peer_id(self) -> str | None:
        """Our id in the room, once joined."""
        return self.signaling.peer_id

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Join the room; links to the others are made in the background."""
        await self.signaling.connect()
        self._levels = asyncio.create_task(self._report_levels())

    async def _report_levels(self) -> None:
        while True:
            await asyncio.sleep(1 / LEVEL_RATE)
            if not self.listeners("audiolevel"):
                # Measuring costs real CPU in a big room; only do it for someone.
                continue
            for peer_id, link in list(self.links.items()):
                if link.audio_in is not None:
                    self.emit("audiolevel", peer_id, link.audio_in.level_dbfs)

    async def close(self) -> None:
        """Leave the room and close every link; cannot hang."""
        self._closing = True
        for timer in (self._position_timer, self._confirm_timer):
            if timer is not None:
                timer.cancel()
        if self._levels is not None:
            self._levels.cancel()
            await asyncio.gather(self._levels, return_exceptions=True)
        await self.signaling.close()
        await asyncio.gather(*(self._close_link(link) for link in list(self.links.values())))

    # --- what we say and where we stand ---------------------------------------------

    def say(self, text: str) -> channels.Chat:
        """Send a line of chat to everyone connected."""
        message = channels.Chat(
            id=f"{self.peer_id}-{next(self._chat_ids)}", text=text, ts=time.time() * 1000
        )
        data = channels.encode(message)
        for link in self.links.values():
            if link.chat is not None and link.chat.readyState == "open":
                link.chat.send(data)
        return message

    def move(self, x: float, y: float, zone: str | None = None) -> None:
        """Stand somewhere else; everyone connected is told, and the server, unless nothing changed.

        Updates go out to links at most ``POSITION_RATE`` times a second, to
        the server at most ``POSITION_UPDATES_PER_SECOND`` (see
        ``SignalingClient.move``); moves in between are folded into the next
        one, so the last always arrives.
        """
        current = self._position
        if current is not None and (current.x, current.y, current.zone) == (x, y, zone):
            return
        self.signaling.move(x, y)
        self._position = channels.Position(
            x=x, y=y, zone=zone, seq=next(self._position_seq), ts=time.time() * 1000
        )
        if self._position_timer is None:
            loop = asyncio.get_running_loop()
            due = self._position_sent_at + 1 / channels.POSITION_RATE
            self._position_timer = loop.call_at(max(due, loop.time()), self._publish_position)

    def _publish_position(self) -> None:
        self._position_timer = None
        self._position_sent_at = asyncio.get_running_loop().time()
        if self._position is not None:
            data = channels.encode(self._position)
            for link in self.links.values():
                self._send_state(link, data)

    @staticmethod
    def _send_state(link: Link, data: str) -> None:
        # Positions go stale fast: never queue one behind unsent others.
        state = link.state
        if (
            state is not None
            and state.readyState == "open"
            and state.bufferedAmount < channels.STATE_BUFFER_LIMIT
        ):
            state.send(data)
            link.positions_sent += 1

    # --- signaling events ----------------------------------------------------------

    def _on_peer_list(self, message: p.PeerList) -> None:
        # Links come with ``link``; after a rejoin the server names again those
        # it keeps, and a server that restarted has forgotten the others.
        for info in message.peers:
            self.present[info.peer_id] = info.name
            if info.x is not None and info.y is not None:
                self._far_position(info.peer_id, info.x, info.y)
        if self._joined:
            self._unconfirmed = set(self.links)
            if self._confirm_timer is not None:
                self._confirm_timer.cancel()
            self._confirm_timer = asyncio.get_running_loop().call_later(
                p.CLIENT_RULES.link_confirm_wait, self._close_unconfirmed
            )
        self._joined = True

    def _close_unconfirmed(self) -> None:
        self._confirm_timer = None
        for peer_id in sorted(self._unconfirmed):
            self._on_unlink(p.Unlink(peer_id=peer_id))
        self._unconfirmed.clear()

    def _on_peer_joined(self, message: p.PeerJoined) -> None:
        self.present[message.peer_id] = message.name

    def _on_peer_left(self, message: p.PeerLeft) -> None:
        self.present.pop(message.peer_id, None)
        self.positions.pop(message.peer_id, None)
        link = self.links.pop(message.peer_id, None)
        if link is not None:
            logger.info("%s left (%s)", link.name, message.reason.value)
            self._spawn(self._close_link(link))

    def _on_link(self, message: p.Link) -> None:
        self._unconfirmed.discard(message.peer_id)
        link = self.links.get(message.peer_id)
        if link is None:
            name = self.present.get(message.peer_id, message.peer_id)
            self._open_link(message.peer_id, name, offerer=message.offer)
            return
        # After a rejoin or a server restart: keep the connection as it is. Should
        # the roles have changed, the next retry of a link still down follows them.
        logger.debug("already linked to %s; keeping the connection", link.name)
        link.offerer = message.offer

    def _on_unlink(self, message: p.Unlink) -> None:
        link = self.links.pop(message.peer_id, None)
        if link is not None:
            logger.info("unlinked from %s: out of earshot", link.name)
            self._spawn(self._close_link(link))

    def _on_positions(self, message: p.Positions) -> None:
        for where in message.peers:
            self._far_position(where.peer_id, where.x, where.y)

    def _far_position(self, peer_id: str, x: float, y: float) -> None:
        """A position from the server, for a member that does not tell us its own."""
        link = self.links.get(peer_id)
        if peer_id not in self.present or (link is not None and link.position is not None):
            # Ours (we are not among those present), one gone, or older than
            # what the peer itself sends ten times a second.
            return
        self.positions[peer_id] = (x, y)
        self.emit("farposition", peer_id, (x, y))

    def _on_peer_updated(self, message: p.PeerUpdated) -> None:
        if message.peer_id in self.present:
            self.present[message.peer_id] = message.name
        link = self.links.get(message.peer_id)
        if link is not None:
            link.name = message.name

    def _on_signal(self, message: p.RelayedSignal) -> None:
        try:
            signal = p.decode_peer_signal(bytes(message.data))
        except p.ProtocolError as exc:
            logger.debug("dropping a malformed signal from %s: %s", message.from_, exc.message)
            return
        link = self.links.get(message.from_)
        if link is None:
            # Late, from a link just closed, or early, from one not made.
            logger.debug("dropping a signal from %s, to whom we are not linked", message.from_)
            return
        link.signals.put_nowait(signal)

    # --- links ---------------------------------------------------------------------

    def _spawn(self, coro: Any, link: Link | None = None) -> asyncio.Task[None]:
        """Run ``coro`` in the background, logging its failure rather than losing it."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.add_done_callback(_log_failure)
        if link is not None:
            link.tasks.add(task)
            task.add_done_callback(link.tasks.discard)
        return task

    def _new_connection(self) -> RTCPeerConnection:
        ice = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.signaling.ice_servers
        ]
        # An explicit, possibly empty list: aiortc's default is Google's STUN server.
        return RTCPeerConnection(
            RTCConfiguration(iceServers=ice, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )

    def _add_audio(self, pc: RTCPeerConnection, *, offering: bool) -> None:
        """Our one audio track, or, when we only listen, a receive-only section in offers.

        An answerer that only listens adds nothing: the offer's audio section
        already made a transceiver for it.
        """
        if self._audio is not None:
            pc.addTrack(self._audio.subscribe())
        elif offering:
            pc.addTransceiver("audio", direction="recvonly")

    def _open_channels(self, link: Link) -> None:
        """Make the two negotiated channels and connect them to our events.

        aiortc bundles them correctly only when the audio section comes first:
        the offerer adds its audio before this, the answerer calls this after
        applying the offer.
        """
        pc = link.pc
        chat = link.chat = pc.createDataChannel(
            channels.CHAT.label, negotiated=True, id=channels.CHAT.id, ordered=channels.CHAT.ordered
        )
        state = link.state = pc.createDataChannel(
            channels.STATE.label,
            negotiated=True,
            id=channels.STATE.id,
            ordered=channels.STATE.ordered,
            maxRetransmits=channels.STATE.max_retransmits,
        )

        @chat.on("open")
        def on_chat_open() -> None:
            # Only now is the link of use: "connected" comes before the channels open.
            link.failures = 0
            self.emit("peerconnected", link.peer_id)

        @state.on("open")
        def on_state_open() -> None:
            if self._position is not None:
                self._send_state(link, channels.encode(self._position))

        @chat.on("message")
        def on_chat(data: str | bytes) -> None:
            try:
                self.emit("chat", link.peer_id, channels.decode_chat(data))
            except channels.ChannelError as exc:
                logger.debug("dropping a chat message from %s: %s", link.peer_id, exc)

        @state.on("message")
        def on_position(data: str | bytes) -> None:
            try:
                position = channels.decode_position(data)
            except channels.ChannelError as exc:
                logger.debug("dropping a state message from %s: %s", link.peer_id, exc)
                return
            link.positions_received += 1
            # Unordered channel: a late, older update must not move anyone back.
            if link.position is None or position.seq > link.position.seq:
                link.position = position
                self.positions[link.peer_id] = (position.x, position.y)
                self.emit("position", link.peer_id, position)

    def _open_link(self, peer_id: str, name: str, *, offerer: bool) -> None:
        link = Link(peer_id=peer_id, name=name, offerer=offerer, pc=self._new_connection())
        self.links[peer_id] = link
        self._wire(link)
        self._spawn(self._process_signals(link), link)
        if offerer:
            self._spawn(self._offer(link), link)
        self._spawn(self._watchdog(link, link.pc), link)

    def _wire(self, link: Link) -> None:
        """Connect a link's connection and channels to our events."""
        pc = link.pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if link.pc is not pc or self._closing:
                return
            logger.info("link to %s: %s", link.name, pc.connectionState)
            if pc.connectionState == "failed":
                self.emit("peerdisconnected", link.peer_id)
                self._spawn(self._replace(link), link)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and link.pc is pc:
                if self.options.inline_audio:
                    for receiver in pc.getReceivers():
                        if receiver.track is track:
                            link.audio_path = use_inline_audio_path(receiver)
                # Read even if nobody listens: aiortc queues unread frames forever.
                link.audio_in = AudioIn(track, link.name)
                self.emit("audio", link.peer_id, link.audio_in)

    async def _offer(self, link: Link) -> None:
        pc = link.pc
        self._add_audio(pc, offering=True)
        self._open_channels(link)
        await pc.setLocalDescription(await pc.createOffer())
        await self.signaling.signal(
            link.peer_id, p.SessionDescription(type="offer", sdp=pc.localDescription.sdp)
        )

    async def _process_signals(self, link: Link) -> None:
        """Apply one peer's signals strictly in order."""
        while True:
            signal = await link.signals.get()
            try:
                await self._apply(link, signal)
            except Exception as exc:
                logger.info("bad signal from %s: %s", link.name, exc)

    async def _apply(self, link: Link, signal: p.PeerSignal) -> None:
        match signal:
            case p.SessionDescription(type="offer"):
                await self._answer(link, RTCSessionDescription(sdp=signal.sdp, type="offer"))
            case p.SessionDescription():
                if link.pc.signalingState == "have-local-offer":
                    await link.pc.setRemoteDescription(
                        RTCSessionDescription(sdp=signal.sdp, type="answer")
                    )
                    await self._flush_candidates(link)
            case _ if link.pc.remoteDescription is None:
                link.pending_candidates.append(signal)
            case _:
                await link.pc.addIceCandidate(_candidate(signal))

    async def _flush_candidates(self, link: Link) -> None:
        pending, link.pending_candidates = link.pending_candidates, []
        for candidate in pending:
            await link.pc.addIceCandidate(_candidate(candidate))

    async def _answer(self, link: Link, offer: RTCSessionDescription) -> None:
        """Answer an offer; an offer always starts the link afresh."""
        if link.pc.signalingState != "stable" or link.pc.remoteDescription is not None:
            await self._reset(link)
        pc = link.pc
        await pc.setRemoteDescription(offer)
        await self._flush_candidates(link)
        self._add_audio(pc, offering=False)
        self._open_channels(link)
        await pc.setLocalDescription(await pc.createAnswer())
        await self.signaling.signal(
            link.peer_id, p.SessionDescription(type="answer", sdp=pc.localDescription.sdp)
        )

    async def _reset(self, link: Link) -> None:
        """Give a link a fresh connection and channels."""
        old, audio_in = link.pc, link.audio_in
        link.pc, link.chat, link.state, link.audio_in = self._new_connection(), None, None, None
        link.audio_path = None
        link.pending_candidates = []
        self._wire(link)
        self._spawn(self._watchdog(link, link.pc), link)
        await old.close()
        if audio_in is not None:
            await audio_in.stop()

    async def _watchdog(self, link: Link, pc: RTCPeerConnection) -> None:
        """Replace a connection that has not connected in time."""
        await asyncio.sleep(self.options.connect_timeout)
        if link.pc is pc and pc.connectionState != "connected" and not self._closing:
            logger.info("link to %s did not connect in time", link.name)
            await self._replace(link)

    async def _replace(self, link: Link) -> None:
        """Start a failed link again after a backoff; the offerer makes the new offer."""
        if self.links.get(link.peer_id) is not link:
            return
        if link.peer_id not in self.present:
            self.links.pop(link.peer_id, None)
            await self._close_link(link)
            return
        link.failures += 1
        delay = min(self.options.retry_min * 2 ** (link.failures - 1), self.options.retry_max)
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        if self.links.get(link.peer_id) is not link or self._closing:
            return
        await self._reset(link)
        if link.offerer:
            await self._offer(link)

    async def _close_link(self, link: Link) -> None:
        current = asyncio.current_task()
        tasks = [task for task in link.tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await link.pc.close()
        if link.audio_in is not None:
            await link.audio_in.stop()
        self.emit("peerdisconnected", link.peer_id)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task failed", exc_info=task.exception())


def _candidate(signal: p.IceCandidate | None) -> RTCIceCandidate | None:
    """A browser's trickled candidate as aiortc wants it; None stays the end of candidates."""
    if signal is None:
        return None
    candidate = candidate_from_sdp(signal.candidate.split(":", 1)[1])
    candidate.sdpMid = signal.sdp_mid
    candidate.sdpMLineIndex = signal.sdp_m_line_index
    return candidate
