"""The bar as a place: its map, and how loud a voice is from where you stand.

This is the one definition that Python peers and the browser share. The
server serves it as JSON at ``/api/space``; nothing here is written twice.
Coordinates are meters: x grows to the right, y grows toward the bottom of the
map, and a listener faces up the map (toward smaller y).
"""

from __future__ import annotations

import math
import random
from typing import Final, Literal

import msgspec

from .channels import (
    CHAT,
    CHAT_ID_MAX_CHARS,
    CHAT_MAX_CHARS,
    MAX_CHANNEL_MESSAGE_BYTES,
    POSITION_RATE,
    STATE,
    STATE_BUFFER_LIMIT,
    ChannelSpec,
)
from .protocol import ZONE_MAX_CHARS

#: Random spots tried in an area before looking further.
_SPOT_TRIES = 64

#: Opus, mono, at a speech bitrate, as a browser sends one voice (aiortc's own
#: default is 96 kbit/s stereo).
OPUS_BITRATE = 32_000


Point = tuple[float, float]

#: Furniture that is floor: people stand on it.
WALKABLE: Final = frozenset({"dancefloor"})


class Rect(msgspec.Struct, rename="camel", frozen=True):
    """A rectangle of the map, in meters."""

    x: float
    y: float
    width: float
    height: float

    def contains(self, x: float, y: float) -> bool:
        """Whether the point lies inside."""
        return self.x <= x < self.x + self.width and self.y <= y < self.y + self.height

    @property
    def center(self) -> Point:
        """The middle."""
        return (self.x + self.width / 2, self.y + self.height / 2)


class Zone(Rect, frozen=True):
    """A named rectangle of the bar."""

    name: str


class Furniture(Rect, frozen=True):
    """Something standing in the bar, drawn on the map.

    ``kind`` is how it is drawn: ``counter``, ``stool``, ``table``, ``sofa``,
    ``booth``, ``arcade``, ``dancefloor``, ``dj`` or ``plant``. Round kinds
    (stools, tables, plants) fill the ellipse inside their rectangle. People
    may walk anywhere, but nobody is placed on furniture other than floor.
    """

    kind: str

    def blocks(self, x: float, y: float, margin: float) -> bool:
        """Whether a person standing at (x, y) would be on it (within ``margin``)."""
        if self.kind in WALKABLE:
            return False
        return (
            self.x - margin < x < self.x + self.width + margin
            and self.y - margin < y < self.y + self.height + margin
        )


class BarMap(msgspec.Struct, rename="camel", frozen=True):
    """The floor plan: its size, its zones, its furniture, and where newcomers arrive."""

    width: float
    height: float
    zones: list[Zone]
    #: Where newcomers appear: the floor in front of the counter.
    arrival: Rect
    #: Meters kept between a person placed and everyone else.
    personal_space: float
    #: Meters kept between a person placed and furniture or the map's edge.
    margin: float
    furniture: list[Furniture] = msgspec.field(default_factory=list)

    def is_free(self, x: float, y: float, others: list[Point]) -> bool:
        """Whether a person may be placed at (x, y): inside, off furniture, apart from others."""
        m = self.margin
        if not (m <= x <= self.width - m and m <= y <= self.height - m):
            return False
        if any(item.blocks(x, y, m) for item in self.furniture):
            return False
        return all(math.hypot(x - ox, y - oy) >= self.personal_space for ox, oy in others)

    def free_spot(self, rng: random.Random, others: list[Point], area: Rect | None = None) -> Point:
        """A random free spot in ``area`` (the arrival area by default), else anywhere free.

        With the whole bar crowded it gives the spot it tried that is farthest from anyone.
        """
        best, best_room = self.clamp(*(area or self.arrival).center), -1.0
        for place in (area or self.arrival, Rect(0.0, 0.0, self.width, self.height)):
            for _ in range(_SPOT_TRIES):
                x = place.x + rng.random() * place.width
                y = place.y + rng.random() * place.height
                if self.is_free(x, y, others):
                    return (x, y)
                if self.is_free(x, y, []):
                    room = min((math.hypot(x - ox, y - oy) for ox, oy in others), default=0.0)
                    if room > best_room:
                        best, best_room = (x, y), room
        return best

    def zone_at(self, x: float, y: float) -> Zone | None:
        """The zone holding the point, if any."""
        return next((z for z in self.zones if z.contains(x, y)), None)

    def zone(self, name: str) -> Zone:
        """The zone called ``name`` (case-insensitive)."""
        for zone in self.zones:
            if zone.name.lower() == name.lower():
                return zone
        names = ", ".join(z.name for z in self.zones)
        raise KeyError(f"no zone {name!r}; the zones are {names}")

    def clamp(self, x: float, y: float) -> tuple[float, float]:
        """The nearest point inside the bar."""
        return (min(max(x, 0.0), self.width), min(max(y, 0.0), self.height))


class DistanceModel(msgspec.Struct, rename="camel", frozen=True):
    """Gain by distance: a plateau, a steep roll-off, then silence at the hearing range.

    Within ``refDistance`` a voice is at full volume: the size of a
    conversation at a bar table. Beyond it the gain falls as Web Audio's
    inverse model does, ``ref / (ref + rolloff * (d - ref))``: steeper than
    Hubs' 5/5 because a bar is small and loud. From ``fadeFrom`` that curve is
    also faded out by a raised cosine, which reaches exactly zero at
    ``hearingRange`` with no step and no kink, so that a voice beyond it is
    silent and needs no connection at all. Browsers compute this gain
    themselves and use their PannerNode for direction only: an inverse
    PannerNode never reaches zero.
    """

    ref_distance: float
    rolloff_factor: float
    fade_from: float
    hearing_range: float

    def gain(self, distance: float) -> float:
        """Linear gain for a voice ``distance`` meters away: 1 up close, exactly 0 out of range."""
        if distance >= self.hearing_range:
            return 0.0
        ref = self.ref_distance
        gain = ref / (ref + self.rolloff_factor * (max(distance, ref) - ref))
        if distance > self.fade_from:
            fade = (distance - self.fade_from) / (self.hearing_range - self.fade_from)
            gain *= 0.5 * (1 + math.cos(math.pi * fade))
        return gain

    def stereo_gains(
        self, listener: tuple[float, float], source: tuple[float, float]
    ) -> tuple[float, float]:
        """Left and right gains: distance gain times equal-power panning by direction."""
        dx, dy = source[0] - listener[0], source[1] - listener[1]
        distance = math.hypot(dx, dy)
        pan = dx / distance if distance > 1e-9 else 0.0
        angle = (pan + 1) * math.pi / 4
        gain = self.gain(distance)
        return gain * math.cos(angle), gain * math.sin(angle)


#: How a link is doing, as its indicator in the page shows it.
QualityLevel = Literal["good", "fair", "poor", "unknown"]


class QualityLimits(msgspec.Struct, rename="camel", frozen=True):
    """Limits on a link's figures: round trip and jitter in ms, loss as a fraction (0 to 1)."""

    rtt: float
    loss: float
    jitter: float


class LinkQuality(msgspec.Struct, rename="camel", frozen=True):
    """The connection indicator's rule: a link's round trip, loss and jitter, in three levels.

    A link is ``good`` when every figure is within ``good``, ``poor`` when
    any is beyond ``poor``, and ``fair`` otherwise. Figures are read every
    ``interval`` seconds; loss is over the last interval. A figure that is
    not known yet counts for nothing, except the round trip: without it
    (no stats at all) the level is ``unknown``, never ``good``. Loss and
    jitter are known only while audio arrives from the other end, which a
    listener without a microphone never sends.
    """

    interval: float
    good: QualityLimits
    poor: QualityLimits

    def level(self, rtt: float | None, loss: float | None, jitter: float | None) -> QualityLevel:
        """The level of a link with these figures (None: not known)."""
        figures = (
            (rtt, self.good.rtt, self.poor.rtt),
            (loss, self.good.loss, self.poor.loss),
            (jitter, self.good.jitter, self.poor.jitter),
        )
        if any(value is not None and value > poor for value, _, poor in figures):
            return "poor"
        if rtt is None:
            return "unknown"
        if all(value is None or value <= good for value, good, _ in figures):
            return "good"
        return "fair"


class PeerRules(msgspec.Struct, rename="camel", frozen=True):
    """The peer-to-peer conventions: data channels and their limits, link timing, quality levels."""

    chat: ChannelSpec
    state: ChannelSpec
    chat_max_chars: int
    chat_id_max_chars: int
    #: The longest zone name a ``pos`` message may carry.
    zone_max_chars: int
    #: Channel messages larger than this, in UTF-8 bytes, are dropped unread.
    max_message_bytes: int
    position_rate: float
    #: Bytes unsent on the state channel above which a position is dropped, not queued.
    state_buffer_limit: int
    audio_bitrate: int
    #: Seconds: a link not connected this long is replaced, after a backoff
    #: from ``retry_min`` doubling up to ``retry_max``, with jitter.
    connect_timeout: float
    retry_min: float
    retry_max: float
    #: The connection indicator next to each person.
    quality: LinkQuality


class Space(msgspec.Struct, rename="camel", frozen=True):
    """Everything about the bar that every peer must agree on."""

    map: BarMap
    distance_model: DistanceModel
    peer: PeerRules


BAR = Space(
    map=BarMap(
        width=24.0,
        height=16.0,
        zones=[
            Zone(8.0, 0.0, 8.0, 6.0, name="Central Bar"),
            Zone(0.0, 0.0, 8.0, 8.0, name="Gaming Zone"),
            Zone(16.0, 0.0, 8.0, 8.0, name="Lounge"),
            Zone(0.0, 8.0, 8.0, 8.0, name="Booths"),
            Zone(8.0, 6.0, 8.0, 10.0, name="Dance Floor"),
            Zone(16.0, 8.0, 8.0, 8.0, name="Terrace"),
        ],
        arrival=Rect(9.5, 3.4, 5.0, 2.4),
        personal_space=1.0,
        margin=0.3,
        furniture=[
            Furniture(9.0, 1.4, 6.0, 0.9, kind="counter"),
            *(Furniture(9.3 + 1.1 * i, 2.7, 0.5, 0.5, kind="stool") for i in range(6)),
            *(Furniture(0.3, 1.6 + 2.0 * i, 0.9, 1.2, kind="arcade") for i in range(3)),
            Furniture(4.2, 3.6, 1.4, 1.4, kind="table"),
            Furniture(17.0, 1.4, 2.8, 0.9, kind="sofa"),
            Furniture(20.6, 1.4, 2.8, 0.9, kind="sofa"),
            Furniture(18.0, 3.2, 1.2, 1.2, kind="table"),
            Furniture(21.4, 3.2, 1.2, 1.2, kind="table"),
            Furniture(23.0, 4.4, 0.8, 2.6, kind="sofa"),
            *(
                Furniture(0.6 + 3.6 * col, 9.4 + 3.3 * row, 3.0, 2.4, kind="booth")
                for row in range(2)
                for col in range(2)
            ),
            Furniture(9.0, 8.0, 6.0, 6.0, kind="dancefloor"),
            Furniture(10.8, 14.6, 2.4, 0.8, kind="dj"),
            *(
                Furniture(17.5 + 3.0 * col, 9.5 + 3.0 * row, 1.2, 1.2, kind="table")
                for row in range(2)
                for col in range(2)
            ),
            *(Furniture(16.3 + 6.8 * col, 15.0, 0.7, 0.7, kind="plant") for col in range(2)),
        ],
    ),
    # Silent at 11 m: across a zone you still hear the next one faintly, and
    # the far side of the bar (the map is 24 x 16 m) not at all.
    distance_model=DistanceModel(
        ref_distance=2.0,
        rolloff_factor=2.5,
        fade_from=6.0,
        hearing_range=11.0,
    ),
    peer=PeerRules(
        chat=CHAT,
        state=STATE,
        chat_max_chars=CHAT_MAX_CHARS,
        chat_id_max_chars=CHAT_ID_MAX_CHARS,
        zone_max_chars=ZONE_MAX_CHARS,
        max_message_bytes=MAX_CHANNEL_MESSAGE_BYTES,
        position_rate=POSITION_RATE,
        state_buffer_limit=STATE_BUFFER_LIMIT,
        audio_bitrate=OPUS_BITRATE,
        connect_timeout=10.0,
        retry_min=0.5,
        retry_max=10.0,
        # ITU-T G.114 keeps one-way mouth-to-ear delay within 150 ms for
        # conversation to feel natural, and calls more than 400 ms unacceptable.
        # The endpoints themselves add some 60-80 ms (a 20 ms Opus frame,
        # jitter buffer, playout), so a 150 ms round trip (75 ms each way) still
        # lands within 150 ms; past a 400 ms round trip the mouth-to-ear delay
        # is near 300 ms and people start talking over each other. Opus with
        # in-band FEC and PLC hides a couple of percent of loss; past 10 % words
        # break up audibly. Common VoIP guidance keeps jitter under 30 ms; past
        # 60 ms a jitter buffer deep enough to absorb it adds the delay itself.
        quality=LinkQuality(
            interval=2.0,
            good=QualityLimits(rtt=150.0, loss=0.02, jitter=30.0),
            poor=QualityLimits(rtt=400.0, loss=0.10, jitter=60.0),
        ),
    ),
)


def space_json() -> bytes:
    """The shared definition as JSON, as served at ``/api/space``."""
    return msgspec.json.encode(BAR)
