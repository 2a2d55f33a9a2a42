#!/usr/bin/env bash
# @sluice/react's tests (node:test, React's test renderer): the hooks
# against a scripted server (the idempotent retry, shared subscriptions)
# and against a real `sluice serve` (a room: events, recovery, presence,
# requests). Builds @sluice/client and this package (./build).
# Needs the sluice binary: $SLUICE_BIN, by default
# ${CARGO_TARGET_DIR:-target}/debug/sluice (cargo build -p sluice), and the
# demo handlers (handlers/build).
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
export SLUICE_BIN=${SLUICE_BIN:-$target/debug/sluice}
if [ ! -x "$SLUICE_BIN" ]; then
  echo "clients/react/test.sh: no sluice binary at $SLUICE_BIN (cargo build -p sluice)" >&2
  exit 1
fi
"$repo/handlers/build" >/dev/null
./build
node --test --test-concurrency=1 --test-timeout=120000 test/*.test.mjs
