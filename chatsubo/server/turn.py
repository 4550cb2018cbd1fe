"""TURN credentials for coturn's REST API: short-lived, per peer, computed from a shared secret.

coturn (``use-auth-secret``, ``static-auth-secret``) accepts the username
``<expiry unix time>:<peerId>`` with the password
``base64(HMAC-SHA1(secret, username))``, checked only when an allocation is
made, so nothing is stored on either side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from ..protocol import IceServer


@dataclass(frozen=True)
class TurnCredentials:
    """How to hand out TURN servers: their URLs, coturn's secret and how long a credential lasts."""

    urls: list[str]
    secret: bytes
    #: Seconds a credential is valid; new ones are sent before then.
    ttl: float = 6 * 3600.0

    def server_for(self, peer_id: str, now: float | None = None) -> IceServer:
        """The TURN entry of ``RTCConfiguration.iceServers`` for ``peer_id``, valid for ``ttl``."""
        expiry = int((time.time() if now is None else now) + self.ttl)
        username = f"{expiry}:{peer_id}"
        digest = hmac.new(self.secret, username.encode(), hashlib.sha1).digest()
        return IceServer(
            urls=list(self.urls), username=username, credential=base64.b64encode(digest).decode()
        )
