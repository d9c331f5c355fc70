"""The testing helpers, the pytest plugin (run in a pytest subprocess) and the sync wrapper."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import jwt
import pytest
from helpers import GatewayFactory

import agentgate_client as ag
from agentgate_client import sync
from agentgate_client.testing import Gateway, GatewayError, deep_merge, start_gateway, to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]


def test_mint_token_claims() -> None:
    before = int(time.time())
    token = ag.testing.mint_token(
        b"k" * 32,
        sub="bob",
        ttl=60,
        scopes=("agents:run", "admin"),
        tenant="acme",
        issuer="https://issuer.example",
        audience="agentgate",
        role="user",
    )
    claims = jwt.decode(token, b"k" * 32, algorithms=["HS256"], audience="agentgate")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims["sub"] == "bob"
    assert claims["scope"] == "agents:run admin"
    assert claims["tenant"] == "acme"
    assert claims["iss"] == "https://issuer.example"
    assert claims["role"] == "user"
    assert before <= claims["iat"] <= before + 5
    assert claims["exp"] == claims["iat"] + 60
    other = ag.testing.mint_token("k" * 32, sub="bob")
    assert jwt.decode(other, "k" * 32, algorithms=["HS256"])["jti"] != claims["jti"]


def test_toml_round_trip_and_merge() -> None:
    base = {
        "server": {"listen": "127.0.0.1:0", "addr_file": '/var/x "b"'},
        "auth": {"jwt": [{"name": "test", "algorithms": ["HS256"]}]},
    }
    extra = tomllib.loads(
        'server.allowed_origins = ["https://x"]\n[auth]\nleeway_s = 0\n'
        '[[agents]]\nname = "x"\nkind = "demo"\n'
    )
    merged = deep_merge(base, extra)
    assert tomllib.loads(to_toml(merged)) == {
        "server": {
            "listen": "127.0.0.1:0",
            "addr_file": '/var/x "b"',
            "allowed_origins": ["https://x"],
        },
        "auth": {"jwt": [{"name": "test", "algorithms": ["HS256"]}], "leeway_s": 0},
        "agents": [{"name": "x", "kind": "demo"}],
    }
    # the extra configuration's keys win
    assert deep_merge(base, {"server": {"listen": "127.0.0.1:1"}})["server"]["listen"] == (
        "127.0.0.1:1"
    )


def test_gateway_fixture_object(agentgate_gateway: Gateway) -> None:
    assert agentgate_gateway.url.startswith("ws://127.0.0.1:")
    assert agentgate_gateway.url.endswith("/v1/ws")
    assert agentgate_gateway.http_url == "http://" + agentgate_gateway.addr
    token = agentgate_gateway.mint()
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "test-user"
    assert isinstance(agentgate_gateway.log_text(), str)
    assert agentgate_gateway.secret not in agentgate_gateway.log_text()
    assert agentgate_gateway.config["auth"]["jwt"][0]["name"] == "test"


def test_factory_config_wins(agentgate_gateway_factory: GatewayFactory) -> None:
    gw = agentgate_gateway_factory(
        '[server]\nallowed_origins = ["https://a.example"]\naddr_file = "elsewhere.addr"'
    )
    assert gw.config["server"]["allowed_origins"] == ["https://a.example"]
    assert gw.config["server"]["listen"] == "127.0.0.1:0"
    assert gw.running


def test_gateway_stop_is_sigterm() -> None:
    gw = start_gateway()
    assert gw.running
    assert gw.stop() == 0
    assert not gw.running
    assert "listening" in gw.log_text()
    assert "\x1b" not in gw.log_text()
    assert gw.stop() == 0  # twice is fine


def test_bad_extra_toml_is_an_error() -> None:
    with pytest.raises(GatewayError, match="not valid TOML"):
        start_gateway("[server")


def test_config_error_shows_the_gateway_output() -> None:
    with pytest.raises(GatewayError, match="no_such_key"):
        start_gateway("server.no_such_key = 1")


def test_missing_binary_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTGATE_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(GatewayError) as info:
        start_gateway()
    assert "AGENTGATE_BIN" in str(info.value) and "PATH" in str(info.value)
    monkeypatch.setenv("AGENTGATE_BIN", "/nonexistent/agentgate")
    with pytest.raises(GatewayError, match="AGENTGATE_BIN"):
        start_gateway()


FIVE_LINES = """\
import agentgate_client as ag
async def test_demo(agentgate_gateway):
    async with ag.connect(agentgate_gateway.url, agentgate_gateway.mint()) as conn:
        run = await conn.start_run("demo", {"prompt": "count these words"})
        assert (await run.result()).data == {"result": {"words": 3}}
"""


def test_plugin_five_line_file_without_an_async_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_five=FIVE_LINES)
    result = pytester.runpytest_subprocess("-p", "no:asyncio", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_plugin_with_pytest_asyncio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_five=FIVE_LINES)
    result = pytester.runpytest_subprocess("-p", "asyncio", "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=1)


def test_plugin_factory_and_missing_binary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_factory="""
import agentgate_client as ag
async def test_scope(agentgate_gateway_factory):
    gw = agentgate_gateway_factory('[[agents]]\\nname = "x"\\nkind = "demo"\\nscope = "other"')
    async with ag.connect(gw.url, gw.mint()) as conn:
        try:
            await conn.start_run("x", {})
        except ag.Forbidden as e:
            assert e.code == "scope_missing"
        else:
            raise AssertionError("no Forbidden")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:asyncio")
    result.assert_outcomes(passed=1)
    env_bin = os.environ.get("AGENTGATE_BIN")
    assert env_bin, "AGENTGATE_BIN must be set for this test"
    pytester.makepyfile(test_factory="def test_x(agentgate_gateway):\n    pass\n")
    os.environ["AGENTGATE_BIN"] = "/nonexistent/agentgate"
    try:
        result = pytester.runpytest_subprocess("-p", "no:asyncio")
    finally:
        os.environ["AGENTGATE_BIN"] = env_bin
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*AGENTGATE_BIN*"])


def test_sync_wrapper(agentgate_gateway: Gateway) -> None:
    with sync.connect(agentgate_gateway.url, agentgate_gateway.mint("script")) as conn:
        assert conn.principal is not None and conn.principal["subject"] == "script"
        run = conn.start_run("demo", {"prompt": "three little words"})
        events = list(run)
        assert events[-1].type == "agent_completed"
        assert run.result().data == {"result": {"words": 3}}
        assert conn.last_seq == events[-1].seq
        failing = conn.start_run("demo", {"prompt": "x", "fail": True})
        with pytest.raises(ag.RunFailed):
            failing.result()
        slow = conn.start_run("demo", {"prompt": "x", "delay_ms": 2000})
        assert conn.cancel_run(slow.run_id).type == "run_cancelled"
        assert conn.get_run(slow.run_id)["status"] == "cancelled"
    with pytest.raises(ag.Unauthorized):
        sync.connect(agentgate_gateway.url, "garbage")


async def test_await_form_and_close(agentgate_gateway: Gateway) -> None:
    conn = await ag.connect(agentgate_gateway.url, agentgate_gateway.mint())
    run = await conn.start_run("demo", {"prompt": "x", "delay_ms": 2000})
    await conn.close()
    assert conn.closed
    with pytest.raises(ag.AgentgateError):
        await asyncio.wait_for(run.result(), 5)
    with pytest.raises(ag.AgentgateError):
        await conn.start_run("demo", {})
    await conn.close()  # twice is fine


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ws://"):
        ag.connect("http://127.0.0.1:1/v1/ws")
    with pytest.raises(ValueError, match="transport"):
        ag.connect("ws://127.0.0.1:1/v1/ws", transport="carrier-pigeon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        ag.connect("ws://127.0.0.1:1/v1/ws", "t", token_provider=lambda: "t")
