#!/usr/bin/env python3
"""Idle memory per authenticated connection, for each credential transport.

For each transport (header, subprotocol, query, ticket, message), starts a fresh
release gateway on 127.0.0.1 (HS256 issuer, limits raised, first-message auth on),
opens a warm-up batch, then two batches of N idle authenticated connections one after
the other, and prints the gateway's VmRSS growth per connection for each batch (the
second is the marginal cost beside the first, as docs/performance.md measures it).

    cargo build --release -p agentgate
    target/bench-peers/venv/bin/python scripts/idle-connections.py [N] [TRANSPORT ...]

Needs the `websockets` package (the bench's venv at target/bench-peers/venv has it,
after one full `agentgate-bench` run). N defaults to 3000; one process holds at most
about 19 000 open files, so keep 2*N + 200 well below that.
"""

import asyncio
import json
import os
import pathlib
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

ROOT = pathlib.Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "target" / "release" / "agentgate"
TRANSPORTS = ["header", "subprotocol", "query", "ticket", "message"]
CONFIG = """
[server]
listen = "127.0.0.1:0"
addr_file = "{addr}"

[auth]
first_message = true

[[auth.jwt]]
name = "bench"
algorithms = ["HS256"]
secret_env = "AGENTGATE_IDLE_JWT_SECRET"

[limits]
handshakes_per_ip_per_s = 1000000
connections_per_ip = 1000000
connections_per_principal = 1000000
sessions_per_principal = 1000000
tickets_per_principal = 1000000
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def ticket(port: int, token: str) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/tickets", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(json.load(r)["ticket"])


async def connect(port: int, transport: str, token: str) -> websockets.ClientConnection:
    url = f"ws://127.0.0.1:{port}/v1/ws"
    kwargs: dict = {"max_size": 2**20}
    if transport == "header":
        kwargs["additional_headers"] = {"Authorization": f"Bearer {token}"}
    elif transport == "subprotocol":
        kwargs["subprotocols"] = ["agentgate.v1", "agentgate.bearer." + token]
    elif transport == "query":
        url += "?access_token=" + token
    elif transport == "ticket":
        url += "?ticket=" + await asyncio.to_thread(ticket, port, token)
    ws = await websockets.connect(url, open_timeout=10, **kwargs)
    if transport == "message":
        await ws.send(json.dumps({"type": "auth", "token": token}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"{transport}: expected a welcome, got {welcome}")
    return ws


async def measure(port: int, pid: int, transport: str, token: str, n: int) -> tuple[float, float]:
    held = [await connect(port, transport, token) for _ in range(200)]
    await asyncio.sleep(1)
    start = rss_kib(pid)
    held += [await connect(port, transport, token) for _ in range(n)]
    await asyncio.sleep(2)
    first = rss_kib(pid)
    held += [await connect(port, transport, token) for _ in range(n)]
    await asyncio.sleep(2)
    second = rss_kib(pid)
    for ws in held:
        await ws.close()
    return (first - start) / n, (second - first) / n


def run(transport: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        addr = pathlib.Path(tmp) / "addr"
        config = pathlib.Path(tmp) / "gw.toml"
        config.write_text(CONFIG.format(addr=addr))
        env = dict(os.environ, AGENTGATE_HOME=tmp, AGENTGATE_IDLE_JWT_SECRET=secrets.token_hex(32))
        gw = subprocess.Popen(
            [GATEWAY, "serve", "--config", config], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while not (addr.exists() and addr.read_text().strip()):
                if time.monotonic() > deadline or gw.poll() is not None:
                    raise RuntimeError("the gateway did not start")
                time.sleep(0.05)
            port = int(addr.read_text().strip().rsplit(":", 1)[1])
            token = subprocess.run(
                [GATEWAY, "token", "mint", "--config", config, "--sub", "idle", "--ttl", "3600"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            first, second = asyncio.run(measure(port, gw.pid, transport, token, n))
            print(f"{transport:12} first {n}: {first:.2f} KiB/conn, second {n} beside it: {second:.2f} KiB/conn")
        finally:
            gw.terminate()
            gw.wait(10)


def main() -> None:
    args = sys.argv[1:]
    n = int(args.pop(0)) if args and args[0].isdigit() else 3000
    chosen = args or TRANSPORTS
    unknown = [t for t in chosen if t not in TRANSPORTS]
    if unknown:
        sys.exit(f"unknown transport {unknown}; choose from {TRANSPORTS}")
    if not GATEWAY.exists():
        sys.exit(f"{GATEWAY} not found: cargo build --release -p agentgate")
    for transport in chosen:
        run(transport, n)


if __name__ == "__main__":
    main()
