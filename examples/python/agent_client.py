#!/usr/bin/env python3
"""Run an agent through the agentgate gateway and print its events.

    pip install ./clients/python
    agentgate serve &                       # development defaults: 127.0.0.1:8079
    export AGENTGATE_TOKEN="$(agentgate token mint --sub alice)"
    python examples/python/agent_client.py "count these words"

Environment: AGENTGATE_URL (default ws://127.0.0.1:8079/v1/ws), AGENTGATE_TOKEN (the
token is never a command-line argument: it would show in process lists), and optionally
AGENTGATE_CA_FILE (PEM certificates that verify a wss:// gateway).

Exit statuses are those of `agentgate connect`: 0 completed, 3 unauthorized,
4 forbidden, 5 unavailable, 6 network, 7 protocol, 8 run failed or cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys

import agentgate_client as ag

EXIT_STATUS: dict[type[ag.AgentgateError], int] = {
    ag.Unauthorized: 3,
    ag.Forbidden: 4,
    ag.Unavailable: 5,
    ag.NetworkError: 6,
    ag.ProtocolError: 7,
    ag.HistoryTruncated: 7,
    ag.RequestError: 8,
    ag.RunFailed: 8,
    ag.RunCancelled: 8,
}


async def main(args: argparse.Namespace) -> int:
    url = os.environ.get("AGENTGATE_URL", "ws://127.0.0.1:8079/v1/ws")
    token = os.environ.get("AGENTGATE_TOKEN") or None
    ca_file = os.environ.get("AGENTGATE_CA_FILE")
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    agent_input: dict[str, object] = {"prompt": args.prompt, "delay_ms": args.delay_ms}
    if args.fail:
        agent_input["fail"] = True
    try:
        async with ag.connect(url, token, ssl=context) as conn:
            print(f"# session {conn.session_id} as {json.dumps(conn.principal)}", file=sys.stderr)
            run = await conn.start_run(args.agent, agent_input)
            async for event in run:  # every event once, in order, across reconnects
                print(json.dumps({"seq": event.seq, "type": event.type, "data": event.data}))
            final = await run.result()  # raises RunFailed / RunCancelled
            print(f"# {final.type}: {json.dumps(final.data)}", file=sys.stderr)
            return 0
    except ag.AgentgateError as e:
        print(f"error ({type(e).__name__}, code {e.code}): {e}", file=sys.stderr)
        return EXIT_STATUS.get(type(e), 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("prompt", help="the prompt for the agent")
    parser.add_argument("--agent", default="demo", help="agent name (default: demo)")
    parser.add_argument("--delay-ms", type=int, default=0, help="demo agent: pause per event")
    parser.add_argument("--fail", action="store_true", help="demo agent: end agent_failed")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
