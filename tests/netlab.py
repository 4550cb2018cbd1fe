"""A small internet in network namespaces: a public segment, and homes behind NATs.

The public side is a bridge on 198.18.0.0/24 (reserved for tests) in a
namespace of its own, where ``chatsubo serve`` listens on ``SERVER_IP``
(with our STUN port, if asked) and Debian's coturn on ``TURN_IP``. Each home
is a host on 10.N.0.2 behind a router namespace that masquerades toward the
public segment: port-preserving (plain ``masquerade``, which STUN hole
punching gets through) or symmetric (``masquerade fully-random``, which only
TURN gets through). Routers drop unsolicited inbound packets, as home
routers do: otherwise the other side's first check, arriving before ours
leaves, creates a conntrack entry that takes the port and moves our mapping,
and hole punching fails where a real home router lets it. Nothing is routed into
the homes, so a bot there reaches the others only as a real one behind a NAT
would.

It needs root, ``ip`` and ``nft``, and ``turnserver`` for TURN. Used by
tests/test_nat.py and scripts/bench_nat.py::

    with netlab([Nat.SYMMETRIC, Nat.SYMMETRIC]) as lab:
        ...  # Bot.start(lab.url, "r", "a", netns=lab.homes[0].ns)

A far host (:meth:`Lab.add_far_host`) hangs off the public segment on a
:class:`Wire` instead, a link that delays and drops packets as told, as netem
would: this kernel has no netem (nor any qdisc that delays), so the wire is
two TUN devices and a thread of the test's process that carries packets
between them. Used by tests/test_browser_quality.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import heapq
import itertools
import os
import random
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aioice import stun

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
CHROMIUM = Path("/usr/bin/chromium")

PUBLIC_NET = "198.18.0"
SERVER_IP = f"{PUBLIC_NET}.2"
TURN_IP = f"{PUBLIC_NET}.3"
#: The far host, and the public side's end of its wire.
FAR_IP = "198.18.1.2"
FAR_GATEWAY = "198.18.1.1"
HTTP_PORT = 8080
#: As in docs/coturn.md: coturn on the standard port, our STUN beside it.
TURN_PORT = 3478
STUN_PORT = 3479
RELAY_PORTS = (49160, 49200)
REALM = "chatsubo.test"

#: What coturn must never relay to (docs/coturn.md); 198.18/15 is the public side here.
DENIED_PEERS = [
    "10.0.0.0-10.255.255.255",
    "172.16.0.0-172.31.255.255",
    "192.168.0.0-192.168.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
]

#: Seconds for a service to answer; generous, as two shared cores start it.
START_DEADLINE = 30.0
STOP_DEADLINE = 10.0

_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")

#: linux/if_tun.h: a layer 3 device (IFF_TUN) whose packets come without a header (IFF_NO_PI).
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_TUN = Path("/dev/net/tun")


class Nat(enum.Enum):
    """How a home router rewrites outgoing packets: nft's masquerade statement."""

    PORT_PRESERVING = "masquerade"
    SYMMETRIC = "masquerade fully-random"


def missing() -> str | None:
    """Why the lab cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (ip netns, nft)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("turnserver", "coturn")):
        if shutil.which(tool) is None:
            return f"the NAT lab needs {tool}: apt-get install {package}"
    return None


def wire_missing() -> str | None:
    """Why a far host on a :class:`Wire` cannot be had here, or None when it can."""
    if os.geteuid() != 0:
        return "the wire lab needs root (ip netns, TUN devices)"
    if shutil.which("ip") is None:
        return "the wire lab needs ip: apt-get install iproute2"
    if not _TUN.exists():
        return f"the wire lab needs {_TUN}: load the tun kernel module (modprobe tun)"
    return None


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def _enter(ns: str) -> None:
    """Move the calling thread (only it) into network namespace ``ns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{ns}") as handle:
        if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")


def call_in(ns: str, function: Callable[[], _T]) -> _T:
    """``function()`` run in a thread of its own inside namespace ``ns``.

    Sockets it opens stay in ``ns``; the rest of this process stays where it is.
    """
    with ThreadPoolExecutor(1, initializer=_enter, initargs=(ns,)) as pool:
        return pool.submit(function).result()


def answers_stun(host: str, port: int) -> bool:
    """Whether ``host:port`` answers a STUN binding request over UDP."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        try:
            probe.sendto(bytes(request), (host, port))
            return bool(probe.recv(2048))
        except OSError:
            return False


def listens(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


@dataclass
class Service:
    """A process in a namespace, its output collected line by line."""

    name: str
    process: subprocess.Popen[bytes]
    output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, name: str, ns: str, command: Sequence[str]) -> Service:
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, *command],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stop() reaches whatever it started.
            start_new_session=True,
        )
        service = cls(name, process)
        service._reader = threading.Thread(target=service._read, daemon=True)
        service._reader.start()
        return service

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.decode(errors="replace").rstrip())

    def log(self) -> str:
        return "\n".join(self.output)

    def wait_until(self, ready: Callable[[], bool]) -> None:
        """Return once ``ready()``; fail, with the log, if the process ends or is slow."""
        deadline = time.monotonic() + START_DEADLINE
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to its process group, then SIGKILL if it lingers."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_DEADLINE)
        if self._reader is not None:
            self._reader.join(STOP_DEADLINE)


@dataclass(frozen=True)
class Impairment:
    """What a wire does to the packets going one way, as netem's delay, jitter and loss."""

    #: Seconds every packet is held.
    delay: float = 0.0
    #: Up to this many seconds more, drawn for each packet, so that one may
    #: overtake another, as with netem's jitter. (In order, the interarrival
    #: jitter that RTP receivers report cannot exceed about two packet intervals.)
    jitter: float = 0.0
    #: The fraction of packets dropped, at random.
    loss: float = 0.0


class _Lane:
    """One direction of a wire: packets read from one TUN device, held, written to the other."""

    def __init__(self, source: int, sink: int, rng: random.Random) -> None:
        self.source = source
        self.sink = sink
        #: Replaced whole by :meth:`Wire.impair`; read once per packet.
        self.impairment = Impairment()
        #: (when it is due, arrival number, packet): a heap, soonest first.
        self.queue: list[tuple[float, int, bytes]] = []
        self._rng = rng
        self._arrivals = itertools.count()

    def take(self) -> None:
        """Read every packet waiting, and drop it or queue it for when it is due."""
        while True:
            try:
                packet = os.read(self.source, 65536)
            except BlockingIOError:
                return
            impairment = self.impairment
            if impairment.loss and self._rng.random() < impairment.loss:
                continue
            due = time.monotonic() + impairment.delay + impairment.jitter * self._rng.random()
            heapq.heappush(self.queue, (due, next(self._arrivals), packet))

    def release(self, now: float) -> None:
        """Pass on every packet that is due."""
        while self.queue and self.queue[0][0] <= now:
            _, _, packet = heapq.heappop(self.queue)
            # A device going away at the end takes its packets with it.
            with contextlib.suppress(OSError):
                os.write(self.sink, packet)


def _open_tun(name: str) -> int:
    """A new TUN device ``name`` in the calling thread's namespace; its file descriptor."""
    fd = os.open(_TUN, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


class Wire:
    """A point-to-point link between two namespaces, carried by a thread of this process.

    Each end is a TUN device named ``wire``; whatever one namespace sends
    into its end comes out of the other's, held or dropped as
    :meth:`impair` says for that direction. The devices exist only while
    their file descriptors are open, so they vanish with :meth:`close`, or
    with this process however it ends.
    """

    NAME = "wire"

    def __init__(self, a: str, b: str, seed: int = 1) -> None:
        self.namespaces = (a, b)
        fds: list[int] = []
        try:
            for ns in self.namespaces:
                fds.append(call_in(ns, lambda: _open_tun(self.NAME)))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self._fds = fds
        rng = random.Random(seed)
        #: Keyed by the namespace the packets go into.
        self._lanes = {b: _Lane(fds[0], fds[1], rng), a: _Lane(fds[1], fds[0], rng)}
        self._wake, self._woken = os.pipe()
        self._thread = threading.Thread(target=self._carry, name=f"wire {a}-{b}", daemon=True)
        self._thread.start()

    def impair(self, into: str, impairment: Impairment) -> None:
        """From now on, do ``impairment`` to the packets going into namespace ``into``."""
        self._lanes[into].impairment = impairment

    def _carry(self) -> None:
        with selectors.DefaultSelector() as selector:
            for lane in self._lanes.values():
                selector.register(lane.source, selectors.EVENT_READ, lane)
            selector.register(self._wake, selectors.EVENT_READ, None)
            while True:
                due = [lane.queue[0][0] for lane in self._lanes.values() if lane.queue]
                timeout = max(0.0, min(due) - time.monotonic()) if due else None
                for key, _ in selector.select(timeout):
                    if key.data is None:
                        return
                    key.data.take()
                now = time.monotonic()
                for lane in self._lanes.values():
                    lane.release(now)

    def close(self) -> None:
        """Stop carrying, and remove both devices."""
        os.write(self._woken, b"x")
        self._thread.join(STOP_DEADLINE)
        for fd in (*self._fds, self._wake, self._woken):
            os.close(fd)


@dataclass
class FarHost:
    """A host on the public segment's far side: its one link there is a :class:`Wire`."""

    ns: str
    address: str
    wire: Wire


@dataclass
class Home:
    """A host behind a NAT router: its namespace, its router's and their addresses."""

    ns: str
    router: str
    nat: Nat
    #: The host's address, private and unroutable from outside.
    address: str
    #: The router's address on the public segment, which the host's packets leave from.
    public_address: str


class Lab:
    """The namespaces, links and services of one lab; :meth:`close` removes them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        #: Unique per lab, so that labs of parallel runs never meet.
        self.tag = f"cs{secrets.token_hex(3)}"
        self.public = f"{self.tag}-pub"
        self.homes: list[Home] = []
        self.services: list[Service] = []
        self.namespaces: list[str] = []
        self.wires: list[Wire] = []
        #: coturn's static-auth-secret, also in ``turn_secret_file``.
        self.turn_secret = secrets.token_hex(16)
        self.turn: Service | None = None
        self.server: Service | None = None

    @property
    def url(self) -> str:
        """The page and signaling server, as seen from the homes."""
        return f"http://{SERVER_IP}:{HTTP_PORT}"

    @property
    def turn_secret_file(self) -> Path:
        return self.workdir / "turn-secret"

    # --- the network ------------------------------------------------------------

    def _namespace(self, name: str) -> str:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        # IPv4 only: link-local IPv6 addresses would only add candidates that go nowhere.
        for scope in ("all", "default"):
            _run(
                "ip",
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                f"net.ipv6.conf.{scope}.disable_ipv6=1",
            )
        return name

    def build_public(self) -> None:
        """The public segment: a bridge with the server's and coturn's addresses."""
        ns = self._namespace(self.public)
        _run("ip", "-n", ns, "link", "add", "wan", "type", "bridge")
        _run("ip", "-n", ns, "link", "set", "wan", "up")
        for address in (SERVER_IP, TURN_IP):
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "wan")

    def add_home(self, nat: Nat) -> Home:
        """A host on 10.N.0.2 behind a router on 198.18.0.(10+N) that does ``nat``."""
        n = len(self.homes) + 1
        home = Home(
            ns=self._namespace(f"{self.tag}-home{n}"),
            router=self._namespace(f"{self.tag}-nat{n}"),
            nat=nat,
            address=f"10.{n}.0.2",
            public_address=f"{PUBLIC_NET}.{10 + n}",
        )
        router, public = home.router, self.public
        _run("ip", "link", "add", "out", "netns", router, "type", "veth",
             "peer", "name", f"r{n}", "netns", public)  # fmt: skip
        _run("ip", "-n", public, "link", "set", f"r{n}", "master", "wan", "up")
        _run("ip", "-n", router, "addr", "add", f"{home.public_address}/24", "dev", "out")
        _run("ip", "-n", router, "link", "set", "out", "up")
        _run("ip", "link", "add", "in", "netns", router, "type", "veth",
             "peer", "name", "eth0", "netns", home.ns)  # fmt: skip
        _run("ip", "-n", router, "addr", "add", f"10.{n}.0.1/24", "dev", "in")
        _run("ip", "-n", router, "link", "set", "in", "up")
        _run("ip", "-n", home.ns, "addr", "add", f"{home.address}/24", "dev", "eth0")
        _run("ip", "-n", home.ns, "link", "set", "eth0", "up")
        _run("ip", "-n", home.ns, "route", "add", "default", "via", f"10.{n}.0.1")
        _run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ruleset = f"""
table ip home {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "out" {nat.value}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "out" ct state new drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "out" ct state new drop
  }}
}}
"""
        self._nft(router, ruleset)
        self.homes.append(home)
        return home

    def add_far_host(self) -> FarHost:
        """A host on ``FAR_IP`` whose only link, to the public namespace, is a :class:`Wire`.

        No NAT: it reaches the server, and is reached, directly; and so does
        anything running in the public namespace itself (a browser).
        """
        ns = self._namespace(f"{self.tag}-far")
        wire = Wire(self.public, ns)
        self.wires.append(wire)
        for end, address, peer in ((self.public, FAR_GATEWAY, FAR_IP), (ns, FAR_IP, FAR_GATEWAY)):
            _run("ip", "-n", end, "addr", "add", address, "peer", peer, "dev", Wire.NAME)
            _run("ip", "-n", end, "link", "set", Wire.NAME, "up")
        _run("ip", "-n", ns, "route", "add", "default", "dev", Wire.NAME)
        return FarHost(ns=ns, address=FAR_IP, wire=wire)

    @staticmethod
    def _nft(ns: str, ruleset: str) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=ruleset,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft in {ns}: {done.stderr.strip()}")

    def lose(self, home: Home, percent: int) -> None:
        """Drop ``percent`` % of the UDP packets ``home``'s router forwards, either way."""
        rule = f"meta l4proto udp numgen random mod 100 < {percent} drop"
        _run("ip", "netns", "exec", home.router, "nft", "insert rule ip home forward", rule)

    # --- services ---------------------------------------------------------------

    def start_turn(self) -> Service:
        """coturn on ``TURN_IP``, with REST credentials and no relaying to private peers."""
        low, high = RELAY_PORTS
        command = [
            "turnserver", "-n", "--log-file=stdout", "--simple-log", "--no-cli",
            f"--listening-ip={TURN_IP}", f"--relay-ip={TURN_IP}",
            f"--listening-port={TURN_PORT}", f"--min-port={low}", f"--max-port={high}",
            f"--realm={REALM}", "--use-auth-secret", f"--static-auth-secret={self.turn_secret}",
            "--fingerprint", "--no-tls", "--no-dtls",
            # Its own files, not the system's: several labs may run at once.
            f"--pidfile={self.workdir / 'turnserver.pid'}", f"--db={self.workdir / 'turndb'}",
            *(f"--denied-peer-ip={peers}" for peers in DENIED_PEERS),
        ]  # fmt: skip
        self.turn_secret_file.write_text(self.turn_secret + "\n")
        self.turn = self._start("coturn", command)
        self.turn.wait_until(lambda: call_in(self.public, lambda: answers_stun(TURN_IP, TURN_PORT)))
        return self.turn

    def start_server(self, *, stun: bool, turn: bool) -> Service:
        """``chatsubo serve`` on ``SERVER_IP``; with our STUN, and coturn's credentials."""
        secret = self.workdir / "secret"
        secret.write_text(secrets.token_hex(32) + "\n")
        command = [
            PYTHON, "-m", "chatsubo", "serve", "--host", SERVER_IP, "--port", str(HTTP_PORT),
            "--secret-file", str(secret), "--state-dir", str(self.workdir / "state"),
        ]  # fmt: skip
        if stun:
            command += ["--stun-port", str(STUN_PORT)]
        if turn:
            command += [
                "--turn-url", f"turn:{TURN_IP}:{TURN_PORT}",
                "--turn-secret-file", str(self.turn_secret_file),
            ]  # fmt: skip
        self.server = self._start("chatsubo", command)
        self.server.wait_until(lambda: call_in(self.public, lambda: listens(SERVER_IP, HTTP_PORT)))
        return self.server

    def _start(self, name: str, command: Sequence[str]) -> Service:
        service = Service.start(name, self.public, command)
        self.services.append(service)
        return service

    def chromium(self, home: Home | str) -> Path:
        """An executable that runs Debian's Chromium in ``home`` or a namespace, for Playwright."""
        ns = home if isinstance(home, str) else home.ns
        wrapper = self.workdir / f"chromium-{ns}"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    # --- the end ----------------------------------------------------------------

    def close(self) -> None:
        """Stop every service, end whatever else runs in the namespaces, remove them."""
        for service in reversed(self.services):
            service.stop()
        # Before the namespaces go: a TUN device left in one would be moved to the host's.
        for wire in self.wires:
            wire.close()
        for ns in reversed(self.namespaces):
            # Processes started in the lab outlive its namespace otherwise (a browser, a bot).
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def netlab(nats: Sequence[Nat], *, stun: bool = True, turn: bool = True) -> Iterator[Lab]:
    """A lab with a home per entry of ``nats``, the server, and coturn if ``turn``.

    Everything is removed when the block ends, however it ends.
    """
    with tempfile.TemporaryDirectory(prefix="netlab-") as workdir:
        lab = Lab(Path(workdir))
        try:
            lab.build_public()
            for nat in nats:
                lab.add_home(nat)
            if turn:
                lab.start_turn()
            lab.start_server(stun=stun, turn=turn)
            yield lab
        finally:
            lab.close()
