//! Key material: HMAC secrets, PEM public keys and JWKS entries, each classified by
//! type so that an algorithm is allowed only with a key of its family (and curve), and
//! each with a fingerprint that identifies it without revealing it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};
use simple_asn1::{ASN1Block, BigInt, BigUint, oid};

use crate::error::KeyError;

/// What a key is, which decides the algorithms it can ever verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A shared HMAC secret: HS256/384/512.
    Hmac,
    /// An RSA public key: RS* and PS*.
    Rsa,
    /// A P-256 public key: ES256.
    EcP256,
    /// A P-384 public key: ES384.
    EcP384,
    /// An Ed25519 public key: EdDSA.
    Ed25519,
}

impl KeyKind {
    /// Whether `alg` can be verified with a key of this kind.
    pub fn admits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Hmac => matches!(alg, HS256 | HS384 | HS512),
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::EcP256 => alg == ES256,
            Self::EcP384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
        }
    }

    /// A short human name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hmac => "HMAC secret",
            Self::Rsa => "RSA public key",
            Self::EcP256 => "EC P-256 public key",
            Self::EcP384 => "EC P-384 public key",
            Self::Ed25519 => "Ed25519 public key",
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub struct VerifyKey {
    /// The key id, if the key has one (JWKS entries, or an issuer's `kid`).
    pub kid: Option<String>,
    /// Key type.
    pub kind: KeyKind,
    /// The algorithm a JWK pins (`alg` member); `None` lets the issuer's list decide.
    pub pinned_alg: Option<Algorithm>,
    /// First 8 hex digits of SHA-256 of the secret bytes (HMAC) or of the DER
    /// `SubjectPublicKeyInfo`.
    pub fingerprint: String,
    pub(crate) key: DecodingKey,
    /// An HMAC secret's keys, prepared once (HS256, HS384, HS512): preparing one hashes
    /// the secret into its pads, which would otherwise happen at every verification.
    pub(crate) hmac: Option<Box<HmacKeys>>,
}

/// An HMAC secret prepared for each HS algorithm.
#[derive(Clone)]
pub(crate) struct HmacKeys {
    pub(crate) hs256: aws_lc_rs::hmac::Key,
    pub(crate) hs384: aws_lc_rs::hmac::Key,
    pub(crate) hs512: aws_lc_rs::hmac::Key,
}

impl HmacKeys {
    fn new(secret: &[u8]) -> Box<Self> {
        use aws_lc_rs::hmac::{HMAC_SHA256, HMAC_SHA384, HMAC_SHA512, Key};
        Box::new(Self {
            hs256: Key::new(HMAC_SHA256, secret),
            hs384: Key::new(HMAC_SHA384, secret),
            hs512: Key::new(HMAC_SHA512, secret),
        })
    }

    /// The key for `alg`, if it is an HS algorithm.
    pub(crate) fn get(&self, alg: Algorithm) -> Option<&aws_lc_rs::hmac::Key> {
        match alg {
            Algorithm::HS256 => Some(&self.hs256),
            Algorithm::HS384 => Some(&self.hs384),
            Algorithm::HS512 => Some(&self.hs512),
            _ => None,
        }
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn admits(&self, alg: Algorithm) -> bool {
        self.kind.admits(alg) && self.pinned_alg.is_none_or(|p| p == alg)
    }

    /// An HMAC secret.
    ///
    /// # Errors
    /// An empty secret.
    pub fn from_secret(secret: &[u8], kid: Option<String>) -> Result<Self, KeyError> {
        let key = DecodingKey::from_secret(secret).map_err(|_| KeyError::EmptySecret)?;
        let hmac = Some(HmacKeys::new(secret));
        Ok(Self { kid, kind: KeyKind::Hmac, pinned_alg: None, fingerprint: fingerprint(secret), key, hmac })
    }

    /// A PEM public key: `PUBLIC KEY` (SubjectPublicKeyInfo, RSA, EC P-256/P-384 or
    /// Ed25519) or `RSA PUBLIC KEY` (PKCS#1).
    ///
    /// # Errors
    /// Not PEM, not a public key, or a key type agentgate does not verify with.
    pub fn from_pem(pem_bytes: &[u8], kid: Option<String>) -> Result<Self, KeyError> {
        let parsed = pem::parse(pem_bytes).map_err(|e| KeyError::Pem(e.to_string()))?;
        match parsed.tag() {
            "PUBLIC KEY" => Self::from_spki_der(parsed.contents(), kid),
            "RSA PUBLIC KEY" => {
                let spki = spki(rsa_algorithm_identifier(), parsed.contents())?;
                Ok(Self {
                    kid,
                    kind: KeyKind::Rsa,
                    pinned_alg: None,
                    fingerprint: fingerprint(&spki),
                    key: DecodingKey::from_rsa_der(parsed.contents()),
                    hmac: None,
                })
            }
            "CERTIFICATE" => Err(KeyError::Pem(
                "this is a certificate; extract its public key with `openssl x509 -pubkey -noout -in cert.pem`".into(),
            )),
            tag if tag.contains("PRIVATE") => Err(KeyError::Pem(format!(
                "this is a private key ({tag}); a verification key must be public: `openssl pkey -in key.pem -pubout`"
            ))),
            tag => Err(KeyError::Pem(format!("unexpected PEM block {tag:?}; expected PUBLIC KEY"))),
        }
    }

    fn from_spki_der(der: &[u8], kid: Option<String>) -> Result<Self, KeyError> {
        let bad = |what: &str| KeyError::Pem(format!("public key DER is malformed: {what}"));
        let blocks = simple_asn1::from_der(der).map_err(|e| KeyError::Pem(e.to_string()))?;
        let Some(ASN1Block::Sequence(_, parts)) = blocks.first() else {
            return Err(bad("not a SEQUENCE"));
        };
        let (Some(ASN1Block::Sequence(_, alg_id)), Some(ASN1Block::BitString(_, _, bits))) =
            (parts.first(), parts.get(1))
        else {
            return Err(bad("no algorithm identifier and key bits"));
        };
        let Some(ASN1Block::ObjectIdentifier(_, alg_oid)) = alg_id.first() else {
            return Err(bad("no algorithm OID"));
        };
        let fp = fingerprint(der);
        if *alg_oid == oid!(1, 2, 840, 113549, 1, 1, 1) {
            return Ok(Self {
                kid,
                kind: KeyKind::Rsa,
                pinned_alg: None,
                fingerprint: fp,
                key: DecodingKey::from_rsa_der(bits),
                hmac: None,
            });
        }
        if *alg_oid == oid!(1, 3, 101, 112) {
            return Ok(Self {
                kid,
                kind: KeyKind::Ed25519,
                pinned_alg: None,
                fingerprint: fp,
                key: DecodingKey::from_ed_der(bits),
                hmac: None,
            });
        }
        if *alg_oid == oid!(1, 2, 840, 10045, 2, 1) {
            let kind = match alg_id.get(1) {
                Some(ASN1Block::ObjectIdentifier(_, c)) if *c == oid!(1, 2, 840, 10045, 3, 1, 7) => KeyKind::EcP256,
                Some(ASN1Block::ObjectIdentifier(_, c)) if *c == oid!(1, 3, 132, 0, 34) => KeyKind::EcP384,
                _ => {
                    return Err(KeyError::Unsupported("EC key on a curve other than P-256 or P-384".into()));
                }
            };
            return Ok(Self {
                kid,
                kind,
                pinned_alg: None,
                fingerprint: fp,
                key: DecodingKey::from_ec_der(bits),
                hmac: None,
            });
        }
        Err(KeyError::Unsupported(format!("public key algorithm {alg_oid:?}")))
    }

    /// One JWK. Keys marked `"use":"enc"` are refused; an `oct` key is an HMAC secret.
    ///
    /// # Errors
    /// A malformed or unsupported JWK.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(KeyError::Unsupported("JWK with \"use\":\"enc\"".into()));
        }
        let kid = jwk.common.key_id.clone();
        let pinned_alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(jwk_alg(a)?),
        };
        let b64 = |s: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|_| KeyError::Jwk(format!("`{what}` is not base64url")))
        };
        let (kind, key, spki_or_secret) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let n = b64(&p.n, "n")?;
                let e = b64(&p.e, "e")?;
                let pkcs1 = simple_asn1::to_der(&ASN1Block::Sequence(
                    0,
                    vec![
                        ASN1Block::Integer(0, BigInt::from(BigUint::from_bytes_be(&n))),
                        ASN1Block::Integer(0, BigInt::from(BigUint::from_bytes_be(&e))),
                    ],
                ))
                .map_err(|e| KeyError::Jwk(e.to_string()))?;
                let spki = spki(rsa_algorithm_identifier(), &pkcs1)?;
                (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e), spki)
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let (kind, curve_oid, len) = match p.curve {
                    EllipticCurve::P256 => (KeyKind::EcP256, oid!(1, 2, 840, 10045, 3, 1, 7), 32),
                    EllipticCurve::P384 => (KeyKind::EcP384, oid!(1, 3, 132, 0, 34), 48),
                    ref other => {
                        return Err(KeyError::Unsupported(format!("EC curve {other:?}")));
                    }
                };
                let x = b64(&p.x, "x")?;
                let y = b64(&p.y, "y")?;
                if x.len() != len || y.len() != len {
                    return Err(KeyError::Jwk("EC coordinates have the wrong length".into()));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let alg_id = vec![
                    ASN1Block::ObjectIdentifier(0, oid!(1, 2, 840, 10045, 2, 1)),
                    ASN1Block::ObjectIdentifier(0, curve_oid),
                ];
                let spki = spki(alg_id, &point)?;
                (kind, DecodingKey::from_ec_der(&point), spki)
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                if p.curve != EllipticCurve::Ed25519 {
                    return Err(KeyError::Unsupported(format!("OKP curve {:?}", p.curve)));
                }
                let x = b64(&p.x, "x")?;
                if x.len() != 32 {
                    return Err(KeyError::Jwk("Ed25519 key must be 32 bytes".into()));
                }
                let spki = spki(vec![ASN1Block::ObjectIdentifier(0, oid!(1, 3, 101, 112))], &x)?;
                (KeyKind::Ed25519, DecodingKey::from_ed_der(&x), spki)
            }
            AlgorithmParameters::OctetKey(p) => {
                let k = b64(&p.value, "k")?;
                let key = DecodingKey::from_secret(&k).map_err(|_| KeyError::EmptySecret)?;
                (KeyKind::Hmac, key, k)
            }
            _ => return Err(KeyError::Unsupported("JWK key type".into())),
        };
        if let Some(a) = pinned_alg
            && !kind.admits(a)
        {
            return Err(KeyError::Jwk(format!("`alg` {a:?} does not fit a {}", kind.as_str())));
        }
        let hmac = (kind == KeyKind::Hmac).then(|| HmacKeys::new(&spki_or_secret));
        Ok(Self { kid, kind, pinned_alg, fingerprint: fingerprint(&spki_or_secret), key, hmac })
    }
}

/// Parse a JWKS document. Entries that cannot be used (encryption keys, unsupported
/// curves) are skipped and reported in the second list, so one odd key does not take
/// down the others.
///
/// # Errors
/// The document is not a JWKS (`{"keys":[...]}`).
pub fn parse_jwks(bytes: &[u8]) -> Result<(Vec<VerifyKey>, Vec<String>), KeyError> {
    let raw: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| KeyError::Jwk(format!("not JSON: {e}")))?;
    let Some(entries) = raw.get("keys").and_then(|k| k.as_array()) else {
        return Err(KeyError::Jwk("a JWKS is an object with a `keys` array".into()));
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let parsed = serde_json::from_value::<Jwk>(entry.clone())
            .map_err(|e| KeyError::Jwk(e.to_string()))
            .and_then(|jwk| VerifyKey::from_jwk(&jwk));
        match parsed {
            Ok(k) => keys.push(k),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    Ok((keys, skipped))
}

fn jwk_alg(a: KeyAlgorithm) -> Result<Algorithm, KeyError> {
    Ok(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        other => return Err(KeyError::Unsupported(format!("JWK alg {other:?}"))),
    })
}

fn rsa_algorithm_identifier() -> Vec<ASN1Block> {
    vec![ASN1Block::ObjectIdentifier(0, oid!(1, 2, 840, 113549, 1, 1, 1)), ASN1Block::Null(0)]
}

fn spki(alg_id: Vec<ASN1Block>, key_bits: &[u8]) -> Result<Vec<u8>, KeyError> {
    simple_asn1::to_der(&ASN1Block::Sequence(
        0,
        vec![ASN1Block::Sequence(0, alg_id), ASN1Block::BitString(0, key_bits.len() * 8, key_bits.to_vec())],
    ))
    .map_err(|e| KeyError::Jwk(e.to_string()))
}

/// First 8 hex digits of SHA-256: how agentgate names a secret, key or token in logs
/// and tools without revealing it.
pub fn fingerprint(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(8);
    for b in &digest[..4] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_keys_admit_only_hs_algorithms() {
        let k = VerifyKey::from_secret(b"0123456789abcdef0123456789abcdef", None).unwrap();
        assert!(k.admits(Algorithm::HS256));
        assert!(!k.admits(Algorithm::RS256));
        assert!(!k.admits(Algorithm::EdDSA));
    }

    #[test]
    fn fingerprint_is_eight_hex_digits_of_sha256() {
        // sha256("abc") = ba7816bf...
        assert_eq!(fingerprint(b"abc"), "ba7816bf");
    }
}
