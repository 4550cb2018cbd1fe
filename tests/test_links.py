"""The server directs the links: ``link``/``unlink`` to both ends, ``positions`` to everyone."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

import pytest

from chatsubo.server.topology import LinkRules
from chatsubo.space import BAR
from tests.conftest import (
    DEADLINE,
    Client,
    ClientFactory,
    RunningServer,
    ServerFactory,
    poll,
)

pytestmark = pytest.mark.both_backends

#: A big room from three people on, with a short hysteresis to wait out.
BIG = LinkRules(full_mesh_up_to=2, hysteresis=0.5)


def linked(client: Client) -> dict[str, bool]:
    """Whom ``client`` is linked to now, by its directives so far, and whether it offers."""
    links: dict[str, bool] = {}
    for message in client.directives:
        if message["type"] == "link":
            links[message["peerId"]] = message["offer"]
        elif message["type"] == "unlink":
            links.pop(message["peerId"], None)
    return links


async def heard(client: Client) -> None:
    """Read whatever has arrived, so that ``client.directives`` is up to date."""
    await client.sync()


async def joined(connect: ClientFactory, server: RunningServer, name: str) -> Client:
    client = await connect(server)
    await client.join("bar", name)
    return client


async def stand(client: Client, x: float, y: float) -> None:
    await client.send({"type": "update", "x": x, "y": y})


async def until_linked(clients: list[Client], check: Any, timeout: float = DEADLINE) -> None:
    """Poll until ``check()`` holds, reading every client's messages meanwhile."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        await asyncio.gather(*(heard(c) for c in clients))
        if check():
            return
        if loop.time() > end:
            views = {c.peer_id: linked(c) for c in clients}
            raise AssertionError(f"links never settled as expected: {views}")
        await asyncio.sleep(0.05)


async def test_a_small_room_is_a_full_mesh_the_newcomer_offering(
    server: RunningServer, connect: ClientFactory
) -> None:
    a = await joined(connect, server, "Ann")
    b = await joined(connect, server, "Bob")
    await until_linked([a, b], lambda: bool(linked(a)) and bool(linked(b)))
    assert b.directives == [{"type": "link", "peerId": a.peer_id, "offer": True}]
    assert a.directives == [{"type": "link", "peerId": b.peer_id, "offer": False}]
    c = await joined(connect, server, "Cat")
    await until_linked([a, b, c], lambda: all(len(linked(x)) == 2 for x in (a, b, c)))
    assert linked(c) == {a.peer_id: True, b.peer_id: True}
    assert linked(a) == {b.peer_id: False, c.peer_id: False}
    assert linked(b) == {a.peer_id: True, c.peer_id: False}
    # Nobody stands anywhere yet, and a small room needs nobody to.
    assert all(m["type"] == "link" for c_ in (a, b, c) for m in c_.directives)


async def test_positions_reach_the_room_in_batches_and_newcomers_in_peer_list(
    server: RunningServer, connect: ClientFactory
) -> None:
    a = await joined(connect, server, "Ann")
    b = await joined(connect, server, "Bob")
    await stand(a, 3.14159, 2.5)
    await stand(b, 99.0, -5.0)
    batch = await b.expect("positions")
    while a.peer_id not in {entry[0] for entry in batch["peers"]}:
        batch = await b.expect("positions")
    assert [a.peer_id, 3.14, 2.5] in batch["peers"]
    newcomer = await connect(server)
    listed = {p["peerId"]: p for p in (await newcomer.join("bar", "Cat"))["peers"]}
    assert (listed[a.peer_id]["x"], listed[a.peer_id]["y"]) == (3.14159, 2.5)
    # Off the map is at its edge.
    assert (listed[b.peer_id]["x"], listed[b.peer_id]["y"]) == (BAR.map.width, 0.0)


async def test_a_position_alone_is_answered_by_nothing_but_positions(
    server: RunningServer, connect: ClientFactory
) -> None:
    a = await joined(connect, server, "Ann")
    b = await joined(connect, server, "Bob")
    await a.expect("peer_joined")
    await stand(a, 1.0, 1.0)
    assert await a.sync() == []
    assert await b.sync() == []
    await a.send({"type": "update", "x": 1.0})
    assert (await a.error())["code"] == "bad_message"


async def test_a_big_room_links_the_near_and_unlinks_the_far_after_a_while(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await make_server(links=BIG)
    a, b, c = [await joined(connect, server, name) for name in ("Ann", "Bob", "Cat")]
    await stand(a, 1.0, 1.0)
    await stand(b, 2.0, 1.0)
    await stand(c, 23.0, 15.0)
    clients = [a, b, c]
    await until_linked(clients, lambda: linked(a).keys() == {b.peer_id} and not linked(c))
    assert linked(b).keys() == {a.peer_id}
    # Cat walks up: linked to both, as the one who joined last, offering.
    await stand(c, 3.0, 1.0)
    await until_linked(clients, lambda: linked(c) == {a.peer_id: True, b.peer_id: True})
    # And away again: unlinked from both, but only once the hysteresis is over.
    await stand(c, 23.0, 15.0)
    walked_away = time.monotonic()
    await until_linked(clients, lambda: not linked(c))
    assert time.monotonic() - walked_away >= BIG.hysteresis - 0.05
    assert linked(a).keys() == {b.peer_id}
    assert [m for m in c.directives if m["type"] == "unlink"] == [
        {"type": "unlink", "peerId": peer} for peer in sorted((a.peer_id, b.peer_id))
    ]


async def test_a_member_who_has_not_said_where_it_stands_waits(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await make_server(links=BIG)
    a, b, c = [await joined(connect, server, name) for name in ("Ann", "Bob", "Cat")]
    await stand(a, 1.0, 1.0)
    await stand(b, 2.0, 1.0)
    await until_linked([a, b, c], lambda: bool(linked(a)))
    assert linked(c) == {}
    await stand(c, 1.5, 2.0)
    await until_linked([a, b, c], lambda: len(linked(c)) == 2)


async def test_nobody_has_more_than_k_links(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await make_server(links=LinkRules(full_mesh_up_to=2, max_links=2))
    clients = [await joined(connect, server, f"p{i}") for i in range(6)]
    for i, client in enumerate(clients):
        await stand(client, 1.0 + 0.5 * i, 1.0)
    # A column: neighbours link first, which fills the middle ones; then the
    # two ends, who still have room, link each other.
    await until_linked(clients, lambda: sum(len(linked(c)) for c in clients) == 2 * 6)
    ends = clients[0].peer_id, clients[-1].peer_id
    assert ends[1] in linked(clients[0])
    assert all(len(linked(c)) <= 2 for c in clients)
    assert_symmetric(clients)


def assert_symmetric(clients: list[Client]) -> None:
    """Both ends of every link heard of it, and exactly one of them offers."""
    views = {c.peer_id: linked(c) for c in clients}
    for peer, links in views.items():
        for other, offers in links.items():
            assert other in views, f"{peer} is linked to {other}, who is not in the room"
            assert peer in views[other], f"{peer} is linked to {other}, not the other way"
            assert offers is not views[other][peer], f"{peer} and {other}: one offerer"


def walk(rng: random.Random, x: float, y: float) -> tuple[float, float]:
    """A step of up to 1.5 m, kept on the map."""
    angle = rng.uniform(0, 2 * math.pi)
    step = rng.uniform(0, 1.5)
    return BAR.map.clamp(x + step * math.cos(angle), y + step * math.sin(angle))


async def test_a_walking_crowd_of_120_ends_up_linked_by_the_rule(
    backend: str, make_server: ServerFactory, connect: ClientFactory
) -> None:
    """Light clients walk at 4 Hz; once they stop, the links obey the rule everywhere.

    With Redis, the crowd is spread over two instances, whose members must
    hear the same directives.
    """
    rules = LinkRules(hysteresis=0.5)
    servers = [await make_server(links=rules, max_room_size=200)]
    if backend == "redis":
        servers.append(await make_server(links=rules, max_room_size=200))
    rng = random.Random(13)
    clients: list[Client] = []
    spots: dict[str, tuple[float, float]] = {}
    for i in range(120):
        client = await joined(connect, servers[i % len(servers)], f"p{i}")
        clients.append(client)
        spots[client.peer_id] = (rng.uniform(0, BAR.map.width), rng.uniform(0, BAR.map.height))
    for _ in range(12):
        for client in clients:
            spots[client.peer_id] = walk(rng, *spots[client.peer_id])
            await stand(client, *spots[client.peer_id])
        await asyncio.sleep(0.25)  # paced as clients pace their updates, at 4 Hz

    def settled() -> bool:
        views = {c.peer_id: linked(c) for c in clients}
        far = [
            (a, b)
            for a, links in views.items()
            for b in links
            if math.dist(spots[a], spots[b]) > rules.unlink_range
        ]
        return not far and all(len(v) <= rules.max_links for v in views.values())

    await until_linked(clients, settled, timeout=30.0)
    assert_symmetric(clients)
    views = {c.peer_id: linked(c) for c in clients}
    hearing = BAR.distance_model.hearing_range
    for a, links in views.items():
        for b in views:
            if a < b and b not in links and math.dist(spots[a], spots[b]) < hearing:
                assert rules.max_links in (len(links), len(views[b])), (a, b)
    assert sum(len(v) for v in views.values()) > len(clients)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_another_instance_takes_over_a_room_without_churn(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    """Its director gone, a room's links are read back, not decided afresh."""
    first, second = await make_server(), await make_server()
    stay = [await joined(connect, second, f"s{i}") for i in range(3)]
    await until_linked(stay, lambda: all(len(linked(c)) == 2 for c in stay))
    directors = [s for s in (first, second) if s.hub.director._directed]
    assert directors == [second]
    leaving = await joined(connect, first, "L")
    await until_linked([*stay, leaving], lambda: len(linked(leaving)) == 3)
    await second.stop()
    # Its members are still in the room, held while they come back: the first
    # instance directs the room now, and a newcomer gets links to all of them.
    newcomer = await joined(connect, first, "N")
    await until_linked([leaving, newcomer], lambda: len(linked(newcomer)) == 4)
    assert first.hub.director._directed
    assert linked(leaving) == {**{c.peer_id: True for c in stay}, newcomer.peer_id: False}
    links_told = [m["peerId"] for m in leaving.directives if m["type"] == "link"]
    assert sorted(links_told) == sorted([*(c.peer_id for c in stay), newcomer.peer_id])


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_a_newcomer_elsewhere_learns_where_the_still_ones_stand(
    make_server: ServerFactory, connect: ClientFactory
) -> None:
    """Someone standing still is in no batch; an arrival has every instance resend its own."""
    first, second = await make_server(), await make_server()
    still = await joined(connect, first, "Still")
    await stand(still, 4.0, 5.0)
    await poll(lambda: first.hub.director.positions.get(still.peer_id) == (4.0, 5.0))
    # Its batch is sent, to nobody else yet.
    await poll(lambda: not first.hub.director._movers)
    newcomer = await joined(connect, second, "New")
    batch = await newcomer.expect("positions")
    while still.peer_id not in {entry[0] for entry in batch["peers"]}:
        batch = await newcomer.expect("positions")
    assert [still.peer_id, 4.0, 5.0] in batch["peers"]


async def test_who_comes_back_is_told_its_links_again(
    server: RunningServer, connect: ClientFactory
) -> None:
    """A client closes the links a rejoin does not name: the server names those it keeps."""
    a = await joined(connect, server, "Ann")
    b = await joined(connect, server, "Bob")
    await until_linked([a, b], lambda: bool(linked(a)) and bool(linked(b)))
    told = len(a.directives)
    b.drop()
    back = await connect(server)
    await back.join("bar", "Bob", resume=b.welcome["resumeToken"])
    await until_linked([a, back], lambda: bool(linked(back)))
    assert back.directives == [{"type": "link", "peerId": a.peer_id, "offer": True}]
    await a.sync()
    assert len(a.directives) == told
