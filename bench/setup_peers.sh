#!/usr/bin/env bash
# Create bench/.peers/venv with sparfenyuk's mcp-proxy 0.13.0 (PyPI), isolated from the main
# environment: mcp-proxy pins an older `mcp` than mcp-barbican's tests use.
#
# Idempotent: when the venv exists and already holds mcp-proxy 0.13.0, nothing is installed.
#
#   bench/setup_peers.sh           create or repair the venv
#   bench/setup_peers.sh --check   exit 0 if ready, 1 otherwise (never installs)
#
# Environment: PYTHON (default: python3.11, else python3) picks the interpreter for the venv.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$BENCH/.peers/venv"
WANT="0.13.0"

ready() {
    [[ -x "$VENV/bin/mcp-proxy" ]] || return 1
    local have
    have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp-proxy"))' 2>/dev/null)" || return 1
    [[ "$have" == "$WANT" ]]
}

if [[ "${1:-}" == "--check" ]]; then
    if ready; then echo "mcp-proxy $WANT ready in $VENV"; exit 0; fi
    echo "mcp-proxy $WANT missing: run bench/setup_peers.sh" >&2
    exit 1
fi

if ready; then
    echo "mcp-proxy $WANT already installed in $VENV"
    exit 0
fi

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi

mkdir -p "$BENCH/.peers"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "mcp-proxy==$WANT"

if ! ready; then
    echo "setup_peers: mcp-proxy $WANT did not install correctly in $VENV" >&2
    exit 1
fi
"$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -iE '^(mcp|mcp-proxy|uvicorn|starlette|httptools|uvloop|pydantic)==' || true
echo "mcp-proxy $WANT ready in $VENV"
