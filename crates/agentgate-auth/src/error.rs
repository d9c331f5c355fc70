//! Errors of this crate. `AuthError` carries the reason code and a message that says
//! what was wrong with the credential, never the credential itself.

use agentgate_protocol::ErrorCode;

/// A credential was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    code: ErrorCode,
    message: String,
}

impl AuthError {
    /// A refusal with `code` and an explanation for the client. The message must not
    /// contain the token: callers pass only facts about it.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The reason code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The explanation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Key material could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// Bad PEM.
    #[error("PEM: {0}")]
    Pem(String),
    /// Bad JWK or JWKS.
    #[error("JWK: {0}")]
    Jwk(String),
    /// A key type agentgate does not use.
    #[error("unsupported key: {0}")]
    Unsupported(String),
    /// An HMAC secret with no bytes.
    #[error("the secret is empty")]
    EmptySecret,
}

/// A token could not be minted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MintError {
    /// No issuer can sign.
    #[error("{0}")]
    NoSigningKey(String),
    /// The signing library failed.
    #[error("signing failed: {0}")]
    Sign(String),
}
