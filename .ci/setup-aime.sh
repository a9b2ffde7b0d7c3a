#!/usr/bin/env bash
# The real AIME API Server (../shared/aime) for tests/aime: its pinned requirements (sanic 23.12.2,
# aiohttp 3.9.0, ...) clash with the project's, so they live in their own venv, .venv-aime.
# Idempotent: a stamp holding the requirements' checksum skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
req="../shared/aime/aime-api-server/requirements.txt"
venv=".venv-aime"
if [ ! -f "$req" ]; then
  echo "setup-aime: $req not found (the AIME server must sit in ../shared/aime)" >&2
  exit 1
fi
sum=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$sum" ]; then
  exit 0
fi
base_python=$(command -v python3)
# Outside the project's venv: base the new venv on the interpreter that made it.
if [ -n "${VIRTUAL_ENV:-}" ] && [ -f "$VIRTUAL_ENV/pyvenv.cfg" ]; then
  home=$(sed -n 's/^home *= *//p' "$VIRTUAL_ENV/pyvenv.cfg")
  [ -x "$home/python3" ] && base_python="$home/python3"
fi
"$base_python" -m venv "$venv"
log=$(mktemp)
# pip's own output goes to a log, shown only when the install fails.
if ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
echo "$sum" >"$venv/.requirements.sha256"
