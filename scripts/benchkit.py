"""What the benchmark and load-test scripts share: processes, pipes, progress, a server.

Not part of the package: these scripts run from a checkout, and each imports
this module from its own directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_pipes
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from chatsubo.commandline import raise_file_limit

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    Pipe = Connection[Any, Any]

REPO = Path(__file__).resolve().parent.parent

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


HOST = "127.0.0.1"


#: Generous limits for steps that should take well under a second each.
SETUP_DEADLINE = 120.0


STOP_DEADLINE = 15.0


def process_cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of process ``pid`` (all its threads) so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces; the fields after it do not.
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc_pid_stat(5), counting the pid as 1: utime and stime.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time spent on anything but idling, summed over all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list; NaN when it is empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed: the clients need every cycle."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def recv_pipe(pipe: Pipe) -> Any:
    """Wait for the next message from the parent without blocking the event loop."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(pipe.fileno(), ready)
    try:
        await readable
    finally:
        loop.remove_reader(pipe.fileno())
        # uvloop leaves a watched descriptor non-blocking; a large send would then fail.
        os.set_blocking(pipe.fileno(), True)
    return pipe.recv()


class Progress:
    """One status line on stderr: rewritten in place on a terminal, else printed per phase."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._phase = ""

    def show(self, phase: str, detail: str = "") -> None:
        """Show ``phase`` with a changing ``detail``; off a terminal only new phases print."""
        if self._tty:
            self._stream.write(f"\r\x1b[K{phase} {detail}")
            self._stream.flush()
        elif phase != self._phase:
            self._stream.write(f"{phase}\n")
            self._stream.flush()
        self._phase = phase

    def done(self, line: str) -> None:
        """Replace the status line with a permanent one."""
        if self._tty:
            self._stream.write("\r\x1b[K")
        self._stream.write(f"{line}\n")
        self._stream.flush()
        self._phase = ""


@dataclass
class ServerProcess:
    """A server under test, running as a subprocess."""

    label: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the whole process so far."""
        return process_cpu_seconds(self.popen.pid)

    def rss_bytes(self) -> int:
        """Resident set size, from VmRSS in /proc/<pid>/status."""
        with open(f"/proc/{self.popen.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.popen.pid}")

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's output, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        """Fail loudly if the server has exited."""
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.label} exited with {code}:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once the server accepts TCP connections.

        This readiness probe is the one place that polls: neither server says
        on its output when its socket is listening.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                socket.create_connection((HOST, self.port), timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.label} did not listen within {timeout:g} s"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def source_env(source: Path) -> dict[str, str]:
    """The environment that makes a Python import ``chatsubo`` from the checkout ``source``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(source.resolve()), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def start_chatsubo(
    python: str,
    workdir: Path,
    *,
    uvloop: bool,
    messages_per_second: float,
    max_connections: int = 20000,
    max_room_size: int = 10,
    source: Path = REPO,
    label: str = "",
    extra_args: Sequence[str] = (),
    log_level: str = "warning",
) -> ServerProcess:
    """Start ``python -m chatsubo serve`` from the checkout ``source`` on a free loopback port.

    ``extra_args`` go after the others, e.g. ``--redis-url`` and ``--secret-file``.
    """
    port = free_port()
    log = workdir / f"chatsubo-{port}.log"
    cmd = [
        python,
        "-m",
        "chatsubo",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--messages-per-second",
        f"{messages_per_second:g}",
        "--max-connections",
        str(max_connections),
        "--max-room-size",
        str(max_room_size),
        "--state-dir",
        str(workdir / "state"),
        "--log-level",
        log_level,
    ]
    if not uvloop:
        cmd.append("--no-uvloop")
    cmd += extra_args
    label = label or ("chatsubo (uvloop)" if uvloop else "chatsubo (asyncio loop)")
    with open(log, "wb") as out:
        # ``-m`` puts the working directory first on sys.path, and PYTHONPATH
        # comes before the venv's editable install too: ``source`` wins.
        popen = subprocess.Popen(
            cmd,
            cwd=source,
            env=source_env(source),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(label, popen, port, log)


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """Wait for ``server`` to listen; stop it however the block ends."""
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def run_client_process(pipe: Pipe, name: str, main: Coroutine[Any, Any, None]) -> None:
    """The body of every client process: run ``main``, and report a failure to the parent."""
    raise_file_limit()
    try:
        run_loop(main)
    except Exception as exc:
        # The parent may be gone already, having failed first.
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{name}: {exc!r}"))


@dataclass
class Workers:
    """Client processes, each with a pipe to this one."""

    processes: list[mp.process.BaseProcess]
    pipes: list[Pipe]

    @classmethod
    def start(cls, target: Callable[..., None], jobs: list[Any]) -> Workers:
        """One spawned process per job, each running ``target(pipe, job)``."""
        context = mp.get_context("spawn")
        processes: list[mp.process.BaseProcess] = []
        pipes: list[Pipe] = []
        for job in jobs:
            ours, theirs = context.Pipe()
            process = context.Process(target=target, args=(theirs, job), daemon=True)
            process.start()
            theirs.close()
            processes.append(process)
            pipes.append(ours)
        return cls(processes, pipes)

    def gather(
        self,
        kind: str,
        deadline: float,
        on_progress: Callable[[list[Any]], None] | None = None,
        alive: Callable[[], None] | None = None,
    ) -> list[Any]:
        """Wait for a ``(kind, payload)`` message from every worker; their payloads.

        ``("progress", n)`` messages update the display; ``("error", text)`` raises.
        """
        results: list[Any] = [None] * len(self.pipes)
        progress: list[Any] = [0] * len(self.pipes)
        pending = dict(enumerate(self.pipes))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"client processes did not report {kind!r} in time")
            ready = wait_for_pipes(list(pending.values()), timeout=min(remaining, 1.0))
            for index, pipe in list(pending.items()):
                if pipe not in ready:
                    continue
                try:
                    message = pipe.recv()
                except EOFError:
                    raise RuntimeError(f"client process {index} died") from None
                if message[0] == "error":
                    raise RuntimeError(message[1])
                if message[0] == "progress":
                    progress[index] = message[1]
                    if on_progress is not None:
                        on_progress(progress)
                    continue
                if message[0] != kind:
                    raise RuntimeError(f"client process {index} sent {message[0]!r}, not {kind!r}")
                results[index] = message[1]
                del pending[index]
            if alive is not None:
                alive()
        return results

    def send(self, message: Any) -> None:
        """Send ``message`` to every worker."""
        for pipe in self.pipes:
            pipe.send(message)

    def stop(self) -> None:
        """Hang up, give the workers a moment to finish, then terminate the rest."""
        # A worker still waiting on its pipe (after a failure here) reads EOF and ends.
        for pipe in self.pipes:
            pipe.close()
        deadline = time.monotonic() + STOP_DEADLINE
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join()


def split(total: int, parts: int) -> list[int]:
    """``total`` spread as evenly as possible over ``parts``, dropping empty shares."""
    shares = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    return [share for share in shares if share > 0]


def wait_until(
    moment: float, progress: Progress, phase: str, detail: Callable[[], str] | None = None
) -> None:
    """Sleep through a fixed measurement window, refreshing the status line."""
    while (remaining := moment - time.monotonic()) > 0:
        progress.show(phase, f"{remaining:4.1f} s left {detail() if detail else ''}")
        time.sleep(min(remaining, 0.25))
