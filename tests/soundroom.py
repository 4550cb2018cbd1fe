"""A virtual room where the speakers are heard by the microphone, and echo measured in it.

A private PulseAudio server with one null sink (the speakers) and a source
that is the sink's monitor (the microphone), so that everything a browser
plays reaches its own microphone at once, as laptop speakers do, with no
room, no noise and no loss in between. Chromium is told to use it with
``PULSE_SERVER`` and without its fake devices, and must not be muted (Playwright
passes ``--mute-audio`` unless told not to).

Chromium leaves out monitor sources when it lists microphones, hence the
remapped source.

:func:`echo_dbfs` measures the echo of a page there: a bot talks (a steady
tone) and records what it hears from the page; whatever of its own tone
comes back is echo. Used by tests/test_browser_echo.py and
scripts/bench_voice.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.async_api import Browser, Playwright

from tests.browser import (
    ARRIVE_IN_THE_MIDDLE,
    BESIDE_THE_MIDDLE,
    CHROMIUM,
    LAUNCH_ARGS,
    MESH_DEADLINE,
    RATE,
    Bot,
    Person,
    Recording,
)

ROOM = "echo"
#: Where the bot stands: beside the page, heard at full gain.
BESIDE = BESIDE_THE_MIDDLE
#: The canceller adapts within a few seconds; echo is measured after that, for 4 s.
SETTLE = 5.0
MEASURE = 4.0


def microphone_with(echo_cancellation: bool | str) -> str:
    """An init script: the page's microphone with this echo canceller, and no NS or AGC."""
    mode = json.dumps(echo_cancellation)
    return f"""
const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = (constraints) => open({{
  audio: {{ ...constraints.audio, echoCancellation: {mode},
            noiseSuppression: false, autoGainControl: false }},
}});
"""


#: How long PulseAudio may take to start on two busy cores.
START_DEADLINE = 15.0

_CONFIG = "\n".join(
    [
        "load-module module-native-protocol-unix auth-anonymous=1 socket={socket}",
        "load-module module-null-sink sink_name=speakers rate=48000 channels=2"
        " sink_properties=device.description=Speakers",
        "load-module module-remap-source master=speakers.monitor source_name=microphone"
        " source_properties=device.description=Microphone",
        "set-default-sink speakers",
        "set-default-source microphone",
        "",
    ]
)


def missing() -> str | None:
    """Why the sound room cannot be had here, or None when it can."""
    for command, package in (("pulseaudio", "pulseaudio"), ("pactl", "pulseaudio-utils")):
        if shutil.which(command) is None:
            return f"the sound room needs {command}: apt-get install {package}"
    return None


@contextmanager
def sound_room() -> Iterator[dict[str, str]]:
    """A running PulseAudio of this test's own; yields the environment for Chromium."""
    with tempfile.TemporaryDirectory(prefix="soundroom-") as workdir:
        home = Path(workdir)
        socket = home / "native"
        config = home / "default.pa"
        config.write_text(_CONFIG.format(socket=socket))
        # Its own runtime and home directories: nothing shared with any other PulseAudio.
        env = dict(os.environ, XDG_RUNTIME_DIR=workdir, HOME=workdir, PULSE_SERVER=f"unix:{socket}")
        log = (home / "pulseaudio.log").open("wb")
        process = subprocess.Popen(
            [
                "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1",
                "--disallow-exit", "--use-pid-file=no", "-F", str(config),
                "--log-target=stderr",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_ready(process, env, home)
            yield {"PULSE_SERVER": env["PULSE_SERVER"]}
        finally:
            process.terminate()
            try:
                process.wait(START_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


async def launch_on_speakers(playwright: Playwright, pulse: dict[str, str]) -> Browser:
    """Chromium on the sound room ``pulse`` of :func:`sound_room`: its speakers, its microphone."""
    env: dict[str, str | float | bool] = dict(pulse)
    return await playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[a for a in LAUNCH_ARGS if a != "--use-fake-device-for-media-stream"],
        env=env,
        ignore_default_args=["--mute-audio"],
    )


def _wait_ready(process: subprocess.Popen[bytes], env: dict[str, str], home: Path) -> None:
    """Return once ``pactl`` reaches the server and sees the microphone."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        if process.poll() is not None:
            log = (home / "pulseaudio.log").read_text(errors="replace")
            raise RuntimeError(f"pulseaudio exited with {process.returncode}:\n{log}")
        done = subprocess.run(
            ["pactl", "get-default-source"], env=env, capture_output=True, text=True
        )
        if done.returncode == 0 and done.stdout.strip() == "microphone":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pulseaudio not ready within {START_DEADLINE:g} s: {done.stderr}")
        time.sleep(0.1)


async def echo_dbfs(
    browser: Browser,
    url: str,
    bot: Bot,
    recording: Recording,
    path: str,
    echo_cancellation: bool | str,
) -> tuple[float, str, object]:
    """How loud the bot's own tone comes back from a page on speakers: dBFS, output, EC mode."""
    person = await Person.visit(
        browser,
        url + path,
        "Case",
        init_script=ARRIVE_IN_THE_MIDDLE + microphone_with(echo_cancellation),
    )
    try:
        case_id = await person.enter(ROOM)
        bot_id = await bot.peer_id()
        await person.connected_to(bot_id)
        await person.hears(bot_id)
        await bot.wait_for("peer_connected", peer=case_id, timeout=MESH_DEADLINE)
        start = recording.frames()
        end = start + int((SETTLE + MEASURE) * RATE)
        await recording.reaches(end)
        output, mode = await person.page.evaluate(
            "() => [window.chatsubo.audio.speakers.output,"
            " window.chatsubo.audio.microphone?.getSettings().echoCancellation ?? null]"
        )
        person.assert_no_errors()
    finally:
        await person.close()
    return recording.dbfs(start + int(SETTLE * RATE), end), output, mode
