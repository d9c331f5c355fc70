//! Shared helpers for the integration tests: a real server on `127.0.0.1:0`, a real
//! WebSocket client (tokio-tungstenite), and tokens minted with the project's own
//! signing code or, for hostile tokens, assembled by hand.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentgate_app::{Config, Env};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A 32-byte HMAC secret used by test configs (never a real secret).
pub const HS_SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

/// Longest wait for any single expected message.
pub const STEP: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Path of a fixture file.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A running gateway.
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Start with a TOML config (listen is forced to `127.0.0.1:0`) and environment.
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> Self {
        Self::try_start(toml, env).await.expect("config loads")
    }

    pub async fn try_start(toml: &str, env: &[(&str, &str)]) -> Result<Self, agentgate_app::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentgate.toml");
        std::fs::write(&path, toml).unwrap();
        let mut env: Env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        env.insert("AGENTGATE_HOME".into(), dir.path().join("home").display().to_string());
        env.insert("AGENTGATE_SERVER__LISTEN".into(), "\"127.0.0.1:0\"".into());
        let config = Config::load(Some(&path), &env)?;
        let listener = agentgate_app::server::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(agentgate_app::serve(listener, config.clone(), async move {
            let _ = rx.await;
        }));
        Ok(Self { addr, config, shutdown: Some(tx), handle: Some(handle), _dir: dir })
    }

    /// `ws://addr/path`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// `http://addr/path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Mint a token with the first signing issuer of this server's config.
    pub fn mint(&self, sub: &str) -> String {
        self.mint_with(sub, |_| {})
    }

    /// Mint with adjustments to the request.
    pub fn mint_with(&self, sub: &str, adjust: impl FnOnce(&mut agentgate_auth::MintRequest)) -> String {
        let issuer =
            self.config.authenticator.issuers().iter().find(|i| i.can_sign()).expect("an issuer that can sign").clone();
        let mut req = agentgate_auth::MintRequest {
            subject: sub.into(),
            scopes: vec!["agents:run".into()],
            ttl_s: 900,
            ..Default::default()
        };
        adjust(&mut req);
        issuer.mint(&req, now()).unwrap().token
    }

    /// Trigger shutdown and wait for `serve` to return (fails the test after 20 s).
    pub async fn shutdown(mut self) {
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
    }
}

/// A minimal config with one HS256 issuer (`secret_env = "TEST_HS_SECRET"`).
pub const HS_CONFIG: &str = r#"
[[auth.jwt]]
name = "local"
algorithms = ["HS256"]
secret_env = "TEST_HS_SECRET"
"#;

/// Environment for [`HS_CONFIG`].
pub const HS_ENV: &[(&str, &str)] = &[("TEST_HS_SECRET", HS_SECRET)];

/// Start a server with [`HS_CONFIG`] plus `extra` TOML.
pub async fn hs_server(extra: &str) -> TestServer {
    TestServer::start(&format!("{extra}\n{HS_CONFIG}"), HS_ENV).await
}

/// Unix seconds now.
pub fn now() -> i64 {
    agentgate_app::telemetry::unix_now()
}

/// Sign `claims` with an HMAC secret and the given header, by hand (for hostile or
/// unusual tokens the minting code would never produce).
pub fn sign_hs(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let alg: jsonwebtoken::Algorithm = header["alg"].as_str().unwrap_or("HS256").parse().unwrap_or_default();
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, alg).unwrap();
    format!("{signing_input}.{sig}")
}

/// Sign with a PEM private key (RSA, EC or Ed25519 by `alg`).
pub fn sign_pem(header: &Value, claims: &Value, pem: &[u8]) -> String {
    use jsonwebtoken::Algorithm::*;
    let alg: jsonwebtoken::Algorithm = header["alg"].as_str().unwrap().parse().unwrap();
    let key = match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => jsonwebtoken::EncodingKey::from_rsa_pem(pem),
        ES256 | ES384 => jsonwebtoken::EncodingKey::from_ec_pem(pem),
        EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(pem),
        _ => jsonwebtoken::EncodingKey::from_secret(pem),
    }
    .unwrap();
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, alg).unwrap();
    format!("{signing_input}.{sig}")
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Standard valid claims for `sub`, expiring in 15 minutes.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 900, "iat": now(), "scope": "agents:run"})
}

/// What a connection attempt produced.
#[derive(Debug)]
pub enum Outcome {
    /// Upgraded; the welcome (first message) is included.
    Welcome(Value),
    /// HTTP rejection: status, headers, JSON body.
    Http { status: u16, headers: tokio_tungstenite::tungstenite::http::HeaderMap, body: Value },
    /// Upgraded, then closed at once.
    Closed { code: u16, reason: String },
}

impl Outcome {
    /// The reason code of a rejection (HTTP body or close reason).
    pub fn code(&self) -> String {
        match self {
            Outcome::Welcome(_) => "accepted".into(),
            Outcome::Http { body, .. } => body["error"]["code"].as_str().unwrap_or("?").into(),
            Outcome::Closed { reason, .. } => serde_json::from_str::<Value>(reason)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("?{reason}")),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Outcome::Http { status, .. } => *status,
            _ => 0,
        }
    }
}

/// Build a request with headers.
pub fn request(url: &str, headers: &[(&str, &str)]) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

/// Connect and classify the outcome; on success the socket is returned too.
pub async fn connect(url: &str, headers: &[(&str, &str)]) -> (Outcome, Option<Ws>) {
    let req = request(url, headers);
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req)).await.expect("handshake in time") {
        Ok((mut ws, _resp)) => match next_frame(&mut ws).await {
            Frame::Text(v) => (Outcome::Welcome(v), Some(ws)),
            Frame::Close(code, reason) => (Outcome::Closed { code, reason }, None),
            Frame::End => panic!("connection ended without welcome or close frame"),
        },
        Err(WsError::Http(resp)) => (http_outcome(*resp), None),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

fn http_outcome(resp: Response<Option<Vec<u8>>>) -> Outcome {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
    Outcome::Http { status, headers, body }
}

/// Connect with `Authorization: Bearer <token>` and expect a welcome.
pub async fn connect_ok(url: &str, token: &str) -> (Value, Ws) {
    let auth = format!("Bearer {token}");
    match connect(url, &[("authorization", &auth)]).await {
        (Outcome::Welcome(w), Some(ws)) => (w, ws),
        (other, _) => panic!("expected a welcome, got {other:?}"),
    }
}

/// A received frame, reduced to what tests look at.
#[derive(Debug)]
pub enum Frame {
    Text(Value),
    Close(u16, String),
    End,
}

/// Next text or close frame (pings and pongs skipped), within [`STEP`].
pub async fn next_frame(ws: &mut Ws) -> Frame {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next()).await.expect("a frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => return Frame::Text(serde_json::from_str(t.as_str()).expect("JSON frame")),
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return Frame::Close(u16::from(code), reason.as_str().to_owned());
            }
            Some(Ok(Message::Close(None))) => return Frame::Close(1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Frame::End,
        }
    }
}

/// Next text frame as JSON; panics on close.
pub async fn recv_json(ws: &mut Ws) -> Value {
    match next_frame(ws).await {
        Frame::Text(v) => v,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Expect a close with `code` and reason `{"code":"<reason>"}`.
pub async fn expect_close(ws: &mut Ws, code: u16, reason: &str) {
    loop {
        match next_frame(ws).await {
            Frame::Close(c, r) => {
                assert_eq!(c, code, "close code (reason {r})");
                let v: Value = serde_json::from_str(&r).expect("close reason is JSON");
                assert_eq!(v["code"], reason);
                return;
            }
            Frame::Text(v) if v.get("seq").is_some() || v["type"] == "auth.expiring" => continue,
            other => panic!("expected close {code} {reason}, got {other:?}"),
        }
    }
}

/// Send a JSON value as a text frame.
pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Collect event frames of `run_id` until its terminal event; other frames are
/// returned separately.
pub async fn collect_run(ws: &mut Ws, run_id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let v = recv_json(ws).await;
        if v["run_id"] == run_id && v.get("seq").is_some() {
            let ty = v["type"].as_str().unwrap_or("").to_owned();
            events.push(v);
            if matches!(ty.as_str(), "agent_completed" | "agent_failed" | "run_cancelled") {
                return events;
            }
        }
    }
}

/// Start a demo run and return its run id.
pub async fn start_demo(ws: &mut Ws, r#ref: &str, input: Value) -> String {
    send_json(ws, json!({"type": "run.start", "ref": r#ref, "agent": "demo", "input": input})).await;
    let v = recv_json(ws).await;
    assert_eq!(v["type"], "run.accepted", "{v}");
    assert_eq!(v["ref"], r#ref);
    v["run_id"].as_str().unwrap().to_owned()
}

/// A plain HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (Null if not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Send one HTTP/1.1 request over a fresh connection (`Connection: close`) and read the
/// whole response. Enough for the gateway's small JSON APIs.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[pos + 2..pos + 2 + size]);
        data = &data[pos + 2 + size + 2..];
    }
    out
}
