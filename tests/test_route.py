"""The selected candidate pair, read from aiortc's and aioice's internals at the locked versions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcconfiguration import RTCBundlePolicy

from chatsubo.peer.route import selected_route
from tests.conftest import poll


def host_only() -> RTCPeerConnection:
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


@pytest.fixture
async def pcs() -> AsyncIterator[tuple[RTCPeerConnection, RTCPeerConnection]]:
    """Two connections, each with a data channel and audio, offered and answered, not yet up."""
    a, b = host_only(), host_only()
    try:
        # Audio first, as in chatsubo.peer.mesh: aiortc bundles only in that order.
        a.addTransceiver("audio")
        a.createDataChannel("chat", negotiated=True, id=0)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        b.createDataChannel("chat", negotiated=True, id=0)
        await b.setLocalDescription(await b.createAnswer())
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_both_ends_name_the_same_pair(
    pcs: tuple[RTCPeerConnection, RTCPeerConnection],
) -> None:
    a, b = pcs
    assert selected_route(a) is None, "nothing is nominated before ICE runs"
    await a.setRemoteDescription(b.localDescription)
    await poll(lambda: a.connectionState == b.connectionState == "connected")
    ours, theirs = selected_route(a), selected_route(b)
    assert ours is not None
    assert theirs is not None
    # Host candidates only here; the answerer may first learn ours from a check.
    assert ours.local == "host"
    assert {ours.remote, theirs.local, theirs.remote} <= {"host", "prflx"}
    assert ours.local_address == theirs.remote_address
    assert ours.remote_address == theirs.local_address


async def test_changed_internals_give_none(
    pcs: tuple[RTCPeerConnection, RTCPeerConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pcs
    await a.setRemoteDescription(b.localDescription)
    await poll(lambda: a.connectionState == "connected")
    sctp = a.sctp
    assert sctp is not None
    monkeypatch.delattr(sctp.transport.transport, "_connection")
    assert selected_route(a) is None
