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
from typing import Any

from chatsubo.server.topology import LinkRules
from tests.conftest import ServerFactory

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import loadtest  # noqa: E402 - a script, importable once its directory is on the path

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


async def test_a_signaling_only_crowd_obeys_the_link_rule(tmp_path: Path) -> None:
    results = tmp_path / "signaling.json"
    code, out, err = await run_loadtest(
        "--signaling-only", "--peers", "60", "--duration", "10", "--settle", "2",
        "--json", str(results),
    )  # fmt: skip
    assert code == 0, f"{out}\n{err}"
    assert "rule violations        0" in out
    report = json.loads(results.read_text())
    summary = report["summary"]
    assert summary["joined"] == 60
    assert summary["violations_total"] == 0, report["violations"][:5]
    assert summary["unknown_peers"] == 0
    assert summary["links_max"] <= 8
    assert 0 < summary["links_mean"] <= 8
    assert summary["updates_per_second"] > 0
    assert summary["setups_per_minute"] > 0
    assert not summary["dropped"]
    assert not summary["errors"]
    assert summary["server"]["cpu_percent"] > 0
    assert summary["server"]["peak_rss"] > 0
    assert "measuring" in err


async def test_a_small_proximity_room_links_by_the_rule_and_carries_audio(tmp_path: Path) -> None:
    """Six aiortc peers, at most three links each: the rule applies, and talk-spurts arrive."""
    results = tmp_path / "proximity.json"
    code, out, err = await run_loadtest(
        "--proximity", "--talk", "--peers", "6", "--full-mesh-up-to", "3", "--max-links", "3",
        "--duration", "8", "--settle", "3", "--json", str(results),
    )  # fmt: skip
    assert code == 0, f"{out}\n{err}"
    summary = json.loads(results.read_text())["summary"]
    assert summary["violations_total"] == 0
    assert summary["links_max"] <= 3
    assert summary["audio_links"] > 0
    assert summary["audio_delivered"] > 0.95
    assert summary["never_connected"] == 0
    assert 0.2 < summary["talk_share"] < 0.7, "talk-spurts: about 40 % of the time"


async def test_walking_modes_refuse_what_they_cannot_do() -> None:
    code, _, err = await run_loadtest("--signaling-only", "--peers", "501")
    assert code == 2
    assert "at most 500" in err
    code, _, err = await run_loadtest("--talk", "--peers", "2")
    assert code == 2
    assert "--talk needs --proximity" in err


# --- the rule checker, on made-up events --------------------------------------------

#: A big room from three members on, at most two links each.
RULES = LinkRules(full_mesh_up_to=2, max_links=2)


def check(events: list[tuple[Any, ...]], until: float = 10.0) -> dict[str, int]:
    """Feed events for peers 0..4 (ids "p0".."p4") to a checker; the violations it counts."""
    checker = loadtest.RuleChecker(5, RULES, tolerance=1.0, window=(0.0, until))
    joins = [("j", 0.0, i, f"p{i}", f"peer {i}") for i in range(5)]
    checker.feed(joins + list(events))
    checker.advance(until)
    return {kind: n for kind, n in checker.counts.items() if n}


def apart() -> list[tuple[Any, ...]]:
    """0 and 1 together in a corner, the others out of earshot of anyone."""
    spots = [(1.0, 1.0), (2.0, 1.0), (23.0, 1.0), (1.0, 15.0), (12.0, 8.0)]
    return [("p", 0.0, i, x, y) for i, (x, y) in enumerate(spots)]


def linked(
    a: int, b: int, t: float, offers: tuple[bool, bool] = (True, False)
) -> list[tuple[Any, ...]]:
    return [("l", t, a, f"p{b}", offers[0]), ("l", t, b, f"p{a}", offers[1])]


def test_the_checker_passes_what_the_rule_asks() -> None:
    assert check(apart() + linked(0, 1, 0.1)) == {}


def test_the_checker_finds_an_audible_pair_left_unlinked() -> None:
    assert check(apart()) == {"unheard": 1}


def test_the_checker_finds_a_far_pair_kept_linked() -> None:
    # 0 walks off to the far corner at 1 s and is still linked at 10 s; 3 s
    # of hysteresis and 1 s of tolerance allow until 5 s.
    walk = [("p", 1.0, 0, 23.0, 15.0)]
    assert check(apart() + linked(0, 1, 0.1) + walk) == {"far": 1}
    # Unlinked at 4.5 s, within what is allowed.
    unlinked = [("u", 4.5, 0, "p1"), ("u", 4.5, 1, "p0")]
    assert check(apart() + linked(0, 1, 0.1) + walk + unlinked) == {}


def test_the_checker_finds_one_sided_links_and_two_offerers() -> None:
    assert check(apart() + linked(0, 1, 0.1)[:1]) == {"one_sided": 1}
    assert check(apart() + linked(0, 1, 0.1, (True, True))) == {"offerers": 1}


def test_the_checker_finds_a_peer_beyond_k() -> None:
    near = [("p", 0.0, 2, 1.0, 2.0), ("p", 0.0, 3, 2.0, 2.0)]
    events = apart() + near + linked(0, 1, 0.1) + linked(0, 2, 0.1) + linked(0, 3, 0.1)
    # 0 holds three; 1, 2 and 3 are near each other with room to spare, unlinked.
    assert check(events) == {"over_k": 1, "unheard": 3}


def test_the_checker_wants_a_full_mesh_in_a_small_room() -> None:
    checker = loadtest.RuleChecker(2, RULES, tolerance=1.0, window=(0.0, 5.0))
    checker.feed([("j", 0.0, 0, "p0", "a"), ("j", 0.0, 1, "p1", "b")])
    checker.advance(5.0)
    assert checker.counts["not_meshed"] == 1
