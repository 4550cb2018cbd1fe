"""The ``chatsubo`` command: ``chatsubo serve`` runs the signaling server and the page;
``chatsubo token`` makes invite links to its rooms."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

from .. import __version__
from .. import protocol as p
from ..commandline import (
    add_log_level,
    configure_logging,
    duration,
    positive_float,
    positive_int,
    raise_file_limit,
)
from ..protocol import IceServer
from .app import create_app
from .config import ServerConfig
from .identity import ANY_ROOM, SECRET_ENV, TokenSigner, default_state_dir, load_secret
from .tls import local_addresses, self_signed_certificate, server_context
from .topology import LinkRules
from .turn import TurnCredentials

logger = logging.getLogger("chatsubo")

_COMMANDS = ("serve", "token")

#: The biggest room a server carries (see docs/performance.md).
MAX_ROOM_SIZE = 500


def _ice_url(text: str) -> str:
    scheme = urlsplit(text).scheme
    if scheme not in ("stun", "stuns", "turn", "turns"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a stun:, stuns:, turn: or turns: URL (e.g. stun:192.168.1.2:3478)"
        )
    return text


def _turn_url(text: str) -> str:
    if urlsplit(text).scheme not in ("turn", "turns"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a turn: or turns: URL (e.g. turn:bar.example:3478)"
        )
    return text


def _redis_url(text: str) -> str:
    scheme = urlsplit(text).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a redis://, rediss:// or unix:// URL (e.g. redis://127.0.0.1:6379/0)"
        )
    return text


def _room_size(text: str) -> int:
    size = positive_int(text)
    if size > MAX_ROOM_SIZE:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_ROOM_SIZE}: a room's positions go to all its members twice a second"
        )
    return size


def _udp_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return port


def _invited_room(text: str) -> str:
    if text != ANY_ROOM and not p.is_valid_room_id(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a room name (1 to {p.ROOM_ID_MAX_CHARS} letters, digits, dots, "
            "dashes or underscores) nor '*' for every room"
        )
    return text


def _fixed_name(text: str) -> str:
    problem = p.text_problem(text, "a name", p.NAME_MAX_CHARS)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _page_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not the page's http:// or https:// URL (e.g. https://bar.example)"
        )
    return text


def _add_secret_options(parser: argparse.ArgumentParser) -> None:
    """Where the server's secret comes from: the same for ``serve`` and ``token``."""
    parser.add_argument(
        "--secret-file",
        type=Path,
        help=f"file holding the secret that signs resume tokens and invites; else ${SECRET_ENV}, "
        "else one generated once in the state directory",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the generated secret and self-signed certificate are kept "
        "(default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line, with a subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="chatsubo",
        description="Chatsubo: a virtual bar with spatial audio. "
        "Runs the page and the signaling server; audio flows peer to peer.",
    )
    parser.add_argument("--version", action="version", version=f"chatsubo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server (the default command)",
        description="Serve the page at / and the signaling WebSocket at /ws. "
        "Rooms live in memory, or in Redis with --redis-url; nothing is sent to any "
        "outside service.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument(
        "--max-room-size",
        type=_room_size,
        default=10,
        help=f"people allowed in one room, at most {MAX_ROOM_SIZE}",
    )
    serve.add_argument(
        "--full-mesh-up-to",
        type=positive_int,
        default=LinkRules.full_mesh_up_to,
        metavar="N",
        help="rooms of up to N people link everyone peer to peer; bigger ones link each "
        "person only to those within earshot",
    )
    serve.add_argument(
        "--max-links",
        type=positive_int,
        default=LinkRules.max_links,
        metavar="K",
        help="in a bigger room, the most peer-to-peer links one person has, nearest first",
    )
    serve.add_argument(
        "--max-connections", type=positive_int, default=20000, help="open WebSockets allowed"
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        type=_ice_url,
        default=[],
        metavar="URL",
        help="STUN or TURN server handed to peers (repeatable); none by default, "
        "which is right on a LAN",
    )
    serve.add_argument(
        "--turn-url",
        action="append",
        type=_turn_url,
        default=[],
        metavar="URL",
        help="a coturn server run with use-auth-secret, e.g. turn:bar.example:3478 "
        "(repeatable): every peer gets its own credentials for it, valid --turn-ttl",
    )
    serve.add_argument(
        "--turn-secret-file",
        type=Path,
        metavar="FILE",
        help="file holding coturn's static-auth-secret; needed with --turn-url",
    )
    serve.add_argument(
        "--turn-ttl",
        type=duration,
        default=6 * 3600.0,
        metavar="DURATION",
        help="how long TURN credentials last (90s, 30m, 6h); open connections get fresh "
        "ones before then",
    )
    serve.add_argument("--ice-username", help="username for the turn: servers")
    serve.add_argument("--ice-credential", help="credential for the turn: servers")
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="extra page origin allowed to connect, e.g. https://bar.example (repeatable; "
        "'*' allows any). Same-origin pages and clients without an Origin are always allowed",
    )
    _add_secret_options(serve)
    serve.add_argument(
        "--require-token",
        action="store_true",
        help="invite-only: every join needs an invite for its room, made with "
        "'chatsubo token'; the lobby shows a room only to those invited to it",
    )
    tls = serve.add_mutually_exclusive_group()
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this cert")
    tls.add_argument(
        "--self-signed",
        action="store_true",
        help="serve HTTPS with a generated certificate, so phones and laptops on the LAN "
        "may use their microphone",
    )
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="key for --tls-cert")
    serve.add_argument(
        "--grace",
        type=positive_float,
        default=20.0,
        help="seconds a dropped peer keeps its place before the room is told it left",
    )
    serve.add_argument(
        "--heartbeat",
        type=positive_float,
        default=5.0,
        help="seconds of silence before a socket is pinged; a socket silent for 1.5 times "
        "this is dropped",
    )
    serve.add_argument(
        "--messages-per-second",
        type=positive_float,
        default=200.0,
        help="sustained messages allowed per connection (bursts of 3x pass)",
    )
    serve.add_argument(
        "--stun-port",
        type=_udp_port,
        metavar="N",
        help="answer STUN binding requests on this UDP port (e.g. 3478), so that peers "
        "behind NATs find each other; peers are told of it by themselves. Off by default",
    )
    serve.add_argument(
        "--redis-url",
        type=_redis_url,
        metavar="URL",
        help="share rooms with every other instance using this Redis, e.g. "
        "redis://127.0.0.1:6379/0, so that several servers behind a load balancer serve "
        "one bar; without it rooms live in this process's memory",
    )
    serve.add_argument(
        "--no-uvloop", action="store_true", help="use the standard asyncio event loop"
    )
    add_log_level(serve)
    token = commands.add_parser(
        "token",
        help="print an invite link to a room",
        description="Print an invite link to a room of a server run with --require-token: "
        "the page opens that room with it, and a bot takes it as --server. It is signed "
        "with the server's secret, so give the same --secret-file (or state directory).",
    )
    token.add_argument(
        "--room", required=True, type=_invited_room, help="the room it opens, or '*' for every room"
    )
    token.add_argument(
        "--name", type=_fixed_name, help="the display name its holder must use (default: any)"
    )
    token.add_argument(
        "--ttl", type=duration, default=24 * 3600.0, metavar="DURATION",
        help="how long the invite lets people in: 90s, 30m, 24h, 7d (default: 24h); "
        "whoever is inside by then may stay",
    )  # fmt: skip
    token.add_argument(
        "--url",
        type=_page_url,
        default="http://127.0.0.1:8080",
        help="the page's address as guests reach it, e.g. https://bar.example "
        "(default: %(default)s)",
    )
    _add_secret_options(token)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``serve`` is implied when no command is given."""
    if not argv or (argv[0] not in _COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        return args
    if args.tls_key is not None and args.tls_cert is None:
        parser.error("--tls-key needs --tls-cert")
    if args.tls_cert is not None and args.tls_key is None:
        parser.error("--tls-cert needs --tls-key")
    if args.turn_url and args.turn_secret_file is None:
        parser.error("--turn-url needs --turn-secret-file (coturn's static-auth-secret)")
    return args


def _ice_servers(args: argparse.Namespace) -> list[IceServer]:
    servers = []
    for url in args.ice_server:
        if url.startswith("turn"):
            servers.append(
                IceServer(urls=[url], username=args.ice_username, credential=args.ice_credential)
            )
        else:
            servers.append(IceServer(urls=[url]))
    return servers


def invite_link(url: str, room: str, token: str) -> str:
    """The page at ``url`` opening ``room`` with ``token``, in the fragment servers never see."""
    room_query = "" if room == ANY_ROOM else f"?room={quote(room)}"
    return f"{url.rstrip('/')}/{room_query}#token={token}"


def make_token(args: argparse.Namespace) -> int:
    """Print an invite link on stdout, and what it grants on stderr."""
    try:
        secret = load_secret(args.secret_file, args.state_dir)
    except (OSError, ValueError) as exc:
        print(f"chatsubo: {exc}", file=sys.stderr)
        return 2
    token = TokenSigner(secret).invite(args.room, args.name, args.ttl)
    print(invite_link(args.url, args.room, token))
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + args.ttl))
    rooms = "every room" if args.room == ANY_ROOM else f"room {args.room}"
    named = f", as {args.name}" if args.name else ""
    print(f"chatsubo: this link opens {rooms}{named} until {until}", file=sys.stderr)
    return 0


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT or SIGTERM."""
    configure_logging(args.log_level)
    try:
        secret = load_secret(args.secret_file, args.state_dir)
        turn = None
        if args.turn_url:
            turn_secret = args.turn_secret_file.read_bytes().strip()
            if not turn_secret:
                raise ValueError(f"TURN secret file {args.turn_secret_file} is empty")
            turn = TurnCredentials(urls=args.turn_url, secret=turn_secret, ttl=args.turn_ttl)
        ssl_context: ssl.SSLContext | None = None
        if args.self_signed:
            ssl_context = server_context(*self_signed_certificate(args.state_dir))
        elif args.tls_cert is not None:
            ssl_context = server_context(args.tls_cert, args.tls_key)
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"chatsubo: {exc}", file=sys.stderr)
        return 2
    raise_file_limit()
    config = ServerConfig(
        secret=secret,
        max_room_size=args.max_room_size,
        require_token=args.require_token,
        links=LinkRules(full_mesh_up_to=args.full_mesh_up_to, max_links=args.max_links),
        max_connections=args.max_connections,
        ice_servers=_ice_servers(args),
        allowed_origins=args.allow_origin,
        grace=args.grace,
        heartbeat=args.heartbeat,
        messages_per_second=args.messages_per_second,
        message_burst=3 * args.messages_per_second,
        redis_url=args.redis_url,
        stun_port=args.stun_port,
        stun_host=args.host,
        turn=turn,
    )
    scheme = "https" if ssl_context else "http"
    hosts = local_addresses() if args.host in ("0.0.0.0", "::") else [args.host]
    for host in hosts:
        logger.info("Chatsubo is open at %s://%s:%d/", scheme, host, args.port)
    loop = asyncio.new_event_loop()
    if not args.no_uvloop:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            logger.info("uvloop is not installed; using the standard event loop")
    try:
        web.run_app(
            create_app(config),
            host=args.host,
            port=args.port,
            ssl_context=ssl_context,
            print=None,
            access_log=None,
            loop=loop,
        )
    except OSError as exc:
        print(f"chatsubo: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chatsubo`` console script and ``python -m chatsubo``."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return make_token(args) if args.command == "token" else serve(args)
