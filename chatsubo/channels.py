"""The peer-to-peer data channels: what travels directly between two peers.

Both channels are negotiated out of band (``negotiated: true``) with fixed
ids, so neither side has to announce them. ``docs/protocol.md`` documents
them; browsers read the same numbers from ``/api/space``.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeVar

import msgspec

from .protocol import UNDECODABLE

CHAT_MAX_CHARS: Final = 500
#: Larger messages are dropped unread: nothing valid comes near this.
MAX_CHANNEL_MESSAGE_BYTES: Final = 4096
#: Position updates a peer sends at most, per second.
POSITION_RATE: Final = 10.0


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

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=CHAT_MAX_CHARS)]
    ts: float


class Position(ChannelMessage, tag="pos"):
    """Where a peer stands, in meters on the bar's map; ``seq`` only grows."""

    x: float
    y: float
    seq: Annotated[int, msgspec.Meta(ge=0)]
    ts: float
    zone: Annotated[str, msgspec.Meta(max_length=32)] | None = None


M = TypeVar("M", bound=ChannelMessage)

_chat_decoder = msgspec.json.Decoder(Chat)
_state_decoder = msgspec.json.Decoder(Position)


class ChannelError(ValueError):
    """A data channel message that is malformed, oversized or unknown."""


def _decode(decoder: msgspec.json.Decoder[M], data: str | bytes) -> M:
    if len(data) > MAX_CHANNEL_MESSAGE_BYTES:
        raise ChannelError(f"message of {len(data)} bytes is over {MAX_CHANNEL_MESSAGE_BYTES}")
    try:
        return decoder.decode(data)
    except UNDECODABLE as exc:
        raise ChannelError(str(exc)) from None


def decode_chat(data: str | bytes) -> Chat:
    """Validate a message from the ``chat`` channel."""
    return _decode(_chat_decoder, data)


def decode_position(data: str | bytes) -> Position:
    """Validate a message from the ``state`` channel."""
    return _decode(_state_decoder, data)


def encode(message: ChannelMessage) -> str:
    """A data channel message as the JSON text both browsers and bots send."""
    return msgspec.json.encode(message).decode()
