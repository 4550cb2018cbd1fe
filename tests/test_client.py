"""The bot program as people run it: real processes, real server, real mesh."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import RunningServer


def test_help_explains_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatsubo.client", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for option in ("--room", "--server", "--record", "--wander", "--echo", "--count", "--json"):
        assert option in result.stdout


def test_unknown_zone_fails_clearly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatsubo.client", "--zone", "Kitchen"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "no zone 'Kitchen'; the zones are" in result.stderr
    assert "Traceback" not in result.stderr


async def _bot(server: RunningServer, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatsubo.client", "--server", server.url, "--json", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _events(process: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    return [json.loads(line) for line in stdout.decode().splitlines()]


async def test_two_bots_meet_chat_and_hear_each_other_in_space(
    server: RunningServer, tmp_path: Path
) -> None:
    record = tmp_path / "heard.wav"
    bartender = await _bot(
        server, "--name", "Bartender", "--position", "18,4.8", "--audio", "tone:440",
        "--echo", "--duration", "8",
    )  # fmt: skip
    case = await _bot(
        server, "--name", "Case", "--position", "12,4.8", "--audio", "silence",
        "--say", "a drink, bartender", "--every", "1", "--record", str(record),
        "--duration", "6",
    )  # fmt: skip
    case_events, bartender_events = await asyncio.gather(_events(case), _events(bartender))

    heard = [e["text"] for e in bartender_events if e["event"] == "chat"]
    assert "a drink, bartender" in heard
    replies = [e["text"] for e in case_events if e["event"] == "chat"]
    assert "Case: a drink, bartender" in replies
    positions = [e for e in case_events if e["event"] == "position"]
    assert positions
    assert positions[-1]["zone"] == "Lounge"

    with wave.open(str(record)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 48000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    left, right = np.sqrt((pcm.astype(np.float64) ** 2).mean(axis=0))
    # The bartender stands 6 m to the right, in the Lounge: heard, on the right.
    assert right > 5 * left
    spectrum = np.abs(np.fft.rfft(pcm[:, 1]))
    assert abs(np.argmax(spectrum) * 48000 / len(pcm) - 440) < 5


async def test_count_runs_a_meshed_crowd_in_one_process(server: RunningServer) -> None:
    crowd = await _bot(server, "--name", "guest", "--count", "3", "--wander", "--duration", "4")
    events = await _events(crowd)
    bots = {e["bot"] for e in events}
    assert bots == {"guest-1", "guest-2", "guest-3"}
    for bot in bots:
        connected = {
            e["peer"] for e in events if e["bot"] == bot and e["event"] == "peer_connected"
        }
        assert len(connected) == 2, (bot, connected)
        assert any(e["bot"] == bot and e["event"] == "left" for e in events)
    assert any(e["event"] == "position" for e in events), "wandering bots report positions"
