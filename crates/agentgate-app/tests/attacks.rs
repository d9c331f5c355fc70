//! The attack battery: hostile tokens and requests, each with its exact reason code.
//! Every case goes through the real server and a real WebSocket client.

mod support;

use serde_json::{Value, json};
use support::*;

const CONFIG: &str = r#"
[[auth.jwt]]
name = "hs"
algorithms = ["HS256"]
secret_env = "TEST_HS_SECRET"

[[auth.jwt]]
name = "rs"
algorithms = ["RS256"]
public_key_file = "KEYS/rsa.pub"
kid = "rs-1"

[[auth.jwt]]
name = "es"
algorithms = ["ES256"]
public_key_file = "KEYS/ec256.pub"
kid = "es-1"
"#;

async fn server() -> TestServer {
    let keys = fixture("keys");
    let cfg = CONFIG.replace("KEYS", &keys.display().to_string());
    TestServer::start(&cfg, &[("TEST_HS_SECRET", HS_SECRET), ("AGENTGATE_LIMITS__HANDSHAKES_PER_IP_PER_S", "10000")])
        .await
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("keys/{name}"))).unwrap()
}

fn hs(header: Value, claims: Value) -> String {
    sign_hs(&header, &claims, HS_SECRET.as_bytes())
}

fn valid() -> String {
    hs(json!({"alg": "HS256", "typ": "JWT"}), claims("alice"))
}

/// `header.payload.signature` from raw JSON texts (for members serde would merge).
fn raw(header: &str, payload: &str, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{input}.{sig}")
}

fn unsigned(header: Value, claims: Value) -> String {
    format!("{}.{}.", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
}

fn with_claim(k: &str, v: Value) -> Value {
    let mut c = claims("alice");
    c[k] = v;
    c
}

fn cases() -> Vec<(&'static str, String, &'static str)> {
    let t = valid();
    let (hp, sig) = t.rsplit_once('.').unwrap();
    let (h, p) = hp.split_once('.').unwrap();
    let rsa_pub = pem("rsa.pub");
    let ec_pub = pem("ec256.pub");
    let attacker_rsa = pem("rsa-other.key");
    let big = "x".repeat(9000);
    // The longest token at or under the 8192-byte limit, grown one claim byte at a time.
    let mut exact = claims("alice");
    let mut exact_token = String::new();
    for n in 0..8192usize {
        exact["pad"] = json!("p".repeat(n));
        let tok = hs(json!({"alg": "HS256"}), exact.clone());
        if tok.len() > 8192 {
            break;
        }
        exact_token = tok;
    }
    vec![
        // alg none and friends
        ("alg none, unsigned", unsigned(json!({"alg": "none"}), claims("alice")), "algorithm_not_allowed"),
        ("alg None", unsigned(json!({"alg": "None"}), claims("alice")), "algorithm_not_allowed"),
        ("alg NONE", unsigned(json!({"alg": "NONE"}), claims("alice")), "algorithm_not_allowed"),
        ("alg empty", unsigned(json!({"alg": ""}), claims("alice")), "algorithm_not_allowed"),
        ("alg missing", unsigned(json!({"typ": "JWT"}), claims("alice")), "algorithm_not_allowed"),
        ("alg not a string", unsigned(json!({"alg": 256}), claims("alice")), "algorithm_not_allowed"),
        ("alg lower-case hs256", hs(json!({"alg": "hs256"}), claims("alice")), "algorithm_not_allowed"),
        ("alg ES512 (not implemented)", unsigned(json!({"alg": "ES512"}), claims("alice")), "algorithm_not_allowed"),
        // algorithm confusion
        (
            "HS256 signed with the RSA public key, kid of the RSA key",
            sign_hs(&json!({"alg": "HS256", "kid": "rs-1"}), &claims("m"), &rsa_pub),
            "algorithm_not_allowed",
        ),
        (
            "HS256 signed with the EC public key, kid of the EC key",
            sign_hs(&json!({"alg": "HS256", "kid": "es-1"}), &claims("m"), &ec_pub),
            "algorithm_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key, no kid",
            sign_hs(&json!({"alg": "HS256"}), &claims("m"), &rsa_pub),
            "signature_invalid",
        ),
        (
            "ES256 on the RSA issuer's kid",
            sign_pem(&json!({"alg": "ES256", "kid": "rs-1"}), &claims("m"), &pem("ec256.key")),
            "algorithm_not_allowed",
        ),
        (
            "RS256 on the EC issuer's kid",
            sign_pem(&json!({"alg": "RS256", "kid": "es-1"}), &claims("m"), &pem("rsa.key")),
            "algorithm_not_allowed",
        ),
        // kid tricks
        (
            "kid path traversal",
            hs(json!({"alg": "HS256", "kid": "../../../../etc/passwd"}), claims("m")),
            "key_unknown",
        ),
        ("kid SQL injection", hs(json!({"alg": "HS256", "kid": "' OR '1'='1' --"}), claims("m")), "key_unknown"),
        ("kid URL", hs(json!({"alg": "HS256", "kid": "http://127.0.0.1:1/key"}), claims("m")), "key_unknown"),
        ("kid 4 KiB", hs(json!({"alg": "HS256", "kid": "k".repeat(4096)}), claims("m")), "key_unknown"),
        ("kid not a string", hs(json!({"alg": "HS256", "kid": 7}), claims("m")), "token_malformed"),
        // key-naming headers are ignored
        (
            "jku to attacker keys",
            sign_pem(&json!({"alg": "RS256", "jku": "http://127.0.0.1:1/jwks"}), &claims("m"), &attacker_rsa),
            "signature_invalid",
        ),
        (
            "x5u to attacker cert",
            sign_pem(&json!({"alg": "RS256", "x5u": "http://127.0.0.1:1/cert"}), &claims("m"), &attacker_rsa),
            "signature_invalid",
        ),
        (
            "embedded jwk",
            sign_pem(
                &json!({"alg": "RS256", "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}),
                &claims("m"),
                &attacker_rsa,
            ),
            "signature_invalid",
        ),
        (
            "unknown crit extension",
            hs(json!({"alg": "HS256", "crit": ["x-magic"], "x-magic": true}), claims("alice")),
            "token_malformed",
        ),
        ("crit naming exp", hs(json!({"alg": "HS256", "crit": ["exp"]}), claims("alice")), "token_malformed"),
        // signatures
        (
            "ECDSA all-zero signature (CVE-2022-21449)",
            format!(
                "{}.{}",
                sign_pem(&json!({"alg": "ES256", "kid": "es-1"}), &claims("m"), &pem("ec256.key"))
                    .rsplit_once('.')
                    .unwrap()
                    .0,
                b64(&[0u8; 64])
            ),
            "signature_invalid",
        ),
        ("truncated signature", format!("{hp}.{}", &sig[..sig.len() - 4]), "signature_invalid"),
        ("trailing signature bytes", format!("{hp}.{sig}AAAA"), "signature_invalid"),
        ("empty signature", format!("{hp}."), "signature_invalid"),
        (
            "signature from another token",
            format!("{}.{sig}", hs(json!({"alg": "HS256"}), claims("admin")).rsplit_once('.').unwrap().0),
            "signature_invalid",
        ),
        ("tampered payload", format!("{h}.{}.{sig}", b64(claims("admin").to_string().as_bytes())), "signature_invalid"),
        ("signature with padding", format!("{hp}.{sig}="), "signature_invalid"),
        // encoding
        ("padded header", format!("{h}=.{p}.{sig}"), "token_malformed"),
        ("standard base64 character in header", format!("{}+.{p}.{sig}", &h[..h.len() - 1]), "token_malformed"),
        (
            "payload not JSON",
            hs(json!({"alg": "HS256"}), Value::Null).replacen(&b64(b"null"), &b64(b"not json"), 1),
            "token_malformed",
        ),
        ("payload an array", hs(json!({"alg": "HS256"}), json!([1, 2])), "token_malformed"),
        ("nested JWT as payload", hs(json!({"alg": "HS256", "cty": "JWT"}), json!(valid())), "token_malformed"),
        ("header an array", format!("{}.{p}.{sig}", b64(b"[\"HS256\"]")), "token_malformed"),
        (
            "duplicate sub in payload",
            raw(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sub":"alice","sub":"admin","exp":{}}}"#, now() + 900),
                HS_SECRET.as_bytes(),
            ),
            "token_malformed",
        ),
        (
            "duplicate alg in header",
            raw(r#"{"alg":"none","alg":"HS256"}"#, &claims("alice").to_string(), HS_SECRET.as_bytes()),
            "token_malformed",
        ),
        // claim types
        (
            "exp as string",
            hs(json!({"alg": "HS256"}), with_claim("exp", json!((now() + 900).to_string()))),
            "token_malformed",
        ),
        ("exp as float", hs(json!({"alg": "HS256"}), with_claim("exp", json!(now() as f64 + 900.5))), "accepted"),
        ("exp negative", hs(json!({"alg": "HS256"}), with_claim("exp", json!(-1))), "token_expired"),
        ("exp huge float", hs(json!({"alg": "HS256"}), with_claim("exp", json!(1e300))), "token_malformed"),
        (
            "exp 2^63",
            raw(r#"{"alg":"HS256"}"#, r#"{"sub":"alice","exp":9223372036854775808}"#, HS_SECRET.as_bytes()),
            "token_malformed",
        ),
        ("exp null", hs(json!({"alg": "HS256"}), with_claim("exp", Value::Null)), "token_malformed"),
        ("nbf as string", hs(json!({"alg": "HS256"}), with_claim("nbf", json!("0"))), "token_malformed"),
        (
            "iat a day ahead",
            hs(json!({"alg": "HS256"}), with_claim("iat", json!(now() + 86_400))),
            "token_not_yet_valid",
        ),
        ("sub empty", hs(json!({"alg": "HS256"}), with_claim("sub", json!(""))), "claim_missing"),
        ("sub a number", hs(json!({"alg": "HS256"}), with_claim("sub", json!(42))), "claim_missing"),
        ("refresh token", hs(json!({"alg": "HS256"}), with_claim("token_use", json!("refresh"))), "token_type_invalid"),
        // shape and size
        ("8 KiB + 1", hs(json!({"alg": "HS256"}), with_claim("pad", json!(big))), "token_malformed"),
        ("exactly at the size limit", exact_token, "accepted"),
        ("four segments", format!("{t}.xyz"), "token_malformed"),
        ("two segments", hp.to_owned(), "token_malformed"),
        ("session id", "s_AAAAAAAAAAAAAAAAAAAAAA".into(), "token_malformed"),
        ("request id", "req_AAAAAAAAAAAAAAAAAAAAAA".into(), "token_malformed"),
    ]
}

#[tokio::test]
async fn every_hostile_token_gets_its_exact_reason_code() {
    let server = server().await;
    let cases = cases();
    assert!(cases.len() >= 40, "the battery has {} cases", cases.len());
    let mut failures = Vec::new();
    for (name, token, expected) in &cases {
        let q = format!("/v1/ws?access_token={}", urlencode(token));
        let (o, _) = connect(&server.ws_url(&q), &[]).await;
        let got = o.code();
        if got != *expected {
            failures.push(format!("{name}: expected {expected}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
    server.shutdown().await;
}

#[tokio::test]
async fn hostile_requests_get_exact_codes_too() {
    let server = server().await;
    let token = valid();
    let url = server.ws_url("/v1/ws");
    // Two credentials at once, in every pairing.
    let (o, _) =
        connect(&format!("{url}?access_token={token}"), &[("Authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(o.code(), "credentials_ambiguous");
    // Empty values are absent.
    let (o, _) = connect(&format!("{url}?access_token=&ticket="), &[("Authorization", "Bearer ")]).await;
    assert_eq!(o.code(), "token_missing");
    // Header-injection characters inside a query token stay inside the token.
    let injected = format!("{}?access_token={}%0D%0AX-Evil:%201", url, token);
    let (o, _) = connect(&injected, &[]).await;
    assert_eq!(o.code(), "signature_invalid");
    if let Outcome::Http { headers, .. } = &o {
        assert!(headers.get("x-evil").is_none());
    }
    // A 60 KiB bearer value is refused as malformed, not parsed.
    let huge = format!("Bearer {}", "a".repeat(60 * 1024));
    let r = http(server.addr, "GET", "/v1/ws", &[("Authorization", &huge)], b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("token_malformed")));
    // The head cap is exactly 64 KiB: a head just above it is 431.
    let r = http(server.addr, "GET", "/v1/ws", &[("X-Pad", &"p".repeat(64 * 1024))], b"").await;
    assert_eq!(r.status, 431, "a head just above 64 KiB");
    // Oversized header sections and URLs are refused by the HTTP layer before any parsing.
    let r = http(server.addr, "GET", "/v1/ws", &[("X-Pad", &"p".repeat(2 * 1024 * 1024))], b"").await;
    assert!(r.status == 431 || r.status == 400, "oversized header section: {}", r.status);
    let long = format!("/v1/ws?pad={}", "u".repeat(2 * 1024 * 1024));
    let r = http(server.addr, "GET", &long, &[], b"").await;
    assert!(matches!(r.status, 400 | 414 | 431), "oversized URL: {}", r.status);
    // The server is still serving.
    let (_, _ws) = connect_ok(&url, &valid()).await;
    server.shutdown().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(
        &format!(
            "[server]\nhandshake_timeout_ms = 300\n{}",
            CONFIG.replace("KEYS", &fixture("keys").display().to_string())
        ),
        &[("TEST_HS_SECRET", HS_SECRET)],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection (with or without a 408) well before 5 s.
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "slowloris connection still open after 5 s");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "closed after {:?}", started.elapsed());
    server.shutdown().await;
}
