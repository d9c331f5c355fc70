//! Tickets, revocation and admission limits through the real server and client.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const ORIGIN_CFG: &str = "[server]\nallowed_origins = [\"http://app.test\", \"http://other.test\"]\n";

async fn ticket(server: &TestServer, token: &str, origin: Option<&str>) -> HttpResponse {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    http(server.addr, "POST", "/v1/tickets", &headers, b"").await
}

#[tokio::test]
async fn a_ticket_connects_once_with_the_creating_credentials_principal() {
    let server = hs_server("[auth]\nticket_ttl_s = 30\n").await;
    let token = server.mint_with("alice", |r| r.tenant = Some("acme".into()));
    let resp = ticket(&server, &token, None).await;
    assert_eq!(resp.status, 201);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let body = resp.json();
    assert_eq!(body["expires_in"], 30);
    let t = body["ticket"].as_str().unwrap().to_owned();
    assert!(t.starts_with("t_") && t.len() >= 22);

    let (outcome, ws) = connect(&server.ws_url(&format!("/v1/ws?ticket={t}")), &[]).await;
    let Outcome::Welcome(w) = outcome else { panic!("{outcome:?}") };
    assert_eq!(w["principal"]["subject"], "alice");
    assert_eq!(w["principal"]["tenant"], "acme");
    assert_eq!(w["principal"]["via"], "ticket:jwt:local");
    assert!(w["expires_at"].as_i64().unwrap() > now());
    drop(ws);

    let (again, _) = connect(&server.ws_url(&format!("/v1/ws?ticket={t}")), &[]).await;
    assert_eq!((again.status(), again.code().as_str()), (401, "ticket_invalid"));
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_ticket_is_ticket_invalid() {
    let server = hs_server("[auth]\nticket_ttl_s = 1\n").await;
    let t = ticket(&server, &server.mint("alice"), None).await.json()["ticket"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (o, _) = connect(&server.ws_url(&format!("/v1/ws?ticket={t}")), &[]).await;
    assert_eq!((o.status(), o.code().as_str()), (401, "ticket_invalid"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_ticket_is_bound_to_the_origin_that_requested_it() {
    let server = hs_server(ORIGIN_CFG).await;
    let token = server.mint("alice");
    let url = |t: &str| server.ws_url(&format!("/v1/ws?ticket={t}"));
    let bound = |r: HttpResponse| r.json()["ticket"].as_str().unwrap().to_owned();

    let t = bound(ticket(&server, &token, Some("http://app.test")).await);
    let (o, _) = connect(&url(&t), &[("Origin", "http://app.test")]).await;
    assert!(matches!(o, Outcome::Welcome(_)), "{o:?}");

    let t = bound(ticket(&server, &token, Some("http://app.test")).await);
    let (o, _) = connect(&url(&t), &[]).await;
    assert_eq!((o.status(), o.code().as_str()), (401, "ticket_invalid"));

    let t = bound(ticket(&server, &token, Some("http://app.test")).await);
    let (o, _) = connect(&url(&t), &[("Origin", "http://other.test")]).await;
    // With an Origin, auto mode closes instead of answering HTTP.
    assert_eq!(o.code(), "ticket_invalid");
    assert!(matches!(o, Outcome::Closed { code: 4401, .. }), "{o:?}");

    // An unbound ticket works from any allowed origin.
    let t = bound(ticket(&server, &token, None).await);
    let (o, _) = connect(&url(&t), &[("Origin", "http://other.test")]).await;
    assert!(matches!(o, Outcome::Welcome(_)), "{o:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_ticket_endpoint_checks_origin_first_and_answers_cors() {
    let server = hs_server(ORIGIN_CFG).await;
    let token = server.mint("alice");

    let pre = http(
        server.addr,
        "OPTIONS",
        "/v1/tickets",
        &[("Origin", "http://app.test"), ("Access-Control-Request-Method", "POST")],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("http://app.test"));
    assert_eq!(pre.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(pre.header("access-control-allow-headers"), Some("Authorization, Content-Type"));
    assert_eq!(pre.header("vary"), Some("Origin"));

    let pre = http(server.addr, "OPTIONS", "/v1/tickets", &[("Origin", "http://evil.test")], b"").await;
    assert_eq!(pre.status, 403);
    assert_eq!(pre.json()["error"]["code"], "origin_not_allowed");

    // A disallowed origin is refused before the credential is looked at.
    let r = http(server.addr, "POST", "/v1/tickets", &[("Origin", "http://evil.test")], b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("origin_not_allowed")));

    let r = http(server.addr, "POST", "/v1/tickets", &[("Origin", "http://app.test")], b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("token_missing")));
    assert_eq!(r.header("access-control-allow-origin"), Some("http://app.test"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert!(r.header("www-authenticate").unwrap().contains("error_description=\"token_missing\""));

    // A non-Bearer Authorization is token_malformed here as on /v1/ws; an empty Bearer is
    // no credential.
    let basic = [("Origin", "http://app.test"), ("Authorization", "Basic YWxpY2U6cHc=")];
    let r = http(server.addr, "POST", "/v1/tickets", &basic, b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("token_malformed")));
    let empty = [("Origin", "http://app.test"), ("Authorization", "Bearer ")];
    let r = http(server.addr, "POST", "/v1/tickets", &empty, b"").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("token_missing")));

    let r = ticket(&server, &format!("{token}x"), Some("http://app.test")).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("signature_invalid")));

    let r = ticket(&server, &token, Some("http://app.test")).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://app.test"));
    assert_eq!(r.header("vary"), Some("Origin"));
    server.shutdown().await;
}

async fn revoke(server: &TestServer, admin: &str, body: Value) -> HttpResponse {
    let auth = format!("Bearer {admin}");
    http(
        server.addr,
        "POST",
        "/v1/admin/revoke",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn revoking_a_jti_closes_live_connections_within_a_second_and_refuses_new_ones() {
    let server = hs_server("").await;
    let admin = server.mint_with("root", |r| r.scopes = vec!["admin".into()]);
    let token = server.mint_with("alice", |r| r.jti = Some("jti-1".into()));
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    // A ticket made with the same credential is revoked with it.
    let t = ticket(&server, &token, None).await.json()["ticket"].as_str().unwrap().to_owned();
    let (o, ws2) = connect(&server.ws_url(&format!("/v1/ws?ticket={t}")), &[]).await;
    assert!(matches!(o, Outcome::Welcome(_)));
    let mut ws2 = ws2.unwrap();

    let started = Instant::now();
    let r = revoke(&server, &admin, json!({"jti": "jti-1"})).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    expect_close(&mut ws, 4401, "token_revoked").await;
    let latency = started.elapsed();
    expect_close(&mut ws2, 4401, "token_revoked").await;
    println!("revocation close latency: {latency:?}");
    assert!(latency < Duration::from_secs(1), "closed after {latency:?}");

    let (o, _) = connect(&server.ws_url("/v1/ws"), &[("Authorization", &format!("Bearer {token}"))]).await;
    assert_eq!((o.status(), o.code().as_str()), (401, "token_revoked"));
    // Other tokens of the same subject still work.
    let (_, _ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    server.shutdown().await;
}

#[tokio::test]
async fn revoking_a_subject_before_a_time_revokes_older_tokens_only() {
    let server = hs_server("").await;
    let admin = server.mint_with("root", |r| r.scopes = vec!["admin".into()]);
    let old = server.mint_with("alice", |r| {
        r.extra.insert("iat".into(), json!(now() - 100));
    });
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &old).await;
    let r = revoke(&server, &admin, json!({"subject": "alice", "issued_before": now() - 10})).await;
    assert_eq!(r.status, 200);
    expect_close(&mut ws, 4401, "token_revoked").await;
    let (o, _) = connect(&server.ws_url("/v1/ws"), &[("Authorization", &format!("Bearer {old}"))]).await;
    assert_eq!(o.code(), "token_revoked");
    let (_, _ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    server.shutdown().await;
}

#[tokio::test]
async fn revoke_needs_the_admin_scope_and_a_well_formed_body() {
    let server = hs_server("").await;
    let user = server.mint("alice");
    let r = revoke(&server, &user, json!({"jti": "x"})).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("scope_missing")));
    let r = http(server.addr, "POST", "/v1/admin/revoke", &[], b"{}").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("token_missing")));
    let admin = server.mint_with("root", |r| r.scopes = vec!["admin".into()]);
    for bad in [
        json!({}),
        json!({"jti": 5}),
        json!({"subject": "a"}),
        json!({"subject": "a", "issued_before": "x"}),
        json!([1]),
    ] {
        let r = revoke(&server, &admin, bad.clone()).await;
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("protocol_error")), "{bad}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn handshakes_above_the_per_ip_rate_are_rate_limited_with_retry_after() {
    let server = hs_server("[limits]\nhandshakes_per_ip_per_s = 2\n").await;
    let token = server.mint("alice");
    let auth = format!("Bearer {token}");
    let mut limited = None;
    let mut open = Vec::new();
    // Burst is twice the rate: 4 pass, then the fifth (or a near one) is refused.
    for _ in 0..8 {
        match connect(&server.ws_url("/v1/ws"), &[("Authorization", &auth)]).await {
            (Outcome::Welcome(_), Some(ws)) => open.push(ws),
            (o, _) => {
                limited = Some(o);
                break;
            }
        }
    }
    let o = limited.expect("a handshake was rate limited");
    assert!(open.len() >= 4, "burst of twice the rate passes: {}", open.len());
    assert_eq!((o.status(), o.code().as_str()), (429, "rate_limited"));
    let Outcome::Http { headers, .. } = &o else { unreachable!() };
    let retry: u64 = headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    server.shutdown().await;
}

#[tokio::test]
async fn connections_per_ip_and_per_principal_are_capped() {
    let server =
        hs_server("[limits]\nconnections_per_ip = 3\nconnections_per_principal = 2\nhandshakes_per_ip_per_s = 100\n")
            .await;
    let alice = server.mint("alice");
    let (_, a1) = connect_ok(&server.ws_url("/v1/ws"), &alice).await;
    let (_, _a2) = connect_ok(&server.ws_url("/v1/ws"), &alice).await;
    let (o, _) = connect(&server.ws_url("/v1/ws"), &[("Authorization", &format!("Bearer {alice}"))]).await;
    assert_eq!((o.status(), o.code().as_str()), (429, "too_many_connections"));
    let (_, _b1) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("bob")).await;
    let (o, _) =
        connect(&server.ws_url("/v1/ws"), &[("Authorization", &format!("Bearer {}", server.mint("carol")))]).await;
    assert_eq!((o.status(), o.code().as_str()), (429, "too_many_connections"));
    // Closing a connection frees its places.
    drop(a1);
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let (Outcome::Welcome(_), _) =
            connect(&server.ws_url("/v1/ws"), &[("Authorization", &format!("Bearer {alice}"))]).await
        {
            freed = true;
            break;
        }
    }
    assert!(freed, "a closed connection gave its places back");
    server.shutdown().await;
}
