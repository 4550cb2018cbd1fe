#!/usr/bin/env bash
# Writes the two locks from pyproject.toml: requirements.lock (the runtime and
# the build backend) and requirements-test.lock (that plus the test tools),
# exact versions with the hashes of every published file.
#
#   scripts/lock.sh            after editing pyproject.toml: keeps every pin it can
#   scripts/lock.sh --upgrade  moves every package to its newest allowed version
#
# Then run the whole suite on the new lock before committing it (README,
# "Dependencies"). Needs python3 and the package index; installs uv in a
# throwaway venv.
set -euo pipefail
cd "$(dirname "$0")/.."

upgrade=()
usage="usage: scripts/lock.sh [--upgrade]
Writes requirements.lock and requirements-test.lock from pyproject.toml.
  --upgrade  move every package to its newest allowed version
             (without it, every pin that still fits is kept)"
case "${1:-}" in
  "") ;;
  --upgrade) upgrade=(--upgrade) ;;
  -h | --help) echo "$usage"; exit 0 ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q "uv>=0.9"

# The build backend is locked too, so that installing the project itself
# (--no-build-isolation) fetches nothing unpinned.
build_requires=$(python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')

compile() {
  # Universal: one lock for every platform and Python the project supports.
  # "fewest" picks one version of each package for all of them, so a newer
  # Python gets the very versions CI tested, not a fork of its own. Never an
  # index URL: the locks name no host.
  "$tools/bin/uv" pip compile --quiet --universal --python-version 3.11 --fork-strategy fewest \
    --generate-hashes --no-emit-index-url --custom-compile-command "scripts/lock.sh" \
    "${upgrade[@]}" "$@"
}

# The test lock first; the runtime lock is held to the same versions.
echo "$build_requires" | compile pyproject.toml --extra test - -o requirements-test.lock
echo "$build_requires" | compile pyproject.toml - -c requirements-test.lock -o requirements.lock
echo "wrote requirements.lock and requirements-test.lock"
