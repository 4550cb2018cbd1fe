"""TURN through a real coturn: per-peer REST credentials in welcome, renewed before they expire."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aioice
import pytest
from aioice import stun

from chatsubo import protocol as p
from chatsubo.peer.signaling import SignalingClient, SignalingOptions
from chatsubo.server.turn import TurnCredentials
from tests.conftest import DEADLINE, ClientFactory, ServerFactory, free_port, poll


@dataclass
class Coturn:
    """Debian's turnserver on loopback, with a secret of its own (coturn's REST API)."""

    port: int
    secret: bytes
    process: subprocess.Popen[bytes]
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}"

    def log(self) -> str:
        return "\n".join(self.output)


def answers_stun(port: int) -> bool:
    """Whether something on UDP ``port`` of 127.0.0.1 answers a STUN binding request."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        probe.sendto(bytes(request), ("127.0.0.1", port))
        try:
            return bool(probe.recv(2048))
        except OSError:
            return False


@pytest.fixture
def coturn() -> Iterator[Coturn]:
    if shutil.which("turnserver") is None:
        pytest.skip("needs Debian's coturn: apt-get install coturn")
    port, secret = free_port(), secrets.token_hex(16).encode()
    relay = free_port()
    process = subprocess.Popen(
        [
            "turnserver", "-n", "--log-file=stdout", "--simple-log",
            "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
            f"--listening-port={port}", f"--min-port={relay}", f"--max-port={relay + 20}",
            "--realm=chatsubo", "--use-auth-secret", f"--static-auth-secret={secret.decode()}",
            "--fingerprint", "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Coturn(port, secret, process)
    stdout = process.stdout
    assert stdout is not None

    def read() -> None:
        for line in stdout:
            server.output.append(line.decode(errors="replace").rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while not answers_stun(port):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"turnserver did not start:\n{server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=DEADLINE)


async def relay_candidates(username: str, password: str, port: int) -> list[aioice.Candidate]:
    """The relay candidates an ICE agent gathers from coturn with these credentials."""
    agent = aioice.Connection(
        ice_controlling=True,
        components=1,
        turn_server=("127.0.0.1", port),
        turn_username=username,
        turn_password=password,
        use_ipv6=False,
    )
    try:
        async with asyncio.timeout(DEADLINE * 2):
            await agent.gather_candidates()
        return [c for c in agent.local_candidates if c.type == "relay"]
    finally:
        await agent.close()


def test_credentials_name_their_expiry_and_peer() -> None:
    turn = TurnCredentials(urls=["turn:bar.example:3478"], secret=b"s", ttl=3600)
    server = turn.server_for("peer", now=1_000_000)
    assert server.urls == ["turn:bar.example:3478"]
    assert server.username == "1003600:peer"
    assert server.credential == "8lYOVdt0HKjqOJW+NF3jeT/6PPw="


async def test_welcome_carries_stun_then_turn_then_the_rest(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    turn = TurnCredentials(urls=["turn:127.0.0.1:3478"], secret=b"secret")
    extra = p.IceServer(urls=["stun:stun.example:3478"])
    server = await make_server(stun_port=0, stun_host="127.0.0.1", turn=turn, ice_servers=[extra])
    client = await connect(server)
    assert server.hub.stun is not None
    stun_, turn_, rest = client.welcome["iceServers"]
    assert stun_ == {"urls": [f"stun:127.0.0.1:{server.hub.stun.port}"]}
    assert turn_["urls"] == ["turn:127.0.0.1:3478"]
    expiry, peer = turn_["username"].split(":")
    assert peer == client.peer_id
    assert abs(int(expiry) - (time.time() + turn.ttl)) < 60
    assert rest == {"urls": ["stun:stun.example:3478"]}


async def test_fresh_credentials_arrive_before_the_old_ones_expire(
    make_server: ServerFactory,
) -> None:
    turn = TurnCredentials(urls=["turn:127.0.0.1:3478"], secret=b"secret", ttl=2.0)
    server = await make_server(turn=turn, heartbeat=0.4)
    client = SignalingClient("bar", "Molly", SignalingOptions(urls=[server.url]))
    try:
        await client.connect()
        first = client.ice_servers[0].username
        assert first is not None
        # Due after 1.5 s of the 2 s; the sweep runs every 0.05 s.
        await poll(lambda: client.ice_servers[0].username != first, timeout=DEADLINE)
        renewed = client.ice_servers[0].username
        assert renewed is not None
        assert int(renewed.split(":")[0]) > int(first.split(":")[0])
    finally:
        await client.close()


async def test_coturn_relays_for_the_credentials_in_welcome_only(
    make_server: ServerFactory, connect: ClientFactory, coturn: Coturn
) -> None:
    turn = TurnCredentials(urls=[coturn.url], secret=coturn.secret)
    server = await make_server(turn=turn)
    client = await connect(server)
    (given,) = client.welcome["iceServers"]
    relays = await relay_candidates(given["username"], given["credential"], coturn.port)
    assert relays, coturn.log()
    assert relays[0].host == "127.0.0.1"

    forged = TurnCredentials(urls=[coturn.url], secret=b"not coturn's").server_for("x")
    expired = turn.server_for("x", now=time.time() - 2 * turn.ttl)
    for bad in (forged, expired):
        assert bad.username is not None
        assert bad.credential is not None
        assert await relay_candidates(bad.username, bad.credential, coturn.port) == []
    # coturn's log says why, for each.
    refusals = [f"Cannot find credentials of user <{bad.username}>" for bad in (forged, expired)]
    await poll(lambda: all(line in coturn.log() for line in refusals))
