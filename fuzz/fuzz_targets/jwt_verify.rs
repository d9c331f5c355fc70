//! JWT pre-parsing and verification: any string gets a verdict, never a panic, and
//! never `accepted` (no key of the fuzzer's can sign for the configured issuers).
#![no_main]

use std::sync::{Arc, OnceLock};

use agentgate_auth::{Algorithm, ApiKey, Authenticator, Issuer, Policy, VerifyKey};
use libfuzzer_sys::fuzz_target;

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let hs = VerifyKey::from_secret(b"fuzz-secret-0123456789abcdef0123456789", Some("hs-1".into())).unwrap();
        let pem = include_bytes!("../../crates/agentgate-app/tests/fixtures/keys/ec256.pub");
        let es = VerifyKey::from_pem(pem, Some("es-1".into())).unwrap();
        let mut a = Issuer::new("hs", vec![Algorithm::HS256, Algorithm::HS384], vec![hs]);
        a.issuer = Some("https://issuer.test/".into());
        a.audience = vec!["agentgate".into()];
        let b = Issuer::new("es", vec![Algorithm::ES256], vec![es]);
        let key = ApiKey {
            name: "ci".into(),
            digest: ApiKey::digest_of("an-api-key-that-the-fuzzer-will-not-guess-0123456789"),
            subject: "ci".into(),
            tenant: None,
            scopes: vec![],
        };
        Authenticator::new(vec![Arc::new(a), Arc::new(b)], vec![key], Policy::default())
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        assert!(authenticator().verify(token, 1_767_225_600).is_err());
    }
});
