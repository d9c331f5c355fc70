//! The credential check of PROTOCOL.md section 2 and 2.1, step by step and in order.
//!
//! `jsonwebtoken` is used for the signature alone (`crypto::verify` with an algorithm
//! and key this module chose); every claim rule is applied here, because the library
//! accepts tokens without `aud`/`iss` unless told otherwise, never checks `iat`, and
//! has no size limit.

use std::borrow::Cow;
use std::sync::Arc;

use agentgate_protocol::{ErrorCode, id};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::error::AuthError;
use crate::issuer::{ApiKey, Issuer};
use crate::keys::{VerifyKey, fingerprint};

/// Longest token checked as a JWT; longer ones are `token_malformed`.
pub const MAX_JWT_BYTES: usize = 8192;

/// Type-claim values that mark an access token (compared case-insensitively).
const ACCESS_TYPES: &[&str] = &["access", "access_token", "at+jwt", "bearer"];

/// The issuer of every API key principal (PROTOCOL.md section 6: all API keys count as
/// one issuer).
pub const API_KEY_ISSUER: &str = "api_key";

/// Claims naming a token's type.
const TYPE_CLAIMS: &[&str] = &["typ", "type", "token_use", "token_type"];

/// Who a verified credential speaks for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    /// The issuer: the JWT issuer's configured `name`, or [`API_KEY_ISSUER`] for every
    /// API key. A ticket keeps the issuer of the credential that created it.
    pub issuer: String,
    /// `sub`, or the API key's subject.
    pub subject: String,
    /// The tenant, if any.
    pub tenant: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `jwt:<issuer>` or `api_key:<name>`.
    pub via: String,
    /// The credential's `exp` (`None` for an API key).
    pub expires_at: Option<i64>,
    /// `jti`, for revocation.
    pub jti: Option<String>,
    /// `iat`, for revocation by subject.
    pub issued_at: Option<i64>,
    /// Fingerprint of the token itself, for logs.
    pub token_fp: String,
}

/// The one rule for `token_expired`, at a handshake and on a live connection alike:
/// `now` (Unix seconds) is after `exp + leeway`. Never overflows.
pub fn is_expired(exp: i64, now: i64, leeway: i64) -> bool {
    now > exp.saturating_add(leeway)
}

/// The first Unix second at which a credential with this `exp` counts as expired.
pub fn expires_after(exp: i64, leeway: i64) -> i64 {
    exp.saturating_add(leeway).saturating_add(1)
}

impl Principal {
    /// Whether the principal holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Same issuer, subject and tenant: the identity sessions and runs are bound to
    /// (PROTOCOL.md section 6).
    pub fn same_identity(&self, other: &Principal) -> bool {
        self.issuer == other.issuer && self.subject == other.subject && self.tenant == other.tenant
    }
}

/// Revocation lookups, answered by the gateway's revocation list.
pub trait Revocations: Send + Sync + std::fmt::Debug {
    /// Whether a token with these facts has been revoked.
    fn is_revoked(&self, jti: Option<&str>, subject: &str, issued_at: Option<i64>) -> bool;
}

/// Settings that apply to every credential.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Clock skew allowed on `exp`, `nbf`, `iat`.
    pub leeway_s: i64,
    /// `role` values that mark an anonymous principal.
    pub anonymous_roles: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self { leeway_s: 30, anonymous_roles: vec!["anon".into()] }
    }
}

/// What the check saw on the way to its verdict: for `token inspect` and logs.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The decoded JWT header, if it decoded.
    pub header: Option<Map<String, Value>>,
    /// The decoded JWT payload, if it decoded.
    pub claims: Option<Map<String, Value>>,
    /// The issuer chosen (step 2).
    pub issuer: Option<String>,
    /// The key whose signature verified: (`kid`, fingerprint).
    pub key: Option<(Option<String>, String)>,
    /// The API key that matched.
    pub api_key: Option<String>,
    /// Whether to record at all: handshakes verify without a trace, so the decoded
    /// header and claims are not copied on the hot path.
    record: bool,
}

impl Trace {
    fn note_issuer(&mut self, issuer: &Issuer) {
        if self.record {
            self.issuer = Some(issuer.name.clone());
        }
    }
}

/// Verifies credentials against configured issuers and API keys.
#[derive(Debug)]
pub struct Authenticator {
    issuers: Vec<Arc<Issuer>>,
    api_keys: Vec<ApiKey>,
    policy: Policy,
    revocations: Option<Arc<dyn Revocations>>,
}

impl Authenticator {
    /// An authenticator over these sources.
    pub fn new(issuers: Vec<Arc<Issuer>>, api_keys: Vec<ApiKey>, policy: Policy) -> Self {
        Self { issuers, api_keys, policy, revocations: None }
    }

    /// Consult `revocations` for every token.
    pub fn with_revocations(mut self, revocations: Arc<dyn Revocations>) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// The configured issuers.
    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// The configured API keys.
    pub fn api_keys(&self) -> &[ApiKey] {
        &self.api_keys
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Verify a bearer token at Unix time `now`.
    ///
    /// # Errors
    /// An [`AuthError`] with the exact reason code.
    pub fn verify(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        self.classify(token, now, &mut Trace::default())
    }

    /// Verify, and say what was seen on the way.
    pub fn verify_traced(&self, token: &str, now: i64) -> (Result<Principal, AuthError>, Trace) {
        let mut trace = Trace { record: true, ..Trace::default() };
        let result = self.classify(token, now, &mut trace);
        (result, trace)
    }

    fn classify(&self, token: &str, now: i64, trace: &mut Trace) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::new(ErrorCode::TokenMissing, "the credential is empty"));
        }
        if token.split('.').count() == 3 {
            return self.verify_jwt(token, now, trace);
        }
        if let Some(what) = id::looks_like_server_id(token) {
            return Err(AuthError::new(
                ErrorCode::TokenMalformed,
                format!(
                    "the credential looks like {what} (it starts with the server's prefix), not a token; \
                     send an access token and pass session ids only as `session_id`"
                ),
            ));
        }
        self.verify_api_key(token, trace)
    }

    fn verify_api_key(&self, token: &str, trace: &mut Trace) -> Result<Principal, AuthError> {
        if self.api_keys.is_empty() {
            return Err(AuthError::new(
                ErrorCode::TokenMalformed,
                "the credential is not a JWT (a JWT has three dot-separated parts) and no API keys are configured",
            ));
        }
        let digest = ApiKey::digest_of(token);
        // Compare against every key without stopping early, in constant time each.
        let mut found: Option<&ApiKey> = None;
        for key in &self.api_keys {
            if bool::from(key.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(key);
            }
        }
        let Some(key) = found else {
            return Err(AuthError::new(
                ErrorCode::ApiKeyInvalid,
                "the credential is not a JWT (a JWT has three dot-separated parts) and matches no configured API key; \
                 mint a real token with `agentgate token mint` or use a configured API key",
            ));
        };
        if trace.record {
            trace.api_key = Some(key.name.clone());
        }
        let principal = Principal {
            issuer: API_KEY_ISSUER.to_owned(),
            subject: key.subject.clone(),
            tenant: key.tenant.clone(),
            scopes: key.scopes.clone(),
            via: format!("api_key:{}", key.name),
            expires_at: None,
            jti: None,
            issued_at: None,
            token_fp: fingerprint(token.as_bytes()),
        };
        if self.is_revoked(&principal) {
            return Err(AuthError::new(ErrorCode::TokenRevoked, "this API key's subject has been revoked"));
        }
        Ok(principal)
    }

    fn verify_jwt(&self, token: &str, now: i64, trace: &mut Trace) -> Result<Principal, AuthError> {
        use ErrorCode::*;
        // Step 1: size and shape.
        if token.len() > MAX_JWT_BYTES {
            return Err(AuthError::new(
                TokenMalformed,
                format!("the JWT is {} bytes, above the limit of {MAX_JWT_BYTES}", token.len()),
            ));
        }
        let mut parts = token.split('.');
        let (h64, p64, s64) = match (parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(s)) => (h, p, s),
            _ => return Err(AuthError::new(TokenMalformed, "a JWT has three dot-separated parts")),
        };
        let header_bytes = decode_part(h64, "header")?;
        let header = json_object::<Members<'_>>(&header_bytes, "header")?;
        if trace.record {
            trace.header = Some(decode_object(h64, "header")?);
        }
        let payload = decode_part(p64, "payload")?;
        let claims = json_object::<Members<'_>>(&payload, "payload")?;
        if trace.record {
            trace.claims = Some(decode_object(p64, "payload")?);
        }
        if header.contains_key("crit") {
            // RFC 7515 4.1.11: extensions listed in `crit` must be understood; agentgate
            // implements none, so such a token cannot be verified safely.
            return Err(AuthError::new(
                TokenMalformed,
                "the JWT header's `crit` lists extensions agentgate does not implement",
            ));
        }
        let alg = match header.get("alg") {
            Some(Claim::Str(a)) => a.as_ref(),
            Some(_) => return Err(AuthError::new(AlgorithmNotAllowed, "the JWT header's `alg` is not a string")),
            None => return Err(AuthError::new(AlgorithmNotAllowed, "the JWT header has no `alg`")),
        };
        let alg = parse_alg(alg)?;

        // Step 2: choose the issuer.
        let kid = match header.get("kid") {
            None => None,
            Some(Claim::Str(k)) => Some(k.as_ref()),
            Some(_) => return Err(AuthError::new(TokenMalformed, "the JWT header's `kid` is not a string")),
        };
        let iss = match claims.get("iss") {
            None => None,
            Some(Claim::Str(i)) => Some(i.as_ref()),
            Some(_) => return Err(AuthError::new(IssuerInvalid, "the `iss` claim is not a string")),
        };
        let signing_input = &token[..h64.len() + 1 + p64.len()];
        // The key that verified, for the trace only (never cloned otherwise).
        let record = trace.record;
        let (issuer, key) = if let Some(kid) = kid {
            let Some(issuer) = self.issuers.iter().find(|i| i.has_kid(kid)) else {
                let held: Vec<String> = self
                    .issuers
                    .iter()
                    .flat_map(|i| i.keys().iter().filter_map(|k| k.kid.clone()).collect::<Vec<_>>())
                    .collect();
                return Err(AuthError::new(
                    KeyUnknown,
                    format!("no configured key has kid {:?}; the server holds kids {:?}", truncate(kid, 64), held),
                ));
            };
            trace.note_issuer(issuer);
            let keys = issuer.keys();
            let Some(key) = keys.iter().find(|k| k.kid.as_deref() == Some(kid)) else {
                return Err(AuthError::new(KeyUnknown, "the key was rotated away during verification"));
            };
            check_alg(issuer, key, alg)?;
            verify_signature(key, alg, signing_input, s64)?;
            (Arc::clone(issuer), record.then(|| (key.kid.clone(), key.fingerprint.clone())))
        } else if let Some(issuer) = iss.and_then(|iss| self.issuers.iter().find(|i| i.issuer.as_deref() == Some(iss)))
        {
            trace.note_issuer(issuer);
            if !issuer.algorithms.contains(&alg) {
                return Err(alg_not_allowed(issuer, alg));
            }
            let keys = issuer.keys();
            let fitting: Vec<&VerifyKey> = keys.iter().filter(|k| k.admits(alg)).collect();
            if fitting.is_empty() {
                return Err(AuthError::new(
                    AlgorithmNotAllowed,
                    format!("issuer {:?} holds no key that verifies {alg:?}", issuer.name),
                ));
            }
            let Some(key) = fitting.into_iter().find(|k| signature_ok(k, alg, signing_input, s64)) else {
                return Err(sig_invalid(Some(issuer)));
            };
            (Arc::clone(issuer), record.then(|| (key.kid.clone(), key.fingerprint.clone())))
        } else {
            if iss.is_some() && !self.issuers.is_empty() && self.issuers.iter().all(|i| i.issuer.is_some()) {
                let accepted: Vec<&str> = self.issuers.iter().filter_map(|i| i.issuer.as_deref()).collect();
                return Err(AuthError::new(
                    IssuerInvalid,
                    format!("the `iss` claim names no configured issuer; accepted: {accepted:?}"),
                ));
            }
            let candidates: Vec<&Arc<Issuer>> = self
                .issuers
                .iter()
                .filter(|i| i.algorithms.contains(&alg) && (iss.is_none() || i.issuer.is_none()))
                .collect();
            if candidates.is_empty() {
                return Err(AuthError::new(AlgorithmNotAllowed, format!("no configured issuer accepts {alg:?}")));
            }
            let mut chosen = None;
            for issuer in candidates {
                let keys = issuer.keys();
                if let Some(key) = keys.iter().find(|k| k.admits(alg) && signature_ok(k, alg, signing_input, s64)) {
                    chosen = Some((Arc::clone(issuer), record.then(|| (key.kid.clone(), key.fingerprint.clone()))));
                    break;
                }
            }
            let Some(chosen) = chosen else {
                return Err(sig_invalid(None));
            };
            trace.note_issuer(&chosen.0);
            chosen
        };
        if trace.record {
            trace.key = key;
        }

        // Step 4: claims, in order.
        self.check_claims(&issuer, &claims, now, token)
    }

    fn check_claims(
        &self,
        issuer: &Issuer,
        claims: &Members<'_>,
        now: i64,
        token: &str,
    ) -> Result<Principal, AuthError> {
        use ErrorCode::*;
        let leeway = self.policy.leeway_s;
        let exp = match claims.get("exp") {
            None => return Err(AuthError::new(ClaimMissing, "the token has no `exp` claim")),
            Some(v) => numeric_date(v, "exp")?,
        };
        let subject = match claims.get("sub") {
            Some(Claim::Str(s)) if !s.is_empty() => s.as_ref().to_owned(),
            Some(Claim::Str(_)) => return Err(AuthError::new(ClaimMissing, "the `sub` claim is empty")),
            Some(_) => return Err(AuthError::new(ClaimMissing, "the `sub` claim is not a string")),
            None => return Err(AuthError::new(ClaimMissing, "the token has no `sub` claim")),
        };
        if let Some(expected) = &issuer.issuer {
            match claims.get("iss") {
                Some(Claim::Str(i)) if i == expected => {}
                Some(_) => {
                    return Err(AuthError::new(
                        IssuerInvalid,
                        format!("`iss` does not match issuer {:?}, which expects {expected:?}", issuer.name),
                    ));
                }
                None => {
                    return Err(AuthError::new(
                        IssuerInvalid,
                        format!("the token has no `iss`; issuer {:?} expects {expected:?}", issuer.name),
                    ));
                }
            }
        }
        if !issuer.audience.is_empty() {
            let ok = match claims.get("aud") {
                Some(Claim::Str(a)) => issuer.audience.iter().any(|x| x == a),
                Some(Claim::Array(list)) => {
                    list.iter().any(|a| a.as_str().is_some_and(|a| issuer.audience.iter().any(|x| x == a)))
                }
                _ => false,
            };
            if !ok {
                let what = if claims.contains_key("aud") { "matches no accepted audience" } else { "is absent" };
                return Err(AuthError::new(
                    AudienceInvalid,
                    format!("`aud` {what}; issuer {:?} accepts {:?}", issuer.name, issuer.audience),
                ));
            }
        }
        if is_expired(exp, now, leeway) {
            return Err(AuthError::new(
                TokenExpired,
                format!(
                    "the token expired {} s ago (exp {exp}, leeway {leeway} s); mint or refresh a new one",
                    now.saturating_sub(exp)
                ),
            ));
        }
        for claim in ["nbf", "iat"] {
            if let Some(v) = claims.get(claim) {
                let t = numeric_date(v, claim)?;
                if t > now.saturating_add(leeway) {
                    return Err(AuthError::new(
                        TokenNotYetValid,
                        format!(
                            "`{claim}` is {} s in the future (leeway {leeway} s); check the issuer's clock",
                            t.saturating_sub(now)
                        ),
                    ));
                }
            }
        }
        for claim in TYPE_CLAIMS {
            if let Some(v) = claims.get(claim) {
                let ok = v.as_str().is_some_and(|t| ACCESS_TYPES.iter().any(|a| a.eq_ignore_ascii_case(t)));
                if !ok {
                    return Err(AuthError::new(
                        TokenTypeInvalid,
                        format!("claim `{claim}` says this is not an access token (e.g. a refresh or id token)"),
                    ));
                }
            }
        }
        let jti = match claims.get("jti") {
            None => None,
            Some(Claim::Str(j)) => Some(j.as_ref().to_owned()),
            Some(_) => return Err(AuthError::new(TokenMalformed, "the `jti` claim is not a string")),
        };
        let issued_at = match claims.get("iat") {
            Some(v) => Some(numeric_date(v, "iat")?),
            None => None,
        };
        let tenant = match claims.get(&issuer.tenant_claim) {
            None => None,
            Some(v) => Some(tenant_text(v).ok_or_else(|| {
                AuthError::new(
                    TokenMalformed,
                    format!(
                        "the tenant claim `{}` is neither a string nor an integer",
                        truncate(&issuer.tenant_claim, 64)
                    ),
                )
            })?),
        };
        let roles = match claims.get("role") {
            None => Vec::new(),
            Some(Claim::Str(r)) => vec![r.as_ref()],
            Some(Claim::Array(list)) => {
                let roles: Option<Vec<&str>> = list.iter().map(Claim::as_str).collect();
                roles.ok_or_else(|| {
                    AuthError::new(TokenMalformed, "the `role` claim holds a value that is not a string")
                })?
            }
            Some(_) => {
                return Err(AuthError::new(
                    TokenMalformed,
                    "the `role` claim is neither a string nor an array of strings",
                ));
            }
        };
        let scopes = match claims.get(&issuer.scope_claim) {
            Some(Claim::Str(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Claim::Array(a)) => a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        let principal = Principal {
            issuer: issuer.name.clone(),
            subject,
            tenant,
            scopes,
            via: issuer.via().to_owned(),
            expires_at: Some(exp),
            jti,
            issued_at,
            token_fp: fingerprint(token.as_bytes()),
        };
        if self.is_revoked(&principal) {
            return Err(AuthError::new(TokenRevoked, "this token has been revoked"));
        }
        // Compared case-insensitively; an array is anonymous if any entry is listed.
        if let Some(role) =
            roles.iter().find(|role| self.policy.anonymous_roles.iter().any(|r| r.eq_ignore_ascii_case(role)))
        {
            return Err(AuthError::new(
                AnonymousNotAllowed,
                format!("the token belongs to an anonymous principal (role {:?}); sign in first", truncate(role, 64)),
            ));
        }
        Ok(principal)
    }

    fn is_revoked(&self, p: &Principal) -> bool {
        self.revocations.as_ref().is_some_and(|r| r.is_revoked(p.jti.as_deref(), &p.subject, p.issued_at))
    }
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = decode_part(part, what)?;
    json_object::<StrictObject>(&bytes, what).map(|StrictObject(m)| m)
}

/// A JWT part's base64url.
fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::new(ErrorCode::TokenMalformed, format!("the JWT {what} is not unpadded base64url")))
}

/// A JWT part's JSON object, every refusal classified alike.
fn json_object<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, AuthError> {
    match serde_json::from_slice::<T>(bytes) {
        Ok(v) => Ok(v),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(AuthError::new(
            ErrorCode::TokenMalformed,
            format!("the JWT {what} names a member twice; which one counts would be ambiguous"),
        )),
        Err(e) if e.is_data() => {
            Err(AuthError::new(ErrorCode::TokenMalformed, format!("the JWT {what} is not a JSON object")))
        }
        Err(_) => Err(AuthError::new(ErrorCode::TokenMalformed, format!("the JWT {what} is not valid JSON"))),
    }
}

const DUPLICATE: &str = "duplicate member";

/// A JSON object whose top-level members are all distinct. `serde_json` keeps the last
/// of duplicated members; a verifier and an issuer disagreeing on which one counts is
/// an attack (`{"sub":"alice","sub":"admin"}`), so duplicates are refused.
struct StrictObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE} {key:?}")));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(StrictObject(map))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A JWT part (JOSE header or payload) as verification reads it: its top-level members
/// in order, without building a JSON map. Like [`StrictObject`], it refuses a part
/// that names a member twice, and it accepts and refuses exactly the JSON that
/// [`StrictObject`] does (nested objects are read as fully, then dropped).
struct Members<'a>(Vec<(Cow<'a, str>, Claim<'a>)>);

impl<'a> Members<'a> {
    /// Above this many members, duplicates are found with a hash set, not by scanning.
    const SCAN: usize = 32;

    fn get(&self, name: &str) -> Option<&Claim<'a>> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// A claim's value: a string (borrowed from the decoded payload when it has no
/// escapes), a number, an array, or anything else (`true`, `false`, `null`, an object).
enum Claim<'a> {
    Str(Cow<'a, str>),
    Num(serde_json::Number),
    Array(Vec<Claim<'a>>),
    Other,
}

impl Claim<'_> {
    fn as_str(&self) -> Option<&str> {
        if let Claim::Str(s) = self { Some(s) } else { None }
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Members<'de>, A::Error> {
                let mut members: Vec<(Cow<'de, str>, Claim<'de>)> = Vec::with_capacity(16);
                let mut many: Option<std::collections::HashSet<Cow<'de, str>>> = None;
                while let Some(name) = access.next_key::<Claim<'de>>()? {
                    let Claim::Str(key) = name else {
                        return Err(serde::de::Error::custom("a member name that is not a string"));
                    };
                    let seen = match &mut many {
                        Some(set) => !set.insert(key.clone()),
                        None => members.iter().any(|(k, _)| *k == key),
                    };
                    if seen {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE} {key:?}")));
                    }
                    members.push((key, access.next_value()?));
                    if many.is_none() && members.len() > Members::SCAN {
                        many = Some(members.iter().map(|(k, _)| k.clone()).collect());
                    }
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl<'de> serde::Deserialize<'de> for Claim<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess};
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Claim<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Claim<'de>, E> {
                Ok(Claim::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Claim<'de>, E> {
                Ok(Claim::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Claim<'de>, E> {
                Ok(Claim::Str(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Claim<'de>, E> {
                Ok(Claim::Other)
            }
            fn visit_i64<E>(self, v: i64) -> Result<Claim<'de>, E> {
                Ok(Claim::Num(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Claim<'de>, E> {
                Ok(Claim::Num(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Claim<'de>, E> {
                // As `serde_json::Value` does (JSON has no NaN or infinity).
                Ok(serde_json::Number::from_f64(v).map_or(Claim::Other, Claim::Num))
            }
            fn visit_unit<E>(self) -> Result<Claim<'de>, E> {
                Ok(Claim::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Claim<'de>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Claim::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claim<'de>, A::Error> {
                // Read as fully as `serde_json::Value` reads it (numbers range-checked,
                // strings checked), then dropped: verification reads no nested object.
                while map.next_entry::<Claim<'de>, Claim<'de>>()?.is_some() {}
                Ok(Claim::Other)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The algorithms agentgate implements, by their exact JOSE names.
pub fn parse_alg(name: &str) -> Result<Algorithm, AuthError> {
    use Algorithm::*;
    Ok(match name {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        other => {
            return Err(AuthError::new(
                ErrorCode::AlgorithmNotAllowed,
                format!("algorithm {:?} is not accepted", truncate(other, 32)),
            ));
        }
    })
}

fn check_alg(issuer: &Issuer, key: &VerifyKey, alg: Algorithm) -> Result<(), AuthError> {
    if !issuer.algorithms.contains(&alg) {
        return Err(alg_not_allowed(issuer, alg));
    }
    if !key.admits(alg) {
        return Err(AuthError::new(
            ErrorCode::AlgorithmNotAllowed,
            format!("{alg:?} does not fit key {:?}, a {}", key.kid.as_deref().unwrap_or(""), key.kind.as_str()),
        ));
    }
    Ok(())
}

fn alg_not_allowed(issuer: &Issuer, alg: Algorithm) -> AuthError {
    AuthError::new(
        ErrorCode::AlgorithmNotAllowed,
        format!("issuer {:?} accepts {:?}, not {alg:?}", issuer.name, issuer.algorithms),
    )
}

fn sig_invalid(issuer: Option<&Issuer>) -> AuthError {
    let whose = issuer.map(|i| format!(" with any key of issuer {:?}", i.name)).unwrap_or_default();
    AuthError::new(
        ErrorCode::SignatureInvalid,
        format!(
            "the signature does not verify{whose}; the token was signed with another key \
             (compare key fingerprints with `agentgate token inspect`)"
        ),
    )
}

/// Whether `signature` (base64url) signs `message` with `key` under `alg`. An HMAC is
/// checked with the key prepared when it was loaded (the comparison is constant-time);
/// every other algorithm goes through `jsonwebtoken`.
fn signature_ok(key: &VerifyKey, alg: Algorithm, message: &str, signature: &str) -> bool {
    if let Some(hmac) = key.hmac.as_deref().and_then(|h| h.get(alg)) {
        // The longest tag (HS512) is 64 bytes, 86 characters; the room above it is
        // for base64's length estimate. A longer signature cannot match.
        let mut tag = [0u8; 96];
        return match URL_SAFE_NO_PAD.decode_slice(signature, &mut tag) {
            Ok(n) => aws_lc_rs::hmac::verify(hmac, message.as_bytes(), &tag[..n]).is_ok(),
            Err(_) => false,
        };
    }
    jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, alg).unwrap_or(false)
}

fn verify_signature(key: &VerifyKey, alg: Algorithm, message: &str, signature: &str) -> Result<(), AuthError> {
    if signature_ok(key, alg, message, signature) { Ok(()) } else { Err(sig_invalid(None)) }
}

/// A NumericDate: a JSON number of seconds within the i64 range (fractions are cut).
/// Anything else (a string, null, or a number beyond the range) is `token_malformed`.
fn numeric_date(v: &Claim<'_>, claim: &str) -> Result<i64, AuthError> {
    let bad = || AuthError::new(ErrorCode::TokenMalformed, format!("the `{claim}` claim is not a number of seconds"));
    let Claim::Num(n) = v else { return Err(bad()) };
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.as_u64().is_some() {
        return Err(bad());
    }
    match n.as_f64() {
        // `as` is exact enough here: the bounds are checked first.
        Some(f) if f.is_finite() && (-9.2e18..=9.2e18).contains(&f) => Ok(f.floor() as i64),
        _ => Err(bad()),
    }
}

/// The tenant claim as text: a string as is, an integer (within 64 bits) as its
/// decimal text; anything else (a fraction, bool, null, array, object) is `None`.
fn tenant_text(v: &Claim<'_>) -> Option<String> {
    match v {
        Claim::Str(s) => Some(s.as_ref().to_owned()),
        Claim::Num(n) => n.as_i64().map(|i| i.to_string()).or_else(|| n.as_u64().map(|u| u.to_string())),
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"unit-test-secret-0123456789abcdef0123456789";

    /// The header decoder refuses what the generic strict decoder refuses, with the
    /// same message, and reads `alg`, `kid` and `crit` alike.
    #[test]
    fn the_jose_header_decoder_agrees_with_the_strict_map() {
        let cases: &[&str] = &[
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"HS256","kid":"k1","x":{"a":[1,{"b":null}]},"y":[true,1.5,-2]}"#,
            r#"{"\u0061lg":"HS\u003256","kid":"k\"1"}"#,
            r#"{"alg":"HS256","alg":"none"}"#,
            r#"{"alg":"HS256","\u0061lg":"none"}"#,
            r#"{"x":1,"x":2,"alg":"HS256"}"#,
            r#"{"alg":5}"#,
            r#"{"alg":"HS256","kid":["k"]}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{}"#,
            r#"["alg"]"#,
            r#""HS256""#,
            r#"{"alg":"HS256""#,
            r#"{"alg":"HS256"} x"#,
            r#"{"alg":"HS256",}"#,
            r#"{"alg":"HS256","x":{"deep":[1e999]}}"#,
            r#"{"alg":"HS256","crit":[-1e999]}"#,
        ];
        for case in cases {
            let map = json_object::<StrictObject>(case.as_bytes(), "header").map(|StrictObject(m)| m);
            let typed = json_object::<Members<'_>>(case.as_bytes(), "header");
            match (map, typed) {
                (Ok(m), Ok(h)) => {
                    let member = |v: Option<&Value>| match v {
                        None => "absent".to_owned(),
                        Some(Value::String(s)) => format!("str:{s}"),
                        Some(_) => "other".to_owned(),
                    };
                    let typed = |m: Option<&Claim<'_>>| match m {
                        None => "absent".to_owned(),
                        Some(Claim::Str(s)) => format!("str:{s}"),
                        Some(_) => "other".to_owned(),
                    };
                    assert_eq!(member(m.get("alg")), typed(h.get("alg")), "{case}");
                    assert_eq!(member(m.get("kid")), typed(h.get("kid")), "{case}");
                    assert_eq!(m.contains_key("crit"), h.contains_key("crit"), "{case}");
                }
                (Err(a), Err(b)) => assert_eq!(a.message(), b.message(), "{case}"),
                (a, b) => panic!("{case}: map {:?} but header {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }
    }

    /// The payload decoder used by verification must accept, refuse and read exactly
    /// what the strict map (kept for `token inspect`) does.
    #[test]
    fn the_claims_decoder_agrees_with_the_strict_map() {
        let mut cases: Vec<String> = [
            r#"{"sub":"alice","exp":1,"aud":["a",2,"b"],"scope":"x y","tenant":7}"#,
            r#"{"sub":"al\u0069ce","jti":"j\"1","nbf":1.5,"iat":-3,"role":["r",null]}"#,
            r#"{"x":{"a":[1,{"b":null,"b":2}]},"y":[true,1.5,-2,[[]]],"z":null,"t":false}"#,
            r#"{"sub":"alice","sub":"admin"}"#,
            r#"{"sub":"alice","\u0073ub":"admin"}"#,
            r#"{"exp":18446744073709551615,"iat":-9223372036854775808,"nbf":1e300}"#,
            r#"{"exp":1e999}"#,
            r#"{"x":{"deep":1e999}}"#,
            r#"{"x":[{"deep":-1e999}]}"#,
            r#"{}"#,
            r#"["sub"]"#,
            r#""alice""#,
            r#"{"sub":"alice""#,
            r#"{"sub":"alice"} x"#,
            r#"{"sub":"alice",}"#,
        ]
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
        // Many members (the hash-set path), with a late duplicate and without.
        let many: Vec<String> = (0..100).map(|i| format!("\"m{i}\":{i}")).collect();
        cases.push(format!("{{{}}}", many.join(",")));
        cases.push(format!("{{{},\"m7\":0}}", many.join(",")));
        fn show(v: &Value) -> String {
            match v {
                Value::String(s) => format!("str:{s}"),
                Value::Number(n) => format!("num:{n}"),
                Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(",")),
                _ => "other".to_owned(),
            }
        }
        fn shown(c: &Claim<'_>) -> String {
            match c {
                Claim::Str(s) => format!("str:{s}"),
                Claim::Num(n) => format!("num:{n}"),
                Claim::Array(a) => format!("[{}]", a.iter().map(shown).collect::<Vec<_>>().join(",")),
                Claim::Other => "other".to_owned(),
            }
        }
        // Invalid UTF-8 inside a nested string.
        let mut raw: Vec<Vec<u8>> = cases.iter().map(|c| c.as_bytes().to_vec()).collect();
        raw.push(b"{\"x\":{\"s\":\"\xff\"}}".to_vec());
        for case in &raw {
            let label = String::from_utf8_lossy(case);
            let map = json_object::<StrictObject>(case, "payload").map(|StrictObject(m)| m);
            let typed = json_object::<Members<'_>>(case, "payload");
            match (map, typed) {
                (Ok(m), Ok(c)) => {
                    assert_eq!(m.len(), c.0.len(), "{label}");
                    for (k, v) in &m {
                        assert_eq!(Some(show(v)), c.get(k).map(shown), "{label}: {k}");
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a.message(), b.message(), "{label}"),
                (a, b) => panic!("{label}: map {:?} but claims {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }
    }

    fn auth(names: &[&str]) -> Authenticator {
        let issuers = names
            .iter()
            .map(|n| {
                let key = VerifyKey::from_secret(SECRET, None).unwrap();
                Arc::new(Issuer::new(*n, vec![Algorithm::HS256], vec![key]))
            })
            .collect();
        Authenticator::new(issuers, Vec::new(), Policy::default())
    }

    fn token(claims: Value) -> String {
        let mut c = json!({"sub": "alice", "exp": 4_000_000_000_i64});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &c, &key).unwrap()
    }

    fn code(a: &Authenticator, claims: Value) -> Result<Principal, ErrorCode> {
        a.verify(&token(claims), 1_800_000_000).map_err(|e| e.code())
    }

    #[test]
    fn claims_of_the_wrong_type_are_token_malformed() {
        let a = auth(&["local"]);
        for bad in [
            json!({"jti": 42}),
            json!({"jti": null}),
            json!({"tenant": ["a"]}),
            json!({"tenant": {"a": 1}}),
            json!({"tenant": true}),
            json!({"tenant": 1.5}),
            json!({"tenant": null}),
            json!({"role": 1}),
            json!({"role": true}),
            json!({"role": ["user", 2]}),
            json!({"role": {"r": "x"}}),
        ] {
            assert_eq!(code(&a, bad.clone()).unwrap_err(), ErrorCode::TokenMalformed, "{bad}");
        }
    }

    #[test]
    fn an_integer_tenant_is_its_decimal_text() {
        let a = auth(&["local"]);
        assert_eq!(code(&a, json!({"tenant": 42})).unwrap().tenant.as_deref(), Some("42"));
        assert_eq!(code(&a, json!({"tenant": -7})).unwrap().tenant.as_deref(), Some("-7"));
        assert_eq!(code(&a, json!({"tenant": u64::MAX})).unwrap().tenant, Some(u64::MAX.to_string()));
        assert_eq!(code(&a, json!({"tenant": "acme"})).unwrap().tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn roles_are_compared_case_insensitively_and_any_listed_array_entry_is_anonymous() {
        let a = auth(&["local"]);
        for anon in [json!({"role": "ANON"}), json!({"role": "Anon"}), json!({"role": ["user", "anon"]})] {
            assert_eq!(code(&a, anon.clone()).unwrap_err(), ErrorCode::AnonymousNotAllowed, "{anon}");
        }
        assert!(code(&a, json!({"role": ["user", "admin"]})).is_ok());
        assert!(code(&a, json!({"role": "authenticated"})).is_ok());
    }

    #[test]
    fn extreme_times_never_overflow() {
        let a = auth(&["local"]);
        assert_eq!(code(&a, json!({"exp": i64::MIN})).unwrap_err(), ErrorCode::TokenExpired);
        assert_eq!(code(&a, json!({"exp": i64::MAX})).map(|p| p.expires_at), Ok(Some(i64::MAX)));
        assert_eq!(code(&a, json!({"nbf": i64::MAX})).unwrap_err(), ErrorCode::TokenNotYetValid);
        assert!(a.verify(&token(json!({"exp": 0})), i64::MAX).is_err());
        // No panic at the extremes of the clock either.
        let _ = a.verify(&token(json!({"iat": i64::MIN, "nbf": i64::MAX})), i64::MIN);
        let _ = a.verify(&token(json!({"exp": i64::MIN})), i64::MAX);
    }

    #[test]
    fn the_principal_names_its_issuer_and_differs_across_issuers() {
        let one = auth(&["one"]).verify(&token(json!({})), 1_800_000_000).unwrap();
        let two = auth(&["two"]).verify(&token(json!({})), 1_800_000_000).unwrap();
        assert_eq!(one.issuer, "one");
        assert_eq!(two.issuer, "two");
        assert!(!one.same_identity(&two));
        assert!(one.same_identity(&one.clone()));
    }
}
