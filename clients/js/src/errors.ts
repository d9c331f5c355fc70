// AgentgateError: the one error type of the client, classified exactly like the Rust
// client (crates/agentgate-client/src/error.rs), the Python client and the exit statuses
// of `agentgate connect` (docs/errors.md). No message ever holds a token or a ticket:
// messages are built from the server's reply and the gateway's host and port only.

/** What a caller does about an error. */
export type ErrorKind =
  | "unauthorized"
  | "forbidden"
  | "unavailable"
  | "network"
  | "protocol"
  | "request"
  | "run_failed"
  | "run_cancelled"
  | "history_truncated";

export interface AgentgateErrorInit {
  kind: ErrorKind;
  message: string;
  code?: string | null;
  status?: number | null;
  closeCode?: number | null;
  requestId?: string | null;
  retryAfterS?: number | null;
}

/** Every failure of the client. Match on `kind` and `code`, never on the message. */
export class AgentgateError extends Error {
  /** The class of the failure (the table of the README). */
  readonly kind: ErrorKind;
  /** The reason code of the gateway (`token_expired`, `too_many_runs`, ...), or null. */
  readonly code: string | null;
  /** HTTP status of a refused handshake or ticket request, else null. */
  readonly status: number | null;
  /** WebSocket close code, else null. */
  readonly closeCode: number | null;
  /** Whether trying again later (with backoff, resuming the session) can succeed. */
  readonly retryable: boolean;
  /** The gateway's request id of a refused HTTP request, for its log, else null. */
  readonly requestId: string | null;
  /** `Retry-After` of a refused HTTP request, in seconds, else null. */
  readonly retryAfterS: number | null;

  constructor(init: AgentgateErrorInit) {
    super(init.message);
    this.name = "AgentgateError";
    this.kind = init.kind;
    this.code = init.code ?? null;
    this.status = init.status ?? null;
    this.closeCode = init.closeCode ?? null;
    this.requestId = init.requestId ?? null;
    this.retryAfterS = init.retryAfterS ?? null;
    this.retryable = isRetryable(this.kind, this.code, this.closeCode);
  }
}

/** Network faults and unavailability are retryable, except 4409 `session_taken_over`. */
function isRetryable(kind: ErrorKind, code: string | null, closeCode: number | null): boolean {
  if (kind === "network") return true;
  if (kind === "unavailable") return closeCode !== 4409 && code !== "session_taken_over";
  return false;
}

/** The kind of an HTTP refusal (handshake or ticket request). */
export function kindOfStatus(status: number): ErrorKind {
  if (status === 401) return "unauthorized";
  if (status === 403) return "forbidden";
  if (status === 429 || status === 503) return "unavailable";
  return "protocol";
}

/** The kind of a close code. */
export function kindOfCloseCode(closeCode: number): ErrorKind {
  if (closeCode === 4401 || closeCode === 4408) return "unauthorized";
  if (closeCode === 4403) return "forbidden";
  if (closeCode === 4429 || closeCode === 4409 || closeCode === 1012 || closeCode === 1013) return "unavailable";
  return "protocol";
}

/** The kind of an `error` reply to a request. */
export function kindOfErrorReply(code: string): ErrorKind {
  if (code === "scope_missing") return "forbidden";
  if (code === "too_many_runs") return "unavailable";
  return "request";
}

const MAX_EXCERPT = 300;

/** At most 300 characters of a server text, on one line. */
export function excerpt(s: string): string {
  // eslint-disable-next-line no-control-regex
  const line = s.replace(/[\u0000-\u001f\u007f]/g, " ");
  return line.length > MAX_EXCERPT ? `${line.slice(0, MAX_EXCERPT)}...` : line;
}

/** What to do about a reason code, else about the kind. */
export function advice(code: string | null, kind: ErrorKind): string {
  switch (code) {
    case "token_expired":
      return "the token expired: get a fresh one (agentgate token mint, or your identity provider), or pass a tokenProvider so that auth.expiring is answered with auth.refresh";
    case "token_missing":
      return "no credential reached the gateway: check that the token is set, non-empty, and sent on a transport the gateway accepts";
    case "token_revoked":
      return "the token was revoked: get a new one";
    case "token_not_yet_valid":
      return "the token is not valid yet: check the clocks of issuer and gateway";
    case "auth_timeout":
      return "send the auth message as the first frame, sooner";
    case "ticket_invalid":
      return "tickets are single-use and short-lived: request a new one";
    case "credentials_ambiguous":
      return "send exactly one credential";
    case "scope_missing":
      return "the token lacks the scope this needs: get one that has it";
    case "origin_not_allowed":
      return "add this page's origin to server.allowed_origins, or connect without an Origin";
    case "anonymous_not_allowed":
      return "anonymous principals may not connect: log in first";
    case "session_forbidden":
      return "that session belongs to another principal: connect without resuming it";
    case "principal_mismatch":
      return "refresh with a token of the same subject and tenant";
    case "rate_limited":
    case "too_many_connections":
      return "slow down, then retry with backoff";
    case "too_many_runs":
      return "too many runs of this principal are running: wait for one to end, then retry";
    case "session_taken_over":
      return "another connection resumed this session: reconnect only if this one should own it";
    case "server_restart":
      return "the gateway is restarting: reconnect and resume the session";
    case "slow_consumer":
      return "read faster: reconnect and resume the session to get the rest";
    case "service_unavailable":
      return "the gateway's backend is unreachable: retry later";
    case "message_too_large":
      return "send smaller frames (server.max_message_bytes)";
    case "protocol_error":
      return "the request or a frame broke the protocol (see the agentgate protocol, section 5)";
    case "agent_unknown":
      return "no agent of that name: check the agent name against the gateway's [[agents]]";
    case "run_not_found":
      return "no such run of this principal, or it has already ended";
    case "session_not_found":
      return "the session expired or was dropped: its runs' events are lost; start again on the new session";
    case "history_truncated":
      return "events were lost while disconnected: read the run's outcome with getRun(runId)";
    default:
      break;
  }
  switch (kind) {
    case "unauthorized":
      return "the credential was refused: check it with agentgate token inspect and use a valid one (retrying with the same one will fail)";
    case "forbidden":
      return "the principal is not allowed to do this (retrying will not help)";
    case "unavailable":
      return "retry with backoff and resume the session";
    case "network":
      return "check the URL and that the gateway is running and reachable, then retry with backoff";
    default:
      return "check that the URL names an agentgate /v1/ws endpoint (retrying will not help)";
  }
}

/** The reason code of a close reason `{"code":"..."}`, or null. */
export function codeOfReason(reason: string): string | null {
  try {
    const v: unknown = JSON.parse(reason);
    if (v && typeof v === "object" && typeof (v as { code?: unknown }).code === "string") {
      return (v as { code: string }).code;
    }
  } catch {
    // not JSON: no code
  }
  return null;
}

/** A close frame after (or instead of) the handshake. */
export function closedError(closeCode: number, reason: string, endpoint: string): AgentgateError {
  const code = codeOfReason(reason);
  const kind = kindOfCloseCode(closeCode);
  let what = `the gateway at ${endpoint} closed the connection: ${closeCode}`;
  if (code) what += ` ${code}`;
  else if (reason) what += ` (${excerpt(reason)})`;
  return new AgentgateError({ kind, code, closeCode, message: `${what}; ${advice(code, kind)}` });
}

/** An HTTP refusal of the handshake or of the ticket request. */
export function rejectedError(
  status: number,
  body: string,
  headers: (name: string) => string | null,
  endpoint: string,
  what: string,
): AgentgateError {
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = null;
  }
  const err =
    parsed && typeof parsed === "object" ? ((parsed as { error?: unknown }).error as Record<string, unknown> | undefined) : undefined;
  const field = (name: string): string | null => {
    const v = err && typeof err === "object" ? err[name] : undefined;
    return typeof v === "string" ? excerpt(v) : null;
  };
  let code = field("code");
  if (!code) {
    const m = /error_description="([^"]*)"/.exec(headers("www-authenticate") ?? "");
    code = m && m[1] ? excerpt(m[1]) : null;
  }
  const serverMessage = field("message") ?? (body.trim() ? excerpt(body.trim()) : "no reason given");
  const requestId = field("request_id") ?? headers("x-request-id");
  const ra = headers("retry-after");
  const retryAfterS = ra && /^\s*\d+\s*$/.test(ra) ? Number(ra.trim()) : null;
  const kind = kindOfStatus(status);
  let message = `the gateway at ${endpoint} refused ${what}: HTTP ${status}`;
  if (code) message += ` ${code}`;
  message += `: ${serverMessage}`;
  if (requestId) message += ` (request_id ${excerpt(requestId)})`;
  if (retryAfterS !== null) message += ` (retry after ${retryAfterS} s)`;
  message += `; ${advice(code, kind)}`;
  return new AgentgateError({ kind, code, status, requestId: requestId ? excerpt(requestId) : null, retryAfterS, message });
}

/** A network fault: refused, unreachable, DNS, TLS, timeout, dropped without a close frame. */
export function networkError(what: string): AgentgateError {
  return new AgentgateError({ kind: "network", message: `network error: ${what}; ${advice(null, "network")}` });
}

/** A reply that makes no sense for this protocol. */
export function protocolError(what: string, code: string | null = null): AgentgateError {
  return new AgentgateError({ kind: "protocol", code, message: `unexpected reply: ${what}; ${advice(code, "protocol")}` });
}

/** An `error` reply to a request. */
export function replyError(request: string, code: string, serverMessage: string | null): AgentgateError {
  const kind = kindOfErrorReply(code);
  let message = `the gateway refused ${request}: ${code}`;
  if (serverMessage) message += ` (${excerpt(serverMessage)})`;
  message += `; ${advice(code, kind)}`;
  return new AgentgateError({ kind, code, message });
}
