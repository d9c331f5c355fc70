//! Finding the one credential on an upgrade request (PROTOCOL.md section 2): the
//! `Authorization` header, a `agentgate.bearer.` subprotocol entry, `ticket=`, or
//! `access_token=`. Empty values count as absent; two or more present values are
//! `credentials_ambiguous`.

use agentgate_protocol::{BEARER_SUBPROTOCOL_PREFIX, ErrorCode, MCP_AUTH_SUBPROTOCOL_PREFIX, PROTOCOL_V1};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};

/// Where a credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `Authorization: Bearer`.
    Header,
    /// `Sec-WebSocket-Protocol` entry.
    Subprotocol,
    /// `?ticket=`.
    Ticket,
    /// `?access_token=`.
    Query,
}

impl Transport {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Subprotocol => "subprotocol",
            Self::Ticket => "ticket",
            Self::Query => "query",
        }
    }
}

/// A presented credential. `Debug` never shows the value.
#[derive(Clone)]
pub struct Credential {
    /// Where it came from.
    pub transport: Transport,
    /// The value (a token, API key or ticket).
    pub value: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("transport", &self.transport).field("value", &"[redacted]").finish()
    }
}

/// Which endpoint the request is for: the rules differ slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/ws`.
    Agent,
    /// `/v1/mcp/{server}`: `access_token` is ignored, `mcp.auth.` entries count.
    Mcp,
}

/// What the request carries.
#[derive(Debug)]
pub enum Found {
    /// Exactly one credential.
    One(Credential),
    /// None; the message says why (e.g. query tokens disabled).
    None(String),
}

/// The subprotocols offered, in order.
pub fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Whether every byte is printable ASCII (space through `~`; a tab is outside).
pub fn printable_ascii(bytes: &[u8]) -> bool {
    // Without an early exit, so that it is vectorized: every token is checked in full
    // on every handshake.
    bytes.iter().fold(true, |ok, b| ok & (0x20..=0x7e).contains(b))
}

/// PROTOCOL.md section 2: a `Sec-WebSocket-Protocol` or `Authorization` header with a
/// byte outside printable ASCII is `protocol_error`, never silently dropped (a dropped
/// entry could hide a second credential from the ambiguity check).
///
/// # Errors
/// `protocol_error` naming the header.
pub fn check_header_bytes(headers: &HeaderMap) -> Result<(), (ErrorCode, String)> {
    for name in [AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL] {
        if headers.get_all(&name).iter().any(|v| !printable_ascii(v.as_bytes())) {
            return Err((
                ErrorCode::ProtocolError,
                format!(
                    "the {name} header holds a byte outside printable ASCII (tabs and control characters included)"
                ),
            ));
        }
    }
    Ok(())
}

/// Find the credential of a request.
///
/// # Errors
/// `(code, message)`: `credentials_ambiguous`, or `protocol_error` for subprotocol
/// offers the gateway cannot select, or `token_malformed` for a non-Bearer
/// `Authorization` header.
pub fn extract(
    headers: &HeaderMap,
    query: &[(String, String)],
    endpoint: Endpoint,
    query_token_enabled: bool,
) -> Result<Found, (ErrorCode, String)> {
    check_header_bytes(headers)?;
    let mut found: Vec<Credential> = Vec::new();
    let mut malformed_auth = false;
    for v in headers.get_all(AUTHORIZATION) {
        let Ok(v) = v.to_str() else {
            malformed_auth = true;
            found.push(Credential { transport: Transport::Header, value: String::new() });
            continue;
        };
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let token = rest.trim();
            if !token.is_empty() {
                found.push(Credential { transport: Transport::Header, value: token.to_owned() });
            }
        } else {
            malformed_auth = true;
            found.push(Credential { transport: Transport::Header, value: String::new() });
        }
    }
    let mut offered_any = false;
    let mut wants_v1 = false;
    let mut other = false;
    for p in offered_protocols(headers) {
        offered_any = true;
        let entry = p
            .strip_prefix(BEARER_SUBPROTOCOL_PREFIX)
            .or_else(|| if endpoint == Endpoint::Mcp { p.strip_prefix(MCP_AUTH_SUBPROTOCOL_PREFIX) } else { None });
        if let Some(token) = entry {
            if !token.is_empty() {
                found.push(Credential { transport: Transport::Subprotocol, value: token.to_owned() });
            }
        } else if (endpoint == Endpoint::Agent && p == PROTOCOL_V1)
            || (endpoint == Endpoint::Mcp && p == agentgate_protocol::MCP_SUBPROTOCOL)
        {
            wants_v1 = true;
        } else {
            other = true;
        }
    }
    let mut query_disabled = false;
    for (k, v) in query {
        match k.as_str() {
            "ticket" if !v.is_empty() => found.push(Credential { transport: Transport::Ticket, value: v.clone() }),
            "access_token" if !v.is_empty() => match endpoint {
                Endpoint::Agent if query_token_enabled => {
                    found.push(Credential { transport: Transport::Query, value: v.clone() })
                }
                Endpoint::Agent => query_disabled = true,
                Endpoint::Mcp => query_disabled = true,
            },
            _ => {}
        }
    }
    if found.len() > 1 {
        let transports: Vec<&str> = found.iter().map(|c| c.transport.as_str()).collect();
        return Err((
            ErrorCode::CredentialsAmbiguous,
            format!("{} credentials were presented ({}); send exactly one", found.len(), transports.join(", ")),
        ));
    }
    if endpoint == Endpoint::Agent && offered_any && !wants_v1 {
        let need = match endpoint {
            Endpoint::Agent => PROTOCOL_V1,
            Endpoint::Mcp => agentgate_protocol::MCP_SUBPROTOCOL,
        };
        let what = if other { "offers subprotocols" } else { "offers only a credential entry" };
        return Err((
            ErrorCode::ProtocolError,
            format!("Sec-WebSocket-Protocol {what} without {need:?}; offer {need:?} (with the bearer entry beside it)"),
        ));
    }
    if malformed_auth {
        return Err((ErrorCode::TokenMalformed, "the Authorization header is not `Bearer <token>`".to_owned()));
    }
    match found.pop() {
        Some(c) => Ok(Found::One(c)),
        None if query_disabled => Ok(Found::None(match endpoint {
            Endpoint::Agent => "query tokens are disabled on this gateway (auth.query_token = false); \
                send the token in the Authorization header, the subprotocol, or use a ticket"
                .to_owned(),
            Endpoint::Mcp => "query tokens are not accepted on MCP endpoints (the MCP specification forbids \
                tokens in URLs); send the token in the Authorization header or as a subprotocol entry"
                .to_owned(),
        })),
        None => Ok(Found::None(
            "no credential was presented; send `Authorization: Bearer <token>` (mint one with `agentgate token mint`)"
                .to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_header_byte_outside_printable_ascii_is_protocol_error() {
        for (name, value) in [
            ("sec-websocket-protocol", &b"agentgate.v1, agentgate.bearer.a\xff"[..]),
            ("sec-websocket-protocol", &b"agentgate.v1,\tagentgate.bearer.a"[..]),
            ("authorization", &b"Bearer a.b.c\x80"[..]),
            ("authorization", &b"Bearer\ta.b.c"[..]),
        ] {
            let mut h = HeaderMap::new();
            h.append(name, HeaderValue::from_bytes(value).unwrap());
            let e = extract(&h, &[], Endpoint::Agent, true).unwrap_err();
            assert_eq!(e.0, ErrorCode::ProtocolError, "{name}: {value:?}");
        }
    }

    #[test]
    fn empty_values_are_absent() {
        let h = headers(&[("authorization", "Bearer"), ("sec-websocket-protocol", "agentgate.v1, agentgate.bearer.")]);
        let r = extract(&h, &q(&[("access_token", ""), ("ticket", "")]), Endpoint::Agent, true).unwrap();
        assert!(matches!(r, Found::None(_)));
    }

    #[test]
    fn two_credentials_are_ambiguous() {
        let h = headers(&[("authorization", "Bearer a.b.c")]);
        let e = extract(&h, &q(&[("access_token", "x")]), Endpoint::Agent, true).unwrap_err();
        assert_eq!(e.0, ErrorCode::CredentialsAmbiguous);
    }

    #[test]
    fn subprotocol_needs_v1_beside_it() {
        let h = headers(&[("sec-websocket-protocol", "agentgate.bearer.abc")]);
        assert_eq!(extract(&h, &[], Endpoint::Agent, true).unwrap_err().0, ErrorCode::ProtocolError);
        let h = headers(&[("sec-websocket-protocol", "agentgate.v1, agentgate.bearer.abc")]);
        let Found::One(c) = extract(&h, &[], Endpoint::Agent, true).unwrap() else { panic!() };
        assert_eq!(c.transport, Transport::Subprotocol);
        assert_eq!(c.value, "abc");
    }

    #[test]
    fn disabled_query_token_is_token_missing_with_reason() {
        let Found::None(msg) =
            extract(&HeaderMap::new(), &q(&[("access_token", "x")]), Endpoint::Agent, false).unwrap()
        else {
            panic!()
        };
        assert!(msg.contains("disabled"));
    }
}
