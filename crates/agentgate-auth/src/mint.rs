//! `token mint`: sign a token with an issuer's own key configuration, so that tests and
//! tools never need token helpers of their own.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde_json::{Map, Value};

use crate::error::MintError;
use crate::issuer::{Issuer, SigningKey};
use crate::keys::KeyKind;

/// What to put in a minted token.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    /// `sub`.
    pub subject: String,
    /// Written to the issuer's `tenant_claim`.
    pub tenant: Option<String>,
    /// Written to the issuer's `scope_claim` as a space-separated string.
    pub scopes: Vec<String>,
    /// Lifetime in seconds (`exp = iat + ttl`).
    pub ttl_s: i64,
    /// `jti`; a random one when `None`.
    pub jti: Option<String>,
    /// Extra claims, applied last (they may override the ones above).
    pub extra: Map<String, Value>,
}

/// A minted token and how it was signed.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The compact JWT.
    pub token: String,
    /// The algorithm used.
    pub algorithm: Algorithm,
    /// The `kid` written to the header, if any.
    pub kid: Option<String>,
}

impl Issuer {
    /// Whether this issuer can sign tokens.
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    /// Sign a token for `req` at Unix time `now`.
    ///
    /// For an HMAC secret the first `HS*` algorithm of the issuer is used. For a private
    /// key, each algorithm of the issuer is tried until one signs a probe that one of the
    /// issuer's verification keys accepts: this proves the private key belongs to the
    /// issuer before a token is handed out, and gives the `kid` to put in the header.
    ///
    /// # Errors
    /// No signing material, or a private key that matches no verification key.
    pub fn mint(&self, req: &MintRequest, now: i64) -> Result<Minted, MintError> {
        let (algorithm, encoding, kid) = self.signing_choice()?;
        let mut claims = Map::new();
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), Value::from(iss.clone()));
        }
        claims.insert("sub".into(), Value::from(req.subject.clone()));
        match self.audience.as_slice() {
            [] => {}
            [one] => {
                claims.insert("aud".into(), Value::from(one.clone()));
            }
            many => {
                claims.insert("aud".into(), Value::from(many.to_vec()));
            }
        }
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now.saturating_add(req.ttl_s)));
        let jti = req.jti.clone().unwrap_or_else(random_jti);
        claims.insert("jti".into(), Value::from(jti));
        if let Some(t) = &req.tenant {
            claims.insert(self.tenant_claim.clone(), Value::from(t.clone()));
        }
        claims.insert(self.scope_claim.clone(), Value::from(req.scopes.join(" ")));
        for (k, v) in &req.extra {
            claims.insert(k.clone(), v.clone());
        }
        let mut header = Header::new(algorithm);
        header.kid = kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| MintError::Sign(e.to_string()))?;
        Ok(Minted { token, algorithm, kid })
    }

    fn signing_choice(&self) -> Result<(Algorithm, EncodingKey, Option<String>), MintError> {
        let Some(signing) = &self.signing else {
            return Err(MintError::NoSigningKey(format!(
                "issuer {:?} has no secret or private_key_file to sign with",
                self.name
            )));
        };
        let keys = self.keys();
        match signing {
            SigningKey::Hmac(secret) => {
                let alg =
                    self.algorithms.iter().copied().find(|a| KeyKind::Hmac.admits(*a)).ok_or_else(|| {
                        MintError::NoSigningKey(format!("issuer {:?} lists no HS algorithm", self.name))
                    })?;
                let kid = keys.iter().find(|k| k.kind == KeyKind::Hmac).and_then(|k| k.kid.clone());
                let enc = EncodingKey::from_secret(secret).map_err(|e| MintError::Sign(e.to_string()))?;
                Ok((alg, enc, kid))
            }
            SigningKey::PrivatePem(pem) => {
                let probe = b"agentgate.mint.probe";
                for alg in &self.algorithms {
                    let enc = match alg {
                        Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
                        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
                        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                        _ => continue,
                    };
                    let Ok(enc) = enc else { continue };
                    let Ok(sig) = jsonwebtoken::crypto::sign(probe, &enc, *alg) else { continue };
                    for key in keys.iter().filter(|k| k.admits(*alg)) {
                        if jsonwebtoken::crypto::verify(&sig, probe, &key.key, *alg).unwrap_or(false) {
                            return Ok((*alg, enc, key.kid.clone()));
                        }
                    }
                }
                Err(MintError::NoSigningKey(format!(
                    "the private_key_file of issuer {:?} matches none of its verification keys for {:?}; \
                     tokens signed with it would be rejected",
                    self.name, self.algorithms
                )))
            }
        }
    }
}

fn random_jti() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}
