"""The example script of examples/python, run as a user would, against the real gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agentgate_client.testing import Gateway

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "python" / "agent_client.py"


def run_script(gw: Gateway, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTGATE_URL": gw.url, "AGENTGATE_TOKEN": token}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_example_script_runs_the_demo_agent(agentgate_gateway: Gateway) -> None:
    token = agentgate_gateway.mint("example-user")
    done = run_script(agentgate_gateway, token, "count these words")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["type"] == "agent_started"
    assert events[-1] == {
        "seq": events[-1]["seq"],
        "type": "agent_completed",
        "data": {"result": {"words": 3}},
    }
    assert token not in done.stdout + done.stderr


def test_example_script_exit_statuses(agentgate_gateway: Gateway) -> None:
    failed = run_script(agentgate_gateway, agentgate_gateway.mint(), "x", "--fail")
    assert failed.returncode == 8, failed.stderr
    assert "demo_failure" in failed.stderr
    refused = run_script(agentgate_gateway, "garbage", "x")
    assert refused.returncode == 3
    assert "token_malformed" in refused.stderr
    unknown = run_script(agentgate_gateway, agentgate_gateway.mint(), "x", "--agent", "nope")
    assert unknown.returncode == 8
    assert "agent_unknown" in unknown.stderr
