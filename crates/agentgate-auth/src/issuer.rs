//! Configured credential sources: JWT issuers and API keys.

use std::sync::{Arc, RwLock};

use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};

use crate::keys::VerifyKey;

/// Material an issuer can sign with (for `token mint`), never used to verify.
#[derive(Clone)]
pub enum SigningKey {
    /// The issuer's HMAC secret.
    Hmac(Vec<u8>),
    /// A PEM private key (`private_key_file`).
    PrivatePem(Vec<u8>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hmac(_) => f.write_str("SigningKey::Hmac([redacted])"),
            Self::PrivatePem(_) => f.write_str("SigningKey::PrivatePem([redacted])"),
        }
    }
}

/// One `[[auth.jwt]]` issuer, ready to verify.
#[derive(Debug)]
pub struct Issuer {
    /// The configured `name`; principals show `via: "jwt:<name>"`.
    pub name: String,
    /// Algorithms this issuer accepts.
    pub algorithms: Vec<Algorithm>,
    /// Required `iss` value, if set.
    pub issuer: Option<String>,
    /// Accepted audiences; empty means `aud` is not checked.
    pub audience: Vec<String>,
    /// Claim holding the tenant.
    pub tenant_claim: String,
    /// Claim holding the scopes (space-separated string or array).
    pub scope_claim: String,
    /// What `token mint` signs with, if anything.
    pub signing: Option<SigningKey>,
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    /// `jwt:<name>`, made once.
    via: String,
}

impl Issuer {
    /// An issuer with its verification keys.
    pub fn new(name: impl Into<String>, algorithms: Vec<Algorithm>, keys: Vec<VerifyKey>) -> Self {
        let name = name.into();
        Self {
            via: format!("jwt:{name}"),
            name,
            algorithms,
            issuer: None,
            audience: Vec::new(),
            tenant_claim: "tenant".into(),
            scope_claim: "scope".into(),
            signing: None,
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    /// What its principals show as `via`: `jwt:<name>`.
    pub fn via(&self) -> &str {
        &self.via
    }

    /// A snapshot of the current keys (JWKS issuers replace them on refresh).
    pub fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Replace the keys, for a JWKS refresh.
    pub fn set_keys(&self, keys: Vec<VerifyKey>) {
        let mut guard = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(keys);
    }

    /// Whether a key of this issuer has `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys().iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// One `[[auth.api_keys]]` entry: only the SHA-256 digest of the key is held.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The configured `name`; principals show `via: "api_key:<name>"`.
    pub name: String,
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    /// Subject of the principal.
    pub subject: String,
    /// Tenant of the principal.
    pub tenant: Option<String>,
    /// Scopes of the principal.
    pub scopes: Vec<String>,
}

impl ApiKey {
    /// Digest of a presented key.
    pub fn digest_of(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }
}
