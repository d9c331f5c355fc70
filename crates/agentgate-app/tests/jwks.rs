//! `jwks_url`: keys from a real local HTTP server whose key set rotates; refetch on an
//! unknown `kid` at most every `jwks_min_refetch_s`; last good keys kept when the
//! server fails; key-naming headers (`jku`) never fetched.

mod support;

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::*;

#[derive(Default)]
struct Idp {
    keys: Mutex<Vec<Jwk>>,
    fetches: AtomicUsize,
    fail_with: AtomicU16,
}

async fn serve_jwks(State(idp): State<Arc<Idp>>) -> Response {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    let fail = idp.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        return StatusCode::from_u16(fail).unwrap().into_response();
    }
    let set = JwkSet { keys: idp.keys.lock().unwrap().clone() };
    axum::Json(serde_json::to_value(set).unwrap()).into_response()
}

async fn start_idp(idp: Arc<Idp>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/jwks", get(serve_jwks)).with_state(idp);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("keys/{name}"))).unwrap()
}

fn jwk(pem_name: &str, alg: Algorithm, kid: &str, with_alg: bool) -> Jwk {
    let p = pem(pem_name);
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&p).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&p).unwrap(),
        _ => EncodingKey::from_rsa_pem(&p).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    if !with_alg {
        jwk.common.key_algorithm = None;
    }
    jwk
}

fn token(pem_name: &str, alg: &str, kid: &str, sub: &str) -> String {
    sign_pem(&json!({"alg": alg, "typ": "JWT", "kid": kid}), &claims(sub), &pem(pem_name))
}

async fn outcome(server: &TestServer, token: &str) -> String {
    connect(&server.ws_url("/v1/ws"), &[("Authorization", &format!("Bearer {token}"))]).await.0.code()
}

async fn gateway(idp_addr: std::net::SocketAddr) -> TestServer {
    let cfg = format!(
        r#"
[[auth.jwt]]
name = "idp"
algorithms = ["RS256", "ES256"]
jwks_url = "http://{idp_addr}/jwks"
jwks_min_refetch_s = 1
jwks_refresh_s = 300
"#
    );
    TestServer::start(&cfg, &[("AGENTGATE_LIMITS__HANDSHAKES_PER_IP_PER_S", "1000")]).await
}

async fn wait_ready(server: &TestServer) -> Value {
    for _ in 0..100 {
        let r = http(server.addr, "GET", "/readyz", &[], b"").await;
        if r.status == 200 {
            return r.json();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway never became ready");
}

#[tokio::test]
async fn keys_rotate_through_the_jwks_url_with_bounded_refetches() {
    let idp = Arc::new(Idp::default());
    idp.keys.lock().unwrap().push(jwk("rsa.key", Algorithm::RS256, "key-a", true));
    let idp_addr = start_idp(Arc::clone(&idp)).await;
    let server = gateway(idp_addr).await;
    let ready = wait_ready(&server).await;
    assert_eq!(ready["checks"]["jwks:idp"], "ok");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    assert_eq!(outcome(&server, &token("rsa.key", "RS256", "key-a", "alice")).await, "accepted");

    // Rotation: key B appears; a token with kid B triggers one refetch.
    idp.keys.lock().unwrap().push(jwk("ec256.key", Algorithm::ES256, "key-b", true));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(outcome(&server, &token("ec256.key", "ES256", "key-b", "bob")).await, "accepted");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);

    // A storm of unknown kids inside the refetch window costs no fetch at all.
    for i in 0..20 {
        assert_eq!(outcome(&server, &token("rsa.key", "RS256", &format!("nope-{i}"), "eve")).await, "key_unknown");
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2, "unknown kids within jwks_min_refetch_s fetch nothing");

    // Key A is retired; after the window, an unknown kid refetches and A is gone.
    idp.keys.lock().unwrap().retain(|k| k.common.key_id.as_deref() != Some("key-a"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(outcome(&server, &token("ec256.key", "ES256", "key-c", "carol")).await, "key_unknown");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 3);
    assert_eq!(outcome(&server, &token("rsa.key", "RS256", "key-a", "alice")).await, "key_unknown");

    // The IdP fails: the last good keys stay in use.
    idp.fail_with.store(500, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(outcome(&server, &token("rsa.key", "RS256", "other", "x")).await, "key_unknown");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 4);
    assert_eq!(outcome(&server, &token("ec256.key", "ES256", "key-b", "bob")).await, "accepted");
    server.shutdown().await;
}

#[tokio::test]
async fn a_jwk_without_alg_lets_the_issuer_decide_and_never_the_token() {
    let idp = Arc::new(Idp::default());
    idp.keys.lock().unwrap().push(jwk("rsa.key", Algorithm::RS256, "no-alg", false));
    let server = gateway(start_idp(Arc::clone(&idp)).await).await;
    wait_ready(&server).await;
    assert_eq!(outcome(&server, &token("rsa.key", "RS256", "no-alg", "alice")).await, "accepted");
    // PS256 is not in the issuer's list, even though the RSA key could verify it.
    assert_eq!(outcome(&server, &token("rsa.key", "PS256", "no-alg", "alice")).await, "algorithm_not_allowed");
    // HS256 "signed" with the public key: algorithm confusion is refused.
    let public = pem("rsa.pub");
    let forged = sign_hs(&json!({"alg": "HS256", "kid": "no-alg"}), &claims("mallory"), &public);
    assert_eq!(outcome(&server, &forged).await, "algorithm_not_allowed");
    server.shutdown().await;
}

#[tokio::test]
async fn key_naming_headers_are_never_fetched() {
    // A canary that counts any request made to it.
    let canary_hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let canary = listener.local_addr().unwrap();
    let hits = Arc::clone(&canary_hits);
    tokio::spawn(async move {
        loop {
            if let Ok((_s, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let idp = Arc::new(Idp::default());
    idp.keys.lock().unwrap().push(jwk("rsa.key", Algorithm::RS256, "key-a", true));
    let server = gateway(start_idp(Arc::clone(&idp)).await).await;
    wait_ready(&server).await;
    let attacker = pem("rsa-other.key");
    let attacker_jwk = serde_json::to_value(jwk("rsa-other.key", Algorithm::RS256, "evil", true)).unwrap();
    let headers = [
        json!({"alg": "RS256", "kid": "evil", "jku": format!("http://{canary}/jwks")}),
        json!({"alg": "RS256", "kid": "evil", "x5u": format!("http://{canary}/cert")}),
        json!({"alg": "RS256", "kid": "evil", "jwk": attacker_jwk}),
        json!({"alg": "RS256", "jku": format!("http://{canary}/jwks")}),
    ];
    for h in headers {
        let t = sign_pem(&h, &claims("mallory"), &attacker);
        let code = outcome(&server, &t).await;
        assert!(code == "key_unknown" || code == "signature_invalid", "{h}: {code}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(canary_hits.load(Ordering::SeqCst), 0, "nothing named by a token header is fetched");
    server.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_jwks_url_makes_the_node_unready_and_names_the_error() {
    // A port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = gateway(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let mut last = Value::Null;
    for _ in 0..50 {
        let r = http(server.addr, "GET", "/readyz", &[], b"").await;
        assert_eq!(r.status, 503);
        last = r.json();
        if last["checks"]["jwks:idp"] != "keys not fetched yet" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["status"], "unready");
    assert!(last["checks"]["jwks:idp"].as_str().unwrap().contains("connect"), "{last}");
    server.shutdown().await;
}

/// JWKS documents as Supabase (EC keys with `key_ops` and `ext`), Auth0 (RSA keys with
/// `x5t` and `x5c`) and Keycloak (a signing key beside an `RSA-OAEP` encryption key)
/// publish them: the signing keys work, the encryption key is skipped.
#[tokio::test]
async fn provider_style_jwks_documents_are_understood() {
    let mut supabase = serde_json::to_value(jwk("ec256.key", Algorithm::ES256, "supabase-ec", true)).unwrap();
    supabase["key_ops"] = json!(["verify"]);
    supabase["ext"] = json!(true);
    supabase["use"] = json!("sig");
    let mut auth0 = serde_json::to_value(jwk("rsa.key", Algorithm::RS256, "auth0-rsa", true)).unwrap();
    auth0["use"] = json!("sig");
    auth0["x5t"] = json!("bm90LWEtcmVhbC10aHVtYnByaW50");
    auth0["x5c"] = json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]);
    let mut keycloak_enc = serde_json::to_value(jwk("rsa-other.key", Algorithm::RS256, "keycloak-enc", true)).unwrap();
    keycloak_enc["use"] = json!("enc");
    keycloak_enc["alg"] = json!("RSA-OAEP");
    let document = json!({"keys": [keycloak_enc, supabase, auth0]});

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/certs", get(move || async move { axum::Json(document.clone()) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cfg = format!(
        "[[auth.jwt]]\nname = \"idp\"\nalgorithms = [\"RS256\", \"ES256\"]\njwks_url = \"http://{addr}/certs\"\n"
    );
    let server = TestServer::start(&cfg, &[]).await;
    wait_ready(&server).await;
    assert_eq!(outcome(&server, &token("ec256.key", "ES256", "supabase-ec", "alice")).await, "accepted");
    assert_eq!(outcome(&server, &token("rsa.key", "RS256", "auth0-rsa", "bob")).await, "accepted");
    // The encryption key never verifies a signature.
    assert_eq!(outcome(&server, &token("rsa-other.key", "RS256", "keycloak-enc", "mallory")).await, "key_unknown");
    server.shutdown().await;
}
