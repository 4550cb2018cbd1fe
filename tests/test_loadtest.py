"""A small run of the load test: the script end to end, as a benchmark would run it.

Four peers in two processes, a few seconds: every link connects and audio,
chat and positions flow. The real numbers come from the full runs recorded in
docs/performance.md; here the bars are low enough for a busy CI machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.conftest import ServerFactory

REPO = Path(__file__).resolve().parent.parent
#: The script's own timeline is about 15 s; process start-up on a busy machine adds more.
RUN_DEADLINE = 120.0


async def run_loadtest(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "scripts" / "loadtest.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_DEADLINE)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_four_peers_connect_every_link_and_audio_flows(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    code, out, err = await run_loadtest(
        "--peers", "4", "--procs", "2", "--duration", "4", "--settle", "3",
        "--rejoins", "1", "--json", str(results),
    )  # fmt: skip
    assert code == 0, f"{out}\n{err}"
    assert "links connected        6/6 pairs" in out
    summary = json.loads(results.read_text())["summary"]
    assert summary["pairs_connected"] == summary["pairs_expected"] == 6
    assert summary["joined"] == 4
    assert len(summary["rejoins"]) == 1
    assert summary["rejoin_failed"] == 0
    assert summary["links"] == 12, "every peer hears the three others"
    assert summary["audio_min"] > 0.9, summary
    assert summary["chat_count"] > 0
    assert summary["positions_delivered"] > 0.9
    assert len(summary["processes"]) == 2
    # Progress is shown while it runs.
    assert "measuring" in err


async def test_bad_arguments_are_refused_with_a_message() -> None:
    code, _, err = await run_loadtest("--peers", "0")
    assert code == 2
    assert "--peers" in err


async def test_peers_that_cannot_join_fail_the_run(make_server: ServerFactory) -> None:
    server = await make_server(max_room_size=2)
    code, _, err = await run_loadtest(
        "--server", server.url, "--peers", "3", "--procs", "1", "--duration", "1",
        "--settle", "1", "--rejoins", "0",
    )  # fmt: skip
    assert code != 0
    assert "room_full" in err
