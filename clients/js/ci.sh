#!/usr/bin/env bash
# CI for the JavaScript client (clients/js), from any directory: install from the lock
# file, build, type-check strictly (sources and tests), then run the tests against the
# real gateway binary and headless Chromium. A missing binary or Chromium fails.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

if [[ -z "${AGENTGATE_BIN:-}" ]]; then
  echo "== cargo build -p agentgate (AGENTGATE_BIN not set)"
  (cd "$REPO" && cargo build --locked -p agentgate)
  export AGENTGATE_BIN="$REPO/target/debug/agentgate"
fi
if [[ ! -x "$AGENTGATE_BIN" ]]; then
  echo "clients/js/ci.sh: the agentgate binary $AGENTGATE_BIN is missing or not executable" >&2
  exit 1
fi

cd "$HERE"
echo "== npm ci (clients/js)"
npm ci --no-audit --no-fund --loglevel=error
echo "== npm run build"
npm run build
echo "== tsc --noEmit (strict, sources and tests)"
npx tsc --noEmit -p tsconfig.json
echo "== node --test (AGENTGATE_BIN=$AGENTGATE_BIN)"
npm test
