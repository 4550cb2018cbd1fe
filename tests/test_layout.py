"""The arrows between the parts hold at run time too, not only in the import graph."""

from __future__ import annotations

import json
import subprocess
import sys

#: aioice is not among them: the server's STUN port speaks through its message code.
PEER_ONLY = ("aiortc", "av", "numpy", "sounddevice", "pyee")


def _loaded_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_a_running_server_app_loads_nothing_of_the_peer_side() -> None:
    loaded = _loaded_after(
        "from chatsubo.server.app import create_app\n"
        "from chatsubo.server.cli import parse_args\n"
        "from chatsubo.server.config import ServerConfig\n"
        "create_app(ServerConfig(secret=b'x'))"
    )
    assert not {m for m in loaded if m.split(".")[0] in PEER_ONLY}
    assert not {m for m in loaded if m.startswith("chatsubo.peer")}


def test_a_bot_loads_nothing_of_the_server() -> None:
    loaded = _loaded_after("import chatsubo.client")
    assert "chatsubo.peer.bot" in loaded
    assert not {m for m in loaded if m.startswith("chatsubo.server")}
    assert not {"prometheus_client", "redis"} & loaded
