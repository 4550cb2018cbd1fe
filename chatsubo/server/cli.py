"""The ``chatsubo`` command: ``chatsubo serve`` runs the signaling server and the page."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from .. import __version__
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
from .identity import SECRET_ENV, default_state_dir, load_secret
from .tls import local_addresses, self_signed_certificate, server_context
from .turn import TurnCredentials

logger = logging.getLogger("chatsubo")

_COMMANDS = ("serve",)


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


def _udp_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return port


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
        "--max-room-size", type=positive_int, default=10, help="people allowed in one room"
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
    serve.add_argument(
        "--secret-file",
        type=Path,
        help=f"file holding the resume-token secret; else ${SECRET_ENV}, "
        "else one generated once in the state directory",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the generated secret and self-signed certificate are kept",
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
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``serve`` is implied when no command is given."""
    if not argv or (argv[0] not in _COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
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
    return serve(args)
