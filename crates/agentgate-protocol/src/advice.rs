//! What a client does about each reason code: its class (the exit statuses of
//! `agentgate connect`), whether retrying can help, and one sentence of advice. The one
//! table that the client library, `doctor` and `mcp-shim` word their errors from, and
//! that `docs/errors.json` is generated from ([`errors_json`]).
//!
//! Every mapping names each variant, without a wildcard arm, so a new code forces a
//! decision here.

use serde_json::{Value, json};

use crate::ErrorCode;

/// What a client does about a code; each is one exit status of `agentgate connect`
/// (the names are those of `agentgate_client::ErrorClass::as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientClass {
    /// 401, close 4401 or 4408: get a valid credential. Exit 3.
    Unauthorized,
    /// 403, close 4403, `scope_missing`: not allowed. Exit 4.
    Forbidden,
    /// 429, 503, close 4429, 4409, 1012, 1013, `too_many_runs`: retry later. Exit 5.
    Unavailable,
    /// Any other close code or status: a client bug or an unexpected reply. Exit 7.
    Protocol,
    /// An `error` reply that ends a `run.start` (`agent_unknown`, ...). Exit 8.
    RunFailed,
}

impl ClientClass {
    /// `unauthorized`, `forbidden`, `unavailable`, `protocol` or `run_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::Protocol => "protocol",
            Self::RunFailed => "run_failed",
        }
    }

    /// The exit status of `agentgate connect`.
    pub fn exit_status(self) -> u8 {
        match self {
            Self::Unauthorized => 3,
            Self::Forbidden => 4,
            Self::Unavailable => 5,
            Self::Protocol => 7,
            Self::RunFailed => 8,
        }
    }
}

impl ErrorCode {
    /// The client's class of this code.
    pub fn client_class(self) -> ClientClass {
        match self {
            Self::TokenMissing
            | Self::TokenMalformed
            | Self::SignatureInvalid
            | Self::AlgorithmNotAllowed
            | Self::KeyUnknown
            | Self::TokenExpired
            | Self::TokenNotYetValid
            | Self::IssuerInvalid
            | Self::AudienceInvalid
            | Self::ClaimMissing
            | Self::TokenTypeInvalid
            | Self::TokenRevoked
            | Self::ApiKeyInvalid
            | Self::TicketInvalid
            | Self::AuthTimeout => ClientClass::Unauthorized,
            Self::AnonymousNotAllowed
            | Self::OriginNotAllowed
            | Self::ScopeMissing
            | Self::SessionForbidden
            | Self::PrincipalMismatch => ClientClass::Forbidden,
            Self::RateLimited
            | Self::TooManyConnections
            | Self::ServiceUnavailable
            | Self::SessionTakenOver
            | Self::SlowConsumer
            | Self::ServerRestart
            | Self::TooManyRuns => ClientClass::Unavailable,
            Self::CredentialsAmbiguous
            | Self::ProtocolError
            | Self::McpServerUnknown
            | Self::MessageTooLarge
            | Self::McpServerFailed
            | Self::InternalError => ClientClass::Protocol,
            Self::AgentUnknown | Self::RunNotFound => ClientClass::RunFailed,
        }
    }

    /// Whether trying again later (with backoff, resuming the session) can succeed.
    pub fn retryable(self) -> bool {
        self.client_class() == ClientClass::Unavailable
    }

    /// What to do, in one sentence.
    pub fn advice(self) -> &'static str {
        match self {
            Self::CredentialsAmbiguous => {
                "send exactly one credential (a header, a subprotocol, a query token or a ticket)"
            }
            Self::ProtocolError => {
                "the request or a frame broke the protocol (PROTOCOL.md section 5): fix the client; retrying the same \
                 thing fails the same way"
            }
            Self::TokenMissing => {
                "no credential reached the gateway: check that the token is set, non-empty, and sent on a transport \
                 the gateway accepts"
            }
            Self::TokenMalformed => {
                "send the access token itself (from agentgate token mint or your identity provider), not a made-up \
                 string or a session id"
            }
            Self::SignatureInvalid => {
                "the token was signed with a key the gateway does not hold (secret drift between issuer and gateway?): \
                 compare the token's key (agentgate token inspect) with the fingerprints agentgate doctor lists on the \
                 gateway's host; mint with the gateway's config (agentgate token mint --config FILE)"
            }
            Self::AlgorithmNotAllowed => "sign with an algorithm the issuer lists in `algorithms`",
            Self::KeyUnknown => {
                "the token names a kid the gateway holds no key for: compare kids with agentgate token inspect and \
                 agentgate doctor, and check that the issuer's JWKS is fetched"
            }
            Self::TokenExpired => {
                "the token expired: get a fresh one (agentgate token mint, or your identity provider), or answer \
                 auth.expiring with auth.refresh"
            }
            Self::TokenNotYetValid => "the token is not valid yet: check the clocks of the issuer and the gateway",
            Self::IssuerInvalid | Self::AudienceInvalid | Self::ClaimMissing => {
                "make the token's claims match the issuer's config (iss, aud, exp, sub): agentgate token inspect shows \
                 both"
            }
            Self::TokenTypeInvalid => "send the access token, not a refresh or id token",
            Self::TokenRevoked => "the token was revoked: sign in again or mint a new one",
            Self::ApiKeyInvalid => "use a configured API key, or mint a real token with agentgate token mint",
            Self::TicketInvalid => "tickets are single-use and short-lived: request a new one just before connecting",
            Self::AnonymousNotAllowed => "anonymous principals may not connect: sign the user in first",
            Self::OriginNotAllowed => {
                "add the page's origin to server.allowed_origins (a page opened from a file sends Origin: null, \
                 which cannot be allowed: serve it over http), or connect without an Origin"
            }
            Self::ScopeMissing => "the token lacks the scope this needs: get one that has it",
            Self::SessionForbidden => "that session belongs to another principal: connect without resuming it",
            Self::PrincipalMismatch => "refresh with a token of the same subject and tenant",
            Self::McpServerUnknown => "the gateway hosts no MCP server of that name: check the name in the URL",
            Self::RateLimited => "slow down, then retry after the pause (Retry-After) with backoff",
            Self::TooManyConnections => "close unused connections, then retry with backoff",
            Self::ServiceUnavailable => {
                "a dependency of the gateway (the shared backend) is down: retry with backoff; its /readyz names the \
                 failing check"
            }
            Self::AuthTimeout => "send the auth message as the first frame, right after connecting",
            Self::SessionTakenOver => {
                "another connection resumed this session: reconnect only if this one should own it"
            }
            Self::MessageTooLarge => "send smaller frames (server.max_message_bytes)",
            Self::SlowConsumer => "read faster: reconnect and resume the session to get the rest",
            Self::ServerRestart => "the gateway is restarting: reconnect with jitter and resume the session",
            Self::McpServerFailed => {
                "the hosted MCP server could not start or exited: the gateway's log holds its stderr; a new \
                 connection starts a new process"
            }
            Self::AgentUnknown => "use an agent the gateway lists in the message",
            Self::TooManyRuns => "wait for a run to end or cancel one, then retry",
            Self::RunNotFound => "nothing to do: the run is gone, finished or not yours",
            Self::InternalError => "an unexpected fault of the gateway: its log has the details (by request_id)",
        }
    }
}

/// `docs/errors.json`: every code with its HTTP status (or null), close code (or null
/// for `error` replies), client class, `connect` exit status, whether it is retryable,
/// and the advice; pretty-printed, one trailing newline.
pub fn errors_json() -> String {
    let codes: Vec<Value> = ErrorCode::ALL
        .iter()
        .map(|c| {
            let reply_only = matches!(c, ErrorCode::AgentUnknown | ErrorCode::TooManyRuns | ErrorCode::RunNotFound);
            json!({
                "code": c.as_str(),
                "http_status": c.http_status(),
                "close_code": if reply_only { None } else { Some(c.close_code()) },
                "client_class": c.client_class().as_str(),
                "connect_exit_status": c.client_class().exit_status(),
                "retryable": c.retryable(),
                "advice": c.advice(),
            })
        })
        .collect();
    let doc = json!({
        "generated_from": "crates/agentgate-protocol/src/code.rs and advice.rs",
        "regenerate": "UPDATE_ERRORS_JSON=1 cargo test -p agentgate-protocol --lib errors_json",
        "codes": codes,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/errors.json` is what [`errors_json`] generates; `UPDATE_ERRORS_JSON=1`
    /// rewrites it.
    #[test]
    fn errors_json_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.json");
        let want = errors_json();
        if std::env::var_os("UPDATE_ERRORS_JSON").is_some_and(|v| v == "1") {
            std::fs::write(path, &want).expect("write docs/errors.json");
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/errors.json is stale (or missing): regenerate it with\n  \
             UPDATE_ERRORS_JSON=1 cargo test -p agentgate-protocol --lib errors_json\nand commit it"
        );
    }

    #[test]
    fn classes_follow_the_close_codes() {
        for c in ErrorCode::ALL {
            let class = c.client_class();
            match c.close_code() {
                4401 | 4408 => assert_eq!(class, ClientClass::Unauthorized, "{c}"),
                4403 => assert_eq!(class, ClientClass::Forbidden, "{c}"),
                4429 | 4409 | 1012 | 1013 => assert_eq!(class, ClientClass::Unavailable, "{c}"),
                _ => {}
            }
            assert!(!c.advice().is_empty());
        }
    }
}
