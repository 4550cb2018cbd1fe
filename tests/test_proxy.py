"""docs/nginx.conf, run with Debian's nginx in front of two instances sharing Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from chatsubo.protocol import CLIENT_RULES
from chatsubo.server.config import ServerConfig
from chatsubo.server.redis_backend import RedisOptions
from tests.conftest import (
    DEADLINE,
    ClientFactory,
    Loopback,
    RedisServer,
    RunningServer,
    ServerFactory,
    free_port,
    poll,
    relays,
)

NGINX = Path("/usr/sbin/nginx")
DOC = Path(__file__).resolve().parent.parent / "docs" / "nginx.conf"
#: What the test replaces in the documented file: directives, not comments, each once.
LISTEN = "listen 80;"
UPSTREAMS = ("server 127.0.0.1:8081", "server 127.0.0.1:8082")
#: How soon the others would hear that a stopped instance's peers are gone.
BOUND = RedisOptions(url="").bound


def configure(text: str, port: int, upstreams: list[int], prefix: Path) -> str:
    """A whole nginx.conf: ``text`` listening on ``port``, proxying to ``upstreams``.

    Everything nginx writes stays under ``prefix``.
    """
    site = _replace_directive(text, LISTEN, f"listen 127.0.0.1:{port};")
    assert len(upstreams) == len(UPSTREAMS)
    for placeholder, upstream in zip(UPSTREAMS, upstreams, strict=True):
        site = _replace_directive(site, placeholder, f"server 127.0.0.1:{upstream}")
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would otherwise run as nobody, who may not enter tmp_path.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 2;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}\n"
        f"{site}\n"
        "}\n"
    )


def _replace_directive(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced where it starts a line, which it must do exactly once."""
    replaced, count = re.subn(rf"(?m)^(\s*){re.escape(old)}", rf"\g<1>{new}", text)
    assert count == 1, f"{DOC} needs exactly one line starting with {old!r}"
    return replaced


@dataclass
class Proxy(Loopback):
    """nginx on a loopback port, in front of ``instances``."""

    instances: list[RunningServer]
    process: asyncio.subprocess.Process
    prefix: Path

    def error_log(self) -> str:
        log = self.prefix / "error.log"
        return log.read_text() if log.exists() else ""

    def connections(self) -> list[int]:
        """Open WebSockets on each instance."""
        return [server.hub.connections() for server in self.instances]


async def _answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def write_config(prefix: Path, port: int, upstreams: list[int]) -> Path:
    """docs/nginx.conf made whole (see ``configure``), written in ``prefix``."""
    conf = prefix / "nginx.conf"
    conf.write_text(configure(DOC.read_text(), port, upstreams, prefix))
    return conf


@pytest.fixture
def nginx() -> Path:
    """Debian's nginx; the test is skipped where it is missing."""
    if not NGINX.exists():
        pytest.skip(f"needs Debian's nginx at {NGINX}: apt-get install nginx")
    return NGINX


@pytest.fixture
async def proxy(
    nginx: Path, make_server: ServerFactory, redis: RedisServer, tmp_path: Path
) -> AsyncIterator[Proxy]:
    """Two instances sharing ``redis``, behind nginx running docs/nginx.conf."""
    instances = [await make_server(redis_url=redis.url) for _ in UPSTREAMS]
    port = free_port()
    conf = write_config(tmp_path, port, [s.port for s in instances])
    process = await asyncio.create_subprocess_exec(
        str(nginx), "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log"),
        "-c", str(conf), "-g", "daemon off;",
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    running = Proxy(port, instances, process, tmp_path)
    try:
        async with asyncio.timeout(DEADLINE):
            while not await _answers(port):
                assert process.returncode is None, f"nginx exited:\n{running.error_log()}"
                await asyncio.sleep(0.02)
        yield running
    finally:
        if process.returncode is None:
            process.terminate()  # nginx's fast shutdown; the workers go with the master
            try:
                async with asyncio.timeout(DEADLINE):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def test_peers_on_different_instances_meet_through_nginx(
    proxy: Proxy, connect: ClientFactory
) -> None:
    a = await connect(proxy.ws_url)
    await a.join("bar", "Alice")
    b = await connect(proxy.ws_url)
    listed = await b.join("bar", "Bob")
    # least_conn: the second socket went to the instance that had none.
    await poll(lambda: proxy.connections() == [1, 1])
    assert [peer["peerId"] for peer in listed["peers"]] == [a.peer_id]
    joined = await a.expect("peer_joined")
    assert (joined["peerId"], joined["name"]) == (b.peer_id, "Bob")

    await relays(b, a, {"type": "offer", "sdp": "v=0\r\n"})
    await relays(a, b, {"type": "answer", "sdp": "x"})


async def test_a_stopped_instance_s_peer_resumes_on_the_other_through_nginx(
    proxy: Proxy, connect: ClientFactory
) -> None:
    a = await connect(proxy.ws_url)
    listed = await a.join("bar", "Alice")
    await poll(lambda: sorted(proxy.connections()) == [0, 1])
    home, other = sorted(proxy.instances, key=lambda s: -s.hub.connections())
    b = await connect(proxy.ws_url)
    await b.join("bar", "Bob")
    await a.expect("peer_joined")
    assert (home.hub.connections(), other.hub.connections()) == (1, 1)

    await home.stop()
    # nginx passes the close frame on: the client knows to come back at once.
    assert await a.closed() == 1012
    # least_conn sends it to the stopped instance first; nginx skips it for the other.
    again = await connect(proxy.ws_url)
    resumed = await again.join("bar", "Alice", resume=listed["resumeToken"])
    assert resumed["peerId"] == a.peer_id
    assert [peer["peerId"] for peer in resumed["peers"]] == [b.peer_id]
    assert other.hub.connections() == 2
    assert f"127.0.0.1:{home.port}" in proxy.error_log()

    await b.send({"type": "signal", "to": a.peer_id, "data": {"type": "offer", "sdp": ""}})
    assert (await again.expect("signal"))["from"] == b.peer_id
    # Past the stopped instance's lease, Bob has heard nothing: Alice moved, silently.
    loop = asyncio.get_running_loop()
    until = loop.time() + BOUND
    while loop.time() < until:
        assert [m for m in await b.sync() if m["type"].startswith("peer_")] == []
        await asyncio.sleep(0.5)
    assert {m.peer_id for m in await other.hub.backend.members("bar")} == {a.peer_id, b.peer_id}


async def test_health_the_page_and_same_origin_sockets_through_nginx(
    proxy: Proxy, connect: ClientFactory
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        async with http.get(f"{proxy.url}/") as response:
            assert response.status == 200
            assert "<title>Chatsubo</title>" in await response.text()
        async with http.get(f"{proxy.url}/metrics") as response:
            assert response.status == 403

    # The page's origin is nginx's: Host reaches the instance with its port.
    page = await connect(proxy.ws_url, origin=proxy.url)
    assert page.welcome["type"] == "welcome"
    assert (await page.join("bar", "Alice"))["peers"] == []
    stranger = await connect(proxy.ws_url, origin="http://evil.example")
    assert (await stranger.error())["code"] == "bad_origin"
    assert await stranger.closed() == 1008


def _blocks(text: str, header: str) -> list[str]:
    """The bodies of the blocks in ``text`` whose header matches the regex ``header``.

    Comments are removed first.
    """
    plain = re.sub(r"#[^\n]*", "", text)
    bodies = []
    for match in re.finditer(rf"(?m)^\s*{header}\s*\{{", plain):
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(plain[end], 0)
            end += 1
        bodies.append(plain[match.end() : end - 1])
    return bodies


def _directives(body: str) -> dict[str, list[str]]:
    """``name: [arguments, ...]`` for the directives directly in ``body``."""
    flat = body
    while (nested := re.sub(r"\{[^{}]*\}", "", flat)) != flat:
        flat = nested
    found: dict[str, list[str]] = {}
    for statement in flat.split(";"):
        if words := statement.split():
            found.setdefault(words[0], []).append(" ".join(words[1:]))
    return found


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]


def test_the_config_keeps_sockets_alive_and_skips_dead_instances() -> None:
    text = DOC.read_text()
    (server,) = (_directives(body) for body in _blocks(text, "server"))
    (ws,) = (_directives(body) for body in _blocks(text, "location = /ws"))
    (upstream,) = (_directives(body) for body in _blocks(text, "upstream chatsubo"))
    heartbeat = max(ServerConfig(secret=b"").heartbeat, CLIENT_RULES.ping_interval)
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert _seconds(ws[name][0]) >= 6 * heartbeat, name
    assert ws["proxy_buffering"] == ["off"]
    assert _seconds(server["proxy_connect_timeout"][0]) <= 5
    assert server["proxy_next_upstream"] == ["error timeout"]
    assert server["proxy_http_version"] == ["1.1"]
    headers = dict(h.split(maxsplit=1) for h in server["proxy_set_header"])
    assert headers["Host"] == "$http_host"
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"
    assert {"X-Forwarded-For", "X-Forwarded-Proto"} <= headers.keys()
    # A location setting headers of its own would lose all of the server's.
    locations = [_directives(body) for body in _blocks(text, r"location [^{]+")]
    assert len(locations) == 4
    assert not [location for location in locations if "proxy_set_header" in location]
    assert "least_conn" in upstream
    (upgrade,) = _blocks(text, r"map \$http_upgrade \$connection_upgrade")
    assert _directives(upgrade) == {"default": ["upgrade"], "''": ["close"]}
