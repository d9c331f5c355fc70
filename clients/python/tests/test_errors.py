"""Every error class of the contract, raised by a real refusal of the real gateway."""

from __future__ import annotations

import asyncio
import socket

import pytest
from helpers import GatewayFactory

import agentgate_client as ag
from agentgate_client.testing import Gateway, start_gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def assert_no_secret(err: ag.AgentgateError, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(err)
        assert secret not in repr(err)


async def test_unauthorized_expired_token(agentgate_gateway: Gateway) -> None:
    token = agentgate_gateway.mint(ttl=-120)
    with pytest.raises(ag.Unauthorized) as info:
        await ag.connect(agentgate_gateway.url, token)
    err = info.value
    assert (err.code, err.status, err.close_code, err.retryable) == (
        "token_expired",
        401,
        None,
        False,
    )
    assert isinstance(err, ag.AgentgateError)
    assert_no_secret(err, token)


async def test_unauthorized_garbage_token(agentgate_gateway: Gateway) -> None:
    with pytest.raises(ag.Unauthorized) as info:
        await ag.connect(agentgate_gateway.url, "not-a-token-at-all")
    assert info.value.code == "token_malformed"
    assert info.value.status == 401
    assert_no_secret(info.value, "not-a-token-at-all")


async def test_unauthorized_wrong_key(agentgate_gateway: Gateway) -> None:
    token = ag.testing.mint_token("another-secret-entirely-0123456789", sub="mallory")
    with pytest.raises(ag.Unauthorized) as info:
        await ag.connect(agentgate_gateway.url, token)
    assert info.value.code == "signature_invalid"


async def test_no_token_is_token_missing(agentgate_gateway: Gateway) -> None:
    with pytest.raises(ag.Unauthorized) as info:
        await ag.connect(agentgate_gateway.url)
    assert info.value.code == "token_missing"


async def test_forbidden_origin_upgrade_then_close(
    agentgate_gateway_factory: GatewayFactory,
) -> None:
    gw = agentgate_gateway_factory('server.allowed_origins = ["https://ok.example"]')
    # failure_mode "auto": a request with Origin is upgraded and closed 4403.
    with pytest.raises(ag.Forbidden) as info:
        await ag.connect(gw.url, gw.mint(), origin="https://evil.example")
    err = info.value
    assert (err.code, err.status, err.close_code, err.retryable) == (
        "origin_not_allowed",
        None,
        4403,
        False,
    )
    async with ag.connect(gw.url, gw.mint(), origin="https://ok.example") as conn:
        assert conn.session_id


async def test_forbidden_origin_http_mode(agentgate_gateway_factory: GatewayFactory) -> None:
    gw = agentgate_gateway_factory(
        'server.allowed_origins = ["https://ok.example"]\nserver.failure_mode = "http"',
    )
    with pytest.raises(ag.Forbidden) as info:
        await ag.connect(gw.url, gw.mint(), origin="https://evil.example")
    assert (info.value.status, info.value.close_code) == (403, None)
    assert info.value.code == "origin_not_allowed"


async def test_forbidden_scope_missing_reply(agentgate_gateway_factory: GatewayFactory) -> None:
    gw = agentgate_gateway_factory('[[agents]]\nname = "x"\nkind = "demo"\nscope = "other"')
    async with ag.connect(gw.url, gw.mint()) as conn:
        with pytest.raises(ag.Forbidden) as info:
            await conn.start_run("x", {"prompt": "hi"})
        assert info.value.code == "scope_missing"
        assert info.value.retryable is False
        # an error reply never closes the connection
        run = await conn.start_run("demo", {"prompt": "still here"})
        assert (await run.result()).type == "agent_completed"
    async with ag.connect(gw.url, gw.mint(scopes=("agents:run", "other"))) as conn:
        run = await conn.start_run("x", {"prompt": "allowed"})
        assert (await run.result()).data == {"result": {"words": 1}}


async def test_unavailable_too_many_runs(agentgate_gateway_factory: GatewayFactory) -> None:
    gw = agentgate_gateway_factory("limits.runs_per_principal = 1")
    async with ag.connect(gw.url, gw.mint()) as conn:
        first = await conn.start_run("demo", {"prompt": "a b", "delay_ms": 1000})
        with pytest.raises(ag.Unavailable) as info:
            await conn.start_run("demo", {"prompt": "c"})
        assert (info.value.code, info.value.retryable) == ("too_many_runs", True)
        assert info.value.close_code is None and info.value.status is None
        await conn.cancel_run(first.run_id)


async def test_unavailable_too_many_connections(agentgate_gateway_factory: GatewayFactory) -> None:
    gw = agentgate_gateway_factory("limits.connections_per_principal = 1")
    async with ag.connect(gw.url, gw.mint()):
        with pytest.raises(ag.Unavailable) as info:
            await ag.connect(gw.url, gw.mint())
        assert (info.value.code, info.value.status, info.value.retryable) == (
            "too_many_connections",
            429,
            True,
        )


async def test_unavailable_server_restart_1012() -> None:
    gw = start_gateway()
    try:
        conn = await ag.connect(gw.url, gw.mint(), reconnect=False)
        run = await conn.start_run("demo", {"prompt": "a b c", "delay_ms": 2000})
        await asyncio.to_thread(gw.stop)
        with pytest.raises(ag.Unavailable) as info:
            async for _ in run:
                pass
        assert (info.value.close_code, info.value.code, info.value.retryable) == (
            1012,
            "server_restart",
            True,
        )
        with pytest.raises(ag.Unavailable):
            await conn.get_run(run.run_id)
        await conn.close()
    finally:
        gw.stop()


async def test_network_error_nothing_listening() -> None:
    port = free_port()
    with pytest.raises(ag.NetworkError) as info:
        await ag.connect(f"ws://127.0.0.1:{port}/v1/ws", "whatever-token")
    err = info.value
    assert (err.code, err.status, err.close_code, err.retryable) == (None, None, None, True)
    assert f"127.0.0.1:{port}" in str(err)


async def test_network_error_open_timeout() -> None:
    """A peer that accepts and never answers: the open timeout is a network error."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ag.NetworkError) as info:
            await ag.connect(f"ws://127.0.0.1:{port}/v1/ws", "tok", open_timeout=0.5)
        assert loop.time() - started < 5
        assert "0.5 s" in str(info.value)
    finally:
        server.close()


async def test_network_error_ticket_transport_nothing_listening() -> None:
    port = free_port()
    with pytest.raises(ag.NetworkError):
        await ag.connect(f"ws://127.0.0.1:{port}/v1/ws", "tok", transport="ticket")


async def test_protocol_error_http_400(agentgate_gateway: Gateway) -> None:
    # Two credentials (header and query) are credentials_ambiguous: HTTP 400.
    url = agentgate_gateway.url + "?access_token=" + agentgate_gateway.mint()
    with pytest.raises(ag.ProtocolError) as info:
        await ag.connect(url, agentgate_gateway.mint())
    err = info.value
    assert (err.code, err.status, err.close_code, err.retryable) == (
        "credentials_ambiguous",
        400,
        None,
        False,
    )


async def test_protocol_error_close_4400(agentgate_gateway_factory: GatewayFactory) -> None:
    gw = agentgate_gateway_factory('server.failure_mode = "close"')
    url = gw.url + "?access_token=" + gw.mint()
    with pytest.raises(ag.ProtocolError) as info:
        await ag.connect(url, gw.mint())
    assert (info.value.code, info.value.close_code, info.value.status) == (
        "credentials_ambiguous",
        4400,
        None,
    )


async def test_protocol_error_close_1009_fails_pending_request(
    agentgate_gateway_factory: GatewayFactory,
) -> None:
    gw = agentgate_gateway_factory("server.max_message_bytes = 4096")
    conn = await ag.connect(gw.url, gw.mint())
    with pytest.raises(ag.ProtocolError) as info:
        await conn.start_run("demo", {"prompt": "word " * 5000})
    assert info.value.close_code == 1009
    assert conn.closed
    # the failure is final: later requests raise it too, without a reconnect
    with pytest.raises(ag.ProtocolError):
        await conn.get_run("r_whatever")
    assert conn.reconnections == 0
    await conn.close()


async def test_protocol_error_not_a_gateway() -> None:
    """A plain HTTP server that is not agentgate: an unexpected reply."""

    async def teapot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 5\r\n\r\nshort")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(teapot, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ag.ProtocolError) as info:
            await ag.connect(f"ws://127.0.0.1:{port}/v1/ws", "tok")
        assert info.value.status == 418
    finally:
        server.close()


async def test_request_error_agent_unknown(agentgate_gateway: Gateway) -> None:
    async with ag.connect(agentgate_gateway.url, agentgate_gateway.mint()) as conn:
        with pytest.raises(ag.RequestError) as info:
            await conn.start_run("no-such-agent", {})
        assert (info.value.code, info.value.retryable) == ("agent_unknown", False)
        with pytest.raises(ag.RequestError) as info:
            await conn.start_run("demo", {"prompt": "x", "delay_ms": 999999})
        assert info.value.code == "protocol_error"
        with pytest.raises(ag.RequestError) as info:
            await conn.get_run("r_doesnotexist0000000000000")
        assert info.value.code == "run_not_found"


async def test_run_failed(agentgate_gateway: Gateway) -> None:
    async with ag.connect(agentgate_gateway.url, agentgate_gateway.mint()) as conn:
        run = await conn.start_run("demo", {"prompt": "fail me", "fail": True})
        events = [event async for event in run]
        assert events[-1].type == "agent_failed"
        assert events[0].type == "agent_started"
        with pytest.raises(ag.RunFailed) as info:
            await run.result()
        assert (info.value.code, info.value.retryable) == ("demo_failure", False)
        assert info.value.event is events[-1]
        state = await conn.get_run(run.run_id)
        assert state["status"] == "failed"


async def test_run_cancelled(agentgate_gateway: Gateway) -> None:
    async with ag.connect(agentgate_gateway.url, agentgate_gateway.mint()) as conn:
        run = await conn.start_run("demo", {"prompt": "slow run", "delay_ms": 2000})
        event = await conn.cancel_run(run.run_id)
        assert event.type == "run_cancelled" and event.run_id == run.run_id
        with pytest.raises(ag.RunCancelled) as info:
            await run.result()
        assert info.value.code is None
        events = [e async for e in run]
        assert events[-1].type == "run_cancelled"
        with pytest.raises(ag.RequestError) as rinfo:
            await conn.cancel_run(run.run_id)
        assert rinfo.value.code == "run_not_found"


async def test_network_error_dropped_during_handshake() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ag.NetworkError):
            await ag.connect(f"ws://127.0.0.1:{port}/v1/ws", "tok")
    finally:
        server.close()
