//! Credentials for agentgate: verifying JWTs and API keys exactly as PROTOCOL.md
//! section 2.1 orders the checks, minting tokens for `agentgate token mint`, and naming
//! keys by fingerprint.
//!
//! # Layout
//! - [`keys`]: key material ([`VerifyKey`]) from secrets, PEM files and JWKS, each with
//!   its [`KeyKind`] and fingerprint.
//! - [`issuer`]: configured sources, [`Issuer`] and [`ApiKey`].
//! - [`verify`]: the [`Authenticator`], producing a [`Principal`] or an [`AuthError`]
//!   with its reason code.
//! - [`mint`]: signing tokens with an issuer's configured key.
//! - [`error`]: the error types.

pub mod error;
pub mod issuer;
pub mod keys;
pub mod mint;
pub mod verify;

pub use error::{AuthError, KeyError, MintError};
pub use issuer::{ApiKey, Issuer, SigningKey};
pub use jsonwebtoken::Algorithm;
pub use keys::{KeyKind, VerifyKey, fingerprint, parse_jwks};
pub use mint::{MintRequest, Minted};
pub use verify::{
    API_KEY_ISSUER, Authenticator, Policy, Principal, Revocations, Trace, expires_after, is_expired, parse_alg,
};
