"""Peer identity and the doors to rooms: peer ids, resume tokens and invite tokens.

Both kinds of token are JWTs (HS256, made and checked by PyJWT) signed with a
key derived from the server's secret. A ``use`` claim says which kind a token
is, so that one can never pass as the other:

- a **resume** token proves that its holder was given a peer id (and, once
  seated, a room and name) by a server holding the same secret. Because the
  secret outlives the process, a client can rejoin under its old id after a
  drop or a server restart;
- an **invite** (access) token lets its holder into one room, or any with
  ``*``, perhaps under a fixed display name, until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt

logger = logging.getLogger(__name__)

SECRET_ENV = "CHATSUBO_SECRET"
#: The ``room`` claim of an invite to every room.
ANY_ROOM: Final = "*"
_ALGORITHM: Final = "HS256"
_RESUME: Final = "resume"
_INVITE: Final = "invite"
_KINDS: Final = {_RESUME: "a resume token", _INVITE: "an invite"}
#: Clocks of the server that made a token and the one checking it may differ this much.
_LEEWAY: Final = 60.0


def new_peer_id() -> str:
    """A fresh random peer id: 128 bits, URL-safe."""
    return secrets.token_urlsafe(16)


class TokenRejected(ValueError):
    """A token that does not open this door; the message says why in plain words."""


@dataclass(frozen=True)
class Resume:
    """What a valid resume token proves: a peer id, and where it sat as whom, if it did."""

    peer_id: str
    room: str | None = None
    #: The display name an invite fixed, which a resume keeps.
    name: str | None = None


@dataclass(frozen=True)
class Invite:
    """What a valid invite token grants: a room (or ``*``), perhaps under a fixed name."""

    room: str
    name: str | None = None


class TokenSigner:
    """Issues and checks resume and invite tokens with one server secret."""

    def __init__(self, secret: bytes, max_age: float = 7 * 24 * 3600) -> None:
        if not secret:
            raise ValueError("the token secret must not be empty")
        # HMAC-SHA256 of the secret: a 32-byte key whatever the secret's length
        # (PyJWT warns about shorter HMAC keys), and one kept for tokens alone.
        self._key = hmac.new(secret, b"chatsubo tokens", hashlib.sha256).digest()
        self.max_age = max_age

    def _encode(self, claims: dict[str, Any], now: float | None, ttl: float) -> str:
        issued = int(time.time() if now is None else now)
        claims = {k: v for k, v in claims.items() if v is not None}
        claims.update(iat=issued, nbf=issued, exp=issued + int(ttl))
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM)

    def _decode(self, token: str, use: str, required: list[str]) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                leeway=_LEEWAY,
                options={"require": ["use", "iat", "nbf", "exp", *required]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("it has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("it is not valid yet") from None
        except jwt.InvalidTokenError:
            raise TokenRejected("it was not made by this server, or it was changed") from None
        if claims["use"] != use:
            kind = _KINDS.get(str(claims["use"]), "some other token")
            raise TokenRejected(f"it is {kind}, not {_KINDS[use]}")
        return claims

    def issue(
        self,
        peer_id: str,
        room: str | None = None,
        name: str | None = None,
        now: float | None = None,
    ) -> str:
        """A resume token that lets its holder reclaim ``peer_id`` (in ``room``, as ``name``)."""
        claims = {"use": _RESUME, "sub": peer_id, "room": room, "name": name}
        return self._encode(claims, now, self.max_age)

    def verify(self, token: str) -> Resume | None:
        """What resume ``token`` proves, or None when it is forged, malformed or expired."""
        try:
            claims = self._decode(token, _RESUME, ["sub"])
        except TokenRejected:
            return None
        room, name = claims.get("room"), claims.get("name")
        if not isinstance(claims["sub"], str) or not all(
            isinstance(v, str | None) for v in (room, name)
        ):
            return None
        return Resume(claims["sub"], room, name)

    def invite(
        self, room: str, name: str | None = None, ttl: float = 86400.0, now: float | None = None
    ) -> str:
        """An invite token to ``room`` (or :data:`ANY_ROOM`), valid ``ttl`` seconds."""
        return self._encode({"use": _INVITE, "room": room, "name": name}, now, ttl)

    def admit(self, token: str, room_id: str) -> Invite:
        """What invite ``token`` grants in ``room_id``; :class:`TokenRejected` says why not."""
        claims = self._decode(token, _INVITE, ["room"])
        room, name = claims["room"], claims.get("name")
        if not isinstance(room, str) or not isinstance(name, str | None):
            raise TokenRejected("its claims are not what an invite holds")
        if room not in (room_id, ANY_ROOM):
            raise TokenRejected(f"it is an invite to room {room}, not {room_id}")
        return Invite(room, name)

    def opens(self, token: str) -> str | None:
        """The room an invite ``token`` opens (or ``*``), or None when it opens none."""
        try:
            room = self._decode(token, _INVITE, ["room"])["room"]
        except TokenRejected:
            return None
        return room if isinstance(room, str) else None


def default_state_dir() -> Path:
    """Where the server keeps what must survive a restart (the secret, a self-signed cert)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "chatsubo"


def load_secret(secret_file: Path | None, state_dir: Path) -> bytes:
    """The signing secret: from ``secret_file``, else $CHATSUBO_SECRET, else a kept state file.

    The state file is created on first use with owner-only permissions, so
    tokens keep verifying across restarts with no configuration.
    """
    if secret_file is not None:
        secret = secret_file.read_bytes().strip()
        if not secret:
            raise ValueError(f"secret file {secret_file} is empty")
        return secret
    from_env = os.environ.get(SECRET_ENV, "").strip()
    if from_env:
        return from_env.encode()
    path = state_dir / "secret"
    if path.exists():
        secret = path.read_bytes().strip()
        if secret:
            return secret
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    logger.info("generated a new token secret in %s", path)
    return secret
