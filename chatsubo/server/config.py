"""Server options, with defaults that work out of the box."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import MAX_MESSAGE_BYTES, IceServer
from .topology import LinkRules
from .turn import TurnCredentials


@dataclass
class ServerConfig:
    """Everything the signaling server can be told; the CLI fills it from flags."""

    secret: bytes
    max_room_size: int = 10
    #: Who is linked to whom: everyone in small rooms, the near in big ones.
    links: LinkRules = field(default_factory=LinkRules)
    #: Every join needs an invite token for its room (``chatsubo token`` makes them).
    require_token: bool = False
    #: Handed to every client. Empty means host candidates only: no public STUN
    #: server, which would stall every offer on a machine with no internet.
    ice_servers: list[IceServer] = field(default_factory=list)
    #: Extra origins (``scheme://host[:port]``, or ``*``) allowed besides same-origin.
    allowed_origins: list[str] = field(default_factory=list)
    max_connections: int = 20000
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: Frames above this are not read at all: the socket is closed with 1009.
    hard_message_bytes: int = 1024 * 1024
    #: Sustained message rate per connection, and the burst allowed above it.
    #: A browser joining a room of 10 trickles a few hundred signals at once.
    messages_per_second: float = 200.0
    message_burst: float = 600.0
    #: Over-limit messages a connection may send before it is closed as a flood.
    flood_tolerance: float = 100.0
    #: Seconds of silence before a socket is pinged; one silent for 1.5 periods is dropped.
    heartbeat: float = 5.0
    #: Seconds a peer that dropped without ``leave`` keeps its place in the room.
    grace: float = 20.0
    #: Bytes queued to a client that does not read before it is cut off.
    max_send_buffer: int = 1024 * 1024
    #: Minimum seconds between two room list broadcasts.
    lobby_interval: float = 0.1
    #: Share rooms with every instance using this Redis (``redis://host:port/db``);
    #: None keeps them in this process's memory.
    redis_url: str | None = None
    #: Starts every Redis key and channel, so that bars can share one Redis.
    redis_prefix: str = "chatsubo"
    #: Answer STUN binding requests on this UDP port (0 picks a free one); None: no STUN.
    stun_port: int | None = None
    #: The address the STUN port listens on.
    stun_host: str = "0.0.0.0"
    #: TURN servers (coturn with ``use-auth-secret``) and how to make their credentials.
    turn: TurnCredentials | None = None
