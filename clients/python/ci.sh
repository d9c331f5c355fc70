#!/usr/bin/env bash
# CI for the Python client: lint, types, and the tests against the real gateway binary.
# Runnable from any directory. Uses $AGENTGATE_BIN if set, else builds the binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/py-venv"
examples="$repo/examples/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet -e "$here[dev]"

if [[ -z "${AGENTGATE_BIN:-}" ]]; then
    (cd "$repo" && cargo build -p agentgate)
    export AGENTGATE_BIN="$repo/target/debug/agentgate"
fi
if [[ ! -x "$AGENTGATE_BIN" ]]; then
    echo "ci.sh: AGENTGATE_BIN=$AGENTGATE_BIN is not an executable file" >&2
    exit 1
fi

cd "$here"
echo "== ruff check"
"$venv/bin/ruff" check src tests "$examples/agent_client.py"
echo "== ruff format --check"
"$venv/bin/ruff" format --check src tests "$examples/agent_client.py"
echo "== mypy --strict"
"$venv/bin/mypy" --strict src tests "$examples/agent_client.py"
echo "== pytest (AGENTGATE_BIN=$AGENTGATE_BIN)"
"$venv/bin/pytest" -p no:cacheprovider tests

# What a user does: a fresh virtual environment, a plain (non-editable) install of the
# package and pytest only, and the five-line test file of examples/python.
echo "== fresh install: pip install clients/python pytest; pytest examples/python"
fresh="$repo/target/py-fresh"
python3 -m venv --clear "$fresh"
"$fresh/bin/python" -m pip install --quiet "$here" pytest
(cd "$examples" && "$fresh/bin/pytest" -p no:cacheprovider test_with_agentgate.py)
