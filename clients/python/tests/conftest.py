"""Fixtures of the client's own tests. Every test runs against the real gateway binary
(``AGENTGATE_BIN``, else ``agentgate`` on PATH); a missing binary is an error, never a
skip."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from helpers import CutProxy, TlsPki

pytest_plugins = ["pytester"]

ProxyFactory = Callable[[str], Awaitable[CutProxy]]


@pytest.fixture
async def cut_proxy() -> AsyncIterator[ProxyFactory]:
    """``await cut_proxy(gateway.addr)``: a CutProxy, stopped at the end of the test."""
    proxies: list[CutProxy] = []

    async def make(upstream: str) -> CutProxy:
        proxy = await CutProxy(upstream).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


@pytest.fixture
def pki(tmp_path: Path) -> TlsPki:
    return TlsPki(tmp_path)
