"""Invite-only rooms: ``--require-token``, the invites ``chatsubo token`` makes, the lobby."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from chatsubo.peer.bot import parse_args
from chatsubo.peer.signaling import websocket_url
from chatsubo.protocol import ErrorCode
from chatsubo.server.cli import invite_link
from chatsubo.server.identity import ANY_ROOM, TokenSigner
from tests.browser import BOT_DEADLINE, REPO, Bots
from tests.conftest import (
    DEADLINE,
    TEST_SECRET,
    Client,
    ClientFactory,
    RunningServer,
    ServerFactory,
    relays,
)

pytestmark = pytest.mark.both_backends

SIGNER = TokenSigner(TEST_SECRET)


@pytest.fixture
async def bar(make_server: ServerFactory) -> RunningServer:
    """An invite-only server with a short grace period."""
    return await make_server(require_token=True, grace=5.0)


async def refused(client: Client, room: str, **join: str) -> str:
    """Join ``room`` and expect ``unauthorized``; its plain words. The socket stays open."""
    await client.send({"type": "join", "roomId": room, "name": "Mallory", **join})
    error = await client.error()
    assert error["code"] == ErrorCode.UNAUTHORIZED
    pong = await client.sync()
    assert all(m["type"] != "peer_list" for m in pong)
    return str(error["message"])


async def rooms_seen(client: Client, token: str | None = None) -> list[str]:
    watch = {"type": "watch_rooms"} if token is None else {"type": "watch_rooms", "token": token}
    await client.send(watch)
    listed = await client.expect("rooms")
    await client.send({"type": "unwatch_rooms"})
    return [room["roomId"] for room in listed["rooms"]]


async def test_welcome_says_whether_the_server_is_invite_only(
    server: RunningServer, bar: RunningServer, connect: ClientFactory
) -> None:
    assert "inviteOnly" not in (await connect(server)).welcome
    assert (await connect(bar)).welcome["inviteOnly"] is True


async def test_without_an_invite_the_door_stays_shut_and_the_socket_open(
    bar: RunningServer, connect: ClientFactory
) -> None:
    client = await connect(bar)
    words = await refused(client, "vip")
    assert words == "room vip is invite-only: join with an invite link from the bar's host"
    joined = await client.join("vip", "Ann", token=SIGNER.invite("vip"))
    assert joined["roomId"] == "vip"


TokenMaker = Callable[[], str]

BAD_INVITES: list[object] = [
    pytest.param(lambda: SIGNER.invite("lounge"), "an invite to room lounge, not vip", id="room"),
    pytest.param(lambda: SIGNER.invite("vip", ttl=30, now=time.time() - 200), "expired", id="exp"),
    pytest.param(lambda: SIGNER.invite("vip", now=time.time() + 300), "not valid yet", id="nbf"),
    pytest.param(lambda: TokenSigner(b"x" * 32).invite("vip"), "not made by this", id="forged"),
    pytest.param(lambda: SIGNER.invite("vip")[:-4] + "AAAA", "not made by this", id="tampered"),
    pytest.param(lambda: SIGNER.issue("someone", "vip"), "a resume token, not an", id="resume"),
]


@pytest.mark.parametrize(("make", "why"), BAD_INVITES)
async def test_a_bad_invite_is_refused_with_the_reason(
    bar: RunningServer, connect: ClientFactory, make: TokenMaker, why: str
) -> None:
    client = await connect(bar)
    words = await refused(client, "vip", token=make())
    assert words.startswith("the invite does not open room vip: ")
    assert why in words


async def test_an_invite_to_every_room_opens_any(
    bar: RunningServer, connect: ClientFactory
) -> None:
    token = SIGNER.invite(ANY_ROOM)
    for room in ("vip", "lounge"):
        assert (await (await connect(bar)).join(room, "Ann", token=token))["roomId"] == room


async def test_an_invite_is_no_resume_token(bar: RunningServer, connect: ClientFactory) -> None:
    client = await connect(bar)
    invite = SIGNER.invite("vip")
    await client.send(
        {"type": "join", "roomId": "vip", "name": "Ann", "resume": invite, "token": invite}
    )
    assert (await client.error())["code"] == ErrorCode.BAD_RESUME


async def test_a_fixed_name_is_the_name(bar: RunningServer, connect: ClientFactory) -> None:
    host = await connect(bar)
    await host.join("vip", "Host", token=SIGNER.invite("vip"))
    guest = await connect(bar)
    joined = await guest.join("vip", "Someone Else", token=SIGNER.invite("vip", name="Ann"))
    assert joined["name"] == "Ann"
    assert (await host.expect("peer_joined"))["name"] == "Ann"
    await guest.send({"type": "update", "name": "Bob"})
    error = await guest.error()
    assert error == {
        "type": "error",
        "code": "unauthorized",
        "message": "your invite fixes your name as Ann",
    }
    await guest.send({"type": "update", "zone": "Lounge", "name": "Ann"})
    updated = await host.expect("peer_updated")
    assert (updated["name"], updated["zone"]) == ("Ann", "Lounge")
    await relays(guest, host, "still here")


async def test_who_was_inside_comes_back_without_the_invite(
    bar: RunningServer, connect: ClientFactory
) -> None:
    """After a drop, the resume token from the peer list reopens the room; a welcome's does not."""
    host = await connect(bar)
    await host.join("vip", "Host", token=SIGNER.invite("vip"))
    guest = await connect(bar)
    joined = await guest.join("vip", "x", token=SIGNER.invite("vip", name="Ann"))
    await host.expect("peer_joined")
    guest.drop()
    back = await connect(bar)
    again = await back.join("vip", "Mallory", resume=joined["resumeToken"])
    assert (again["peerId"], again["name"]) == (guest.peer_id, "Ann")
    assert all(m["type"] != "peer_joined" for m in await host.sync())
    # The resume token a welcome gives names no room, so it opens none.
    other = await connect(bar)
    words = await refused(other, "vip", resume=str(other.welcome["resumeToken"]))
    assert "invite-only" in words


async def test_the_lobby_shows_only_the_rooms_an_invite_opens(
    bar: RunningServer, connect: ClientFactory
) -> None:
    everyone = SIGNER.invite(ANY_ROOM)
    for room in ("vip", "lounge"):
        await (await connect(bar)).join(room, "Ann", token=everyone)
    watcher = await connect(bar)
    assert await rooms_seen(watcher) == []
    assert await rooms_seen(watcher, SIGNER.invite("vip")) == ["vip"]
    assert await rooms_seen(watcher, everyone) == ["lounge", "vip"]
    assert await rooms_seen(watcher, "not a token") == []
    async with aiohttp.ClientSession() as http:
        for token, expected in ((None, []), (SIGNER.invite("lounge"), ["lounge"])):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.get(f"{bar.url}/api/rooms", headers=headers) as response:
                listed = [room["roomId"] for room in (await response.json())["rooms"]]
            assert listed == expected


async def test_live_lobbies_differ_by_invite(bar: RunningServer, connect: ClientFactory) -> None:
    """A change is broadcast to each watcher as its invite shows it."""
    plain, invited = await connect(bar), await connect(bar)
    assert await rooms_seen(plain) == []
    await plain.send({"type": "watch_rooms"})
    await plain.expect("rooms")
    await invited.send({"type": "watch_rooms", "token": SIGNER.invite("vip")})
    await invited.expect("rooms")
    await (await connect(bar)).join("vip", "Ann", token=SIGNER.invite("vip"))

    async def listed(client: Client) -> list[str]:
        message = await client.expect("rooms")
        return [room["roomId"] for room in message["rooms"]]

    assert await listed(invited) == ["vip"]
    assert all(m["type"] != "rooms" or m["rooms"] == [] for m in await plain.sync())


async def test_open_servers_ignore_invites(server: RunningServer, connect: ClientFactory) -> None:
    """An old link to a server no longer invite-only still works, name and all."""
    client = await connect(server)
    joined = await client.join("vip", "Bob", token=SIGNER.invite("other", ttl=1, now=0))
    assert "name" not in joined
    assert await rooms_seen(await connect(server)) == ["vip"]


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatsubo", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_chatsubo_token_prints_a_link_the_server_honours(
    tmp_path: Path, bar: RunningServer, connect: ClientFactory
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(TEST_SECRET + b"\n")
    code, out, err = await run_cli(
        "token", "--room", "vip", "--name", "Ann", "--ttl", "2h",
        "--url", "https://bar.example:8443/", "--secret-file", str(secret),
    )  # fmt: skip
    assert code == 0, err
    link = out.strip()
    prefix = "https://bar.example:8443/?room=vip#token="
    assert link.startswith(prefix)
    assert "opens room vip, as Ann until " in err
    joined = await (await connect(bar)).join("vip", "x", token=link.removeprefix(prefix))
    assert joined["name"] == "Ann"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--room", "a b"], "is not a room name"),
        (["--room", "vip", "--ttl", "soon"], "is not a duration"),
        (["--room", "vip", "--url", "bar.example"], "is not the page's http:// or https:// URL"),
        (["--room", "vip", "--name", "\x07"], "a name must be printable text"),
        (["--name", "Ann"], "the following arguments are required: --room"),
    ],
)
async def test_chatsubo_token_explains_bad_options(args: list[str], words: str) -> None:
    code, out, err = await run_cli("token", *args)
    assert (code, out) == (2, "")
    assert words in err


def test_the_bot_reads_room_and_token_from_an_invite_link() -> None:
    link = "https://bar.example/?room=vip#token=abc.def.ghi"
    args = parse_args(["--server", link])
    assert (args.room, args.token, args.servers) == ("vip", "abc.def.ghi", [link])
    assert websocket_url(link) == "wss://bar.example/ws"
    named = parse_args(["--server", link, "--room", "lounge", "--token", "xyz"])
    assert (named.room, named.token) == ("lounge", "xyz")
    plain = parse_args([])
    assert (plain.room, plain.token) == ("chatsubo-main", None)


async def test_a_bot_with_the_invite_link_gets_in_and_one_without_is_told_why(
    bar: RunningServer, bots: Bots
) -> None:
    link = invite_link(bar.url, "vip", SIGNER.invite("vip", name="Barkeep"))
    guest = await bots.start(link, "vip", "bot", "--audio", "silence")
    await guest.wait_for("joined", room="vip")
    stranger = await bots.start(bar, "vip", "stranger", "--audio", "silence")
    assert await stranger.ended(BOT_DEADLINE) == 1
    assert stranger.stderr[-1] == (
        "chatsubo.client: unauthorized: room vip is invite-only: join with an invite link "
        "from the bar's host (give the invite link as --server, or its token as --token)"
    )
