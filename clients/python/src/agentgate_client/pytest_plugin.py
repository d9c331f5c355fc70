"""The pytest plugin (entry point ``pytest11``: ``agentgate``).

Fixtures:

- ``agentgate_gateway`` (session scope): a real gateway on ``127.0.0.1:0`` with one HS256
  issuer ``test``; the object has ``url``, ``http_url``, ``mint(sub="test-user",
  **kwargs)`` and ``log_text()``.
- ``agentgate_gateway_factory``: a function ``(extra_toml: str = "") -> gateway`` for
  gateways with more configuration, each stopped at the end of the test.

``async def`` tests run on a fresh event loop when no other plugin (pytest-asyncio,
anyio) runs them, so a test file needs nothing but this package and pytest.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .testing import Gateway, start_gateway


@pytest.fixture(scope="session")
def agentgate_gateway() -> Iterator[Gateway]:
    """A real gateway for the whole test session (stopped at its end)."""
    gateway = start_gateway()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def agentgate_gateway_factory() -> Iterator[Callable[[str], Gateway]]:
    """``factory(extra_toml="")``: a real gateway with ``extra_toml`` merged over the
    generated configuration; every gateway is stopped at the end of the test."""
    started: list[Gateway] = []

    def factory(extra_toml: str = "") -> Gateway:
        gateway = start_gateway(extra_toml)
        started.append(gateway)
        return gateway

    try:
        yield factory
    finally:
        for gateway in started:
            gateway.stop()


@pytest.hookimpl
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test that no other plugin claimed, with ``asyncio.run``."""
    func: Any = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(func(**args))
    return True
