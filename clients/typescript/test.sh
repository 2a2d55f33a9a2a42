#!/usr/bin/env bash
# The TypeScript client's tests (node:test): unit tests on a fake clock,
# tests against a real `sluice serve`, and the chat demo page of `sluice dev`
# in Chromium (two pages chat; one goes offline). Installs what they need:
# the npm packages from package-lock.json (./build), the demo handlers
# (handlers/build) and, as root, Debian's chromium when it is missing.
# Needs the sluice binary: $SLUICE_BIN, by default
# ${CARGO_TARGET_DIR:-target}/debug/sluice (cargo build -p sluice).
# Screenshots go to clients/typescript/test-output/.
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
export SLUICE_BIN=${SLUICE_BIN:-$target/debug/sluice}
if [ ! -x "$SLUICE_BIN" ]; then
  echo "clients/typescript/test.sh: no sluice binary at $SLUICE_BIN (cargo build -p sluice)" >&2
  exit 1
fi
"$repo/handlers/build" >/dev/null
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (apt-get)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "clients/typescript/test.sh: $CHROMIUM is missing: apt-get install chromium (as root)" >&2
    exit 1
  fi
fi
./build
mkdir -p test-output
node --test --test-concurrency=1 --test-timeout=180000 test/*.test.mjs
