import asyncio, os, sys, websockets
N = int(sys.argv[1]); port = int(sys.argv[2]); token = os.environ["AGENTGATE_TOKEN"]; pid = int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
async def main():
    before = rss()
    conns = []
    for i in range(N):
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers={"Authorization": f"Bearer {token}"}, max_size=2**20)
        await ws.recv()
        conns.append(ws)
    await asyncio.sleep(2)
    after = rss()
    print(f"connections={N} rss_before_kib={before} rss_after_kib={after} per_connection_kib={(after-before)/N:.2f}")
    for ws in conns: await ws.close()
asyncio.run(main())
