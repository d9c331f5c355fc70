import agentgate_client as ag
async def test_demo_run(agentgate_gateway):
    async with ag.connect(agentgate_gateway.url, agentgate_gateway.mint()) as conn:
        run = await conn.start_run("demo", {"prompt": "count these words"})
        assert (await run.result()).data == {"result": {"words": 3}}
