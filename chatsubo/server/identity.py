"""Peer identity: unguessable peer ids and the signed tokens that reclaim them.

A resume token proves that its holder was once given a peer id by a server
holding the same secret. Because the secret outlives the process, a client can
rejoin under its old id after a drop or a server restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path

logger = logging.getLogger(__name__)

SECRET_ENV = "CHATSUBO_SECRET"
_SIGNATURE_BYTES = 16


def new_peer_id() -> str:
    """A fresh random peer id: 128 bits, URL-safe."""
    return secrets.token_urlsafe(16)


class TokenSigner:
    """Issues and verifies resume tokens of the form ``peerId.issuedAt.signature``."""

    def __init__(self, secret: bytes, max_age: float = 7 * 24 * 3600) -> None:
        if not secret:
            raise ValueError("the token secret must not be empty")
        self._secret = secret
        self.max_age = max_age

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:_SIGNATURE_BYTES]).rstrip(b"=").decode()

    def issue(self, peer_id: str, now: float | None = None) -> str:
        """A token that lets its holder reclaim ``peer_id``."""
        issued = int(time.time() if now is None else now)
        payload = f"{peer_id}.{issued}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, now: float | None = None) -> str | None:
        """The peer id that ``token`` proves, or None when it is forged, malformed or expired."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
            return None
        peer_id, issued, signature = parts
        expected = self._sign(f"{peer_id}.{issued}")
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        age = (time.time() if now is None else now) - int(issued)
        if age > self.max_age:
            return None
        return peer_id


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
