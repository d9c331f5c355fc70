//! The client library against a real gateway (`agentgate_app::serve` on
//! `127.0.0.1:0`): each rejection class (INCIDENTS.md rows 3 and 7), retry decisions,
//! resume after a dropped connection with no event lost or repeated, and refresh
//! before expiry with a `TokenProvider` (row 6).
//!
//! Every wait is bounded; servers and proxies listen on loopback only and stop when
//! their guards drop.

#[path = "../../agentgate/tests/support/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentgate_app::{Config, Env};
use agentgate_client::{
    Client, ClientError, Credential, ErrorClass, Resume, ResumingClient, RetryPolicy, RunOutcome, ServerMessage,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A test HMAC secret (never a real one).
const HS_SECRET: &str = "client-test-secret-0123456789abcdef0123456789";

/// Longest wait for one expected step.
const STEP: Duration = Duration::from_secs(10);

/// Most messages any test reads from one connection.
const MAX_MESSAGES: usize = 200;

// ---------------------------------------------------------------------------------
// A real server
// ---------------------------------------------------------------------------------

struct TestServer {
    addr: SocketAddr,
    config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with one HS256 issuer plus `extra` TOML, on `127.0.0.1:0`.
    async fn start(extra: &str) -> Self {
        let toml = format!(
            "{extra}\n[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentgate.toml");
        std::fs::write(&path, toml).unwrap();
        let mut env = Env::new();
        env.insert("TEST_HS_SECRET".into(), HS_SECRET.into());
        env.insert("AGENTGATE_HOME".into(), dir.path().join("home").display().to_string());
        env.insert("AGENTGATE_SERVER__LISTEN".into(), "\"127.0.0.1:0\"".into());
        let config = Config::load(Some(&path), &env).expect("config loads");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(agentgate_app::serve(listener, config.clone(), async move {
            let _ = rx.await;
        }));
        Self { addr, config, shutdown: Some(tx), handle: Some(handle), _dir: dir }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    fn issuer(&self) -> Arc<agentgate_auth::Issuer> {
        self.config.authenticator.issuers().iter().find(|i| i.can_sign()).expect("a signing issuer").clone()
    }

    /// A token for `sub` with scope `agents:run`, adjusted by `adjust`.
    fn mint_with(&self, sub: &str, adjust: impl FnOnce(&mut agentgate_auth::MintRequest)) -> String {
        mint(&self.issuer(), sub, adjust)
    }

    fn mint(&self, sub: &str) -> String {
        self.mint_with(sub, |_| {})
    }

    /// Trigger shutdown and wait (bounded) for `serve` to return.
    async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), h).await.expect("server shut down in time").unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

fn now() -> i64 {
    agentgate_app::telemetry::unix_now()
}

fn mint(issuer: &agentgate_auth::Issuer, sub: &str, adjust: impl FnOnce(&mut agentgate_auth::MintRequest)) -> String {
    let mut req = agentgate_auth::MintRequest {
        subject: sub.into(),
        scopes: vec!["agents:run".into()],
        ttl_s: 900,
        ..Default::default()
    };
    adjust(&mut req);
    issuer.mint(&req, now()).unwrap().token
}

/// A port on which nothing listens (bound, then released).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

async fn connect_err(client: &Client) -> ClientError {
    match tokio::time::timeout(STEP, client.connect()).await.expect("connect in time") {
        Ok(c) => panic!("expected a refusal, got {}", c.welcome()),
        Err(e) => e,
    }
}

/// `POST /v1/tickets` over a raw HTTP/1.1 connection; returns the ticket.
async fn ticket(server: &TestServer, token: &str) -> String {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "POST /v1/tickets HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        server.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tokio::time::timeout(STEP, s.read_to_string(&mut resp)).await.expect("ticket in time").unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).expect("a body");
    let v: Value = serde_json::from_str(body.trim()).expect("JSON body");
    v["ticket"].as_str().expect("a ticket").to_owned()
}

// ---------------------------------------------------------------------------------
// A TCP proxy whose connections can be cut, as a network fault would
// ---------------------------------------------------------------------------------

struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.changed() => {}
                    }
                    // Both sockets drop here: no close frame either way.
                });
            }
        });
        Self { addr, cut, task }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Drop every connection open now.
    fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn every_credential_transport_gets_a_welcome() {
    let server = TestServer::start("[auth]\nfirst_message = true\n").await;
    let token = server.mint("alice");
    let t = ticket(&server, &token).await;
    for credential in [
        Credential::Header(token.clone()),
        Credential::Subprotocol(token.clone()),
        Credential::Query(token.clone()),
        Credential::FirstMessage(token.clone()),
        Credential::Ticket(t),
    ] {
        let transport = credential.transport();
        let conn = tokio::time::timeout(STEP, Client::new(server.url(), credential).connect())
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("{transport}: {e}"));
        let w = conn.welcome().json();
        assert_eq!(w["type"], "welcome", "{transport}");
        assert_eq!(w["principal"]["subject"], "alice", "{transport}");
        assert!(conn.session_id().starts_with("s_"), "{transport}");
        assert_eq!(conn.last_seq(), 0);
        conn.close().await.unwrap();
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------
// Rejection classes
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn expired_token_is_rejected_401_with_code_and_request_id() {
    let server = TestServer::start("").await;
    let token = server.mint_with("alice", |r| r.ttl_s = -120);
    let e = connect_err(&Client::new(server.url(), Credential::Header(token.clone()))).await;
    match &e {
        ClientError::Rejected { status: 401, code: Some(code), request_id: Some(id), message, .. } => {
            assert_eq!(code, "token_expired");
            assert!(id.starts_with("req_"), "{id}");
            assert!(!message.is_empty());
        }
        other => panic!("expected a 401 rejection, got {other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::Unauthorized);
    assert_eq!(e.class().exit_status(), 3);
    assert!(!e.is_retryable());
    let shown = e.to_string();
    assert!(shown.contains("401") && shown.contains("token_expired") && shown.contains("req_"), "{shown}");
    assert!(!shown.contains(&token), "the token is never shown");
}

#[tokio::test]
async fn a_string_that_is_no_token_is_rejected_401() {
    let server = TestServer::start("").await;
    let e = connect_err(&Client::new(server.url(), Credential::Header("staging_jwt_token_u1_123".into()))).await;
    assert!(matches!(&e, ClientError::Rejected { status: 401, code: Some(_), .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Unauthorized);
    assert!(!e.to_string().contains("staging_jwt_token_u1_123"));
}

#[tokio::test]
async fn disallowed_origin_and_anonymous_principal_are_403() {
    let server =
        TestServer::start("[server]\nallowed_origins = [\"http://app.example\"]\nfailure_mode = \"http\"\n").await;
    let token = server.mint("alice");
    let e =
        connect_err(&Client::new(server.url(), Credential::Header(token.clone())).origin("http://evil.example")).await;
    assert!(matches!(&e, ClientError::Rejected { status: 403, .. }), "{e:?}");
    assert_eq!(e.reason_code(), Some("origin_not_allowed"));
    assert_eq!(e.class(), ErrorClass::Forbidden);
    assert!(!e.is_retryable());

    let anon = server.mint_with("visitor", |r| {
        r.extra.insert("role".into(), json!("anon"));
    });
    let e = connect_err(&Client::new(server.url(), Credential::Header(anon))).await;
    assert!(matches!(&e, ClientError::Rejected { status: 403, .. }), "{e:?}");
    assert_eq!(e.reason_code(), Some("anonymous_not_allowed"));
    assert_eq!(e.class().exit_status(), 4);

    // The allowed origin connects.
    let conn = Client::new(server.url(), Credential::Header(token)).origin("http://app.example").connect().await;
    assert!(conn.is_ok(), "{conn:?}");
}

#[tokio::test]
async fn browser_style_refusal_is_a_close_4403() {
    let server = TestServer::start("[server]\nallowed_origins = [\"http://app.example\"]\n").await;
    let e = connect_err(
        &Client::new(server.url(), Credential::Subprotocol(server.mint("alice"))).origin("http://evil.example"),
    )
    .await;
    assert!(matches!(&e, ClientError::Closed { close_code: 4403, .. }), "{e:?}");
    assert_eq!(e.reason_code(), Some("origin_not_allowed"));
    assert_eq!(e.class(), ErrorClass::Forbidden);
}

#[tokio::test]
async fn close_mode_refusal_is_a_close_4401_with_its_code() {
    let server = TestServer::start("[server]\nfailure_mode = \"close\"\n").await;
    let token = server.mint_with("alice", |r| r.ttl_s = -120);
    let e = connect_err(&Client::new(server.url(), Credential::Header(token))).await;
    match &e {
        ClientError::Closed { close_code: 4401, code: Some(code), .. } => assert_eq!(code, "token_expired"),
        other => panic!("expected close 4401, got {other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::Unauthorized);
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("4401 token_expired"), "{e}");
}

#[tokio::test]
async fn nothing_listening_is_a_retryable_network_error() {
    let addr = closed_port().await;
    let secret = "query-token-never-shown";
    let e = connect_err(&Client::new(format!("ws://{addr}/v1/ws"), Credential::Query(secret.into()))).await;
    assert!(matches!(e, ClientError::Network(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Network);
    assert_eq!(e.class().exit_status(), 6);
    assert!(e.is_retryable());
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains(&addr.to_string()), "names the endpoint: {shown}");
}

#[tokio::test]
async fn connection_cap_is_a_retryable_429() {
    let server = TestServer::start("[limits]\nconnections_per_principal = 1\n").await;
    let token = server.mint("alice");
    let client = Client::new(server.url(), Credential::Header(token));
    let first = client.connect().await.expect("first connection");
    let e = connect_err(&client).await;
    assert!(matches!(&e, ClientError::Rejected { status: 429, .. }), "{e:?}");
    assert_eq!(e.reason_code(), Some("too_many_connections"));
    assert_eq!(e.class(), ErrorClass::Unavailable);
    assert!(e.is_retryable());
    first.close().await.unwrap();
}

#[tokio::test]
async fn server_restart_is_a_retryable_close_1012() {
    let server = TestServer::start("").await;
    let mut conn = Client::new(server.url(), Credential::Header(server.mint("alice"))).connect().await.unwrap();
    let stopping = tokio::spawn(server.shutdown());
    let e = tokio::time::timeout(STEP, conn.next()).await.expect("close in time").unwrap_err();
    assert!(matches!(&e, ClientError::Closed { close_code: 1012, .. }), "{e:?}");
    assert_eq!(e.reason_code(), Some("server_restart"));
    assert!(e.is_retryable());
    assert_eq!(e.class().exit_status(), 5);
    stopping.await.unwrap();
}

// ---------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_run_yields_its_events_in_order_then_its_outcome() {
    let server = TestServer::start("").await;
    let mut conn = Client::new(server.url(), Credential::Header(server.mint("alice"))).connect().await.unwrap();
    let run = conn.run("demo", json!({"prompt": "one two three"})).await.unwrap();
    let (events, outcome) = tokio::time::timeout(STEP, run.finish()).await.expect("in time").unwrap();
    let kinds: Vec<&str> = events.iter().map(ServerMessage::kind).collect();
    assert_eq!(kinds.first(), Some(&"agent_started"));
    assert_eq!(kinds.last(), Some(&"agent_completed"));
    let seqs: Vec<u64> = events.iter().filter_map(ServerMessage::seq).collect();
    assert_eq!(seqs, (1..=u64::try_from(events.len()).unwrap()).collect::<Vec<_>>());
    assert_eq!(outcome, RunOutcome::Completed { result: json!({"words": 3}) });
    assert_eq!(conn.last_seq(), seqs.len() as u64);

    let run = conn.run("demo", json!({"fail": true})).await.unwrap();
    let (_, outcome) = run.finish().await.unwrap();
    assert!(matches!(&outcome, RunOutcome::Failed { code, .. } if code == "demo_failure"), "{outcome:?}");
    assert_eq!(outcome.class(), Some(ErrorClass::RunFailed));

    let run = conn.run("nope", json!({})).await.unwrap();
    let (events, outcome) = run.finish().await.unwrap();
    assert!(events.is_empty());
    assert!(matches!(&outcome, RunOutcome::Refused { code, .. } if code == "agent_unknown"), "{outcome:?}");
    assert_eq!(outcome.class().map(ErrorClass::exit_status), Some(8));
}

#[tokio::test]
async fn a_run_without_the_scope_is_refused_scope_missing() {
    let server = TestServer::start("").await;
    let token = server.mint_with("alice", |r| r.scopes = vec!["other".into()]);
    let mut conn = Client::new(server.url(), Credential::Header(token)).connect().await.unwrap();
    let (_, outcome) = conn.run("demo", json!({})).await.unwrap().finish().await.unwrap();
    assert!(matches!(&outcome, RunOutcome::Refused { code, .. } if code == "scope_missing"), "{outcome:?}");
    assert_eq!(outcome.class(), Some(ErrorClass::Forbidden));
}

// ---------------------------------------------------------------------------------
// Retry decisions and resume
// ---------------------------------------------------------------------------------

/// A provider that counts its calls (it is asked once before each retry).
fn counting_provider(issuer: Arc<agentgate_auth::Issuer>, calls: Arc<AtomicUsize>) -> impl Fn() -> Option<String> {
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        Some(mint(&issuer, "alice", |_| {}))
    }
}

#[tokio::test]
async fn resuming_client_does_not_retry_a_refused_credential() {
    let server = TestServer::start("").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let expired = server.mint_with("alice", |r| r.ttl_s = -120);
    let client = Client::new(server.url(), Credential::Header(expired))
        .token_provider(counting_provider(server.issuer(), Arc::clone(&calls)));
    let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(50), 5);
    let e = ResumingClient::connect(client, policy).await.unwrap_err();
    assert_eq!(e.reason_code(), Some("token_expired"));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no retry after a 401");
}

#[tokio::test]
async fn resuming_client_retries_network_errors_then_gives_up() {
    let addr = closed_port().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let issuer = TestServer::start("").await.issuer();
    let client = Client::new(format!("ws://{addr}/v1/ws"), Credential::Header("t".into()))
        .token_provider(counting_provider(issuer, Arc::clone(&calls)));
    let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(40), 4);
    let started = Instant::now();
    let e = ResumingClient::connect(client, policy).await.unwrap_err();
    assert!(matches!(e, ClientError::Network(_)), "{e:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "4 attempts: the first, then 3 retries");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn resume_replays_what_was_missed_and_nothing_twice() {
    let server = TestServer::start("").await;
    let client = Client::new(server.url(), Credential::Header(server.mint("alice")));
    let mut conn = client.connect().await.unwrap();
    let mut run = conn.run("demo", json!({"prompt": "a b", "delay_ms": 150})).await.unwrap();
    while let Some(e) = tokio::time::timeout(STEP, run.next_event()).await.expect("in time").unwrap() {
        if e.seq() == Some(2) {
            break;
        }
    }
    let run_id = run.run_id().unwrap().to_owned();
    drop(run);
    let point = conn.resume_point();
    assert_eq!(point.last_seq, 2);
    drop(conn); // no close frame: the session is detached, the run goes on
    tokio::time::sleep(Duration::from_millis(400)).await;

    let mut conn = client.resume(&point).await.unwrap();
    assert_eq!(conn.welcome().json()["resumed"], true);
    assert_eq!(conn.session_id(), point.session_id);
    let mut seqs = Vec::new();
    for _ in 0..MAX_MESSAGES {
        let m = tokio::time::timeout(STEP, conn.next()).await.expect("in time").unwrap().expect("open");
        if let Some(seq) = m.seq() {
            assert_eq!(m.run_id(), Some(run_id.as_str()));
            seqs.push(seq);
        }
        if m.is_terminal() {
            break;
        }
    }
    assert_eq!(seqs, vec![3, 4, 5, 6]);

    // An unknown session starts a new one and says so.
    let gone = Resume { session_id: "s_AAAAAAAAAAAAAAAAAAAAAA".into(), last_seq: 9 };
    let conn = client.resume(&gone).await.unwrap();
    assert_eq!(conn.welcome().json()["resumed"], false);
    assert_eq!(conn.welcome().json()["resume_error"], "session_not_found");
    assert_eq!(conn.last_seq(), 0);
}

#[tokio::test]
async fn resuming_client_survives_a_dropped_connection_without_losing_an_event() {
    let server = TestServer::start("").await;
    let proxy = Proxy::start(server.addr).await;
    let client = Client::new(proxy.url(), Credential::Header(server.mint("alice")));
    let policy = RetryPolicy::new(Duration::from_millis(20), Duration::from_millis(200), 10);
    let mut rc = ResumingClient::connect(client, policy).await.unwrap();
    let session = rc.resume_point().unwrap().session_id;
    let mut run = rc.run("demo", json!({"prompt": "one two three four", "delay_ms": 200})).await.unwrap();
    let mut seqs = Vec::new();
    let mut welcomes = Vec::new();
    let mut cut = false;
    for _ in 0..MAX_MESSAGES {
        let Some(m) = tokio::time::timeout(STEP, run.next()).await.expect("in time").unwrap() else { break };
        if m.kind() == "welcome" {
            welcomes.push(m.json().clone());
        }
        if let Some(seq) = m.seq() {
            seqs.push(seq);
            if seq == 2 && !cut {
                cut = true;
                proxy.cut();
                // Events go on while the connection is down.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let outcome = run.outcome().cloned();
    drop(run);
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "every event exactly once, in order");
    assert_eq!(outcome, Some(RunOutcome::Completed { result: json!({"words": 4}) }));
    assert_eq!(welcomes.len(), 1, "one reconnect: {welcomes:?}");
    assert_eq!(welcomes[0]["resumed"], true);
    assert_eq!(welcomes[0]["session_id"], session.as_str());
    assert_eq!(rc.reconnects(), 1);
    assert_eq!(rc.last_seq(), 6);
    rc.close().await.unwrap();
}

// ---------------------------------------------------------------------------------
// Refresh before expiry
// ---------------------------------------------------------------------------------

const SHORT_EXPIRY: &str = "[auth]\nleeway_s = 0\nexpiry_warning_s = 2\n";

#[tokio::test]
async fn token_provider_answers_auth_expiring_and_the_run_outlives_the_token() {
    let server = TestServer::start(SHORT_EXPIRY).await;
    let issuer = server.issuer();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let provider = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Some(mint(&issuer, "alice", |r| r.ttl_s = 3))
    };
    let token = server.mint_with("alice", |r| r.ttl_s = 3);
    let mut conn =
        Client::new(server.url(), Credential::Header(token)).token_provider(provider).connect().await.unwrap();
    let first_expiry = conn.expires_at().unwrap();
    // About 7.5 s: more than twice the token's lifetime.
    let mut run = conn.run("demo", json!({"prompt": "long run", "delay_ms": 1500})).await.unwrap();
    let (mut expiring, mut refreshed) = (0, 0);
    for _ in 0..MAX_MESSAGES {
        let Some(m) = tokio::time::timeout(STEP, run.next()).await.expect("in time").unwrap() else { break };
        match m.kind() {
            "auth.expiring" => expiring += 1,
            "auth.refreshed" => refreshed += 1,
            _ => {}
        }
    }
    let outcome = run.outcome().cloned();
    drop(run);
    assert!(matches!(outcome, Some(RunOutcome::Completed { .. })), "{outcome:?}");
    assert!(refreshed >= 2, "refreshed {refreshed} times (expiring {expiring})");
    assert!(expiring >= refreshed);
    assert!(calls.load(Ordering::SeqCst) >= 2);
    assert!(conn.expires_at().unwrap() > first_expiry);
}

#[tokio::test]
async fn without_a_provider_the_connection_closes_4401_token_expired() {
    let server = TestServer::start(SHORT_EXPIRY).await;
    let token = server.mint_with("alice", |r| r.ttl_s = 3);
    let mut conn = Client::new(server.url(), Credential::Header(token)).connect().await.unwrap();
    let mut saw_expiring = false;
    let e = loop {
        match tokio::time::timeout(STEP, conn.next()).await.expect("in time") {
            Ok(Some(m)) => saw_expiring |= m.kind() == "auth.expiring",
            Ok(None) => panic!("closed normally"),
            Err(e) => break e,
        }
    };
    assert!(saw_expiring, "auth.expiring comes first");
    assert!(matches!(&e, ClientError::Closed { close_code: 4401, .. }), "{e:?}");
    assert_eq!(e.reason_code(), Some("token_expired"));
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn wss_verifies_against_the_ca_file_and_names_the_tls_error_otherwise() {
    let certs = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("client test CA");
    let (cert, key) = pki::write_pair(certs.path(), "server", &ca.server("gw"));
    let ca_file = ca.write(certs.path(), "ca.pem");
    let toml_path = |p: &std::path::Path| serde_json::Value::String(p.display().to_string()).to_string();
    let server = TestServer::start(&format!(
        "[server]\ntls_cert_file = {}\ntls_key_file = {}",
        toml_path(&cert),
        toml_path(&key)
    ))
    .await;
    let url = format!("wss://{}/v1/ws", server.addr);
    let token = server.mint("alice");

    let conn = Client::new(&url, Credential::Header(token.clone())).ca_file(&ca_file).connect().await.expect("wss");
    assert_eq!(conn.welcome().kind(), "welcome");
    conn.close().await.unwrap();

    // The system's roots do not hold the test CA.
    let e = Client::new(&url, Credential::Header(token.clone())).connect().await.unwrap_err();
    assert!(matches!(&e, ClientError::Tls(m) if m.contains("invalid peer certificate: UnknownIssuer")), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Network);
    assert_eq!(e.class().exit_status(), 6);
    assert!(e.to_string().contains("--ca-file"), "{e}");

    // A CA file that is not one is the caller's mistake.
    let e =
        Client::new(&url, Credential::Header(token)).ca_file(cert.with_extension("nope")).connect().await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Usage, "{e:?}");
    server.shutdown().await;
}
