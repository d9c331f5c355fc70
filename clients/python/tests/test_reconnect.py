"""Reconnect and resume through a TCP proxy that cuts every connection mid-run."""

from __future__ import annotations

import asyncio
import random

import pytest
from conftest import ProxyFactory
from helpers import GatewayFactory

import agentgate_client as ag
from agentgate_client.testing import Gateway


def assert_exactly_once(events: list[ag.Event]) -> None:
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), f"duplicate or out-of-order events: {seqs}"
    types = [e.type for e in events]
    assert types[0] == "agent_started"
    assert types[-1] == "agent_completed"
    assert sum(1 for e in events if e.terminal) == 1
    assert types[1:4] == ["agent_thinking", "tool_executing", "tool_completed"]


async def test_run_iterated_across_cuts_yields_every_event_once(
    agentgate_gateway: Gateway, cut_proxy: ProxyFactory
) -> None:
    proxy = await cut_proxy(agentgate_gateway.addr)
    async with ag.connect(proxy.url, agentgate_gateway.mint()) as conn:
        run = await conn.start_run("demo", {"prompt": "one two three four", "delay_ms": 150})
        events: list[ag.Event] = []
        async for event in run:
            events.append(event)
            if len(events) in (2, 4):
                assert proxy.cut() == 1
        assert_exactly_once(events)
        assert conn.reconnections == 2
        assert conn.resumed is True and conn.resume_error is None
        assert conn.last_seq == events[-1].seq
        assert (await run.result()).data == {"result": {"words": 4}}
        # a complete, contiguous history: every seq of the session from 1
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        # the connection is usable after the cuts
        run2 = await conn.start_run("demo", {"prompt": "again"})
        assert (await run2.result()).type == "agent_completed"


async def test_events_produced_while_disconnected_are_replayed_once(
    agentgate_gateway: Gateway, cut_proxy: ProxyFactory
) -> None:
    proxy = await cut_proxy(agentgate_gateway.addr)
    async with ag.connect(proxy.url, agentgate_gateway.mint()) as conn:
        run = await conn.start_run("demo", {"prompt": "a b c d e f", "delay_ms": 100})
        it = run.__aiter__()
        first = await it.__anext__()
        assert first.type == "agent_started"
        proxy.hold()  # new connections wait: the run goes on while we are away
        proxy.cut()
        await asyncio.sleep(1.2)  # the run ends while disconnected
        proxy.release()
        events = [first] + [e async for e in it]
        assert_exactly_once(events)
        assert conn.reconnections == 1 and conn.resumed


async def test_two_runs_across_a_cut(agentgate_gateway: Gateway, cut_proxy: ProxyFactory) -> None:
    proxy = await cut_proxy(agentgate_gateway.addr)
    async with ag.connect(proxy.url, agentgate_gateway.mint()) as conn:
        a = await conn.start_run("demo", {"prompt": "a a", "delay_ms": 120})
        b = await conn.start_run("demo", {"prompt": "b b b", "delay_ms": 120})
        await asyncio.sleep(0.3)
        proxy.cut()
        ea, eb = await asyncio.gather(collect(a), collect(b))
        assert_exactly_once(ea)
        assert_exactly_once(eb)
        assert {e.run_id for e in ea} == {a.run_id}
        assert not {e.seq for e in ea} & {e.seq for e in eb}


async def collect(run: ag.Run) -> list[ag.Event]:
    return [e async for e in run]


@pytest.mark.parametrize("transport", ["ticket", "first_message", "subprotocol", "query"])
async def test_every_transport_resumes_across_a_cut(
    agentgate_gateway_factory: GatewayFactory, cut_proxy: ProxyFactory, transport: ag.Transport
) -> None:
    # with "ticket", a fresh single-use ticket is fetched for the reconnection
    gw = agentgate_gateway_factory("auth.first_message = true")
    proxy = await cut_proxy(gw.addr)
    async with ag.connect(proxy.url, gw.mint(), transport=transport) as conn:
        run = await conn.start_run("demo", {"prompt": "x y", "delay_ms": 150})
        events = []
        async for event in run:
            events.append(event)
            if len(events) == 2:
                proxy.cut()
        assert_exactly_once(events)
        assert conn.reconnections == 1 and conn.resumed
        via = "ticket:jwt:test" if transport == "ticket" else "jwt:test"
        assert conn.principal is not None and conn.principal["via"] == via


async def test_request_in_flight_raises_the_drop_error(
    agentgate_gateway: Gateway, cut_proxy: ProxyFactory
) -> None:
    proxy = await cut_proxy(agentgate_gateway.addr)
    async with ag.connect(proxy.url, agentgate_gateway.mint()) as conn:
        run = await conn.start_run("demo", {"prompt": "p q", "delay_ms": 200})
        proxy.mute()  # the gateway's reply to the next request never arrives
        request = asyncio.ensure_future(conn.get_run(run.run_id))
        await asyncio.sleep(0.2)
        assert not request.done()
        proxy.cut()
        with pytest.raises(ag.NetworkError):
            await request
        # the session was resumed: the run goes on, new requests work
        events = [e async for e in run]
        assert_exactly_once(events)
        state = await conn.get_run(run.run_id)
        assert state["status"] == "completed"
        assert conn.reconnections == 1


async def test_requests_during_reconnection_wait_for_it(
    agentgate_gateway: Gateway, cut_proxy: ProxyFactory
) -> None:
    proxy = await cut_proxy(agentgate_gateway.addr)
    async with ag.connect(proxy.url, agentgate_gateway.mint()) as conn:
        proxy.hold()
        proxy.cut()
        await asyncio.sleep(0.3)  # the reader saw the drop; an attempt is held
        pending = asyncio.ensure_future(conn.start_run("demo", {"prompt": "waited"}))
        await asyncio.sleep(0.3)
        assert not pending.done()
        proxy.release()
        run = await pending
        assert (await run.result()).type == "agent_completed"
        assert conn.reconnections == 1


async def test_attempts_run_out_raise_the_last_error_everywhere(
    agentgate_gateway: Gateway, cut_proxy: ProxyFactory
) -> None:
    proxy = await cut_proxy(agentgate_gateway.addr)
    conn = await ag.connect(proxy.url, agentgate_gateway.mint(), max_retries=2)
    run = await conn.start_run("demo", {"prompt": "lost", "delay_ms": 1000})
    await proxy.stop()  # cut, and nothing listens any more: every attempt is refused
    with pytest.raises(ag.NetworkError) as info:
        async for _ in run:
            pass
    with pytest.raises(ag.NetworkError):
        await run.result()
    with pytest.raises(ag.NetworkError) as later:
        await conn.start_run("demo", {"prompt": "after"})
    assert later.value is info.value
    assert conn.closed and conn.reconnections == 0
    await conn.close()


async def test_reconnect_off_raises_the_drop(
    agentgate_gateway: Gateway, cut_proxy: ProxyFactory
) -> None:
    proxy = await cut_proxy(agentgate_gateway.addr)
    conn = await ag.connect(proxy.url, agentgate_gateway.mint(), reconnect=False)
    run = await conn.start_run("demo", {"prompt": "a", "delay_ms": 500})
    proxy.cut()
    with pytest.raises(ag.NetworkError):
        await run.result()
    assert proxy.accepted == 1
    await conn.close()


async def test_history_truncated_raised_in_open_iterators(
    agentgate_gateway_factory: GatewayFactory, cut_proxy: ProxyFactory
) -> None:
    gw = agentgate_gateway_factory("sessions.buffer_events = 2")
    proxy = await cut_proxy(gw.addr)
    async with ag.connect(proxy.url, gw.mint()) as conn:
        run = await conn.start_run("demo", {"prompt": "a b c d e", "delay_ms": 100})
        done_before = await conn.start_run("demo", {"prompt": "quick"})
        seen: list[ag.Event] = []
        it = run.__aiter__()
        seen.append(await it.__anext__())
        await done_before.result()
        proxy.hold()
        proxy.cut()
        await asyncio.sleep(1.2)  # the run ends; the buffer keeps its last 2 events
        proxy.release()
        with pytest.raises(ag.HistoryTruncated) as info:
            async for event in it:
                seen.append(event)
        err = info.value
        assert (err.code, err.retryable, err.status, err.close_code) == (
            "history_truncated",
            False,
            None,
            None,
        )
        assert not any(e.terminal for e in seen), "no event after the gap is yielded"
        with pytest.raises(ag.HistoryTruncated):
            await run.result()
        assert conn.resumed is True and conn.resume_error == "history_truncated"
        # a run that had ended before the gap keeps its result
        assert (await done_before.result()).type == "agent_completed"
        # the connection goes on
        again = await conn.start_run("demo", {"prompt": "after the gap"})
        assert (await again.result()).type == "agent_completed"
        state = await conn.get_run(run.run_id)
        assert state["status"] == "completed"


async def test_session_not_found_on_reconnection(
    agentgate_gateway_factory: GatewayFactory, cut_proxy: ProxyFactory
) -> None:
    gw = agentgate_gateway_factory("sessions.resume_window_s = 1")
    proxy = await cut_proxy(gw.addr)
    async with ag.connect(proxy.url, gw.mint()) as conn:
        old_session = conn.session_id
        run = await conn.start_run("demo", {"prompt": "x", "delay_ms": 100})
        await run.__aiter__().__anext__()
        assert conn.last_seq >= 1
        proxy.hold()
        proxy.cut()
        await asyncio.sleep(2.5)  # the detached session expires
        proxy.release()
        with pytest.raises(ag.ProtocolError) as info:
            await run.result()
        assert info.value.code == "session_not_found"
        assert conn.session_id != old_session
        assert (conn.resumed, conn.resume_error, conn.last_seq) == (
            False,
            "session_not_found",
            0,
        )
        fresh = await conn.start_run("demo", {"prompt": "new session"})
        events = [e async for e in fresh]
        assert events[0].seq == 1
        assert conn.last_seq == events[-1].seq


async def test_session_taken_over_is_not_retried(agentgate_gateway: Gateway) -> None:
    first = await ag.connect(agentgate_gateway.url, agentgate_gateway.mint())
    run = await first.start_run("demo", {"prompt": "mine", "delay_ms": 400})
    await run.__aiter__().__anext__()
    async with ag.connect(
        agentgate_gateway.url,
        agentgate_gateway.mint(),
        session_id=first.session_id,
        last_seq=first.last_seq,
    ) as second:
        assert second.resumed and second.session_id == first.session_id
        with pytest.raises(ag.Unavailable) as info:
            await run.result()
        err = info.value
        assert (err.close_code, err.code, err.retryable) == (4409, "session_taken_over", False)
        assert first.reconnections == 0 and first.closed
        # the second connection receives the rest of the run
        rest = [e async for e in second.run(run.run_id)]
        assert rest[-1].type == "agent_completed"
    await first.close()


async def test_connect_with_session_id_resumes_and_replays(agentgate_gateway: Gateway) -> None:
    token = agentgate_gateway.mint()
    conn = await ag.connect(agentgate_gateway.url, token)
    run = await conn.start_run("demo", {"prompt": "replay me"})
    events = [e async for e in run]
    session = conn.session_id
    await conn.close()
    async with ag.connect(agentgate_gateway.url, token, session_id=session, last_seq=2) as again:
        assert (again.session_id, again.resumed, again.resume_error) == (session, True, None)
        replayed = [e async for e in again.run(run.run_id)]
        assert [e.seq for e in replayed] == [e.seq for e in events[2:]]
        assert again.last_seq == events[-1].seq


async def test_connect_with_unknown_session_starts_a_new_one(agentgate_gateway: Gateway) -> None:
    async with ag.connect(
        agentgate_gateway.url,
        agentgate_gateway.mint(),
        session_id="s_unknownunknownunknown00",
        last_seq=5,
    ) as conn:
        assert conn.session_id != "s_unknownunknownunknown00"
        assert (conn.resumed, conn.resume_error, conn.last_seq) == (
            False,
            "session_not_found",
            0,
        )


async def test_reconnection_refused_429_is_retried(
    agentgate_gateway_factory: GatewayFactory, cut_proxy: ProxyFactory
) -> None:
    gw = agentgate_gateway_factory("limits.connections_per_principal = 2")
    proxy = await cut_proxy(gw.addr)
    token = gw.mint("capped")
    async with ag.connect(proxy.url, token, max_retries=12) as conn:
        run = await conn.start_run("demo", {"prompt": "a b c", "delay_ms": 300})
        proxy.hold()
        proxy.cut()
        await asyncio.sleep(0.5)  # the gateway frees the slot of the cut connection
        others = [await ag.connect(gw.url, token) for _ in range(2)]  # both slots taken
        with pytest.raises(ag.Unavailable):
            await ag.connect(gw.url, token)
        proxy.release()  # the held attempt is refused 429, and retried
        await asyncio.sleep(0.6)
        assert conn.reconnections == 0
        await others.pop().close()
        events = [e async for e in run]
        assert_exactly_once(events)
        assert conn.reconnections == 1
        assert proxy.accepted >= 3
        for other in others:
            await other.close()


async def test_server_restart_1012_reconnects(
    agentgate_gateway_factory: GatewayFactory, cut_proxy: ProxyFactory
) -> None:
    first = agentgate_gateway_factory("")
    # a second gateway that verifies the first one's tokens (extra_toml's keys win)
    second = agentgate_gateway_factory(
        f'[[auth.jwt]]\nname = "test"\nalgorithms = ["HS256"]\nsecret = "{first.secret}"'
    )
    proxy = await cut_proxy(first.addr)
    async with ag.connect(proxy.url, token_provider=lambda: first.mint("restarted")) as conn:
        old_session = conn.session_id
        run = await conn.start_run("demo", {"prompt": "a b", "delay_ms": 2000})
        host, port = second.addr.rsplit(":", 1)
        proxy.upstream = (host, int(port))
        await asyncio.to_thread(first.stop)  # SIGTERM: close 1012 server_restart
        # the run ended node_shutdown before the close, or its session is gone (memory
        # backend): either way the client reconnected to the second gateway
        with pytest.raises((ag.RunFailed, ag.ProtocolError)) as info:
            await run.result()
        assert info.value.code in ("node_shutdown", "session_not_found")
        again = await conn.start_run("demo", {"prompt": "on the second gateway"})
        assert (await again.result()).type == "agent_completed"
        assert conn.reconnections == 1
        assert conn.session_id != old_session
        assert (conn.resumed, conn.resume_error) == (False, "session_not_found")


async def test_backoff_is_full_jitter_capped(
    agentgate_gateway: Gateway, cut_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return 0.0

    monkeypatch.setattr(random, "uniform", uniform)
    proxy = await cut_proxy(agentgate_gateway.addr)
    conn = await ag.connect(proxy.url, agentgate_gateway.mint())
    await proxy.stop()
    await asyncio.sleep(0.3)  # the reader sees the drop; refused attempts follow
    with pytest.raises(ag.NetworkError) as info:
        await conn.get_run("r_x")  # waits for the reconnection, then raises its failure
    assert "cannot connect" in str(info.value)
    expected = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10]  # 0.2 * 2**n, capped at 10
    assert bounds == [(0, high) for high in expected]
    await conn.close()
