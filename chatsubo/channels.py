"""The peer-to-peer data channels: what travels directly between two peers.

Both channels are negotiated out of band (``negotiated: true``) with fixed
ids, so neither side has to announce them. ``docs/protocol.md`` documents
them; browsers read the same numbers from ``/api/space`` and validate the same
shapes (``web/channels.js``), checked against ``tests/fixtures/peer-messages.json``.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeVar

import msgspec

from .protocol import UNDECODABLE, ZONE_MAX_CHARS

CHAT_MAX_CHARS: Final = 500
CHAT_ID_MAX_CHARS: Final = 64
#: Larger messages, in UTF-8 bytes, are dropped unread: nothing valid comes near this.
MAX_CHANNEL_MESSAGE_BYTES: Final = 4096
#: Position updates a peer sends at most, per second.
POSITION_RATE: Final = 10.0
#: Positions go stale fast: a sender drops one rather than queue it behind
#: this many bytes not yet sent on the state channel.
STATE_BUFFER_LIMIT: Final = 4096


class ChannelSpec(msgspec.Struct, rename="camel", frozen=True):
    """The options both ends give ``createDataChannel``."""

    label: str
    id: int
    ordered: bool
    max_retransmits: int | None = None


#: Reliable and ordered: chat must arrive, and in order.
CHAT: Final = ChannelSpec(label="chat", id=0, ordered=True)
#: Unordered and never retransmitted: a late position is worse than none.
STATE: Final = ChannelSpec(label="state", id=1, ordered=False, max_retransmits=0)


class ChannelMessage(msgspec.Struct, tag_field="type", rename="camel", omit_defaults=True):
    """Base of every data channel message."""


class Chat(ChannelMessage, tag="chat"):
    """A line of chat; ``id`` is unique per sender, ``ts`` is milliseconds since the epoch."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=CHAT_ID_MAX_CHARS)]
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=CHAT_MAX_CHARS)]
    ts: float


class Position(ChannelMessage, tag="pos"):
    """Where a peer stands, in meters on the bar's map; ``seq`` only grows."""

    x: float
    y: float
    seq: Annotated[int, msgspec.Meta(ge=0)]
    ts: float
    zone: Annotated[str, msgspec.Meta(max_length=ZONE_MAX_CHARS)] | None = None


M = TypeVar("M", bound=ChannelMessage)

#: Through the union, so that the ``type`` tag is required, not only checked when present.
_decoder: msgspec.json.Decoder[Chat | Position] = msgspec.json.Decoder(Chat | Position)


class ChannelError(ValueError):
    """A data channel message that is malformed, oversized or unknown."""


def _decode(kind: type[M], data: str | bytes) -> M:
    size = len(data.encode()) if isinstance(data, str) else len(data)
    if size > MAX_CHANNEL_MESSAGE_BYTES:
        raise ChannelError(f"message of {size} bytes is over {MAX_CHANNEL_MESSAGE_BYTES}")
    try:
        message = _decoder.decode(data)
    except UNDECODABLE as exc:
        raise ChannelError(str(exc)) from None
    if not isinstance(message, kind):
        raise ChannelError(f"a {message.__struct_config__.tag} message does not belong here")
    return message


def decode_chat(data: str | bytes) -> Chat:
    """Validate a message from the ``chat`` channel."""
    return _decode(Chat, data)


def decode_position(data: str | bytes) -> Position:
    """Validate a message from the ``state`` channel."""
    return _decode(Position, data)


def encode(message: ChannelMessage) -> str:
    """A data channel message as the JSON text both browsers and bots send."""
    return msgspec.json.encode(message).decode()
