"""Error classes: every failure is an :class:`AgentgateError` subclass.

The classification is the one of ``agentgate connect``'s exit statuses (and of the Rust
client), so the same refusal is the same error everywhere:

==================  =====================================================  =========
class               when                                                   retryable
==================  =====================================================  =========
Unauthorized        HTTP 401, close 4401 or 4408                           no
Forbidden           HTTP 403, close 4403, error reply ``scope_missing``    no
Unavailable         HTTP 429 or 503, close 4429, 4409, 1012 or 1013,       yes (not
                    error reply ``too_many_runs``                          4409)
NetworkError        refused, unreachable, DNS, TLS, timeout, dropped       yes
                    without a close frame
ProtocolError       an unexpected reply, any other close code              no
RequestError        any other ``error`` reply to a request                 no
RunFailed           the run ended ``agent_failed``                         no
RunCancelled        the run ended ``run_cancelled``                        no
HistoryTruncated    a resume reported ``history_truncated``                no
==================  =====================================================  =========

No message ever holds a token or ticket: messages are built from the gateway's reply and
the host and port, never from a URL (which may carry ``access_token`` or ``ticket``).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AgentgateError",
    "Forbidden",
    "HistoryTruncated",
    "NetworkError",
    "ProtocolError",
    "RequestError",
    "RunCancelled",
    "RunFailed",
    "Unauthorized",
    "Unavailable",
    "close_error",
    "error_reply",
    "http_error",
]

#: Longest excerpt of a server-provided text kept in a message.
_MAX_EXCERPT = 300


class AgentgateError(Exception):
    """Base class of every failure of this library.

    Attributes:
        code: the reason code of PROTOCOL.md (``"token_expired"``, ...), or ``None``.
        status: the HTTP status of a refused handshake (or ticket request), else ``None``.
        close_code: the WebSocket close code, else ``None``.
        message: what happened and what to do (never a token).
        retryable: whether trying again later can succeed.
    """

    #: Default of :attr:`retryable` for the class.
    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        close_code: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.close_code = close_code
        self.retryable = self.default_retryable if retryable is None else retryable

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"close_code={self.close_code!r}, retryable={self.retryable!r}, "
            f"message={self.message!r})"
        )


class Unauthorized(AgentgateError):
    """HTTP 401, close 4401 or 4408: the credential was refused. Get a new token."""


class Forbidden(AgentgateError):
    """HTTP 403, close 4403, or a ``scope_missing`` error reply: not allowed."""


class Unavailable(AgentgateError):
    """HTTP 429 or 503, close 4429, 4409, 1012 or 1013, ``too_many_runs``: retry later.

    Retryable, except close 4409 ``session_taken_over`` (the session is in use elsewhere).
    """

    default_retryable = True


class NetworkError(AgentgateError):
    """Refused, unreachable, DNS, TLS, timeout, or dropped without a close frame."""

    default_retryable = True


class ProtocolError(AgentgateError):
    """An unexpected reply, or any other close code (4400, 4404, 1002, 1009, 1011, ...)."""


class RequestError(AgentgateError):
    """Any other ``error`` reply to a request (``agent_unknown``, ``run_not_found``, ...)."""


class RunFailed(AgentgateError):
    """The run ended ``agent_failed``; :attr:`code` is the event's ``data.code``.

    :attr:`event` is the terminal event.
    """

    def __init__(self, message: str, *, code: str | None, event: Any = None) -> None:
        super().__init__(message, code=code)
        self.event = event


class RunCancelled(AgentgateError):
    """The run ended ``run_cancelled``. :attr:`event` is the terminal event."""

    def __init__(self, message: str, *, event: Any = None) -> None:
        super().__init__(message)
        self.event = event


class HistoryTruncated(AgentgateError):
    """A resume reported ``history_truncated``: events of this session were lost.

    :attr:`first_seq` is the first ``seq`` the gateway still had, when it said.
    """

    def __init__(self, message: str, *, first_seq: int | None = None) -> None:
        super().__init__(message, code="history_truncated")
        self.first_seq = first_seq


_ADVICE = {
    Unauthorized: "get a valid token (mint, refresh or sign in again) and connect again",
    Forbidden: "the principal or origin may not do this; retrying will not help",
    Unavailable: "retry later, with backoff",
    ProtocolError: "this looks like a client bug or not an agentgate endpoint; "
    "retrying the same thing fails the same way",
}

_CODE_ADVICE = {
    "token_missing": "pass token= or token_provider=",
    "token_expired": "get a new token; on a live connection pass token_provider= so that "
    "auth.expiring is answered with auth.refresh",
    "token_revoked": "the token was revoked; sign in again",
    "signature_invalid": "the token was signed with another key; compare fingerprints with "
    "`agentgate token inspect`",
    "origin_not_allowed": "add the origin to server.allowed_origins",
    "scope_missing": "request a token with the scope the agent needs",
    "session_taken_over": "the session was resumed on another connection; do not fight over it",
    "too_many_runs": "wait for a run to end, or cancel one",
    "too_many_connections": "close unused connections and retry later",
    "rate_limited": "slow down and retry after a pause",
    "server_restart": "the gateway is restarting; reconnect and resume",
    "session_not_found": "the session expired or was dropped; a new session was started",
    "agent_unknown": "use an agent the gateway lists in its message",
    "run_not_found": "the run is unknown, finished, expired or not yours",
}


def excerpt(text: str) -> str:
    """A server-provided text cut to a readable length, without control characters."""
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    if len(text) > _MAX_EXCERPT:
        text = text[:_MAX_EXCERPT] + "..."
    return text


def _advice(cls: type[AgentgateError], code: str | None) -> str:
    if code is not None and code in _CODE_ADVICE:
        return _CODE_ADVICE[code]
    return _ADVICE.get(cls, "")


def class_of_status(status: int) -> type[AgentgateError]:
    """The class of an HTTP refusal status."""
    if status == 401:
        return Unauthorized
    if status == 403:
        return Forbidden
    if status in (429, 503):
        return Unavailable
    return ProtocolError


def class_of_close(close_code: int) -> type[AgentgateError]:
    """The class of a close code."""
    if close_code in (4401, 4408):
        return Unauthorized
    if close_code == 4403:
        return Forbidden
    if close_code in (4429, 4409, 1012, 1013):
        return Unavailable
    return ProtocolError


def class_of_error_reply(code: str | None) -> type[AgentgateError]:
    """The class of an ``error`` reply to a request."""
    if code == "scope_missing":
        return Forbidden
    if code == "too_many_runs":
        return Unavailable
    return RequestError


def parse_close_reason(reason: str) -> str | None:
    """The ``code`` of a close reason ``{"code":"..."}``, if it is one."""
    try:
        value = json.loads(reason)
    except ValueError:
        return None
    if isinstance(value, dict):
        code = value.get("code")
        if isinstance(code, str):
            return code
    return None


def http_error(
    status: int, body: bytes, endpoint: str, what: str = "the WebSocket handshake"
) -> AgentgateError:
    """The error of an HTTP refusal (of the handshake or of a ticket request)."""
    code: str | None = None
    server_message = ""
    request_id: str | None = None
    try:
        value = json.loads(body.decode("utf-8", "replace")) if body else None
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        err = value["error"]
        if isinstance(err.get("code"), str):
            code = err["code"]
        if isinstance(err.get("message"), str):
            server_message = excerpt(err["message"])
        if isinstance(err.get("request_id"), str):
            request_id = excerpt(err["request_id"])
    elif body:
        server_message = excerpt(body.decode("utf-8", "replace"))
    cls = class_of_status(status)
    parts = [f"{endpoint} refused {what} with HTTP {status}"]
    if code:
        parts[0] += f" {code}"
    if server_message:
        parts.append(server_message)
    if request_id:
        parts.append(f"request id {request_id}")
    advice = _advice(cls, code)
    if advice:
        parts.append(advice)
    return cls("; ".join(parts), code=code, status=status)


def close_error(close_code: int, reason: str, endpoint: str) -> AgentgateError:
    """The error of a close frame (any code but an expected 1000)."""
    code = parse_close_reason(reason)
    cls = class_of_close(close_code)
    text = f"{endpoint} closed the connection with {close_code}"
    if code:
        text += f" {code}"
    elif reason:
        text += f" ({excerpt(reason)})"
    advice = _advice(cls, code)
    if advice:
        text += f"; {advice}"
    retryable = None
    if close_code == 4409:
        retryable = False
    return cls(text, code=code, close_code=close_code, retryable=retryable)


def error_reply(reply: dict[str, Any], request: str) -> AgentgateError:
    """The error of an ``error`` reply to ``request`` (``run.start``, ...)."""
    raw_code = reply.get("code")
    code = raw_code if isinstance(raw_code, str) else None
    cls = class_of_error_reply(code)
    text = f"the gateway refused {request}: {code or 'error'}"
    msg = reply.get("message")
    if isinstance(msg, str) and msg:
        text += f": {excerpt(msg)}"
    advice = _CODE_ADVICE.get(code or "")
    if advice:
        text += f"; {advice}"
    return cls(text, code=code)
