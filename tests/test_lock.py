"""The locks agree with pyproject.toml, name no host, and are what is installed."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


@dataclass(frozen=True)
class Pin:
    """One ``name==version ; marker`` line of a lock."""

    name: str
    version: Version
    marker: str | None

    def applies(self) -> bool:
        """Whether this pin is the one for the running interpreter and platform."""
        return self.marker is None or Marker(self.marker).evaluate()


def read_lock(text: str) -> list[Pin]:
    """The pins of a lock written by ``scripts/lock.sh``; every one must carry hashes."""
    pins: list[Pin] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _PIN.match(line)
        if match is None:
            continue
        name, version, marker = match.groups()
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if "--hash=sha256:" not in following:
            raise ValueError(f"{name}=={version} has no hashes")
        pins.append(Pin(canonicalize_name(name), Version(version), marker))
    return pins


def requirements(pyproject: dict[str, object], *, test: bool) -> list[Requirement]:
    """What ``pyproject.toml`` asks for: the runtime, the build backend, and the test tools."""
    project = pyproject["project"]
    build = pyproject["build-system"]
    assert isinstance(project, dict)
    assert isinstance(build, dict)
    wanted = [*project["dependencies"], *build["requires"]]
    if test:
        wanted += project["optional-dependencies"]["test"]
    return [Requirement(text) for text in wanted]


def disagreements(wanted: list[Requirement], pins: list[Pin]) -> list[str]:
    """Every way the lock fails what is wanted: a package missing, or a version out of range."""
    problems = []
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        locked = [pin for pin in pins if pin.name == name]
        if not locked:
            problems.append(f"{requirement.name} is not in the lock")
        for pin in locked:
            if not requirement.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{name}=={pin.version} is outside {requirement}")
    return problems


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize(("lock", "test"), [(RUNTIME_LOCK, False), (TEST_LOCK, True)])
def test_the_lock_covers_pyproject(lock: Path, test: bool) -> None:
    problems = disagreements(requirements(_pyproject(), test=test), read_lock(lock.read_text()))
    assert not problems, "run scripts/lock.sh:\n" + "\n".join(problems)


def test_the_runtime_lock_is_the_test_lock_without_the_tools() -> None:
    runtime = set(read_lock(RUNTIME_LOCK.read_text()))
    tested = set(read_lock(TEST_LOCK.read_text()))
    assert runtime <= tested, f"pinned differently from the test lock: {runtime - tested}"


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, TEST_LOCK])
def test_the_lock_names_no_index_or_host(lock: Path) -> None:
    text = lock.read_text()
    for needle in ("--index-url", "--extra-index-url", "--find-links", "://"):
        assert needle not in text


def test_what_is_installed_is_what_is_locked() -> None:
    wrong = []
    for pin in read_lock(TEST_LOCK.read_text()):
        if not pin.applies():
            continue
        try:
            installed = Version(importlib.metadata.version(pin.name))
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{pin.name} is not installed")
            continue
        if installed != pin.version:
            wrong.append(f"{pin.name} {installed} is installed, the lock says {pin.version}")
    assert not wrong, "\n".join(wrong)


def test_a_missing_package_or_a_version_below_its_floor_is_caught() -> None:
    lock = (
        "aiohttp==3.9.0 \\\n    --hash=sha256:00\n"
        "numpy==2.0.0 ; python_full_version < '3.12' \\\n    --hash=sha256:00\n"
    )
    wanted = [Requirement("aiohttp>=3.11"), Requirement("numpy>=1.26"), Requirement("pyee>=11")]
    assert disagreements(wanted, read_lock(lock)) == [
        "aiohttp==3.9.0 is outside aiohttp>=3.11",
        "pyee is not in the lock",
    ]


def test_a_pin_without_hashes_is_refused() -> None:
    with pytest.raises(ValueError, match="no hashes"):
        read_lock("aiohttp==3.14.5\nyarl==1.25.1 \\\n    --hash=sha256:00\n")
