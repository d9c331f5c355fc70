"""A small blocking wrapper for scripts (the library itself is async first).

::

    from agentgate_client.sync import connect

    with connect(url, token) as conn:
        run = conn.start_run("demo", {"prompt": "count these words"})
        for event in run:
            print(event.type, event.data)
        print(run.result().data)

The connection runs on an event loop in a background thread; every method blocks until
the async one it wraps returns, and raises the same errors. Arguments are those of
:func:`agentgate_client.connect`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from ._client import Connection, Event, Run
from ._client import connect as async_connect

__all__ = ["SyncConnection", "SyncRun", "connect"]

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="agentgate-client", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class SyncRun:
    """A :class:`~agentgate_client.Run`, iterated with a plain ``for``."""

    def __init__(self, run: Run, loop: _Loop) -> None:
        self._run = run
        self._loop = loop
        self.run_id = run.run_id

    def __iter__(self) -> Iterator[Event]:
        it = self._run.__aiter__()

        async def step() -> tuple[bool, Event | None]:
            try:
                return True, await it.__anext__()
            except StopAsyncIteration:
                return False, None

        while True:
            more, event = self._loop.run(step())
            if not more or event is None:
                return
            yield event

    def result(self) -> Event:
        """The terminal event; raises RunFailed / RunCancelled like the async one."""
        return self._loop.run(self._run.result())


class SyncConnection:
    """A blocking :class:`~agentgate_client.Connection`."""

    def __init__(self, conn: Connection, loop: _Loop) -> None:
        self._conn = conn
        self._loop = loop

    @property
    def connection(self) -> Connection:
        """The underlying async connection (session_id, principal, last_seq, ...)."""
        return self._conn

    @property
    def session_id(self) -> str | None:
        return self._conn.session_id

    @property
    def resumed(self) -> bool:
        return self._conn.resumed

    @property
    def resume_error(self) -> str | None:
        return self._conn.resume_error

    @property
    def principal(self) -> dict[str, Any] | None:
        return self._conn.principal

    @property
    def last_seq(self) -> int:
        return self._conn.last_seq

    def start_run(self, agent: str, input: Mapping[str, Any] | None = None) -> SyncRun:
        return SyncRun(self._loop.run(self._conn.start_run(agent, input)), self._loop)

    def cancel_run(self, run_id: str) -> Event:
        return self._loop.run(self._conn.cancel_run(run_id))

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._loop.run(self._conn.get_run(run_id))

    def close(self) -> None:
        try:
            self._loop.run(self._conn.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> SyncConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(url: str, token: str | None = None, **kwargs: Any) -> SyncConnection:
    """Connect and block until the welcome; see :func:`agentgate_client.connect`."""
    loop = _Loop()

    async def open_() -> Connection:
        return await async_connect(url, token, **kwargs)

    try:
        conn = loop.run(open_())
    except BaseException:
        loop.stop()
        raise
    return SyncConnection(conn, loop)
