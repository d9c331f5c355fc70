//! Authentication through a real server and a real client (PROTOCOL.md sections 2, 2.1,
//! 3 and 4): every reason code produced at the handshake, every credential transport,
//! every algorithm family, issuer selection, `failure_mode`, and the welcome principal.

mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sha2::Digest;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::Response as WsResponse;

/// The origin allowed by the configs that need one.
const ORIGIN: &str = "http://app.test";
/// A second HMAC secret, for multi-issuer configs.
const HS_SECRET_2: &str = "second-secret-fedcba9876543210fedcba9876543210";
/// The API key of [`API_KEY_CONFIG`].
const API_KEY: &str = "ak_test_7f3c9b2e1d4a5f6081726354";

/// Request headers of a table-driven case.
type Headers<'a> = Vec<(&'a str, &'a str)>;
/// Owned request headers.
type OwnedHeaders = Vec<(String, String)>;

// === servers ===

/// Start with `toml`; the handshake rate limit is raised so table-driven tests that
/// make many connections never meet it.
async fn start(toml: &str) -> TestServer {
    TestServer::start(
        toml,
        &[
            ("TEST_HS_SECRET", HS_SECRET),
            ("TEST_HS_SECRET_2", HS_SECRET_2),
            ("AGENTGATE_LIMITS__HANDSHAKES_PER_IP_PER_S", "1000"),
        ],
    )
    .await
}

/// [`HS_CONFIG`] plus `extra`.
async fn hs(extra: &str) -> TestServer {
    start(&format!("{extra}\n{HS_CONFIG}")).await
}

fn key_path(name: &str) -> String {
    fixture(&format!("keys/{name}")).display().to_string()
}

fn key_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("keys/{name}"))).unwrap()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn api_key_config() -> String {
    format!(
        r#"
[[auth.api_keys]]
name = "ci"
sha256 = "{}"
subject = "ci-bot"
tenant = "acme"
scopes = ["agents:run", "reports:read"]
"#,
        sha256_hex(API_KEY)
    )
}

// === tokens ===

/// `claims(sub)` with `extra` merged in; a `null` in `extra` removes the claim.
fn claims_with(sub: &str, extra: Value) -> Value {
    let mut c = claims(sub);
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// An HS256 token over `claims`, signed with [`HS_SECRET`].
fn hs256(claims: &Value) -> String {
    sign_hs(&json!({"alg": "HS256", "typ": "JWT"}), claims, HS_SECRET.as_bytes())
}

/// An HS256 token for `sub` with extra claims.
fn hs_tok(sub: &str, extra: Value) -> String {
    hs256(&claims_with(sub, extra))
}

/// A token assembled from raw header and payload text, with a dummy signature.
fn raw_token(header: &str, payload: &str, sig: &str) -> String {
    format!("{}.{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()), sig)
}

/// A server-style id: prefix plus 24 random-looking characters.
fn server_id(prefix: &str) -> String {
    format!("{prefix}Zx8Kq2Lm9Np4Rt6Vw1Yb3Cd5")
}

// === connecting ===

/// Connect to `/v1/ws{query}` with `headers`.
async fn attempt(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> Outcome {
    connect(&server.ws_url(&format!("/v1/ws{query}")), headers).await.0
}

/// Connect with `Authorization: Bearer <token>`.
async fn bearer(server: &TestServer, token: &str) -> Outcome {
    let auth = format!("Bearer {token}");
    attempt(server, "", &[("authorization", &auth)]).await
}

/// Connect with the bearer token and expect a welcome.
async fn welcome(server: &TestServer, token: &str) -> Value {
    match bearer(server, token).await {
        Outcome::Welcome(w) => {
            assert_welcome_shape(&w);
            w
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// Upgrade (must succeed at the HTTP level) and return the socket and the response.
async fn upgrade(url: &str, headers: &[(&str, &str)]) -> (Ws, WsResponse) {
    let req = request(url, headers);
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req)).await.expect("handshake in time") {
        Ok(pair) => pair,
        Err(e) => panic!("expected the upgrade to succeed, got {e:?}"),
    }
}

fn selected_protocol(resp: &WsResponse) -> Option<String> {
    resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned())
}

// === contract tables ===

/// HTTP status of a reason code (PROTOCOL.md section 3).
fn http_status(code: &str) -> u16 {
    match code {
        "credentials_ambiguous" | "protocol_error" => 400,
        "anonymous_not_allowed" | "origin_not_allowed" | "scope_missing" => 403,
        _ => 401,
    }
}

/// Close code of a reason code (PROTOCOL.md section 3).
fn close_code(code: &str) -> u16 {
    match code {
        "credentials_ambiguous" | "protocol_error" => 4400,
        "anonymous_not_allowed" | "origin_not_allowed" | "scope_missing" => 4403,
        "auth_timeout" => 4408,
        _ => 4401,
    }
}

/// Assert an HTTP rejection with `code`, its status from the contract table,
/// `X-Request-Id` equal to the body's `request_id`, and on 401 the RFC 6750 header.
/// Returns the human message.
#[track_caller]
fn assert_http(outcome: &Outcome, code: &str) -> String {
    let Outcome::Http { status, headers, body } = outcome else {
        panic!("expected an HTTP {code} rejection, got {outcome:?}");
    };
    assert_eq!(body["error"]["code"], code, "body {body}");
    assert_eq!(*status, http_status(code), "status of {code}, body {body}");
    let request_id = body["error"]["request_id"].as_str().expect("body.error.request_id is a string");
    assert!(request_id.starts_with("req_") && request_id.len() >= 24, "request id {request_id:?}");
    let header_id = headers.get("x-request-id").expect("X-Request-Id header").to_str().unwrap();
    assert_eq!(header_id, request_id, "X-Request-Id equals body.error.request_id");
    let message = body["error"]["message"].as_str().expect("body.error.message is a string").to_owned();
    if *status == 401 {
        let www = headers.get("www-authenticate").expect("WWW-Authenticate on a 401").to_str().unwrap();
        assert_eq!(www, format!(r#"Bearer realm="agentgate", error="invalid_token", error_description="{code}""#));
    }
    message
}

/// Assert an upgrade followed at once by a close with `code`'s close code and reason
/// exactly `{"code":"<code>"}`.
#[track_caller]
fn assert_closed(outcome: &Outcome, code: &str) {
    let Outcome::Closed { code: close, reason } = outcome else {
        panic!("expected a close {code}, got {outcome:?}");
    };
    assert_eq!(reason, &format!(r#"{{"code":"{code}"}}"#), "close reason");
    assert_eq!(*close, close_code(code), "close code of {code}");
}

/// The fixed shape of every welcome (PROTOCOL.md section 4).
#[track_caller]
fn assert_welcome_shape(w: &Value) {
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["protocol"], "agentgate.v1");
    assert_eq!(w["resumed"], false);
    let sid = w["session_id"].as_str().expect("session_id");
    assert!(sid.starts_with("s_") && sid.len() >= 22, "session id {sid:?}");
    assert!(w["principal"]["subject"].is_string(), "{w}");
    assert!(w["principal"]["scopes"].is_array(), "{w}");
    assert!(w["principal"].get("tenant").is_some(), "tenant is present (null when none): {w}");
    assert!(w.get("expires_at").is_some(), "expires_at is present: {w}");
}

/// A plain (non-upgrade) HTTP/1.1 GET; returns status, headers (lower-case names)
/// and the JSON body.
async fn plain_get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Outcome {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", server.addr);
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut buf)).await.expect("response in time").unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete HTTP response");
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut map = tokio_tungstenite::tungstenite::http::HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').unwrap();
        map.append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            v.trim().parse().unwrap(),
        );
    }
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Outcome::Http { status, headers: map, body: json }
}

// === 1. reason codes at the handshake ===

#[tokio::test]
async fn two_credentials_are_rejected_with_credentials_ambiguous() {
    let server = hs("").await;
    let t1 = hs_tok("alice", json!({}));
    let t2 = hs_tok("bob", json!({}));
    let auth = format!("Bearer {t1}");
    let proto1 = format!("agentgate.v1, agentgate.bearer.{t2}");
    let proto2 = format!("agentgate.v1, agentgate.bearer.{t1}, agentgate.bearer.{t2}");
    let q = format!("?access_token={t2}");
    let ticket = "?ticket=t_Zx8Kq2Lm9Np4Rt6Vw1Yb3Cd5".to_owned();
    let cases: Vec<(&str, String, Headers<'_>)> = vec![
        ("header + query", q.clone(), vec![("authorization", &auth)]),
        ("header + subprotocol", String::new(), vec![("authorization", &auth), ("sec-websocket-protocol", &proto1)]),
        ("two subprotocol bearer entries", String::new(), vec![("sec-websocket-protocol", &proto2)]),
        ("query + subprotocol", q.clone(), vec![("sec-websocket-protocol", &proto1)]),
        ("header + ticket", ticket.clone(), vec![("authorization", &auth)]),
        ("ticket + query", format!("{ticket}&access_token={t2}"), vec![]),
    ];
    for (what, query, headers) in cases {
        let outcome = attempt(&server, &query, &headers).await;
        assert_eq!(outcome.code(), "credentials_ambiguous", "{what}: {outcome:?}");
        assert_http(&outcome, "credentials_ambiguous");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bearer_subprotocol_without_agentgate_v1_is_protocol_error() {
    let server = hs("").await;
    let token = hs_tok("alice", json!({}));
    let proto = format!("agentgate.bearer.{token}");
    let outcome = attempt(&server, "", &[("sec-websocket-protocol", &proto)]).await;
    assert_http(&outcome, "protocol_error");
    server.shutdown().await;
}

#[tokio::test]
async fn non_upgrade_get_is_rejected_with_protocol_error() {
    let server = hs("").await;
    let auth = format!("Bearer {}", hs_tok("alice", json!({})));
    let outcome = plain_get(&server, "/v1/ws", &[("Authorization", &auth)]).await;
    assert_http(&outcome, "protocol_error");
    server.shutdown().await;
}

#[tokio::test]
async fn absent_or_empty_credentials_are_rejected_with_token_missing() {
    let server = hs("").await;
    let cases: Vec<(&str, &str, Headers<'_>)> = vec![
        ("nothing", "", vec![]),
        ("empty Bearer", "", vec![("authorization", "Bearer")]),
        ("empty access_token", "?access_token=", vec![]),
        ("empty ticket", "?ticket=", vec![]),
        ("empty bearer subprotocol entry", "", vec![("sec-websocket-protocol", "agentgate.v1, agentgate.bearer.")]),
        ("only agentgate.v1 offered", "", vec![("sec-websocket-protocol", "agentgate.v1")]),
    ];
    for (what, query, headers) in cases {
        let outcome = attempt(&server, query, &headers).await;
        assert_eq!(outcome.code(), "token_missing", "{what}: {outcome:?}");
        assert_http(&outcome, "token_missing");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn empty_credentials_are_ignored_beside_a_real_one() {
    let server = hs("").await;
    let token = hs_tok("alice", json!({}));
    let auth = format!("Bearer {token}");
    let q = format!("?access_token={token}");
    let cases: Vec<(&str, String, Headers<'_>)> = vec![
        ("header + empty access_token", "?access_token=".into(), vec![("authorization", &auth)]),
        ("header + empty ticket", "?ticket=".into(), vec![("authorization", &auth)]),
        (
            "header + empty bearer entry",
            String::new(),
            vec![("authorization", &auth), ("sec-websocket-protocol", "agentgate.v1, agentgate.bearer.")],
        ),
        ("query + empty Bearer", q, vec![("authorization", "Bearer")]),
    ];
    for (what, query, headers) in cases {
        match attempt(&server, &query, &headers).await {
            Outcome::Welcome(w) => assert_eq!(w["principal"]["subject"], "alice", "{what}"),
            other => panic!("{what}: expected a welcome, got {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn query_token_when_disabled_is_token_missing_saying_so() {
    let server = hs("[auth]\nquery_token = false\n").await;
    let token = hs_tok("alice", json!({}));
    let outcome = attempt(&server, &format!("?access_token={token}"), &[]).await;
    let message = assert_http(&outcome, "token_missing");
    assert!(message.to_lowercase().contains("disabled"), "message says query tokens are disabled: {message:?}");
    assert!(!message.contains(&token), "the token never appears in an error");
    // The header transport still works.
    welcome(&server, &token).await;
    server.shutdown().await;
}

#[tokio::test]
async fn undecodable_tokens_are_rejected_with_token_malformed() {
    let server = hs("").await;
    let c = claims("alice").to_string();
    let mut big = claims("alice");
    big["pad"] = json!("x".repeat(9000));
    let oversized = hs256(&big);
    assert!(oversized.len() > 8192);
    let cases: Vec<(&str, String)> = vec![
        ("garbage three-part token", "this.is.garbage".into()),
        ("non-JSON header", raw_token("not json", &c, "c2ln")),
        ("header JSON but not an object", raw_token("[\"HS256\"]", &c, "c2ln")),
        ("non-JSON payload", raw_token(r#"{"alg":"HS256"}"#, "not json", "c2ln")),
        ("payload JSON but not an object", raw_token(r#"{"alg":"HS256"}"#, "42", "c2ln")),
        ("a token above 8192 bytes", oversized),
        ("random opaque string without API keys", "not-a-jwt-and-no-api-keys-configured".into()),
    ];
    for (what, token) in cases {
        let outcome = bearer(&server, &token).await;
        assert_eq!(outcome.code(), "token_malformed", "{what}: {outcome:?}");
        assert_http(&outcome, "token_malformed");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn server_ids_used_as_tokens_are_token_malformed_saying_what_they_look_like() {
    let server = start(&format!("{HS_CONFIG}\n{}", api_key_config())).await;
    for (prefix, looks_like) in [("s_", "session id"), ("r_", "run"), ("t_", "ticket"), ("req_", "request")] {
        let outcome = bearer(&server, &server_id(prefix)).await;
        let message = assert_http(&outcome, "token_malformed");
        assert!(message.to_lowercase().contains(looks_like), "{prefix}: message {message:?} mentions {looks_like}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_real_session_id_sent_as_bearer_token_is_token_malformed() {
    // INCIDENTS row 4: a frontend sent its session id where the token belongs.
    let server = hs("").await;
    let w = welcome(&server, &hs_tok("alice", json!({}))).await;
    let session_id = w["session_id"].as_str().unwrap().to_owned();
    let outcome = bearer(&server, &session_id).await;
    let message = assert_http(&outcome, "token_malformed");
    assert!(message.to_lowercase().contains("session id"), "message says it looks like a session id: {message:?}");
    // Also through the query transport.
    let outcome = attempt(&server, &format!("?access_token={session_id}"), &[]).await;
    assert_http(&outcome, "token_malformed");
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_rejected_with_signature_invalid() {
    let server = start(&format!(
        "{HS_CONFIG}\n[[auth.jwt]]\nname = \"rsa\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
        key_path("rsa.pub")
    ))
    .await;
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let wrong_secret = sign_hs(&header, &claims("alice"), b"some-other-secret-some-other-secret!!");
    assert_http(&bearer(&server, &wrong_secret).await, "signature_invalid");
    let other_rsa = sign_pem(&json!({"alg": "RS256"}), &claims("alice"), &key_bytes("rsa-other.key"));
    assert_http(&bearer(&server, &other_rsa).await, "signature_invalid");
    // A tampered payload under a valid signature.
    let good = hs_tok("alice", json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(claims("mallory").to_string().as_bytes()), parts[2]);
    assert_http(&bearer(&server, &tampered).await, "signature_invalid");
    server.shutdown().await;
}

#[tokio::test]
async fn alg_none_and_unimplemented_algorithms_are_algorithm_not_allowed() {
    let server = hs("").await;
    let c = claims("alice").to_string();
    for alg in ["none", "None", "NONE", "nOnE", "XS256", "HS1"] {
        let header = json!({"alg": alg, "typ": "JWT"}).to_string();
        let unsigned = format!("{}.{}.", b64(header.as_bytes()), b64(c.as_bytes()));
        let outcome = bearer(&server, &unsigned).await;
        assert_eq!(outcome.code(), "algorithm_not_allowed", "alg {alg} unsigned: {outcome:?}");
        assert_http(&outcome, "algorithm_not_allowed");
        // Even carrying a valid HS256 signature.
        let signed = sign_hs(&json!({"alg": alg, "typ": "JWT"}), &claims("alice"), HS_SECRET.as_bytes());
        assert_http(&bearer(&server, &signed).await, "algorithm_not_allowed");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_algorithm_not_listed_for_the_issuer_is_algorithm_not_allowed() {
    let server = hs("").await;
    for alg in ["HS384", "HS512"] {
        let token = sign_hs(&json!({"alg": alg, "typ": "JWT"}), &claims("alice"), HS_SECRET.as_bytes());
        assert_http(&bearer(&server, &token).await, "algorithm_not_allowed");
    }
    let rs = sign_pem(&json!({"alg": "RS256"}), &claims("alice"), &key_bytes("rsa.key"));
    assert_http(&bearer(&server, &rs).await, "algorithm_not_allowed");
    server.shutdown().await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_algorithm_not_allowed() {
    // Key confusion: the RSA public key's PEM bytes used as an HMAC secret.
    let server = start(&format!(
        "[[auth.jwt]]\nname = \"rsa\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\nkid = \"rsa-1\"\n\
         [[auth.jwt]]\nname = \"pkcs1\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
        key_path("rsa.pub"),
        key_path("rsa-pkcs1.pub")
    ))
    .await;
    for pem in ["rsa.pub", "rsa-pkcs1.pub"] {
        let token = sign_hs(&json!({"alg": "HS256", "typ": "JWT"}), &claims("alice"), &key_bytes(pem));
        assert_http(&bearer(&server, &token).await, "algorithm_not_allowed");
    }
    // Also when the kid names the RSA key.
    let token = sign_hs(&json!({"alg": "HS256", "kid": "rsa-1"}), &claims("alice"), &key_bytes("rsa.pub"));
    assert_http(&bearer(&server, &token).await, "algorithm_not_allowed");
    server.shutdown().await;
}

#[tokio::test]
async fn a_kid_naming_no_configured_key_is_key_unknown() {
    let server = start(&format!(
        "[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\nkid = \"hs-1\"\n\
         [[auth.jwt]]\nname = \"rsa\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\nkid = \"rsa-1\"\n",
        key_path("rsa.pub")
    ))
    .await;
    // The configured kid works.
    let ok = sign_hs(&json!({"alg": "HS256", "kid": "hs-1"}), &claims("alice"), HS_SECRET.as_bytes());
    assert_eq!(welcome(&server, &ok).await["principal"]["via"], "jwt:local");
    for (what, token) in [
        ("HS256 unknown kid", sign_hs(&json!({"alg": "HS256", "kid": "hs-2"}), &claims("alice"), HS_SECRET.as_bytes())),
        (
            "RS256 unknown kid",
            sign_pem(&json!({"alg": "RS256", "kid": "rsa-2"}), &claims("alice"), &key_bytes("rsa.key")),
        ),
    ] {
        let outcome = bearer(&server, &token).await;
        assert_eq!(outcome.code(), "key_unknown", "{what}: {outcome:?}");
        assert_http(&outcome, "key_unknown");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_kid_is_key_unknown_even_when_no_issuer_names_kids() {
    // PROTOCOL.md 2.1 step 2a: a `kid` picks the issuer holding a key with that kid;
    // no such key is `key_unknown`, whatever else could verify the token.
    let server = hs("").await;
    let token = sign_hs(&json!({"alg": "HS256", "kid": "some-kid"}), &claims("alice"), HS_SECRET.as_bytes());
    assert_http(&bearer(&server, &token).await, "key_unknown");
    server.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_rejected_with_token_expired() {
    let server = hs("").await;
    let expired = hs_tok("alice", json!({"exp": now() - 120, "iat": now() - 1000}));
    assert_http(&bearer(&server, &expired).await, "token_expired");
    // Just beyond the default 30 s leeway.
    let beyond = hs_tok("alice", json!({"exp": now() - 40, "iat": now() - 1000}));
    assert_http(&bearer(&server, &beyond).await, "token_expired");
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_expired_within_leeway_is_accepted() {
    let server = hs("").await;
    let exp = now() - 10;
    let w = welcome(&server, &hs_tok("alice", json!({"exp": exp, "iat": now() - 1000}))).await;
    assert_eq!(w["expires_at"], exp);
    server.shutdown().await;
    // With a configured leeway of 0 the same token is expired.
    let server = hs("[auth]\nleeway_s = 0\n").await;
    let token = hs_tok("alice", json!({"exp": now() - 10, "iat": now() - 1000}));
    assert_http(&bearer(&server, &token).await, "token_expired");
    server.shutdown().await;
}

#[tokio::test]
async fn future_nbf_or_iat_beyond_leeway_is_token_not_yet_valid() {
    let server = hs("").await;
    for (what, extra) in [
        ("nbf", json!({"nbf": now() + 120})),
        ("iat", json!({"iat": now() + 120})),
        ("nbf just beyond leeway", json!({"nbf": now() + 45})),
    ] {
        let outcome = bearer(&server, &hs_tok("alice", extra)).await;
        assert_eq!(outcome.code(), "token_not_yet_valid", "{what}: {outcome:?}");
        assert_http(&outcome, "token_not_yet_valid");
    }
    // Within leeway: accepted.
    welcome(&server, &hs_tok("alice", json!({"nbf": now() + 10, "iat": now() + 10}))).await;
    server.shutdown().await;
}

#[tokio::test]
async fn absent_or_unaccepted_iss_is_issuer_invalid() {
    let server = start(
        "[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\nissuer = \"https://issuer.test\"\n",
    )
    .await;
    welcome(&server, &hs_tok("alice", json!({"iss": "https://issuer.test"}))).await;
    for (what, extra) in [
        ("iss absent", json!({})),
        ("iss different", json!({"iss": "https://other.test"})),
        ("iss differs by a trailing slash", json!({"iss": "https://issuer.test/"})),
    ] {
        let outcome = bearer(&server, &hs_tok("alice", extra)).await;
        assert_eq!(outcome.code(), "issuer_invalid", "{what}: {outcome:?}");
        assert_http(&outcome, "issuer_invalid");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_iss_that_no_issuer_names_is_issuer_invalid_when_every_issuer_names_one() {
    let server = start(
        "[[auth.jwt]]\nname = \"a\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\nissuer = \"https://a.test\"\n\
         [[auth.jwt]]\nname = \"c\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET_2\"\nissuer = \"https://c.test\"\n",
    )
    .await;
    let outcome = bearer(&server, &hs_tok("alice", json!({"iss": "https://x.test"}))).await;
    assert_http(&outcome, "issuer_invalid");
    let c = sign_hs(
        &json!({"alg": "HS256"}),
        &claims_with("alice", json!({"iss": "https://c.test"})),
        HS_SECRET_2.as_bytes(),
    );
    assert_eq!(welcome(&server, &c).await["principal"]["via"], "jwt:c");
    server.shutdown().await;
}

#[tokio::test]
async fn absent_or_unmatched_aud_is_audience_invalid() {
    let server = start(
        "[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\naudience = [\"agentgate\", \"agentgate-staging\"]\n",
    )
    .await;
    for (what, extra) in [
        ("aud absent", json!({})),
        ("aud wrong", json!({"aud": "other"})),
        ("aud array without a match", json!({"aud": ["other", "another"]})),
        ("aud empty array", json!({"aud": []})),
    ] {
        let outcome = bearer(&server, &hs_tok("alice", extra)).await;
        assert_eq!(outcome.code(), "audience_invalid", "{what}: {outcome:?}");
        assert_http(&outcome, "audience_invalid");
    }
    for aud in [json!("agentgate"), json!(["other", "agentgate-staging"]), json!(["agentgate"])] {
        welcome(&server, &hs_tok("alice", json!({"aud": aud}))).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn absent_exp_or_sub_is_claim_missing() {
    let server = hs("").await;
    for (what, c) in [
        ("no exp", claims_with("alice", json!({"exp": null}))),
        ("no sub", claims_with("alice", json!({"sub": null}))),
        ("neither", json!({"iat": now()})),
    ] {
        let outcome = bearer(&server, &hs256(&c)).await;
        assert_eq!(outcome.code(), "claim_missing", "{what}: {outcome:?}");
        assert_http(&outcome, "claim_missing");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_non_access_token_type_is_token_type_invalid() {
    let server = hs("").await;
    for extra in [
        json!({"typ": "refresh"}),
        json!({"token_use": "id"}),
        json!({"type": "id_token"}),
        json!({"token_type": "refresh_token"}),
        json!({"typ": "JWT"}),
    ] {
        let outcome = bearer(&server, &hs_tok("alice", extra.clone())).await;
        assert_eq!(outcome.code(), "token_type_invalid", "{extra}: {outcome:?}");
        assert_http(&outcome, "token_type_invalid");
    }
    for extra in [
        json!({"typ": "at+jwt"}),
        json!({"typ": "Bearer"}),
        json!({"token_use": "access"}),
        json!({"token_type": "access_token"}),
        json!({"type": "ACCESS"}),
    ] {
        welcome(&server, &hs_tok("alice", extra)).await;
    }
    // The JOSE header's `typ` is not a type claim.
    let header_typ = sign_hs(&json!({"alg": "HS256", "typ": "JWT"}), &claims("alice"), HS_SECRET.as_bytes());
    welcome(&server, &header_typ).await;
    server.shutdown().await;
}

#[tokio::test]
async fn claims_are_checked_in_contract_order() {
    let server = start(
        "[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\n\
         issuer = \"https://issuer.test\"\naudience = [\"agentgate\"]\n",
    )
    .await;
    let iss = "https://issuer.test";
    let past = now() - 1000;
    let future = now() + 1000;
    let cases = [
        ("signature_invalid", false, json!({"sub": null, "exp": past})),
        ("claim_missing", true, json!({"sub": null, "aud": "x"})),
        ("issuer_invalid", true, json!({"aud": "x", "exp": past})),
        ("audience_invalid", true, json!({"iss": iss, "aud": "x", "exp": past})),
        ("token_expired", true, json!({"iss": iss, "aud": "agentgate", "exp": past, "nbf": future})),
        ("token_not_yet_valid", true, json!({"iss": iss, "aud": "agentgate", "nbf": future, "typ": "refresh"})),
        ("token_type_invalid", true, json!({"iss": iss, "aud": "agentgate", "typ": "refresh", "role": "anon"})),
        ("anonymous_not_allowed", true, json!({"iss": iss, "aud": "agentgate", "role": "anon"})),
    ];
    for (expected, good_sig, extra) in cases {
        let c = claims_with("alice", extra);
        let token = if good_sig {
            hs256(&c)
        } else {
            sign_hs(&json!({"alg": "HS256"}), &c, b"not-the-configured-secret-0000000000")
        };
        let outcome = bearer(&server, &token).await;
        assert_eq!(outcome.code(), expected, "{c}: {outcome:?}");
        assert_http(&outcome, expected);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_non_jwt_string_matching_no_api_key_is_api_key_invalid() {
    // INCIDENTS row 2: a hand-made fake token with API keys configured.
    let server = start(&format!("{HS_CONFIG}\n{}", api_key_config())).await;
    let outcome = bearer(&server, "staging_jwt_token_u1_1700000000").await;
    let message = assert_http(&outcome, "api_key_invalid");
    let m = message.to_lowercase();
    assert!(m.contains("jwt"), "message says it is not a JWT: {message:?}");
    assert!(m.contains("api key"), "message says it matches no API key: {message:?}");
    assert!(!message.contains("staging_jwt_token_u1_1700000000"), "the token never appears in an error");
    // A near miss of the real key.
    let near = format!("{API_KEY}x");
    assert_http(&bearer(&server, &near).await, "api_key_invalid");
    assert_http(&bearer(&server, &API_KEY.to_uppercase()).await, "api_key_invalid");
    server.shutdown().await;
}

#[tokio::test]
async fn a_configured_api_key_is_accepted_with_its_principal() {
    let server = start(&format!("{HS_CONFIG}\n{}", api_key_config())).await;
    let expected = json!({
        "subject": "ci-bot", "tenant": "acme", "scopes": ["agents:run", "reports:read"], "via": "api_key:ci"
    });
    let w = welcome(&server, API_KEY).await;
    assert_eq!(w["principal"], expected);
    assert_eq!(w.get("expires_at"), Some(&Value::Null), "expires_at is null for an API key: {w}");
    // Through the query and subprotocol transports too.
    match attempt(&server, &format!("?access_token={API_KEY}"), &[]).await {
        Outcome::Welcome(w) => assert_eq!(w["principal"], expected),
        other => panic!("expected a welcome, got {other:?}"),
    }
    let proto = format!("agentgate.v1, agentgate.bearer.{API_KEY}");
    match attempt(&server, "", &[("sec-websocket-protocol", &proto)]).await {
        Outcome::Welcome(w) => assert_eq!(w["principal"], expected),
        other => panic!("expected a welcome, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_anonymous_role_is_rejected_with_anonymous_not_allowed() {
    let server = hs("").await;
    let outcome = bearer(&server, &hs_tok("visitor", json!({"role": "anon"}))).await;
    assert_http(&outcome, "anonymous_not_allowed");
    welcome(&server, &hs_tok("alice", json!({"role": "user"}))).await;
    server.shutdown().await;

    let server = hs("[auth]\nanonymous_roles = [\"guest\"]\n").await;
    assert_http(&bearer(&server, &hs_tok("visitor", json!({"role": "guest"}))).await, "anonymous_not_allowed");
    welcome(&server, &hs_tok("alice", json!({"role": "anon"}))).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_disallowed_origin_is_rejected_with_origin_not_allowed() {
    let server = hs(&format!("[server]\nallowed_origins = [\"{ORIGIN}\"]\nfailure_mode = \"http\"\n")).await;
    let token = hs_tok("alice", json!({}));
    let auth = format!("Bearer {token}");
    let outcome = attempt(&server, "", &[("origin", "http://evil.test"), ("authorization", &auth)]).await;
    assert_http(&outcome, "origin_not_allowed");
    // Origin is checked before credentials.
    let outcome = attempt(&server, "", &[("origin", "http://evil.test")]).await;
    assert_http(&outcome, "origin_not_allowed");
    // The allowed origin, and no origin, pass.
    assert!(matches!(attempt(&server, "", &[("origin", ORIGIN), ("authorization", &auth)]).await, Outcome::Welcome(_)));
    welcome(&server, &token).await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_unknown_ticket_is_rejected_with_ticket_invalid() {
    let server = hs("").await;
    for t in ["t_whatever", "t_Zx8Kq2Lm9Np4Rt6Vw1Yb3Cd5", "not-a-ticket", &hs_tok("alice", json!({}))] {
        let outcome = attempt(&server, &format!("?ticket={t}"), &[]).await;
        assert_eq!(outcome.code(), "ticket_invalid", "ticket {t}: {outcome:?}");
        assert_http(&outcome, "ticket_invalid");
    }
    server.shutdown().await;
}

// === 2. credential transports ===

#[tokio::test]
async fn authorization_header_is_accepted() {
    let server = hs("").await;
    let exp = now() + 900;
    let w = welcome(&server, &hs_tok("alice", json!({"exp": exp}))).await;
    assert_eq!(
        w["principal"],
        json!({"subject": "alice", "tenant": null, "scopes": ["agents:run"], "via": "jwt:local"})
    );
    assert_eq!(w["expires_at"], exp);
    assert!(w.get("resume_error").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn bearer_subprotocol_is_accepted_and_only_agentgate_v1_is_selected() {
    let server = hs("").await;
    let token = hs_tok("alice", json!({}));
    for offer in [format!("agentgate.v1, agentgate.bearer.{token}"), format!("agentgate.bearer.{token}, agentgate.v1")]
    {
        let (mut ws, resp) = upgrade(&server.ws_url("/v1/ws"), &[("sec-websocket-protocol", &offer)]).await;
        assert_eq!(selected_protocol(&resp).as_deref(), Some("agentgate.v1"), "offer {offer}");
        assert_eq!(resp.headers().get_all("sec-websocket-protocol").iter().count(), 1);
        let w = recv_json(&mut ws).await;
        assert_welcome_shape(&w);
        assert_eq!(w["principal"]["subject"], "alice");
        assert_eq!(w["principal"]["via"], "jwt:local");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn access_token_query_parameter_is_accepted() {
    let server = hs("").await;
    let token = hs_tok("alice", json!({}));
    match attempt(&server, &format!("?access_token={token}"), &[]).await {
        Outcome::Welcome(w) => {
            assert_welcome_shape(&w);
            assert_eq!(w["principal"]["subject"], "alice");
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn first_message_auth_is_accepted() {
    let server = hs("[auth]\nfirst_message = true\n").await;
    let exp = now() + 900;
    let token = hs_tok("alice", json!({"exp": exp}));
    let (mut ws, _) = upgrade(&server.ws_url("/v1/ws"), &[]).await;
    send_json(&mut ws, json!({"type": "auth", "token": token})).await;
    let w = recv_json(&mut ws).await;
    assert_welcome_shape(&w);
    assert_eq!(w["principal"]["subject"], "alice");
    assert_eq!(w["principal"]["via"], "jwt:local");
    assert_eq!(w["expires_at"], exp);
    // A later `auth` frame is a protocol error.
    send_json(&mut ws, json!({"type": "auth", "token": token})).await;
    expect_close(&mut ws, 4400, "protocol_error").await;
    // A credential on the request still works without an auth frame.
    welcome(&server, &token).await;
    server.shutdown().await;
}

#[tokio::test]
async fn first_message_auth_without_a_token_closes_4401_token_missing() {
    let server = hs("[auth]\nfirst_message = true\n").await;
    let frames = [
        json!({"type": "ping", "ref": "x"}),
        json!({"type": "run.start", "ref": "c1", "agent": "demo", "input": {"prompt": "hi"}}),
        json!({"type": "auth", "token": ""}),
        json!({"type": "auth"}),
        json!({"type": "auth", "token": 42}),
        json!({"type": "auth", "token": null}),
    ];
    for frame in frames {
        let (mut ws, _) = upgrade(&server.ws_url("/v1/ws"), &[]).await;
        send_json(&mut ws, frame.clone()).await;
        match next_frame(&mut ws).await {
            Frame::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (4401, r#"{"code":"token_missing"}"#), "frame {frame}");
            }
            other => panic!("frame {frame}: expected close 4401 token_missing, got {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn first_message_silence_closes_4408_auth_timeout() {
    let server = hs("[auth]\nfirst_message = true\nfirst_message_timeout_ms = 300\n").await;
    let started = Instant::now();
    let (mut ws, _) = upgrade(&server.ws_url("/v1/ws"), &[]).await;
    match next_frame(&mut ws).await {
        Frame::Close(code, reason) => assert_eq!((code, reason.as_str()), (4408, r#"{"code":"auth_timeout"}"#)),
        other => panic!("expected close 4408 auth_timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "closed after {waited:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn first_message_with_an_invalid_token_closes_with_its_code() {
    let server = start(&format!("[auth]\nfirst_message = true\n{HS_CONFIG}\n{}", api_key_config())).await;
    let cases = [
        ("token_expired", hs_tok("alice", json!({"exp": now() - 1000, "iat": now() - 2000}))),
        (
            "signature_invalid",
            sign_hs(&json!({"alg": "HS256"}), &claims("alice"), b"wrong-secret-wrong-secret-wrong-se"),
        ),
        ("token_malformed", server_id("s_")),
        ("token_malformed", "this.is.garbage".to_owned()),
        ("api_key_invalid", "staging_jwt_token_u1_1700000000".to_owned()),
        ("algorithm_not_allowed", raw_token(r#"{"alg":"none"}"#, &claims("alice").to_string(), "")),
        ("anonymous_not_allowed", hs_tok("visitor", json!({"role": "anon"}))),
    ];
    for (code, token) in cases {
        let (mut ws, _) = upgrade(&server.ws_url("/v1/ws"), &[]).await;
        send_json(&mut ws, json!({"type": "auth", "token": token})).await;
        match next_frame(&mut ws).await {
            Frame::Close(c, reason) => {
                assert_eq!(reason, format!(r#"{{"code":"{code}"}}"#));
                assert_eq!(c, close_code(code), "close code of {code}");
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
    // And the API key works in the auth frame.
    let (mut ws, _) = upgrade(&server.ws_url("/v1/ws"), &[]).await;
    send_json(&mut ws, json!({"type": "auth", "token": API_KEY})).await;
    let w = recv_json(&mut ws).await;
    assert_eq!(w["principal"]["via"], "api_key:ci");
    server.shutdown().await;
}

// === 3. algorithm families ===

#[tokio::test]
async fn hmac_algorithms_are_accepted() {
    let server = start(
        "[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\", \"HS384\", \"HS512\"]\nsecret_env = \"TEST_HS_SECRET\"\n",
    )
    .await;
    for alg in ["HS256", "HS384", "HS512"] {
        let token = sign_hs(&json!({"alg": alg, "typ": "JWT"}), &claims("alice"), HS_SECRET.as_bytes());
        let w = welcome(&server, &token).await;
        assert_eq!(w["principal"]["via"], "jwt:local", "{alg}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn secret_file_issuer_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hs.key");
    std::fs::write(&path, format!("{HS_SECRET_2}\n")).unwrap();
    let server = start(&format!(
        "[[auth.jwt]]\nname = \"file\"\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n",
        path.display()
    ))
    .await;
    // The trailing newline is not part of the secret.
    let token = sign_hs(&json!({"alg": "HS256"}), &claims("alice"), HS_SECRET_2.as_bytes());
    assert_eq!(welcome(&server, &token).await["principal"]["via"], "jwt:file");
    server.shutdown().await;
}

#[tokio::test]
async fn public_key_algorithms_are_accepted() {
    let server = start(&format!(
        "[[auth.jwt]]\nname = \"rsa-pkcs1\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n\
         [[auth.jwt]]\nname = \"rsa\"\nalgorithms = [\"RS256\", \"RS384\", \"RS512\", \"PS256\"]\npublic_key_file = \"{}\"\n\
         [[auth.jwt]]\nname = \"ec256\"\nalgorithms = [\"ES256\"]\npublic_key_file = \"{}\"\n\
         [[auth.jwt]]\nname = \"ec384\"\nalgorithms = [\"ES384\"]\npublic_key_file = \"{}\"\n\
         [[auth.jwt]]\nname = \"ed\"\nalgorithms = [\"EdDSA\"]\npublic_key_file = \"{}\"\n",
        key_path("rsa-pkcs1.pub"),
        key_path("rsa.pub"),
        key_path("ec256.pub"),
        key_path("ec384.pub"),
        key_path("ed25519.pub"),
    ))
    .await;
    let cases = [
        // RS256 is tried on the PKCS#1 issuer first (config order) and verifies there.
        ("RS256", "rsa.key", "jwt:rsa-pkcs1"),
        ("RS384", "rsa.key", "jwt:rsa"),
        ("RS512", "rsa.key", "jwt:rsa"),
        ("PS256", "rsa.key", "jwt:rsa"),
        ("ES256", "ec256.key", "jwt:ec256"),
        ("ES384", "ec384.key", "jwt:ec384"),
        ("EdDSA", "ed25519.key", "jwt:ed"),
    ];
    for (alg, key, via) in cases {
        let token = sign_pem(&json!({"alg": alg, "typ": "JWT"}), &claims("alice"), &key_bytes(key));
        let w = welcome(&server, &token).await;
        assert_eq!(w["principal"]["via"], via, "{alg}");
        assert_eq!(w["principal"]["subject"], "alice");
    }
    // RS256 signed with another RSA key does not verify.
    let wrong = sign_pem(&json!({"alg": "RS256"}), &claims("alice"), &key_bytes("rsa-other.key"));
    assert_http(&bearer(&server, &wrong).await, "signature_invalid");
    server.shutdown().await;
}

#[tokio::test]
async fn es256_against_an_issuer_with_a_p384_key_is_algorithm_not_allowed() {
    let server = start(&format!(
        "[[auth.jwt]]\nname = \"ec384\"\nalgorithms = [\"ES384\"]\npublic_key_file = \"{}\"\nkid = \"p384\"\n",
        key_path("ec384.pub")
    ))
    .await;
    let es256 = sign_pem(&json!({"alg": "ES256"}), &claims("alice"), &key_bytes("ec256.key"));
    assert_http(&bearer(&server, &es256).await, "algorithm_not_allowed");
    let es256_kid = sign_pem(&json!({"alg": "ES256", "kid": "p384"}), &claims("alice"), &key_bytes("ec256.key"));
    assert_http(&bearer(&server, &es256_kid).await, "algorithm_not_allowed");
    let es384 = sign_pem(&json!({"alg": "ES384", "kid": "p384"}), &claims("alice"), &key_bytes("ec384.key"));
    assert_eq!(welcome(&server, &es384).await["principal"]["via"], "jwt:ec384");
    server.shutdown().await;
}

#[tokio::test]
async fn a_kid_of_an_issuer_without_the_alg_is_algorithm_not_allowed() {
    let server = start(
        "[[auth.jwt]]\nname = \"a\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\nkid = \"hs-1\"\n\
         [[auth.jwt]]\nname = \"b\"\nalgorithms = [\"HS384\"]\nsecret_env = \"TEST_HS_SECRET_2\"\nkid = \"hs-2\"\n",
    )
    .await;
    let token = sign_hs(&json!({"alg": "HS384", "kid": "hs-1"}), &claims("alice"), HS_SECRET.as_bytes());
    assert_http(&bearer(&server, &token).await, "algorithm_not_allowed");
    let ok = sign_hs(&json!({"alg": "HS384", "kid": "hs-2"}), &claims("alice"), HS_SECRET_2.as_bytes());
    assert_eq!(welcome(&server, &ok).await["principal"]["via"], "jwt:b");
    server.shutdown().await;
}

fn jwk(pem: &[u8], alg: Algorithm, kid: &str) -> Jwk {
    let key = match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(pem).unwrap()
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
        _ => EncodingKey::from_secret(pem).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

#[tokio::test]
async fn jwks_file_keys_are_selected_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwkSet {
        keys: vec![
            jwk(&key_bytes("rsa.key"), Algorithm::RS256, "rsa-1"),
            jwk(&key_bytes("ec256.key"), Algorithm::ES256, "ec-1"),
            jwk(&key_bytes("ec384.key"), Algorithm::ES384, "ec-384"),
            jwk(&key_bytes("ed25519.key"), Algorithm::EdDSA, "ed-1"),
        ],
    };
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_string(&jwks).unwrap()).unwrap();
    let server = start(&format!(
        "{HS_CONFIG}\n[[auth.jwt]]\nname = \"jwks\"\nalgorithms = [\"RS256\", \"ES256\", \"ES384\", \"EdDSA\"]\n\
         jwks_file = \"{}\"\naudience = [\"authenticated\"]\n",
        path.display()
    ))
    .await;
    let c = claims_with("alice", json!({"aud": "authenticated"}));
    for (alg, kid, key) in [
        ("RS256", "rsa-1", "rsa.key"),
        ("ES256", "ec-1", "ec256.key"),
        ("ES384", "ec-384", "ec384.key"),
        ("EdDSA", "ed-1", "ed25519.key"),
    ] {
        let token = sign_pem(&json!({"alg": alg, "kid": kid, "typ": "JWT"}), &c, &key_bytes(key));
        let w = welcome(&server, &token).await;
        assert_eq!(w["principal"]["via"], "jwt:jwks", "{alg}");
    }
    let unknown = sign_pem(&json!({"alg": "RS256", "kid": "rsa-9"}), &c, &key_bytes("rsa.key"));
    assert_http(&bearer(&server, &unknown).await, "key_unknown");
    let wrong_key = sign_pem(&json!({"alg": "RS256", "kid": "rsa-1"}), &c, &key_bytes("rsa-other.key"));
    assert_http(&bearer(&server, &wrong_key).await, "signature_invalid");
    // ES256 on the kid of the P-384 key, and RS256 on the kid of an EC key: the alg does
    // not match the key's type.
    let es256_on_p384 = sign_pem(&json!({"alg": "ES256", "kid": "ec-384"}), &c, &key_bytes("ec256.key"));
    assert_http(&bearer(&server, &es256_on_p384).await, "algorithm_not_allowed");
    let rs_on_ec = sign_pem(&json!({"alg": "RS256", "kid": "ec-1"}), &c, &key_bytes("rsa.key"));
    assert_http(&bearer(&server, &rs_on_ec).await, "algorithm_not_allowed");
    // The issuer's audience applies.
    let no_aud = sign_pem(&json!({"alg": "ES256", "kid": "ec-1"}), &claims("alice"), &key_bytes("ec256.key"));
    assert_http(&bearer(&server, &no_aud).await, "audience_invalid");
    server.shutdown().await;
}

#[tokio::test]
async fn without_kid_or_iss_the_first_issuer_whose_signature_verifies_is_chosen() {
    let server = start(
        "[[auth.jwt]]\nname = \"first\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\n\
         [[auth.jwt]]\nname = \"second\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET_2\"\n",
    )
    .await;
    let by_second = sign_hs(&json!({"alg": "HS256"}), &claims("alice"), HS_SECRET_2.as_bytes());
    assert_eq!(welcome(&server, &by_second).await["principal"]["via"], "jwt:second");
    assert_eq!(welcome(&server, &hs_tok("alice", json!({}))).await["principal"]["via"], "jwt:first");
    let by_neither = sign_hs(&json!({"alg": "HS256"}), &claims("alice"), b"neither-secret-neither-secret-0000");
    assert_http(&bearer(&server, &by_neither).await, "signature_invalid");
    server.shutdown().await;
}

#[tokio::test]
async fn an_iss_picks_its_issuer_and_an_unnamed_iss_falls_to_issuers_without_one() {
    let server = start(
        "[[auth.jwt]]\nname = \"a\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\nissuer = \"https://a.test\"\n\
         [[auth.jwt]]\nname = \"b\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET_2\"\n",
    )
    .await;
    let sign = |secret: &str, iss: &str| {
        sign_hs(&json!({"alg": "HS256"}), &claims_with("alice", json!({"iss": iss})), secret.as_bytes())
    };
    assert_eq!(welcome(&server, &sign(HS_SECRET, "https://a.test")).await["principal"]["via"], "jwt:a");
    // `iss` picks `a`, whose key does not verify a token signed by `b`'s secret.
    assert_http(&bearer(&server, &sign(HS_SECRET_2, "https://a.test")).await, "signature_invalid");
    // An iss no issuer names goes to the issuers that set no `issuer`: only `b`.
    assert_eq!(welcome(&server, &sign(HS_SECRET_2, "https://zzz.test")).await["principal"]["via"], "jwt:b");
    assert_http(&bearer(&server, &sign(HS_SECRET, "https://zzz.test")).await, "signature_invalid");
    server.shutdown().await;
}

// === 4. failure_mode ===

/// Rejections that every mode must deliver: (query, headers builder output, code).
fn failure_cases() -> Vec<(String, OwnedHeaders, &'static str)> {
    let expired = hs_tok("alice", json!({"exp": now() - 1000, "iat": now() - 2000}));
    let good = hs_tok("alice", json!({}));
    let bad_sig = sign_hs(&json!({"alg": "HS256"}), &claims("alice"), b"wrong-secret-wrong-secret-wrong-se");
    let auth = |t: &str| ("authorization".to_owned(), format!("Bearer {t}"));
    vec![
        (String::new(), vec![auth(&expired)], "token_expired"),
        (String::new(), vec![], "token_missing"),
        (String::new(), vec![auth(&bad_sig)], "signature_invalid"),
        (String::new(), vec![auth(&server_id("s_"))], "token_malformed"),
        (format!("?access_token={good}"), vec![auth(&good)], "credentials_ambiguous"),
        (String::new(), vec![auth(&hs_tok("visitor", json!({"role": "anon"})))], "anonymous_not_allowed"),
        ("?ticket=t_whatever".to_owned(), vec![], "ticket_invalid"),
    ]
}

async fn attempt_owned(server: &TestServer, query: &str, headers: &[(String, String)], origin: bool) -> Outcome {
    let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if origin {
        h.push(("origin", ORIGIN));
    }
    attempt(server, query, &h).await
}

#[tokio::test]
async fn auto_mode_with_origin_upgrades_then_closes_with_the_code() {
    let server = hs(&format!("[server]\nallowed_origins = [\"{ORIGIN}\"]\n")).await;
    for (query, headers, code) in failure_cases() {
        let outcome = attempt_owned(&server, &query, &headers, true).await;
        assert_closed(&outcome, code);
    }
    // The selected subprotocol is agentgate.v1 when offered, even on a rejection.
    let expired = hs_tok("alice", json!({"exp": now() - 1000, "iat": now() - 2000}));
    let offer = format!("agentgate.v1, agentgate.bearer.{expired}");
    let (mut ws, resp) =
        upgrade(&server.ws_url("/v1/ws"), &[("origin", ORIGIN), ("sec-websocket-protocol", &offer)]).await;
    assert_eq!(selected_protocol(&resp).as_deref(), Some("agentgate.v1"));
    match next_frame(&mut ws).await {
        Frame::Close(code, reason) => assert_eq!((code, reason.as_str()), (4401, r#"{"code":"token_expired"}"#)),
        other => panic!("expected close 4401 token_expired, got {other:?}"),
    }
    // A good credential with Origin is welcomed.
    let good = format!("Bearer {}", hs_tok("alice", json!({})));
    assert!(matches!(attempt(&server, "", &[("origin", ORIGIN), ("authorization", &good)]).await, Outcome::Welcome(_)));
    server.shutdown().await;
}

#[tokio::test]
async fn auto_mode_without_origin_answers_http() {
    let server = hs(&format!("[server]\nallowed_origins = [\"{ORIGIN}\"]\nfailure_mode = \"auto\"\n")).await;
    for (query, headers, code) in failure_cases() {
        let outcome = attempt_owned(&server, &query, &headers, false).await;
        assert_http(&outcome, code);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn http_mode_with_origin_answers_http() {
    let server = hs(&format!("[server]\nallowed_origins = [\"{ORIGIN}\"]\nfailure_mode = \"http\"\n")).await;
    for (query, headers, code) in failure_cases() {
        let outcome = attempt_owned(&server, &query, &headers, true).await;
        assert_http(&outcome, code);
    }
    let outcome = attempt(&server, "", &[("origin", "http://evil.test")]).await;
    assert_http(&outcome, "origin_not_allowed");
    server.shutdown().await;
}

#[tokio::test]
async fn close_mode_without_origin_closes_with_the_code() {
    let server = hs(&format!("[server]\nallowed_origins = [\"{ORIGIN}\"]\nfailure_mode = \"close\"\n")).await;
    for (query, headers, code) in failure_cases() {
        let outcome = attempt_owned(&server, &query, &headers, false).await;
        assert_closed(&outcome, code);
    }
    welcome(&server, &hs_tok("alice", json!({}))).await;
    server.shutdown().await;
}

#[tokio::test]
async fn auto_mode_with_a_disallowed_origin_closes_4403_origin_not_allowed() {
    let server = hs(&format!("[server]\nallowed_origins = [\"{ORIGIN}\"]\n")).await;
    let good = format!("Bearer {}", hs_tok("alice", json!({})));
    let outcome = attempt(&server, "", &[("origin", "http://evil.test"), ("authorization", &good)]).await;
    assert_closed(&outcome, "origin_not_allowed");
    let outcome = attempt(&server, "", &[("origin", "http://app.test.evil.test")]).await;
    assert_closed(&outcome, "origin_not_allowed");
    server.shutdown().await;
}

// === 5. no bypass ===

#[tokio::test]
async fn bypass_headers_change_no_outcome() {
    let server = TestServer::start(
        &format!("[server]\nfailure_mode = \"http\"\n{HS_CONFIG}"),
        &[("TEST_HS_SECRET", HS_SECRET), ("E2E_TEST", "true"), ("SKIP_AUTH", "1"), ("BYPASS_AUTH", "1")],
    )
    .await;
    let bad_sig = format!(
        "Bearer {}",
        sign_hs(&json!({"alg": "HS256"}), &claims("alice"), b"wrong-secret-wrong-secret-wrong-se")
    );
    let expired = format!("Bearer {}", hs_tok("alice", json!({"exp": now() - 1000, "iat": now() - 2000})));
    let bypass: [(&str, &str); 4] =
        [("x-e2e-test", "true"), ("x-bypass-auth", "1"), ("x-skip-auth", "true"), ("x-test-user", "admin")];
    let mut cases: Vec<(&str, Headers<'_>, &str)> = vec![
        ("", vec![], "token_missing"),
        ("", vec![("authorization", &bad_sig)], "signature_invalid"),
        ("", vec![("authorization", &expired)], "token_expired"),
        ("?e2e=true&bypass_auth=1&test=1", vec![], "token_missing"),
    ];
    for (query, headers, code) in cases.iter_mut() {
        headers.extend_from_slice(&bypass);
        let outcome = attempt(&server, query, headers).await;
        assert_eq!(outcome.code(), *code, "{outcome:?}");
        assert_http(&outcome, code);
    }
    for (k, v) in bypass {
        assert_http(&attempt(&server, "", &[(k, v)]).await, "token_missing");
        assert_http(&attempt(&server, "", &[(k, v), ("authorization", &bad_sig)]).await, "signature_invalid");
    }
    server.shutdown().await;
}

// === 6. tenant and scopes ===

#[tokio::test]
async fn tenant_and_scopes_come_from_the_configured_claims() {
    let server = start(
        "[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\n\
         [[auth.jwt]]\nname = \"custom\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET_2\"\n\
         issuer = \"https://custom.test\"\ntenant_claim = \"org_id\"\nscope_claim = \"scp\"\n",
    )
    .await;
    let local = |extra: Value| hs_tok("alice", extra);
    let custom = |extra: Value| {
        let mut c = claims_with("bob", json!({"iss": "https://custom.test", "scope": null}));
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign_hs(&json!({"alg": "HS256"}), &c, HS_SECRET_2.as_bytes())
    };
    let cases = [
        (
            local(json!({"tenant": "acme", "scope": ["agents:run", "admin"]})),
            "alice",
            json!("acme"),
            json!(["agents:run", "admin"]),
            "jwt:local",
        ),
        (
            local(json!({"scope": "agents:run admin reports:read"})),
            "alice",
            Value::Null,
            json!(["agents:run", "admin", "reports:read"]),
            "jwt:local",
        ),
        (
            local(json!({"tenant": "t-1", "scope": "agents:run"})),
            "alice",
            json!("t-1"),
            json!(["agents:run"]),
            "jwt:local",
        ),
        (
            custom(json!({"org_id": "org-7", "scp": ["x:y", "agents:run"]})),
            "bob",
            json!("org-7"),
            json!(["x:y", "agents:run"]),
            "jwt:custom",
        ),
        (custom(json!({"org_id": "org-8", "scp": "x:y z"})), "bob", json!("org-8"), json!(["x:y", "z"]), "jwt:custom"),
    ];
    for (token, subject, tenant, scopes, via) in cases {
        let w = welcome(&server, &token).await;
        assert_eq!(
            w["principal"],
            json!({"subject": subject, "tenant": tenant, "scopes": scopes, "via": via}),
            "welcome {w}"
        );
    }
    server.shutdown().await;
}
