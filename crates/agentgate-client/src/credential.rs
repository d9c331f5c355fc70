//! Credentials, how each travels on the handshake (PROTOCOL.md section 2), and the
//! [`TokenProvider`] that supplies fresh tokens for `auth.refresh` and reconnects.

use std::fmt;

use agentgate_protocol::{BEARER_SUBPROTOCOL_PREFIX, PROTOCOL_V1};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::ClientError;

/// One credential and the transport it travels on. A request carries exactly one.
///
/// `Debug` shows the transport and the length, never the value.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <token>`: the usual choice for a program.
    Header(String),
    /// `Sec-WebSocket-Protocol: agentgate.v1, agentgate.bearer.<token>`: what a browser
    /// does, since it cannot set headers.
    Subprotocol(String),
    /// `?access_token=<token>`. The token ends up in URLs, which proxies may log; prefer
    /// the header.
    Query(String),
    /// `?ticket=<ticket>`: a single-use ticket from `POST /v1/tickets`.
    Ticket(String),
    /// No credential on the request; `{"type":"auth","token":...}` as the first frame
    /// (the gateway must enable `auth.first_message`).
    FirstMessage(String),
}

impl Credential {
    /// The transport's name: `header`, `subprotocol`, `query`, `ticket` or
    /// `first_message`.
    pub fn transport(&self) -> &'static str {
        match self {
            Self::Header(_) => "header",
            Self::Subprotocol(_) => "subprotocol",
            Self::Query(_) => "query",
            Self::Ticket(_) => "ticket",
            Self::FirstMessage(_) => "first_message",
        }
    }

    /// The secret value (token or ticket).
    pub(crate) fn secret(&self) -> &str {
        match self {
            Self::Header(t) | Self::Subprotocol(t) | Self::Query(t) | Self::Ticket(t) | Self::FirstMessage(t) => t,
        }
    }

    /// The same transport with a new token. A ticket is single-use, so a fresh bearer
    /// token replaces it as a header credential.
    pub fn with_token(&self, token: String) -> Self {
        match self {
            Self::Header(_) | Self::Ticket(_) => Self::Header(token),
            Self::Subprotocol(_) => Self::Subprotocol(token),
            Self::Query(_) => Self::Query(token),
            Self::FirstMessage(_) => Self::FirstMessage(token),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Header(_) => "Header",
            Self::Subprotocol(_) => "Subprotocol",
            Self::Query(_) => "Query",
            Self::Ticket(_) => "Ticket",
            Self::FirstMessage(_) => "FirstMessage",
        };
        write!(f, "{name}(<redacted, {} bytes>)", self.secret().len())
    }
}

/// A source of fresh tokens. The client asks it when the gateway sends
/// `auth.expiring` (to answer with `auth.refresh`) and before each reconnect.
///
/// Any `Fn() -> Option<String> + Send + Sync` closure is one. It runs on the
/// connection's task, so it should be quick (return a cached token refreshed
/// elsewhere, or read a file). `None` means no fresh token is available: the connection
/// then ends with close 4401 `token_expired` at expiry.
pub trait TokenProvider: Send + Sync {
    /// A fresh token, or `None`.
    fn token(&self) -> Option<String>;
}

impl<F> TokenProvider for F
where
    F: Fn() -> Option<String> + Send + Sync,
{
    fn token(&self) -> Option<String> {
        self()
    }
}

/// Where to resume: the session and the last event `seq` already seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The `s_...` id of the welcome.
    pub session_id: String,
    /// The highest `seq` already handed to the consumer (0 for none).
    pub last_seq: u64,
}

/// The handshake request for `url` with `credential`, the resume query parameters and
/// an optional `Origin`, plus the `host:port` used in error messages (the URL itself
/// may hold a credential and is never shown).
pub(crate) fn build_request(
    url: &str,
    credential: &Credential,
    resume: Option<&Resume>,
    origin: Option<&str>,
) -> Result<(Request, String), ClientError> {
    if credential.secret().trim().is_empty() {
        return Err(ClientError::InvalidInput(format!(
            "the {} credential is empty: give a token (an empty one is ignored by the gateway and \
             rejected as token_missing)",
            credential.transport()
        )));
    }
    let base = url.split('#').next().unwrap_or(url);
    let mut params: Vec<(&str, String)> = Vec::new();
    match credential {
        Credential::Query(t) => params.push(("access_token", t.clone())),
        Credential::Ticket(t) => params.push(("ticket", t.clone())),
        Credential::Header(_) | Credential::Subprotocol(_) | Credential::FirstMessage(_) => {}
    }
    // First-message auth carries the resume fields in the auth frame instead.
    if let (Some(r), false) = (resume, matches!(credential, Credential::FirstMessage(_))) {
        params.push(("session_id", r.session_id.clone()));
        params.push(("last_seq", r.last_seq.to_string()));
    }
    let mut full = base.to_owned();
    for (i, (k, v)) in params.iter().enumerate() {
        let sep = if i == 0 && !base.contains('?') { '?' } else { '&' };
        full.push(sep);
        full.push_str(k);
        full.push('=');
        full.push_str(&percent_encode(v));
    }
    // The URL is not echoed in the error: with a query credential it holds the token.
    let mut req = full.into_client_request().map_err(|e| {
        let what = match e {
            tokio_tungstenite::tungstenite::Error::Url(u) => u.to_string(),
            _ => "not a ws:// or wss:// URL".to_owned(),
        };
        ClientError::InvalidInput(format!("invalid URL: {what}"))
    })?;
    let host = req.uri().host().unwrap_or("?").to_owned();
    let port = req.uri().port_u16().unwrap_or(if req.uri().scheme_str() == Some("wss") { 443 } else { 80 });
    let endpoint = format!("{host}:{port}");
    let header = |value: String| {
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            ClientError::InvalidInput(format!(
                "the token holds characters that cannot be sent in a header ({} credential)",
                credential.transport()
            ))
        })?;
        v.set_sensitive(true);
        Ok::<_, ClientError>(v)
    };
    match credential {
        Credential::Header(t) => {
            req.headers_mut().insert("authorization", header(format!("Bearer {t}"))?);
        }
        Credential::Subprotocol(t) => {
            req.headers_mut()
                .insert("sec-websocket-protocol", header(format!("{PROTOCOL_V1}, {BEARER_SUBPROTOCOL_PREFIX}{t}"))?);
        }
        Credential::Query(_) | Credential::Ticket(_) | Credential::FirstMessage(_) => {}
    }
    if let Some(origin) = origin {
        let v = HeaderValue::from_str(origin)
            .map_err(|_| ClientError::InvalidInput(format!("invalid Origin {origin:?}")))?;
        req.headers_mut().insert("origin", v);
    }
    Ok((req, endpoint))
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let c = Credential::Header("secret-token-value".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(shown, "Header(<redacted, 18 bytes>)");
    }

    #[test]
    fn query_credentials_and_resume_go_in_the_query() {
        let resume = Resume { session_id: "s_abc".into(), last_seq: 7 };
        let (req, endpoint) =
            build_request("ws://127.0.0.1:9/v1/ws", &Credential::Query("a b+c".into()), Some(&resume), None).unwrap();
        assert_eq!(endpoint, "127.0.0.1:9");
        assert_eq!(req.uri().query(), Some("access_token=a%20b%2Bc&session_id=s_abc&last_seq=7"));
        let (req, _) =
            build_request("ws://h/v1/ws?x=1", &Credential::FirstMessage("t".into()), Some(&resume), None).unwrap();
        assert_eq!(req.uri().query(), Some("x=1"));
    }

    #[test]
    fn header_and_subprotocol_credentials_are_headers() {
        let (req, _) =
            build_request("ws://h/v1/ws", &Credential::Header("tok".into()), None, Some("http://o")).unwrap();
        assert_eq!(req.headers()["authorization"], "Bearer tok");
        assert_eq!(req.headers()["origin"], "http://o");
        let (req, _) = build_request("ws://h/v1/ws", &Credential::Subprotocol("tok".into()), None, None).unwrap();
        assert_eq!(req.headers()["sec-websocket-protocol"], "agentgate.v1, agentgate.bearer.tok");
    }

    #[test]
    fn empty_tokens_and_bad_urls_are_invalid_input() {
        let e = build_request("ws://h/v1/ws", &Credential::Header(" ".into()), None, None).unwrap_err();
        assert!(matches!(e, ClientError::InvalidInput(_)));
        let e = build_request("not a url", &Credential::Query("sekrit".into()), None, None).unwrap_err();
        assert!(matches!(&e, ClientError::InvalidInput(m) if !m.contains("sekrit")), "{e}");
    }
}
