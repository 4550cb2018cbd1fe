"""The HTTP side: the page, health and metrics."""

from __future__ import annotations

import re

import aiohttp

from tests.conftest import ClientFactory, RunningServer


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_page_is_served(server: RunningServer) -> None:
    status, body = await _get(f"{server.url}/")
    assert status == 200
    assert "<title>Chatsubo</title>" in body
    status, _ = await _get(f"{server.url}/index.html")
    assert status == 200
    status, _ = await _get(f"{server.url}/../pyproject.toml")
    assert status == 404


async def test_healthz_counts(server: RunningServer, connect: ClientFactory) -> None:
    a = await connect(server)
    await a.join("r", "A")
    status, body = await _get(f"{server.url}/healthz")
    assert status == 200
    assert body == '{"status":"ok","connections":1,"rooms":1,"peers":1}'


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_metrics_follow_activity(server: RunningServer, connect: ClientFactory) -> None:
    a, b = await connect(server), await connect(server)
    await a.join("r", "A")
    await b.join("r", "B")
    for _ in range(3):
        await a.send({"type": "signal", "to": b.peer_id, "data": None})
        await b.expect("signal")
    await a.send({"type": "signal", "to": "nobody", "data": None})
    await a.error()
    await a.send("garbage")
    await a.error()

    _, text = await _get(f"{server.url}/metrics")
    assert _metric(text, "chatsubo_connections") == 2
    assert _metric(text, "chatsubo_rooms") == 1
    assert _metric(text, "chatsubo_peers") == 2
    assert _metric(text, "chatsubo_connections_opened_total") == 2
    assert _metric(text, "chatsubo_relayed_messages_total") == 3
    assert _metric(text, 'chatsubo_errors_total{code="unknown_peer"}') == 1
    assert _metric(text, 'chatsubo_errors_total{code="bad_message"}') == 1
    assert _metric(text, "chatsubo_join_latency_seconds_count") == 2
