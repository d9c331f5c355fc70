"""agentgate-client: the Python client of the agentgate WebSocket gateway.

::

    import agentgate_client as ag

    async with ag.connect(url, token) as conn:
        run = await conn.start_run("demo", {"prompt": "count these words"})
        async for event in run:
            print(event.type, event.data)
        final = await run.result()

Every failure is an :class:`AgentgateError` subclass, classified like the exit statuses
of ``agentgate connect``. :mod:`agentgate_client.testing` and the pytest plugin give a
test suite a real gateway and real tokens.
"""

from . import testing
from ._client import Connection, Event, Run, TokenProvider, Transport, connect
from .errors import (
    AgentgateError,
    Forbidden,
    HistoryTruncated,
    NetworkError,
    ProtocolError,
    RequestError,
    RunCancelled,
    RunFailed,
    Unauthorized,
    Unavailable,
)

__version__ = "1.0.0"

__all__ = [
    "AgentgateError",
    "Connection",
    "Event",
    "Forbidden",
    "HistoryTruncated",
    "NetworkError",
    "ProtocolError",
    "RequestError",
    "Run",
    "RunCancelled",
    "RunFailed",
    "TokenProvider",
    "Transport",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "connect",
    "testing",
]
