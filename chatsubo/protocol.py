"""The signaling wire protocol: every message between a client and the server.

This module is the single definition of the protocol; ``docs/protocol.md``
documents it. Frames are JSON text with camelCase fields and a ``type`` tag.
Decoding validates shape, types and value constraints, so a handler only ever
sees well-formed messages.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

#: Maximum size of one frame, in bytes, before it is refused with ``too_large``.
MAX_MESSAGE_BYTES: Final = 64 * 1024

ROOM_ID_MAX_CHARS: Final = 64
# \Z, not $: "$" also matches before a trailing newline.
ROOM_ID_PATTERN: Final = rf"^[A-Za-z0-9._-]{{1,{ROOM_ID_MAX_CHARS}}}\Z"
NAME_MAX_CHARS: Final = 32
ZONE_MAX_CHARS: Final = 32
PEER_ID_MAX_CHARS: Final = 64

RoomId = Annotated[str, Meta(pattern=ROOM_ID_PATTERN)]
PeerId = Annotated[str, Meta(min_length=1, max_length=PEER_ID_MAX_CHARS)]
DisplayName = Annotated[str, Meta(min_length=1, max_length=NAME_MAX_CHARS)]
Zone = Annotated[str, Meta(min_length=1, max_length=ZONE_MAX_CHARS)]
#: A resume or invite token (a JWT); one with a fixed name of 32 wide characters fits.
TOKEN_MAX_CHARS: Final = 1024
Token = Annotated[str, Meta(min_length=1, max_length=TOKEN_MAX_CHARS)]
#: A coordinate in meters; the server puts a position outside the map at its edge.
Coordinate = Annotated[float, Meta(ge=-1000.0, le=1000.0)]
#: Positions a client sends the server (``update`` with ``x`` and ``y``) per second, at most.
POSITION_UPDATES_PER_SECOND: Final = 4.0

_ROOM_ID_RE = re.compile(ROOM_ID_PATTERN)


class ErrorCode(enum.StrEnum):
    """Codes carried by ``error`` messages."""

    BAD_MESSAGE = "bad_message"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    ROOM_FULL = "room_full"
    UNKNOWN_PEER = "unknown_peer"
    NOT_IN_ROOM = "not_in_room"
    ALREADY_JOINED = "already_joined"
    BAD_ORIGIN = "bad_origin"
    BAD_RESUME = "bad_resume"
    SERVER_FULL = "server_full"
    UNAVAILABLE = "unavailable"
    UNAUTHORIZED = "unauthorized"


class LeaveReason(enum.StrEnum):
    """Why a peer left its room, as carried by ``peer_left``."""

    LEAVE = "leave"
    CLOSED = "closed"
    TIMEOUT = "timeout"
    KICKED = "kicked"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    REPLACED = 4000


#: Close codes by which a client says it is leaving on purpose (1000, 1001).
CLEAN_CLOSE_CODES: Final = frozenset({1000, 1001})


class Reconnect(enum.StrEnum):
    """What a client does after its socket closes."""

    #: Not at all: a retry would be refused again, or would fight a newer connection.
    NEVER = "never"
    #: Straight away, spread over ``restartSpread`` so that not everyone comes at once.
    AT_ONCE = "at_once"
    #: After the wait :func:`reconnect_delay` gives.
    BACKOFF = "backoff"


class CloseRule(msgspec.Struct, rename="camel", frozen=True):
    """One close code the server sends: what it means and what the client does.

    ``reasons`` says it in plain words for the ``error`` code the server sent
    just before closing, where that tells more than the close code alone.
    """

    code: int
    meaning: str
    reconnect: Reconnect
    reasons: dict[str, str] = msgspec.field(default_factory=dict)


CLOSE_RULES: Final = (
    CloseRule(
        CloseCode.POLICY_VIOLATION,
        "the server refused this connection",
        Reconnect.NEVER,
        {
            "bad_origin": "the server does not accept connections from this page's address",
            "rate_limited": "too many messages were sent too fast",
        },
    ),
    CloseRule(CloseCode.MESSAGE_TOO_BIG, "a frame over 1 MiB", Reconnect.BACKOFF),
    CloseRule(CloseCode.SERVICE_RESTART, "the server is restarting", Reconnect.AT_ONCE),
    CloseRule(
        CloseCode.TRY_AGAIN_LATER,
        "the server is full",
        Reconnect.BACKOFF,
        {"unavailable": "the server cannot reach its rooms for a moment"},
    ),
    CloseRule(
        CloseCode.REPLACED,
        "the same peer connected again elsewhere, and the newer connection won",
        Reconnect.NEVER,
    ),
)
_CLOSE_RULE = {rule.code: rule for rule in CLOSE_RULES}


def reconnect_after(code: int | None) -> Reconnect:
    """What a client does when its socket closes with ``code`` (None: with no close frame)."""
    rule = _CLOSE_RULE.get(code or 0)
    return Reconnect.BACKOFF if rule is None else rule.reconnect


def closing_words(code: int | None, error: str | None = None) -> str:
    """Why the server closed the socket, in plain words: the close code and the last error."""
    rule = _CLOSE_RULE.get(code or 0)
    if rule is None:
        return f"the connection closed ({code})" if code else "the connection dropped"
    return rule.reasons.get(error or "", rule.meaning)


#: A close frame's payload is at most 125 bytes, two of them the close code.
_MAX_CLOSE_REASON = 123


def close_reason(reason: str) -> bytes:
    """``reason`` as a close frame may carry it: at most 123 bytes of whole UTF-8 characters."""
    return reason.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore").encode()


def text_problem(value: str, what: str, max_chars: int) -> str | None:
    """Why ``value`` cannot be a display name or zone, in plain words; None when it can.

    It must render as itself: printable text, not blank, and not too long.
    """
    if len(value) > max_chars:
        return f"{what} is at most {max_chars} characters, and this one has {len(value)}"
    if not value.isprintable() or not value.strip():
        return f"{what} must be printable text (no control characters), not blank"
    return None


def _check_text(value: str, what: str, max_chars: int) -> None:
    problem = text_problem(value, what, max_chars)
    if problem is not None:
        raise ValueError(problem)


class _Message(msgspec.Struct, tag_field="type", rename="camel", omit_defaults=True):
    """Base of every message: camelCase fields and a ``type`` tag."""


# --- Client to server -------------------------------------------------------


class Join(_Message, tag="join"):
    """Enter a room; ``resume`` reclaims an earlier ``peerId`` from its token.

    ``token`` is an invite to the room, which a server run with
    ``--require-token`` asks of everyone not resuming a seat in that room.
    """

    room_id: RoomId
    name: DisplayName
    resume: Token | None = None
    token: Token | None = None

    def __post_init__(self) -> None:
        _check_text(self.name, "a name", NAME_MAX_CHARS)


class Leave(_Message, tag="leave"):
    """Leave the current room; the connection stays open."""


class Signal(_Message, tag="signal"):
    """Relay opaque ``data`` (an SDP, a candidate or null) to a peer in the same room."""

    to: PeerId
    data: Raw


class Update(_Message, tag="update"):
    """Change the display name, the zone (null clears it) or where you stand (``x`` and ``y``).

    Positions are for the server's link rule and for the far avatars of
    everyone in the room: at most ``POSITION_UPDATES_PER_SECOND``, and only
    after moving.
    """

    name: DisplayName | UnsetType = UNSET
    zone: Zone | UnsetType | None = UNSET
    x: Coordinate | UnsetType = UNSET
    y: Coordinate | UnsetType = UNSET

    def __post_init__(self) -> None:
        if isinstance(self.name, str):
            _check_text(self.name, "a name", NAME_MAX_CHARS)
        if isinstance(self.zone, str):
            _check_text(self.zone, "a zone", ZONE_MAX_CHARS)
        if isinstance(self.x, UnsetType) is not isinstance(self.y, UnsetType):
            raise ValueError("a position needs both x and y")

    @property
    def position(self) -> tuple[float, float] | None:
        """Where the sender says it stands, if it said."""
        if isinstance(self.x, UnsetType) or isinstance(self.y, UnsetType):
            return None
        return (self.x, self.y)


class WatchRooms(_Message, tag="watch_rooms"):
    """Subscribe to the live room list; on an invite-only server, of the rooms ``token`` opens."""

    token: Token | None = None


class UnwatchRooms(_Message, tag="unwatch_rooms"):
    """Stop receiving the room list."""


class Ping(_Message, tag="ping"):
    """Application-level ping; ``t`` is echoed back in ``pong``."""

    t: float


ClientMessage = Join | Leave | Signal | Update | WatchRooms | UnwatchRooms | Ping


# --- Server to client -------------------------------------------------------


class IceServer(msgspec.Struct, rename="camel", omit_defaults=True):
    """One entry of ``RTCConfiguration.iceServers``, as the W3C API spells it."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Limits(msgspec.Struct, rename="camel"):
    """Limits a client must respect, and the server's grace period in seconds."""

    max_room_size: int
    max_message_bytes: int
    messages_per_second: float
    #: How long a peer whose connection dropped keeps its place in the room.
    grace: float


class PeerInfo(msgspec.Struct, rename="camel", omit_defaults=True):
    """A member of a room as others see it; ``joinedAt`` is milliseconds since the epoch."""

    peer_id: str
    name: str
    joined_at: int
    zone: str | None = None
    #: Where it stands, once it has said.
    x: float | None = None
    y: float | None = None


class RoomInfo(msgspec.Struct, rename="camel"):
    """A room as the lobby sees it."""

    room_id: str
    count: int
    capacity: int
    zones: dict[str, int]


class Welcome(_Message, tag="welcome"):
    """First message on every connection."""

    peer_id: str
    resume_token: str
    ice_servers: list[IceServer]
    limits: Limits
    #: Every join needs an invite token (``chatsubo serve --require-token``).
    invite_only: bool = False


class IceServersUpdate(_Message, tag="ice_servers"):
    """Fresh ICE servers, sent before the TURN credentials of the last ones expire.

    They are for links made from now on; links already made keep theirs.
    """

    ice_servers: list[IceServer]


class PeerList(_Message, tag="peer_list"):
    """Answer to ``join``: the caller's ``peerId`` and everyone else in the room."""

    room_id: str
    peer_id: str
    peers: list[PeerInfo]
    resume_token: str | None = None
    #: The caller's display name, when the server chose it: the invite fixed it.
    name: str | None = None


class PeerJoined(_Message, tag="peer_joined"):
    """Someone entered the room; ``resumed`` is true when it rejoined under its old id."""

    peer_id: str
    name: str
    joined_at: int
    zone: str | None = None
    resumed: bool = False


class PeerLeft(_Message, tag="peer_left"):
    """Someone left the room."""

    peer_id: str
    reason: LeaveReason


class PeerUpdated(_Message, tag="peer_updated"):
    """Someone's name or zone changed; carries the full current values."""

    peer_id: str
    name: str
    zone: str | None = None


class RelayedSignal(_Message, tag="signal"):
    """A ``signal`` delivered to its addressee."""

    from_: str = msgspec.field(name="from")
    data: Raw


class Rooms(_Message, tag="rooms"):
    """The room list, sent to lobby watchers."""

    rooms: list[RoomInfo]


class Pong(_Message, tag="pong"):
    """Answer to ``ping``."""

    t: float


class Link(_Message, tag="link"):
    """Connect to ``peerId``: send it the offer when ``offer`` is true, else wait for its offer.

    The server names one offerer for every pair, so offers never cross.
    """

    peer_id: str
    offer: bool


class Unlink(_Message, tag="unlink"):
    """Close the connection to ``peerId``; it stays in the room, out of earshot."""

    peer_id: str


class PeerPosition(msgspec.Struct, array_like=True):
    """Where one member stands: ``[peerId, x, y]``, compact for a room of hundreds."""

    peer_id: str
    x: float
    y: float


class Positions(_Message, tag="positions"):
    """Where the members who moved since the last batch stand; a batch twice a second."""

    peers: list[PeerPosition]


class Error(_Message, tag="error"):
    """A request failed; ``code`` is machine-readable, ``message`` is for people."""

    code: ErrorCode
    message: str


ServerMessage = (
    Welcome
    | IceServersUpdate
    | PeerList
    | PeerJoined
    | PeerLeft
    | PeerUpdated
    | RelayedSignal
    | Rooms
    | Link
    | Unlink
    | Positions
    | Pong
    | Error
)


# --- Peer signals: what ``signal.data`` carries from one peer to another -------
#
# The server relays ``data`` untouched; peers decode it with
# :func:`decode_peer_signal`. Browsers validate the same shapes (web/protocol.js).

#: A trickled candidate's line: ``candidate:...``, or empty for the end of candidates.
CANDIDATE_PATTERN: Final = r"^(?:candidate:[^\r\n]*)?\Z"


class SessionDescription(msgspec.Struct, frozen=True):
    """An offer or an answer, as ``RTCSessionDescription.toJSON()`` gives it."""

    type: Literal["offer", "answer"]
    sdp: str


class IceCandidate(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    """A trickled candidate, as ``RTCIceCandidate.toJSON()`` gives it."""

    candidate: Annotated[str, Meta(pattern=CANDIDATE_PATTERN)]
    sdp_mid: str | None = None
    sdp_m_line_index: Annotated[int, Meta(ge=0, le=65535)] | None = None
    username_fragment: str | None = None


#: What one signal says: a description, a candidate, or None for the end of candidates.
PeerSignal = SessionDescription | IceCandidate | None


class _SignalShape(msgspec.Struct):
    """Only what tells the shapes apart: descriptions have a ``type``, candidates do not."""

    type: str | None = None


# --- Rules every client follows, served at /api/protocol ------------------------


class ClientRules(msgspec.Struct, rename="camel", frozen=True):
    """What every client of this protocol must agree on; the page reads it from the server."""

    close_codes: tuple[CloseRule, ...]
    #: Seconds to wait before each reconnect attempt of an outage, the last
    #: repeating: low, so that people are back within moments of the server.
    reconnect_delays: tuple[float, ...]
    #: Seconds into an outage after which every wait is ``reconnectMax``.
    fast_reconnect_for: float
    reconnect_max: float
    #: Each wait is drawn between (1 - jitter) and 1 times its value.
    reconnect_jitter: float
    #: Seconds over which clients spread their return after a restart (1012).
    restart_spread: float
    #: Seconds between a client's pings; a server silent 1.5 times this is given up on.
    ping_interval: float
    room_id_max_chars: int
    name_max_chars: int
    zone_max_chars: int
    token_max_chars: int
    #: The room a client joins when told none.
    default_room: str
    #: Positions a client sends the server per second, at most.
    position_updates_per_second: float
    #: Seconds after a rejoin's peer list within which the server names again
    #: each link it keeps; a client closes the links it did not name.
    link_confirm_wait: float


CLIENT_RULES: Final = ClientRules(
    close_codes=CLOSE_RULES,
    reconnect_delays=(0.0, 0.5, 1.0, 2.0),
    fast_reconnect_for=60.0,
    reconnect_max=10.0,
    reconnect_jitter=0.25,
    restart_spread=0.5,
    ping_interval=5.0,
    room_id_max_chars=ROOM_ID_MAX_CHARS,
    name_max_chars=NAME_MAX_CHARS,
    zone_max_chars=ZONE_MAX_CHARS,
    token_max_chars=TOKEN_MAX_CHARS,
    default_room="chatsubo-main",
    position_updates_per_second=POSITION_UPDATES_PER_SECOND,
    link_confirm_wait=5.0,
)


class ProtocolError(Exception):
    """A frame that does not decode to a valid message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: What msgspec raises for bad input: DecodeError, RecursionError for deeply
#: nested values it skips or keeps raw, UnicodeError for lone surrogates.
UNDECODABLE = (msgspec.DecodeError, RecursionError, UnicodeError)
_signal_shape_decoder: msgspec.json.Decoder[_SignalShape | None] = msgspec.json.Decoder(
    _SignalShape | None
)
_description_decoder = msgspec.json.Decoder(SessionDescription)
_candidate_decoder = msgspec.json.Decoder(IceCandidate)
_client_decoder: msgspec.json.Decoder[ClientMessage] = msgspec.json.Decoder(ClientMessage)
_server_decoder: msgspec.json.Decoder[ServerMessage] = msgspec.json.Decoder(ServerMessage)
_encoder = msgspec.json.Encoder()


def decode_client(frame: str | bytes) -> ClientMessage:
    """Decode and validate one frame sent by a client."""
    try:
        return _client_decoder.decode(frame)
    except UNDECODABLE as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None


def decode_server(frame: str | bytes) -> ServerMessage:
    """Decode and validate one frame sent by the server (for Python clients)."""
    try:
        return _server_decoder.decode(frame)
    except UNDECODABLE as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None


def decode_peer_signal(data: bytes | str) -> PeerSignal:
    """Decode and validate a signal's ``data``; an empty candidate comes back as None, the end."""
    try:
        shape = _signal_shape_decoder.decode(data)
        if shape is None:
            return None
        if shape.type is not None:
            return _description_decoder.decode(data)
        candidate = _candidate_decoder.decode(data)
    except UNDECODABLE as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None
    return candidate if candidate.candidate else None


def encode(message: ClientMessage | ServerMessage | Any) -> bytes:
    """Encode one message as a JSON frame."""
    return _encoder.encode(message)


def reconnect_delay(attempt: int, outage: float, draw: float) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 first) of an outage.

    ``outage`` is how many seconds ago the connection was lost (or first
    tried), and ``draw`` a random number in [0, 1) for the jitter. The page's
    ``reconnectDelay`` gives the same for the same arguments.
    """
    rules = CLIENT_RULES
    if outage >= rules.fast_reconnect_for:
        base = rules.reconnect_max
    else:
        base = rules.reconnect_delays[min(attempt, len(rules.reconnect_delays) - 1)]
    return base * (1 - rules.reconnect_jitter * draw)


def rules_json() -> bytes:
    """The client rules as JSON, as served at ``/api/protocol``."""
    return _encoder.encode(CLIENT_RULES)


def is_valid_room_id(room_id: str) -> bool:
    """Whether ``room_id`` is an acceptable room name."""
    return _ROOM_ID_RE.match(room_id) is not None
