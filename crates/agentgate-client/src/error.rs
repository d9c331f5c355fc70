//! [`ClientError`]: the one error type of the client, and [`ErrorClass`], the decision
//! a caller makes from it (INCIDENTS.md rows 3 and 7).
//!
//! The variants keep apart what went wrong where: an HTTP refusal before the upgrade
//! ([`ClientError::Rejected`]), a close frame after it ([`ClientError::Closed`]), a
//! network fault ([`ClientError::Network`], [`ClientError::Timeout`]), a reply this
//! client cannot make sense of ([`ClientError::Protocol`]) and a caller mistake
//! ([`ClientError::InvalidInput`]). No variant ever holds a token: errors are built from
//! the server's reply and the host and port only, never from a URL that may carry an
//! `access_token` or `ticket`.

use std::fmt;
use std::time::Duration;

use agentgate_protocol::ErrorCode;
use serde_json::Value;
use tokio_tungstenite::tungstenite::http::Response;
use tokio_tungstenite::tungstenite::{self, error::ProtocolError, error::UrlError};

/// Longest excerpt of a server-provided text (message, close reason) kept in an error.
const MAX_EXCERPT: usize = 300;

/// Everything that can go wrong talking to the gateway.
///
/// Match on the variant (or on [`ClientError::class`]) to decide what to do; never on
/// the `Display` text. The text says what happened and what to do, and never contains
/// a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The handshake was refused with an HTTP response before the upgrade.
    Rejected {
        /// HTTP status (401, 403, 429, 503, ...).
        status: u16,
        /// The reason code of the JSON body (or of `WWW-Authenticate`), when present.
        code: Option<String>,
        /// The server's human message (or the status text when the body has none).
        message: String,
        /// The request id of the body or of `X-Request-Id`, for the server's log.
        request_id: Option<String>,
        /// `Retry-After`, in seconds, when the server sent it (429).
        retry_after_s: Option<u64>,
    },
    /// The server closed the WebSocket with a close frame other than 1000.
    Closed {
        /// The close code (4401, 4403, 1012, ...).
        close_code: u16,
        /// The reason code from the close reason `{"code":"..."}`, when present.
        code: Option<String>,
        /// The raw close reason text.
        reason: String,
    },
    /// The gateway could not be reached or the connection broke: refused, unreachable,
    /// DNS, TLS, reset, or ended without a close frame.
    Network(String),
    /// The TLS handshake of a `wss://` URL failed: the gateway's certificate does not
    /// verify (unknown issuer, wrong name, expired), or the two sides share no protocol.
    /// A network failure (exit 6) whose message names the TLS error.
    Tls(String),
    /// The reply made no sense for this protocol: not a WebSocket endpoint, a frame that
    /// is not a JSON object with a `type`, a binary frame, a missing welcome.
    Protocol(String),
    /// No answer in time (handshake, welcome, or a silent connection).
    Timeout(String),
    /// The caller's input cannot be used: a malformed URL, an empty token, a token that
    /// cannot travel in a header.
    InvalidInput(String),
}

/// What a caller does about an error; each class is one exit status of
/// `agentgate connect` (CONFIG.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Bad URL or missing token: fix the invocation. Exit 64.
    Usage,
    /// HTTP 401, close 4401 or 4408: get a valid credential. Exit 3.
    Unauthorized,
    /// HTTP 403, close 4403, `scope_missing`: the principal may not do this. Exit 4.
    Forbidden,
    /// HTTP 429 or 503, close 4429, 4409, 1012 or 1013, `too_many_runs`: retry later.
    /// Exit 5.
    Unavailable,
    /// Refused, unreachable, DNS, TLS, timeout, dropped without a close frame. Exit 6.
    Network,
    /// Any other close code or HTTP status, or an unexpected reply. Exit 7.
    Protocol,
    /// A run ended `agent_failed` or `run_cancelled`, or another error reply to
    /// `run.start`. Exit 8.
    RunFailed,
}

impl ErrorClass {
    /// The exit status of `agentgate connect` for this class.
    pub fn exit_status(self) -> u8 {
        match self {
            Self::Usage => 64,
            Self::Unauthorized => 3,
            Self::Forbidden => 4,
            Self::Unavailable => 5,
            Self::Network => 6,
            Self::Protocol => 7,
            Self::RunFailed => 8,
        }
    }

    /// A stable snake_case name, for logs and diagnostics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::Network => "network",
            Self::Protocol => "protocol",
            Self::RunFailed => "run_failed",
        }
    }

    /// The class of an HTTP rejection status.
    pub fn of_http_status(status: u16) -> Self {
        match status {
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            429 | 503 => Self::Unavailable,
            _ => Self::Protocol,
        }
    }

    /// The class of a close code (1000 is not an error and has no class of its own;
    /// it maps to `Protocol` when a close was not expected).
    pub fn of_close_code(close_code: u16) -> Self {
        match close_code {
            4401 | 4408 => Self::Unauthorized,
            4403 => Self::Forbidden,
            4429 | 4409 | 1012 | 1013 => Self::Unavailable,
            _ => Self::Protocol,
        }
    }

    /// The class of an `error` reply to `run.start`: `scope_missing` is forbidden,
    /// `too_many_runs` unavailable, anything else (`agent_unknown`, an input the agent
    /// rejects) a failed run.
    pub fn of_error_reply(code: &str) -> Self {
        match code {
            "scope_missing" => Self::Forbidden,
            "too_many_runs" => Self::Unavailable,
            _ => Self::RunFailed,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ClientError {
    /// The class of this error, which decides retrying and the exit status.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Rejected { status, .. } => ErrorClass::of_http_status(*status),
            Self::Closed { close_code, .. } => ErrorClass::of_close_code(*close_code),
            Self::Network(_) | Self::Timeout(_) | Self::Tls(_) => ErrorClass::Network,
            Self::Protocol(_) => ErrorClass::Protocol,
            Self::InvalidInput(_) => ErrorClass::Usage,
        }
    }

    /// Whether trying again later (with backoff, resuming the session) can succeed:
    /// network faults, timeouts, HTTP 429/503 and closes 1012, 1013, 4429 and 4409.
    /// Credential, permission and protocol faults are not retryable: the same request
    /// would fail the same way.
    pub fn is_retryable(&self) -> bool {
        matches!(self.class(), ErrorClass::Network | ErrorClass::Unavailable)
    }

    /// The reason code (`token_expired`, `rate_limited`, ...) of a rejection or close.
    pub fn reason_code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } | Self::Closed { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The reason code as a known [`ErrorCode`], when it is one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.reason_code().and_then(ErrorCode::parse)
    }

    /// How long the server asked to wait before retrying (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected { retry_after_s: Some(s), .. } => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }

    /// A close frame (or its absence, as 1005) as an error.
    pub fn from_close(frame: Option<&tungstenite::protocol::CloseFrame>) -> Self {
        match frame {
            Some(f) => Self::closed(u16::from(f.code), f.reason.as_str()),
            None => Self::closed(1005, ""),
        }
    }

    /// A close frame other than 1000, with its reason parsed.
    pub(crate) fn closed(close_code: u16, reason: &str) -> Self {
        let code = serde_json::from_str::<Value>(reason)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned));
        Self::Closed { close_code, code, reason: excerpt(reason) }
    }

    /// An HTTP refusal of the handshake, from the status, headers and JSON body.
    pub(crate) fn rejected(resp: &Response<Option<Vec<u8>>>) -> Self {
        let status = resp.status().as_u16();
        let body: Option<Value> = resp.body().as_deref().and_then(|b| serde_json::from_slice(b).ok());
        let field = |name: &str| {
            body.as_ref().and_then(|b| b.get("error")).and_then(|e| e.get(name)).and_then(Value::as_str).map(excerpt)
        };
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let code = field("code").or_else(|| header("www-authenticate").as_deref().and_then(error_description));
        let message = field("message").unwrap_or_else(|| {
            let text = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            if text.trim().is_empty() {
                resp.status().canonical_reason().unwrap_or("no reason given").to_owned()
            } else {
                excerpt(text.trim())
            }
        });
        let request_id = field("request_id").or_else(|| header("x-request-id").map(|v| excerpt(&v)));
        let retry_after_s = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        Self::Rejected { status, code, message, request_id, retry_after_s }
    }

    /// A tungstenite error, during or after the handshake, with `endpoint` (`host:port`,
    /// never the URL, which may carry a credential) for context.
    pub fn from_ws(e: tungstenite::Error, endpoint: &str) -> Self {
        use tungstenite::Error as E;
        match e {
            E::Http(resp) => Self::rejected(&resp),
            E::Io(e) => match crate::tls::tls_cause(&e) {
                Some(cause) => Self::Tls(format!("TLS handshake with {endpoint} failed: {cause}")),
                None => Self::Network(format!("cannot talk to {endpoint}: {e}")),
            },
            E::Tls(e) => Self::Tls(format!("TLS handshake with {endpoint} failed: {e}")),
            E::Url(UrlError::TlsFeatureNotEnabled) => Self::Network(
                "wss:// needs TLS, which this build of agentgate-client does not include; \
                 connect with ws:// through a local TLS-terminating proxy"
                    .to_owned(),
            ),
            E::Url(UrlError::UnableToConnect(_)) => Self::Network(format!("cannot connect to {endpoint}")),
            E::Url(e) => Self::InvalidInput(format!("invalid URL: {e}")),
            E::HttpFormat(e) => Self::InvalidInput(format!("cannot build the handshake request: {e}")),
            E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Self::Network(format!("{endpoint} dropped the connection without a close frame"))
            }
            E::ConnectionClosed | E::AlreadyClosed => {
                Self::Network(format!("the connection to {endpoint} is already closed"))
            }
            E::WriteBufferFull(_) => Self::Network(format!("the connection to {endpoint} is not draining")),
            other => Self::Protocol(format!("{endpoint}: {other}")),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected { status, code, message, request_id, retry_after_s } => {
                write!(f, "the gateway refused the handshake: HTTP {status}")?;
                if let Some(code) = code {
                    write!(f, " {code}")?;
                }
                write!(f, ": {message}")?;
                if let Some(id) = request_id {
                    write!(f, " (request_id {id})")?;
                }
                if let Some(s) = retry_after_s {
                    write!(f, " (retry after {s} s)")?;
                }
                write!(f, "; {}", advice(code.as_deref(), self.class()))
            }
            Self::Closed { close_code, code, reason } => {
                write!(f, "the gateway closed the connection: {close_code}")?;
                match code {
                    Some(code) => write!(f, " {code}")?,
                    None if !reason.is_empty() => write!(f, " ({reason})")?,
                    None => {}
                }
                write!(f, "; {}", advice(code.as_deref(), self.class()))
            }
            Self::Network(what) => write!(
                f,
                "network error: {what}; check the URL and that the gateway is running and reachable, \
                 then retry with backoff"
            ),
            Self::Tls(what) => write!(
                f,
                "TLS error: {what}; the gateway's certificate must verify against the system's trust roots, or \
                 against --ca-file (the CA that signed it); check the host name in the URL matches the certificate \
                 (retrying will not help until the certificate or the CA file is fixed)"
            ),
            Self::Timeout(what) => {
                write!(f, "timed out: {what}; the gateway or the network is slow or down, retry with backoff")
            }
            Self::Protocol(what) => write!(
                f,
                "unexpected reply: {what}; check that the URL names an agentgate /v1/ws endpoint \
                 speaking agentgate.v1 (retrying will not help)"
            ),
            Self::InvalidInput(what) => f.write_str(what),
        }
    }
}

/// What to do about a rejection or close: the advice of its reason code
/// (`ErrorCode::advice`, the one table), else of its class.
fn advice(code: Option<&str>, class: ErrorClass) -> &'static str {
    if let Some(code) = code.and_then(ErrorCode::parse) {
        return code.advice();
    }
    match class {
        ErrorClass::Unauthorized => {
            "the credential was refused: check it with agentgate token inspect and use a valid one \
             (retrying with the same one will fail)"
        }
        ErrorClass::Forbidden => "the principal is not allowed to do this (retrying will not help)",
        ErrorClass::Unavailable => "retry with backoff and resume the session",
        ErrorClass::Network => "retry with backoff",
        ErrorClass::Protocol | ErrorClass::RunFailed | ErrorClass::Usage => {
            "check that the URL names an agentgate endpoint (retrying will not help)"
        }
    }
}

/// `error_description="<code>"` of a `WWW-Authenticate` header.
fn error_description(header: &str) -> Option<String> {
    let start = header.find("error_description=\"")? + "error_description=\"".len();
    let rest = &header[start..];
    let end = rest.find('"')?;
    Some(excerpt(&rest[..end]))
}

/// At most [`MAX_EXCERPT`] characters of a server text, on one line.
pub(crate) fn excerpt(s: &str) -> String {
    let one_line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match one_line.char_indices().nth(MAX_EXCERPT) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16) -> ClientError {
        ClientError::Closed { close_code: code, code: None, reason: String::new() }
    }

    fn rejected(status: u16) -> ClientError {
        ClientError::Rejected { status, code: None, message: String::new(), request_id: None, retry_after_s: None }
    }

    #[test]
    fn retryable_errors_are_network_and_unavailable() {
        for e in [
            ClientError::Network("x".into()),
            ClientError::Timeout("x".into()),
            rejected(429),
            rejected(503),
            closed(1012),
            closed(1013),
            closed(4429),
            closed(4409),
        ] {
            assert!(e.is_retryable(), "{e:?}");
        }
        for e in [
            rejected(401),
            rejected(403),
            rejected(400),
            rejected(404),
            closed(4401),
            closed(4403),
            closed(4400),
            closed(4404),
            closed(4408),
            closed(1009),
            closed(1011),
            ClientError::Protocol("x".into()),
            ClientError::InvalidInput("x".into()),
        ] {
            assert!(!e.is_retryable(), "{e:?}");
        }
    }

    #[test]
    fn classes_map_to_the_exit_statuses_of_connect() {
        assert_eq!(rejected(401).class().exit_status(), 3);
        assert_eq!(closed(4401).class().exit_status(), 3);
        assert_eq!(closed(4408).class().exit_status(), 3);
        assert_eq!(rejected(403).class().exit_status(), 4);
        assert_eq!(closed(4403).class().exit_status(), 4);
        for c in [1012, 1013, 4429, 4409] {
            assert_eq!(closed(c).class().exit_status(), 5, "{c}");
        }
        assert_eq!(rejected(429).class().exit_status(), 5);
        assert_eq!(rejected(503).class().exit_status(), 5);
        assert_eq!(ClientError::Network("x".into()).class().exit_status(), 6);
        assert_eq!(ClientError::Timeout("x".into()).class().exit_status(), 6);
        for c in [4400, 4404, 1002, 1009, 1011] {
            assert_eq!(closed(c).class().exit_status(), 7, "{c}");
        }
        assert_eq!(rejected(400).class().exit_status(), 7);
        assert_eq!(ClientError::InvalidInput("x".into()).class().exit_status(), 64);
        assert_eq!(ErrorClass::of_error_reply("scope_missing").exit_status(), 4);
        assert_eq!(ErrorClass::of_error_reply("too_many_runs").exit_status(), 5);
        assert_eq!(ErrorClass::of_error_reply("agent_unknown").exit_status(), 8);
    }

    /// The classes this client derives from statuses, close codes and error replies
    /// are those `ErrorCode::client_class` (and docs/errors.json) give every code.
    #[test]
    fn classes_agree_with_the_protocol_table() {
        for code in ErrorCode::ALL {
            let want = code.client_class().as_str();
            match code.http_status() {
                Some(status) => assert_eq!(ErrorClass::of_http_status(status).as_str(), want, "{code}"),
                None if matches!(code, ErrorCode::AgentUnknown | ErrorCode::TooManyRuns | ErrorCode::RunNotFound) => {
                    assert_eq!(ErrorClass::of_error_reply(code.as_str()).as_str(), want, "{code}");
                }
                None => assert_eq!(ErrorClass::of_close_code(code.close_code()).as_str(), want, "{code}"),
            }
            if code.http_status().is_some() && code.client_class() != agentgate_protocol::ClientClass::RunFailed {
                assert_eq!(ErrorClass::of_close_code(code.close_code()).as_str(), want, "{code} (close)");
            }
        }
    }

    #[test]
    fn close_reason_code_is_parsed_and_shown() {
        let e = ClientError::closed(4401, r#"{"code":"token_expired"}"#);
        assert_eq!(e.reason_code(), Some("token_expired"));
        assert_eq!(e.error_code(), Some(ErrorCode::TokenExpired));
        let text = e.to_string();
        assert!(text.contains("4401 token_expired"), "{text}");
        assert!(text.contains("fresh"), "{text}");
    }

    #[test]
    fn www_authenticate_gives_the_code_when_the_body_is_missing() {
        let resp = Response::builder()
            .status(401)
            .header(
                "www-authenticate",
                r#"Bearer realm="agentgate", error="invalid_token", error_description="token_expired""#,
            )
            .header("x-request-id", "req_abc")
            .body(None)
            .unwrap();
        let e = ClientError::rejected(&resp);
        assert_eq!(e.reason_code(), Some("token_expired"));
        assert!(matches!(&e, ClientError::Rejected { request_id: Some(id), .. } if id == "req_abc"));
    }

    #[test]
    fn excerpts_are_one_line_and_bounded() {
        assert_eq!(excerpt("a\nb"), "a b");
        assert_eq!(excerpt(&"x".repeat(1000)).chars().count(), MAX_EXCERPT + 3);
    }
}
