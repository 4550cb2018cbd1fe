"""Which way a connection's packets go: the ICE candidate pair it selected.

aiortc has no ``getSelectedCandidatePair()``: the pair lives in aioice's
``Connection``, reached through the private ``RTCIceTransport._connection``
and ``Connection._nominated``. :func:`selected_route` is the one place that
reaches in, and answers None, rather than failing, should a future
aiortc or aioice rename them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aioice import Candidate
from aiortc import RTCPeerConnection

#: aioice's number for the one component (RTP) of a bundled, rtcp-mux connection.
_RTP = 1


@dataclass(frozen=True)
class Route:
    """The candidate types ("host", "srflx", "prflx", "relay") and addresses of a pair.

    As RFC 8445 (6.1.2.4) prescribes, aioice pairs a server-reflexive local
    candidate under its base, so ``local`` is "host" on a hole-punched route;
    ``remote`` then says "srflx" or "prflx".
    """

    local: str
    remote: str
    local_address: str
    remote_address: str


def selected_route(pc: RTCPeerConnection) -> Route | None:
    """The pair ICE nominated on ``pc``; None before then, or if aiortc/aioice changed."""
    sctp = pc.sctp
    transports = [t.sender.transport for t in pc.getTransceivers()]
    if sctp is not None:
        transports.append(sctp.transport)
    for dtls in transports:
        connection: Any = getattr(getattr(dtls, "transport", None), "_connection", None)
        nominated = getattr(connection, "_nominated", None)
        if not isinstance(nominated, dict):
            continue
        pair = nominated.get(_RTP)
        local = getattr(pair, "local_candidate", None)
        remote = getattr(pair, "remote_candidate", None)
        if isinstance(local, Candidate) and isinstance(remote, Candidate):
            return Route(
                local=local.type,
                remote=remote.type,
                local_address=f"{local.host}:{local.port}",
                remote_address=f"{remote.host}:{remote.port}",
            )
    return None
