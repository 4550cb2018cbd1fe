"""The ``chatsubo`` command as an operator runs it: a real process on a real port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DEADLINE, ClientFactory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatsubo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_explains_the_commands() -> None:
    top = _run("--help")
    assert top.returncode == 0
    assert "serve" in top.stdout
    serve = _run("serve", "--help")
    assert serve.returncode == 0
    for option in (
        "--max-room-size",
        "--ice-server",
        "--self-signed",
        "--secret-file",
        "--redis-url",
        "--stun-port",
        "--turn-url",
        "--turn-ttl",
    ):
        assert option in serve.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
        (["--max-room-size", "0"], "must be at least 1"),
        (["--ice-server", "stun.l.example.org"], "is not a stun:"),
        (["--secret-file", "/nonexistent/secret"], "No such file"),
        (["--redis-url", "127.0.0.1:6379"], "is not a redis://"),
        (["--stun-port", "70000"], "is not a port number"),
        (["--turn-url", "turn:bar.example:3478"], "--turn-url needs --turn-secret-file"),
        (["--turn-url", "stun:bar.example:3478"], "is not a turn:"),
        (["--turn-ttl", "soon"], "is not a duration"),
    ],
)
def test_bad_options_fail_clearly(args: list[str], message: str) -> None:
    result = _run("serve", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


Process = asyncio.subprocess.Process
Starter = Callable[..., Awaitable[tuple[Process, str]]]


@pytest.fixture
async def start_process(tmp_path: Path) -> AsyncIterator[Starter]:
    """Start ``chatsubo`` server processes; each is killed after the test if still running."""
    processes: list[Process] = []

    async def start(
        *args: str, scheme: str = "http", command: tuple[str, ...] = ("serve",)
    ) -> tuple[Process, str]:
        port = _free_port()
        env = {**os.environ, "CHATSUBO_SECRET": ""}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatsubo", *command, "--host", "127.0.0.1",
            "--port", str(port), "--state-dir", str(tmp_path / "state"), *args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        processes.append(process)
        base = f"{scheme}://127.0.0.1:{port}"
        await _wait_healthy(base, process, tmp_path)
        return process, base

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.communicate(), DEADLINE)


async def _stopped(process: Process) -> str:
    """Wait for ``process`` to exit; its stderr."""
    _, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
    return stderr.decode()


def _client_ssl(tmp_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=tmp_path / "state" / "self-signed.crt")


async def _wait_healthy(base: str, process: Process, tmp_path: Path) -> None:
    ssl_context: ssl.SSLContext | bool = True
    async with asyncio.timeout(30), aiohttp.ClientSession() as http:
        while True:
            assert process.returncode is None, await _stopped(process)
            if base.startswith("https") and ssl_context is True:
                if not (tmp_path / "state" / "self-signed.crt").exists():
                    await asyncio.sleep(0.05)
                    continue
                ssl_context = _client_ssl(tmp_path)
            try:
                async with http.get(f"{base}/healthz", ssl=ssl_context) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


async def test_sigterm_closes_sockets_with_1012(
    start_process: Starter, connect: ClientFactory
) -> None:
    process, base = await start_process()
    a = await connect(base.replace("http", "ws") + "/ws")
    await a.join("chatsubo-main", "A")
    process.send_signal(signal.SIGTERM)
    assert await a.closed() == 1012
    stderr = await _stopped(process)
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert "Chatsubo is open at http://127.0.0.1:" in stderr


async def test_restarted_process_honours_old_tokens(
    start_process: Starter, connect: ClientFactory
) -> None:
    process, base = await start_process()
    a = await connect(base.replace("http", "ws") + "/ws")
    await a.join("r", "A")
    process.send_signal(signal.SIGTERM)
    await _stopped(process)

    _, base = await start_process()
    a2 = await connect(base.replace("http", "ws") + "/ws")
    listed = await a2.join("r", "A", resume=a.welcome["resumeToken"])
    assert listed["peerId"] == a.peer_id


async def test_self_signed_https_and_wss(
    start_process: Starter, connect: ClientFactory, tmp_path: Path
) -> None:
    _, base = await start_process("--self-signed", scheme="https")
    context = _client_ssl(tmp_path)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/", ssl=context) as page:
        assert page.status == 200
        assert "<title>Chatsubo</title>" in await page.text()
    a = await connect(base.replace("https", "wss") + "/ws", ssl=context)
    listed = await a.join("r", "A")
    assert listed["peerId"] == a.peer_id


async def test_serve_is_the_default_command(start_process: Starter) -> None:
    _, base = await start_process(command=())
    async with aiohttp.ClientSession() as http, http.get(f"{base}/api/rooms") as response:
        assert json.loads(await response.text()) == {"type": "rooms", "rooms": []}
    bare = _run("--port", "not-a-port")
    assert bare.returncode == 2
    assert "chatsubo serve: error: argument --port" in bare.stderr
