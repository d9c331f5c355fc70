//! Rejections, turned into responses in one place: an HTTP response before the upgrade
//! (status, `X-Request-Id`, JSON body, `WWW-Authenticate` on 401, `Retry-After` on
//! 429), or a close frame with the code's close code and `{"code":"..."}` reason.

use agentgate_protocol::ErrorCode;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::Profile;

/// A refused request: code, message for the client, request id, and the token
/// fingerprint for the log line.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Reason code.
    pub code: ErrorCode,
    /// What happened and what to do; never a credential.
    pub message: String,
    /// `req_...`.
    pub request_id: String,
    /// Fingerprint of the presented token, if any.
    pub token_fp: Option<String>,
    /// Seconds for `Retry-After` (429).
    pub retry_after_s: Option<u64>,
}

impl Rejection {
    /// A rejection with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>, request_id: &str) -> Self {
        Self { code, message: message.into(), request_id: request_id.to_owned(), token_fp: None, retry_after_s: None }
    }

    /// Attach the token fingerprint for logs.
    pub fn with_token_fp(mut self, fp: Option<String>) -> Self {
        self.token_fp = fp;
        self
    }

    /// The message shown to the client: detailed in development, generic in
    /// production (the code is exact in both).
    pub fn client_message(&self, profile: Profile) -> String {
        match profile {
            Profile::Development => self.message.clone(),
            Profile::Production => generic_message(self.code).to_owned(),
        }
    }

    /// The HTTP response for this rejection.
    pub fn into_http(self, profile: Profile) -> Response {
        let status =
            self.code.http_status().and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::BAD_REQUEST);
        let body = json!({"error": {"code": self.code.as_str(), "message": self.client_message(profile), "request_id": self.request_id}});
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.insert("x-request-id", v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            let v = format!(
                "Bearer realm=\"agentgate\", error=\"invalid_token\", error_description=\"{}\"",
                self.code.as_str()
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            h.insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after_s.unwrap_or(1)));
        }
        resp
    }
}

/// A generic, stable message per code, for the production profile.
pub fn generic_message(code: ErrorCode) -> &'static str {
    use ErrorCode::*;
    match code {
        CredentialsAmbiguous => "more than one credential was presented; send exactly one",
        ProtocolError => "the request or frame does not follow the agentgate protocol",
        TokenMissing => "no credential was presented",
        TokenMalformed => "the credential is not a well-formed token",
        SignatureInvalid => "the token's signature does not verify",
        AlgorithmNotAllowed => "the token's algorithm is not allowed",
        KeyUnknown => "the token names an unknown key",
        TokenExpired => "the token has expired",
        TokenNotYetValid => "the token is not valid yet",
        IssuerInvalid => "the token's issuer is not accepted",
        AudienceInvalid => "the token's audience is not accepted",
        ClaimMissing => "the token lacks a required claim",
        TokenTypeInvalid => "the token is not an access token",
        TokenRevoked => "the token has been revoked",
        ApiKeyInvalid => "the API key is not valid",
        TicketInvalid => "the ticket is not valid",
        AnonymousNotAllowed => "anonymous principals may not connect",
        OriginNotAllowed => "this origin is not allowed",
        ScopeMissing => "the principal lacks the required scope",
        SessionForbidden => "the session belongs to another principal",
        PrincipalMismatch => "the new token belongs to another principal",
        McpServerUnknown => "no such MCP server",
        RateLimited => "too many requests; retry later",
        TooManyConnections => "too many connections",
        ServiceUnavailable => "the service is temporarily unavailable",
        AuthTimeout => "authentication was not received in time",
        SessionTakenOver => "the session was resumed on another connection",
        MessageTooLarge => "the message is too large",
        SlowConsumer => "the client did not read fast enough",
        ServerRestart => "the server is restarting",
        McpServerFailed => "the MCP server failed",
        AgentUnknown => "no such agent",
        TooManyRuns => "too many concurrent runs",
        RunNotFound => "no such run",
        InternalError => "internal error",
    }
}
