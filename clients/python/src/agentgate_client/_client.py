"""The asyncio client: :func:`connect`, :class:`Connection`, :class:`Run`, :class:`Event`."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import inspect
import json
import logging
import random
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    WebSocketException,
)
from websockets.typing import Subprotocol

from .errors import (
    AgentgateError,
    HistoryTruncated,
    NetworkError,
    ProtocolError,
    RunCancelled,
    RunFailed,
    close_error,
    error_reply,
    excerpt,
    http_error,
)

__all__ = ["Connection", "Event", "Run", "TokenProvider", "Transport", "connect"]

#: A function returning a token, or an awaitable of one; asked on every connection and
#: on every ``auth.expiring``.
TokenProvider = Callable[[], "str | Awaitable[str]"]

#: The credential transports of PROTOCOL.md section 2.
Transport = Literal["header", "subprotocol", "query", "first_message", "ticket"]

_TRANSPORTS = ("header", "subprotocol", "query", "first_message", "ticket")
TERMINAL_TYPES = frozenset({"agent_completed", "agent_failed", "run_cancelled"})

#: Backoff of reconnection attempts: full jitter over base * 2**attempt, capped.
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 10.0

#: Largest frame accepted from the gateway (its own limit is 1 MiB by default).
_MAX_FRAME = 64 * 1024 * 1024

log = logging.getLogger("agentgate_client")


class _NoDebugAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The websockets library logs handshake headers (a bearer token) and frames (an
    ``auth`` or ``auth.refresh`` token) at DEBUG and INFO level. Its connections get this
    logger, which never emits below WARNING, whatever the logging configuration."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


_transport_log = _NoDebugAdapter(logging.getLogger("agentgate_client.transport"), {})


@dataclass(frozen=True)
class Event:
    """One agent event, as the gateway sent it (PROTOCOL.md section 6)."""

    type: str
    seq: int
    run_id: str
    ts_ms: int
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """Whether this event ends its run."""
        return self.type in TERMINAL_TYPES

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> Event:
        data = msg.get("data")
        ts_ms = msg.get("ts_ms")
        return cls(
            type=str(msg.get("type")),
            seq=int(msg["seq"]),
            run_id=str(msg.get("run_id", "")),
            ts_ms=ts_ms if isinstance(ts_ms, int) else 0,
            data=data if isinstance(data, dict) else {},
        )


def _terminal_outcome(event: Event) -> Event:
    """The terminal event itself, or the error that it means."""
    if event.type == "agent_failed":
        code = event.data.get("code")
        message = event.data.get("message")
        text = f"run {event.run_id} failed"
        if isinstance(code, str):
            text += f" with {code}"
        if isinstance(message, str) and message:
            text += f": {excerpt(message)}"
        raise RunFailed(text, code=code if isinstance(code, str) else None, event=event)
    if event.type == "run_cancelled":
        raise RunCancelled(f"run {event.run_id} was cancelled", event=event)
    return event


class Run:
    """A run: iterate it for its events (the terminal one last), or await :meth:`result`.

    Several iterations of one run each see every event from the first. The iterator
    raises the connection's failure, :class:`HistoryTruncated`, or a
    :class:`ProtocolError` ``session_not_found`` when the run's events can no longer all
    be delivered.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._events: list[Event] = []
        self._terminal: Event | None = None
        self._error: AgentgateError | None = None
        self._changed = asyncio.Event()
        self.claimed = False

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, events={len(self._events)}, done={self.done})"

    @property
    def events(self) -> list[Event]:
        """The events received so far (a copy)."""
        return list(self._events)

    @property
    def done(self) -> bool:
        """Whether the run ended (terminal event received) or failed for this client."""
        return self._terminal is not None or self._error is not None

    @property
    def open(self) -> bool:
        return not self.done

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _push(self, event: Event) -> None:
        if self.done:
            return
        self._events.append(event)
        if event.terminal:
            self._terminal = event
        self._notify()

    def _fail(self, error: AgentgateError) -> None:
        if self.done:
            return
        self._error = error
        self._notify()

    def __aiter__(self) -> AsyncIterator[Event]:
        return _RunIterator(self)

    async def result(self) -> Event:
        """The terminal event once it arrives.

        Raises :class:`RunFailed` (``agent_failed``), :class:`RunCancelled`
        (``run_cancelled``), or the error that ended the run for this client.
        """
        while True:
            if self._terminal is not None:
                return _terminal_outcome(self._terminal)
            if self._error is not None:
                raise self._error
            await self._changed.wait()


class _RunIterator:
    def __init__(self, run: Run) -> None:
        self._run = run
        self._index = 0

    def __aiter__(self) -> _RunIterator:
        return self

    async def __anext__(self) -> Event:
        run = self._run
        while True:
            if self._index < len(run._events):
                event = run._events[self._index]
                self._index += 1
                return event
            if run._terminal is not None:
                raise StopAsyncIteration
            if run._error is not None:
                raise run._error
            await run._changed.wait()


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


class Connection:
    """An open connection to ``/v1/ws``; made by :func:`connect`."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        token_provider: TokenProvider | None = None,
        transport: Transport = "header",
        session_id: str | None = None,
        last_seq: int | None = None,
        reconnect: bool = True,
        max_retries: int = 8,
        ssl: ssl_module.SSLContext | None = None,
        open_timeout: float = 10.0,
        origin: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError("url must be a ws:// or wss:// URL of the gateway's /v1/ws")
        if not parts.hostname:
            raise ValueError("url has no host")
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(_TRANSPORTS)}")
        if token is not None and token_provider is not None:
            raise ValueError("pass token or token_provider, not both")
        if token is not None and not isinstance(token, str):
            raise TypeError("token must be a str")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self._secure = parts.scheme == "wss"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._secure else 80)
        host_text = f"[{self._host}]" if ":" in self._host else self._host
        #: ``host:port`` of the gateway: the only part of the URL errors ever show.
        self.endpoint = f"{host_text}:{self._port}"
        self._base_parts = parts
        self._token = token
        self._token_provider = token_provider
        self.transport: Transport = transport
        self.reconnect = reconnect
        self.max_retries = max_retries
        self._ssl = ssl
        self.open_timeout = open_timeout
        self._origin = origin
        self._headers = dict(headers or {})
        self._secrets: list[str] = [token] if token else []

        #: The session id of the latest welcome.
        self.session_id: str | None = session_id
        #: Whether the latest welcome resumed the session asked for.
        self.resumed = False
        #: ``resume_error`` of the latest welcome (``history_truncated``,
        #: ``session_not_found``), else ``None``.
        self.resume_error: str | None = None
        #: The welcome's ``principal`` object.
        self.principal: dict[str, Any] | None = None
        #: The highest event ``seq`` received on the current session (0 before any).
        self.last_seq: int = last_seq or 0
        #: ``expires_at`` of the live credential (``None`` for an API key).
        self.expires_at: int | None = None
        #: The latest welcome, as the gateway sent it.
        self.welcome: dict[str, Any] | None = None
        #: How many reconnections succeeded.
        self.reconnections = 0

        self._ws: ClientConnection | None = None
        self._runs: dict[str, Run] = {}
        self._pending: dict[str, tuple[asyncio.Future[Any], str]] = {}
        self._cancel_waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._ready = asyncio.Event()
        self._final: AgentgateError | None = None
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_ref = 0

    def __repr__(self) -> str:
        return (
            f"Connection(endpoint={self.endpoint!r}, session_id={self.session_id!r}, "
            f"last_seq={self.last_seq}, closed={self.closed})"
        )

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether the connection is closed for good (by :meth:`close` or a failure)."""
        return self._final is not None

    @property
    def error(self) -> AgentgateError | None:
        """The failure that closed the connection for good, if any."""
        return self._final

    # ---------------------------------------------------------------- opening

    async def _start(self) -> None:
        """The first connection: one attempt, no retry."""
        resume = (self.session_id, self.last_seq) if self.session_id else None
        ws, welcome = await self._open(resume)
        self._ws = ws
        self._apply_welcome(welcome, reconnection=False)
        self._ready.set()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _token_now(self) -> str | None:
        if self._token_provider is None:
            return self._token
        try:
            value = self._token_provider()
            if inspect.isawaitable(value):
                value = await value
        except AgentgateError:
            raise
        except Exception as e:
            raise AgentgateError(
                f"the token provider raised {type(e).__name__}; fix the provider"
            ) from None
        if not isinstance(value, str):
            raise TypeError("the token provider must return a str (or an awaitable of one)")
        if value and value not in self._secrets:
            self._secrets.append(value)
            del self._secrets[:-8]
        return value

    def _url(self, query: dict[str, str]) -> str:
        parts = self._base_parts
        items = parse_qsl(parts.query, keep_blank_values=True)
        items = [(k, v) for k, v in items if k not in query] + list(query.items())
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(items), ""))

    async def _open(
        self, resume: tuple[str | None, int] | None
    ) -> tuple[ClientConnection, dict[str, Any]]:
        """One connection attempt: credential, handshake, welcome, within open_timeout."""
        try:
            return await asyncio.wait_for(self._open_inner(resume), self.open_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise NetworkError(
                f"the connection to {self.endpoint} did not complete within "
                f"{self.open_timeout:g} s; check that the gateway is up and reachable"
            ) from None

    async def _open_inner(
        self, resume: tuple[str | None, int] | None
    ) -> tuple[ClientConnection, dict[str, Any]]:
        token = await self._token_now()
        query: dict[str, str] = {}
        if resume is not None and resume[0]:
            query["session_id"] = resume[0]
            query["last_seq"] = str(resume[1])
        headers = dict(self._headers)
        subprotocols: list[Subprotocol] | None = None
        if self.transport == "header":
            if token:
                headers["Authorization"] = f"Bearer {token}"
        elif self.transport == "subprotocol":
            subprotocols = [Subprotocol("agentgate.v1")]
            if token:
                subprotocols.append(Subprotocol(f"agentgate.bearer.{token}"))
        elif self.transport == "query":
            if token:
                query["access_token"] = token
        elif self.transport == "ticket":
            ticket = await self._fetch_ticket(token)
            self._secrets.append(ticket)
            del self._secrets[:-8]
            query["ticket"] = ticket
        kwargs: dict[str, Any] = {}
        if self._secure:
            kwargs["ssl"] = self._ssl or ssl_module.create_default_context()
        ws: ClientConnection | None = None
        try:
            ws = await ws_connect(
                self._url(query),
                additional_headers=headers or None,
                subprotocols=subprotocols,
                origin=self._origin,  # type: ignore[arg-type]
                compression=None,
                open_timeout=None,
                max_size=_MAX_FRAME,
                logger=_transport_log,
                user_agent_header="agentgate-client-python",
                **kwargs,
            )
            if self.transport == "first_message":
                auth: dict[str, Any] = {"type": "auth"}
                if token:
                    auth["token"] = token
                await ws.send(json.dumps(auth))
            raw = await ws.recv()
            welcome = self._parse(raw)
            if welcome.get("type") != "welcome" or not isinstance(welcome.get("session_id"), str):
                raise ProtocolError(
                    f"{self.endpoint} answered with {excerpt(str(welcome.get('type')))} "
                    "instead of a welcome; is this agentgate's /v1/ws?"
                )
            return ws, welcome
        except BaseException as e:
            if ws is not None:
                ws.transport.abort()
            if isinstance(e, AgentgateError):
                raise
            if isinstance(e, ConnectionClosed):
                raise self._closed_error(e) from None
            if isinstance(e, Exception):
                raise self._open_error(e) from None
            raise

    def _open_error(self, e: Exception) -> AgentgateError:
        if isinstance(e, InvalidStatus):
            body = e.response.body or b""
            return http_error(e.response.status_code, bytes(body), self.endpoint)
        if isinstance(e, ssl_module.SSLError):
            reason = getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)
            return NetworkError(
                f"TLS with {self.endpoint} failed: {excerpt(str(reason))}; check the "
                "certificate, or pass ssl= a context that trusts the gateway's CA"
            )
        if isinstance(e, InvalidHandshake) and isinstance(e.__cause__, (EOFError, OSError)):
            return NetworkError(
                f"{self.endpoint} dropped the connection during the handshake; "
                "check that the gateway is up and speaks HTTP on this port"
            )
        if isinstance(e, (OSError, asyncio.TimeoutError, TimeoutError, EOFError)):
            text = _scrub(excerpt(str(e)), self._secrets) or type(e).__name__
            return NetworkError(
                f"cannot connect to {self.endpoint}: {text}; check that the gateway is "
                "running and the host and port are right"
            )
        if isinstance(e, InvalidHandshake):
            return ProtocolError(
                f"{self.endpoint} did not complete a WebSocket handshake "
                f"({type(e).__name__}); is this agentgate's /v1/ws?"
            )
        if isinstance(e, WebSocketException):
            return NetworkError(f"the connection to {self.endpoint} failed ({type(e).__name__})")
        return ProtocolError(
            f"unexpected failure connecting to {self.endpoint}: {type(e).__name__}: "
            f"{_scrub(excerpt(str(e)), self._secrets)}"
        )

    def _closed_error(self, e: ConnectionClosed) -> AgentgateError:
        if e.rcvd is not None:
            return close_error(e.rcvd.code, e.rcvd.reason, self.endpoint)
        return NetworkError(
            f"{self.endpoint} dropped the connection without a close frame; "
            "reconnect and resume with session_id and last_seq"
        )

    async def _fetch_ticket(self, token: str | None) -> str:
        return await asyncio.to_thread(self._fetch_ticket_sync, token)

    def _fetch_ticket_sync(self, token: str | None) -> str:
        conn: http.client.HTTPConnection
        if self._secure:
            context = self._ssl if self._ssl is not None else ssl_module.create_default_context()
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.open_timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.open_timeout)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self._origin:
            headers["Origin"] = self._origin
        try:
            conn.request("POST", "/v1/tickets", body=b"{}", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except ssl_module.SSLError as e:
            reason = getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)
            raise NetworkError(
                f"TLS with {self.endpoint} failed during the ticket request: {excerpt(str(reason))}"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            text = excerpt(str(e)) or type(e).__name__
            raise NetworkError(
                f"the ticket request to {self.endpoint} failed: {text}; check that the "
                "gateway is running"
            ) from None
        finally:
            conn.close()
        if not 200 <= resp.status < 300:
            raise http_error(resp.status, body, self.endpoint, "the ticket request")
        try:
            value = json.loads(body)
            ticket = value["ticket"]
            if not isinstance(ticket, str) or not ticket:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ProtocolError(
                f"{self.endpoint} answered the ticket request without a ticket; "
                "is this an agentgate gateway?"
            ) from None
        return ticket

    def _parse(self, raw: str | bytes) -> dict[str, Any]:
        if isinstance(raw, bytes):
            raise ProtocolError(f"{self.endpoint} sent a binary frame; agentgate sends JSON text")
        try:
            msg = json.loads(raw)
        except ValueError:
            raise ProtocolError(f"{self.endpoint} sent a frame that is not JSON") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ProtocolError(f"{self.endpoint} sent a JSON frame without a type")
        return msg

    def _apply_welcome(self, welcome: dict[str, Any], *, reconnection: bool) -> None:
        self.welcome = welcome
        resumed = welcome.get("resumed") is True
        resume_error = welcome.get("resume_error")
        self.resume_error = resume_error if isinstance(resume_error, str) else None
        self.resumed = resumed
        principal = welcome.get("principal")
        self.principal = principal if isinstance(principal, dict) else None
        expires_at = welcome.get("expires_at")
        self.expires_at = expires_at if isinstance(expires_at, int) else None
        new_session = welcome["session_id"] != self.session_id or not resumed
        self.session_id = welcome["session_id"]
        if new_session:
            self.last_seq = 0
        if not reconnection:
            return
        if new_session:
            err: AgentgateError = ProtocolError(
                f"{self.endpoint} no longer holds the session (session_not_found): the "
                "events of this run after the drop are lost; the connection goes on with "
                "a new session",
                code="session_not_found",
            )
            self._fail_runs(err)
            self._runs.clear()
        elif self.resume_error == "history_truncated":
            first_seq = welcome.get("first_seq")
            err = HistoryTruncated(
                f"{self.endpoint} resumed the session but events after seq {self.last_seq} "
                f"were dropped from its buffer (it starts at {first_seq}); the run's "
                "complete history is lost: ask get_run() for its outcome",
                first_seq=first_seq if isinstance(first_seq, int) else None,
            )
            self._fail_runs(err)

    # ---------------------------------------------------------------- reading

    async def _read_loop(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            err: AgentgateError
            try:
                while True:
                    raw = await ws.recv()
                    self._handle(self._parse(raw))
                continue  # pragma: no cover (unreachable)
            except ConnectionClosed as e:
                err = self._closed_error(e)
            except AgentgateError as e:
                err = e
                ws.transport.abort()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug in a handler: fail loudly, not silently
                err = ProtocolError(f"unexpected reply from {self.endpoint}: {type(e).__name__}")
                ws.transport.abort()
            if self._closing:
                return
            self._on_drop(err)
            if self.reconnect and self._should_reconnect(err):
                log.info("connection to %s lost (%s); reconnecting", self.endpoint, err.code)
                try:
                    await self._reconnect(err)
                except AgentgateError as final:
                    self._fail_all(final)
                    return
                continue
            self._fail_all(err)
            return

    @staticmethod
    def _should_reconnect(err: AgentgateError) -> bool:
        return isinstance(err, NetworkError) or err.close_code in (1012, 1013)

    def _on_drop(self, err: AgentgateError) -> None:
        """A connection dropped: requests in flight raise its error, new ones wait."""
        self._ready.clear()
        pending = list(self._pending.values())
        self._pending.clear()
        for fut, _ in pending:
            if not fut.done():
                fut.set_exception(err)
        self._cancel_waiters.clear()

    async def _reconnect(self, err: AgentgateError) -> None:
        last = err
        for attempt in range(self.max_retries):
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
            await asyncio.sleep(delay)
            if self._closing:
                raise last
            try:
                ws, welcome = await self._open((self.session_id, self.last_seq))
            except AgentgateError as e:
                last = e
                if e.retryable:
                    log.info(
                        "reconnection attempt %d/%d to %s failed (%s)",
                        attempt + 1,
                        self.max_retries,
                        self.endpoint,
                        type(e).__name__,
                    )
                    continue
                raise
            if self._closing:
                ws.transport.abort()
                raise last
            self._ws = ws
            self.reconnections += 1
            self._apply_welcome(welcome, reconnection=True)
            self._ready.set()
            return
        raise last

    def _fail_runs(self, err: AgentgateError) -> None:
        for run in list(self._runs.values()):
            run._fail(err)

    def _fail_all(self, err: AgentgateError) -> None:
        if self._final is None:
            self._final = err
        self._on_drop(err)
        self._fail_runs(err)
        self._ready.set()  # wake waiters; they find _final

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        seq = msg.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self._handle_event(msg, seq)
            return
        ref = msg.get("ref")
        if kind == "run.accepted":
            run_id = msg.get("run_id")
            if not isinstance(run_id, str):
                raise ProtocolError(f"{self.endpoint} sent run.accepted without a run_id")
            run = self._run_for(run_id)
            run.claimed = True
            self._resolve(ref, run)
        elif kind == "error":
            entry = self._pending.pop(ref, None) if isinstance(ref, str) else None
            if entry is not None and not entry[0].done():
                entry[0].set_exception(error_reply(msg, entry[1]))
            else:
                log.warning("the gateway sent an error reply: %s", excerpt(str(msg.get("code"))))
        elif kind == "auth.expiring":
            if self._token_provider is not None:
                task = asyncio.get_running_loop().create_task(self._refresh())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif kind == "auth.refreshed":
            expires_at = msg.get("expires_at")
            if isinstance(expires_at, int):
                self.expires_at = expires_at
            self._resolve(ref, msg)
        else:  # run.state, pong, and replies a later protocol adds
            self._resolve(ref, msg)

    def _resolve(self, ref: Any, value: Any) -> None:
        if not isinstance(ref, str):
            return
        entry = self._pending.pop(ref, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(value)

    def _run_for(self, run_id: str) -> Run:
        run = self._runs.get(run_id)
        if run is None:
            run = Run(run_id)
            self._runs[run_id] = run
            unclaimed = [r for r in self._runs.values() if not r.claimed]
            for old in unclaimed[:-1000]:
                self._runs.pop(old.run_id, None)
        return run

    def _handle_event(self, msg: dict[str, Any], seq: int) -> None:
        if seq <= self.last_seq:
            return  # already delivered (a replay overlapping what we have)
        self.last_seq = seq
        try:
            event = Event.from_message(msg)
        except (KeyError, ValueError, TypeError):
            raise ProtocolError(f"{self.endpoint} sent a malformed event") from None
        run = self._run_for(event.run_id)
        run._push(event)
        if event.type == "run_cancelled":
            for fut in self._cancel_waiters.pop(event.run_id, []):
                if not fut.done():
                    fut.set_result(event)
        if event.terminal and run.claimed:
            self._runs.pop(event.run_id, None)

    async def _refresh(self) -> None:
        try:
            token = await self._token_now()
            ws = self._ws
            if token and ws is not None:
                await ws.send(json.dumps({"type": "auth.refresh", "token": token}))
        except (AgentgateError, ConnectionClosed, TypeError):
            # Without a refresh the gateway closes 4401 token_expired, raised then.
            log.warning("could not answer auth.expiring from %s", self.endpoint)

    # ---------------------------------------------------------------- requests

    async def _wait_ready(self) -> ClientConnection:
        while True:
            if self._final is not None:
                raise self._final
            if self._ready.is_set() and self._ws is not None:
                return self._ws
            await self._ready.wait()

    async def _request(
        self, msg: dict[str, Any], name: str, extra: asyncio.Future[Any] | None = None
    ) -> Any:
        ws = await self._wait_ready()
        self._next_ref += 1
        ref = f"py{self._next_ref}"
        fut: asyncio.Future[Any] = extra or asyncio.get_running_loop().create_future()
        self._pending[ref] = (fut, name)
        msg = {**msg, "ref": ref}
        with contextlib.suppress(ConnectionClosed):  # the reader fails fut with the drop's error
            await ws.send(json.dumps(msg))
        try:
            return await fut
        finally:
            self._pending.pop(ref, None)

    async def start_run(self, agent: str, input: Mapping[str, Any] | None = None) -> Run:
        """Start a run of ``agent`` with ``input``; returns once the gateway accepted it.

        Raises :class:`RequestError` (``agent_unknown``, ``protocol_error``),
        :class:`Forbidden` (``scope_missing``) or :class:`Unavailable`
        (``too_many_runs``).
        """
        msg: dict[str, Any] = {"type": "run.start", "agent": agent}
        if input is not None:
            msg["input"] = dict(input)
        run = await self._request(msg, f"run.start of agent {agent!r}")
        assert isinstance(run, Run)
        return run

    def run(self, run_id: str) -> Run:
        """The :class:`Run` of ``run_id`` on this session, e.g. one started by an earlier
        connection and replayed after a resume."""
        run = self._run_for(run_id)
        run.claimed = True
        return run

    async def cancel_run(self, run_id: str) -> Event:
        """Cancel a run; returns its ``run_cancelled`` event.

        Raises :class:`RequestError` ``run_not_found`` for an unknown or finished run.
        """
        await self._wait_ready()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._cancel_waiters.setdefault(run_id, []).append(fut)
        try:
            event = await self._request({"type": "run.cancel", "run_id": run_id}, "run.cancel", fut)
        finally:
            waiters = self._cancel_waiters.get(run_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
        assert isinstance(event, Event)
        return event

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The ``run.state`` reply for ``run_id``, as a dict.

        Raises :class:`RequestError` ``run_not_found``.
        """
        reply = await self._request({"type": "run.get", "run_id": run_id}, "run.get")
        assert isinstance(reply, dict)
        return reply

    async def ping(self) -> None:
        """A protocol-level ``ping``; returns when the ``pong`` arrives."""
        await self._request({"type": "ping"}, "ping")

    async def close(self) -> None:
        """Close the connection (1000). Open iterators and requests then raise."""
        if self._closing:
            return
        self._closing = True
        self._fail_all(AgentgateError("the connection was closed by close()"))
        ws = self._ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(1000), 5)
            except (asyncio.TimeoutError, TimeoutError, OSError, WebSocketException):
                ws.transport.abort()
        for task in [self._reader, *self._tasks]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class _Connector:
    """What :func:`connect` returns: ``await`` it, or use it with ``async with``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._entered: Connection | None = None

    async def _connect(self) -> Connection:
        await self._conn._start()
        return self._conn

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        self._entered = await self._connect()
        return self._entered

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered is not None:
            await self._entered.close()


def connect(
    url: str,
    token: str | None = None,
    *,
    token_provider: TokenProvider | None = None,
    transport: Transport = "header",
    session_id: str | None = None,
    last_seq: int | None = None,
    reconnect: bool = True,
    max_retries: int = 8,
    ssl: ssl_module.SSLContext | None = None,
    open_timeout: float = 10.0,
    origin: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> _Connector:
    """Connect to the gateway's ``/v1/ws`` at ``url`` (``ws://`` or ``wss://``).

    Use as ``async with connect(...) as conn:`` or ``conn = await connect(...)``. The
    first connection is made once, without retrying: a refusal raises its class at once.

    Args:
        token: the access token (JWT or API key), or ``None``.
        token_provider: instead of ``token``, a function returning a token (or an
            awaitable of one), asked on every connection and on every ``auth.expiring``.
        transport: ``"header"`` (default), ``"subprotocol"``, ``"query"``,
            ``"first_message"`` or ``"ticket"``.
        session_id, last_seq: resume this session from this ``seq``.
        reconnect: reconnect and resume after a network failure or close 1012/1013.
        max_retries: reconnection attempts per outage.
        ssl: the TLS context for ``wss://`` (and the ticket request over ``https``).
        open_timeout: seconds for each connection attempt, up to the welcome.
        origin: an ``Origin`` header (as a browser would send); also on ticket requests.
        headers: more handshake headers.
    """
    return _Connector(
        Connection(
            url,
            token,
            token_provider=token_provider,
            transport=transport,
            session_id=session_id,
            last_seq=last_seq,
            reconnect=reconnect,
            max_retries=max_retries,
            ssl=ssl,
            open_timeout=open_timeout,
            origin=origin,
            headers=headers,
        )
    )
