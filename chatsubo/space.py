"""The bar as a place: its map, and how loud a voice is from where you stand.

This is the one definition that Python peers and the browser share. The
server serves it as JSON at ``/api/space``; nothing here is written twice.
Coordinates are meters: x grows to the right, y grows toward the bottom of the
map, and a listener faces up the map (toward smaller y).
"""

from __future__ import annotations

import math
import random

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

#: Opus, mono, at a speech bitrate, as a browser sends one voice (aiortc's own
#: default is 96 kbit/s stereo).
OPUS_BITRATE = 32_000


class Zone(msgspec.Struct, rename="camel", frozen=True):
    """A named rectangle of the bar."""

    name: str
    x: float
    y: float
    width: float
    height: float

    def contains(self, x: float, y: float) -> bool:
        """Whether the point lies inside the zone."""
        return self.x <= x < self.x + self.width and self.y <= y < self.y + self.height

    @property
    def center(self) -> tuple[float, float]:
        """The middle of the zone, where a newcomer to it stands."""
        return (self.x + self.width / 2, self.y + self.height / 2)


class Furniture(msgspec.Struct, rename="camel", frozen=True):
    """Something standing in the bar, drawn on the map; people walk through it freely.

    ``kind`` is how it is drawn: ``counter``, ``stool``, ``table``, ``sofa``,
    ``booth``, ``arcade``, ``dancefloor``, ``dj`` or ``plant``. Round kinds
    (stools, tables, plants) fill the ellipse inside their rectangle.
    """

    kind: str
    x: float
    y: float
    width: float
    height: float


class BarMap(msgspec.Struct, rename="camel", frozen=True):
    """The floor plan: its size, its zones, its furniture, and where newcomers arrive."""

    width: float
    height: float
    zones: list[Zone]
    #: The zone newcomers walk into, and the size of the square around its
    #: middle where they appear, so that they meet without standing on each other.
    arrival: str
    arrival_spread: float
    furniture: list[Furniture] = msgspec.field(default_factory=list)

    def arrival_spot(self, rng: random.Random) -> tuple[float, float]:
        """Where a newcomer stands: near the middle of the arrival zone."""
        x, y = self.zone(self.arrival).center
        half = self.arrival_spread / 2
        return self.clamp(x + rng.uniform(-half, half), y + rng.uniform(-half, half))

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
    """Gain by distance, as Web Audio's inverse model computes it, plus a mute floor.

    Within ``refDistance`` a voice is at full volume: the size of a
    conversation at a bar table. Beyond it the gain falls as
    ``ref / (ref + rolloff * (d - ref))``: steeper than Hubs' 5/5 because a
    bar is small and loud. The browser feeds the same numbers to a PannerNode
    (``distanceModel: "inverse"``); below ``muteBelow`` a voice is silenced.
    """

    model: str
    ref_distance: float
    rolloff_factor: float
    max_distance: float
    mute_below: float

    def gain(self, distance: float) -> float:
        """Linear gain for a voice ``distance`` meters away."""
        d = min(max(distance, self.ref_distance), self.max_distance)
        ref = self.ref_distance
        gain = ref / (ref + self.rolloff_factor * (d - ref))
        return 0.0 if gain < self.mute_below else gain

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


class PeerRules(msgspec.Struct, rename="camel", frozen=True):
    """The peer-to-peer conventions: data channels and their limits."""

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
            Zone("Central Bar", 8.0, 0.0, 8.0, 6.0),
            Zone("Gaming Zone", 0.0, 0.0, 8.0, 8.0),
            Zone("Lounge", 16.0, 0.0, 8.0, 8.0),
            Zone("Booths", 0.0, 8.0, 8.0, 8.0),
            Zone("Dance Floor", 8.0, 6.0, 8.0, 10.0),
            Zone("Terrace", 16.0, 8.0, 8.0, 8.0),
        ],
        arrival="Central Bar",
        arrival_spread=3.0,
        furniture=[
            Furniture("counter", 9.0, 1.4, 6.0, 0.9),
            *(Furniture("stool", 9.3 + 1.1 * i, 2.7, 0.5, 0.5) for i in range(6)),
            *(Furniture("arcade", 0.3, 1.6 + 2.0 * i, 0.9, 1.2) for i in range(3)),
            Furniture("table", 4.2, 3.6, 1.4, 1.4),
            Furniture("sofa", 17.0, 1.4, 2.8, 0.9),
            Furniture("sofa", 20.6, 1.4, 2.8, 0.9),
            Furniture("table", 18.0, 3.2, 1.2, 1.2),
            Furniture("table", 21.4, 3.2, 1.2, 1.2),
            Furniture("sofa", 23.0, 4.4, 0.8, 2.6),
            *(
                Furniture("booth", 0.6 + 3.6 * col, 9.4 + 3.3 * row, 3.0, 2.4)
                for row in range(2)
                for col in range(2)
            ),
            Furniture("dancefloor", 9.0, 8.0, 6.0, 6.0),
            Furniture("dj", 10.8, 14.6, 2.4, 0.8),
            *(
                Furniture("table", 17.5 + 3.0 * col, 9.5 + 3.0 * row, 1.2, 1.2)
                for row in range(2)
                for col in range(2)
            ),
            *(Furniture("plant", 16.3 + 6.8 * col, 15.0, 0.7, 0.7) for col in range(2)),
        ],
    ),
    distance_model=DistanceModel(
        model="inverse",
        ref_distance=2.0,
        rolloff_factor=2.5,
        max_distance=30.0,
        mute_below=0.015,
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
    ),
)


def space_json() -> bytes:
    """The shared definition as JSON, as served at ``/api/space``."""
    return msgspec.json.encode(BAR)
