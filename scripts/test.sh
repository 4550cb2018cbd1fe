#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then checks the
# layout, lints, type-checks and runs the tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the integration tests drive for real: a browser, Redis, nginx, coturn,
# nft for the NAT lab in network namespaces, and PulseAudio for the echo test's sound room.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v turnserver >/dev/null 2>&1 || missing+=(coturn)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v pulseaudio >/dev/null 2>&1 || missing+=(pulseaudio)
command -v pactl >/dev/null 2>&1 || missing+=(pulseaudio-utils)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Exactly the locked versions, then the project itself with nothing more.
python3 -m venv .venv
.venv/bin/python -m pip install -q --require-hashes -r requirements-test.lock
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .

.venv/bin/lint-imports
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
