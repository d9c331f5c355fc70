"""Credential transports, token refresh across auth.expiring, expiry, revocation, TLS."""

from __future__ import annotations

import asyncio
import logging

import pytest
from helpers import GatewayFactory, TlsPki, TlsProxy

import agentgate_client as ag
from agentgate_client.testing import Gateway


@pytest.mark.parametrize("transport", ["header", "subprotocol", "query", "ticket"])
async def test_transports(agentgate_gateway: Gateway, transport: ag.Transport) -> None:
    token = agentgate_gateway.mint("alice", tenant="acme")
    async with ag.connect(agentgate_gateway.url, token, transport=transport) as conn:
        assert conn.principal is not None
        assert conn.principal["subject"] == "alice"
        assert conn.principal["tenant"] == "acme"
        via = "ticket:jwt:test" if transport == "ticket" else "jwt:test"
        assert conn.principal["via"] == via
        run = await conn.start_run("demo", {"prompt": transport})
        assert (await run.result()).data == {"result": {"words": 1}}


@pytest.mark.parametrize("transport", ["header", "subprotocol", "query", "ticket"])
async def test_no_credential_is_token_missing_on_every_transport(
    agentgate_gateway: Gateway, transport: ag.Transport
) -> None:
    with pytest.raises(ag.Unauthorized) as info:
        await ag.connect(agentgate_gateway.url, transport=transport)
    assert info.value.code == "token_missing"
    assert info.value.status == 401


async def test_first_message_transport(agentgate_gateway_factory: GatewayFactory) -> None:
    gw = agentgate_gateway_factory("auth.first_message = true")
    async with ag.connect(gw.url, gw.mint("fm"), transport="first_message") as conn:
        assert conn.principal is not None and conn.principal["subject"] == "fm"
        run = await conn.start_run("demo", {"prompt": "first message"})
        assert (await run.result()).type == "agent_completed"
    # without a token the auth frame carries none: 4401 token_missing
    with pytest.raises(ag.Unauthorized) as info:
        await ag.connect(gw.url, transport="first_message")
    assert (info.value.close_code, info.value.code) == (4401, "token_missing")
    # an expired token in the auth frame
    with pytest.raises(ag.Unauthorized) as info:
        await ag.connect(gw.url, gw.mint(ttl=-100), transport="first_message")
    assert (info.value.close_code, info.value.code) == (4401, "token_expired")


async def test_auth_timeout_4408(agentgate_gateway_factory: GatewayFactory) -> None:
    gw = agentgate_gateway_factory("auth.first_message = true\nauth.first_message_timeout_ms = 300")
    # no credential on the request and no auth frame: the gateway waits, then 4408
    with pytest.raises(ag.Unauthorized) as info:
        await ag.connect(gw.url, transport="header")
    assert (info.value.close_code, info.value.code, info.value.retryable) == (
        4408,
        "auth_timeout",
        False,
    )


async def test_token_provider_answers_auth_expiring(
    agentgate_gateway_factory: GatewayFactory,
) -> None:
    gw = agentgate_gateway_factory("auth.leeway_s = 0\nauth.expiry_warning_s = 2")
    issued: list[str] = []

    async def provider() -> str:
        token = gw.mint("refresher", ttl=3 if not issued else 60)
        issued.append(token)
        return token

    async with ag.connect(gw.url, token_provider=provider) as conn:
        first_expiry = conn.expires_at
        assert first_expiry is not None
        await asyncio.sleep(4.5)  # past the first token's exp
        run = await conn.start_run("demo", {"prompt": "still authorised"})
        assert (await run.result()).type == "agent_completed"
        assert len(issued) == 2
        assert conn.expires_at is not None and conn.expires_at > first_expiry
        assert not conn.closed


async def test_sync_token_provider_is_asked_on_every_connection(
    agentgate_gateway: Gateway,
) -> None:
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return agentgate_gateway.mint()

    async with ag.connect(agentgate_gateway.url, token_provider=provider, transport="query"):
        pass
    assert len(calls) == 1


async def test_static_token_expires_on_a_live_connection(
    agentgate_gateway_factory: GatewayFactory,
) -> None:
    gw = agentgate_gateway_factory("auth.leeway_s = 0\nauth.expiry_warning_s = 1")
    conn = await ag.connect(gw.url, gw.mint(ttl=2))
    run = await conn.start_run("demo", {"prompt": "too long", "delay_ms": 3000})
    with pytest.raises(ag.Unauthorized) as info:
        await run.result()
    assert (info.value.close_code, info.value.code) == (4401, "token_expired")
    assert conn.reconnections == 0
    await conn.close()


async def test_revocation_closes_a_live_connection(agentgate_gateway: Gateway) -> None:
    jti = "revoke-me-" + agentgate_gateway.addr.replace(":", "-")
    token = agentgate_gateway.mint("to-revoke", jti=jti)
    conn = await ag.connect(agentgate_gateway.url, token)
    run = await conn.start_run("demo", {"prompt": "doomed", "delay_ms": 3000})
    await asyncio.to_thread(agentgate_gateway.revoke, jti)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ag.Unauthorized) as info:
        async for _ in run:
            pass
    assert loop.time() - started < 2.5
    assert (info.value.close_code, info.value.code, info.value.retryable) == (
        4401,
        "token_revoked",
        False,
    )
    assert conn.reconnections == 0
    with pytest.raises(ag.Unauthorized) as again:
        await ag.connect(agentgate_gateway.url, token)
    assert (again.value.status, again.value.code) == (401, "token_revoked")
    await conn.close()


async def test_nothing_logged_or_raised_contains_the_token(
    agentgate_gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="agentgate_client.transport")
    caplog.set_level(logging.DEBUG, logger="websockets")
    token = agentgate_gateway.mint("secretive")
    transports: tuple[ag.Transport, ...] = ("header", "query", "subprotocol", "ticket")
    for transport in transports:
        async with ag.connect(agentgate_gateway.url, token, transport=transport) as conn:
            run = await conn.start_run("demo", {"prompt": "x"})
            await run.result()
    expired = agentgate_gateway.mint(ttl=-60)
    for transport in transports[:2] + transports[3:]:
        with pytest.raises(ag.Unauthorized) as info:
            await ag.connect(agentgate_gateway.url, expired, transport=transport)
        assert expired not in str(info.value) and expired not in repr(info.value)
    text = caplog.text
    assert token not in text and expired not in text
    assert token not in agentgate_gateway.log_text()


async def test_wss_with_ssl_context(agentgate_gateway: Gateway, pki: TlsPki) -> None:
    proxy = await TlsProxy(agentgate_gateway.addr, pki.server_context()).start()
    try:
        url = f"wss://127.0.0.1:{proxy.port}/v1/ws"
        tls_transports: tuple[ag.Transport, ...] = ("header", "ticket")
        for transport in tls_transports:
            async with ag.connect(
                url, agentgate_gateway.mint(), ssl=pki.client_context(), transport=transport
            ) as conn:
                run = await conn.start_run("demo", {"prompt": "over tls"})
                assert (await run.result()).data == {"result": {"words": 2}}
        # the system roots do not trust the test CA: a TLS failure is a network error
        with pytest.raises(ag.NetworkError) as info:
            await ag.connect(url, agentgate_gateway.mint())
        assert "TLS" in str(info.value)
        assert "certificate" in str(info.value).lower()
        with pytest.raises(ag.NetworkError):
            await ag.connect(url, agentgate_gateway.mint(), transport="ticket")
        # a refusal over TLS is classified like any other
        with pytest.raises(ag.Unauthorized):
            await ag.connect(url, "garbage", ssl=pki.client_context())
    finally:
        await proxy.stop()
