#!/bin/sh
# The stdio upstream command every S1 target gets: server-everything on Node 22, pinned to CPU 1
# (the load generator's core), whatever core its parent proxy runs on. Paths are relative to this
# file because mcp-barbican gives a stdio child only a minimal environment.
here="$(cd "$(dirname "$0")" && pwd)"
modules="$here/../tests/node/node_modules"
exec taskset -c 1 "$modules/.bin/node" "$modules/@modelcontextprotocol/server-everything/dist/index.js" stdio
