//! Bounded under abuse (docs/security.md, "Bounds"): the real binary, attacked by an
//! authenticated user from many loopback addresses, keeps every per-principal and
//! per-node bound, and an honest user on the same gateway is still served.
//!
//! Each test starts its own `agentgate serve` with small limits, so the bounds are
//! reached quickly: sessions per principal, session buffers in bytes, the node's memory
//! limit, tickets per principal, the per-IP bucket on the HTTP APIs, non-reading
//! clients (revocation, expiry and the write timeout still end them), identities that
//! collide across issuers, and subjects that try to forge log lines.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

const ONE_SECRET: &str = "abuse-issuer-one-secret-0123456789abcdef";
const TWO_SECRET: &str = "abuse-issuer-two-secret-fedcba9876543210";

/// Two HS256 issuers with different names and secrets, and an API key whose subject is
/// `alice` too.
fn issuers() -> String {
    format!(
        "[[auth.jwt]]\nname = \"one\"\nalgorithms = [\"HS256\"]\nsecret_env = \"ONE_SECRET\"\nissuer = \"one\"\n\
         [[auth.jwt]]\nname = \"two\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TWO_SECRET\"\nissuer = \"two\"\n\
         [[auth.api_keys]]\nname = \"ci\"\nsha256 = \"{}\"\nsubject = \"alice\"\nscopes = [\"agents:run\"]\n",
        sha256_hex(API_KEY.as_bytes())
    )
}

/// A gateway with [`issuers`], `extra` config and `env` overrides.
struct Gate {
    sandbox: Sandbox,
    config: String,
    server: Server,
}

impl Gate {
    fn start(extra: &str, env: &[(&str, &str)]) -> Self {
        let sandbox = Sandbox::new();
        let config = sandbox.config("abuse.toml", &format!("{}\n{extra}", issuers()));
        let mut all = vec![("ONE_SECRET", ONE_SECRET), ("TWO_SECRET", TWO_SECRET)];
        all.extend_from_slice(env);
        let server = sandbox.serve(&["--log-format", "text"], &config, &all);
        Self { sandbox, config, server }
    }

    /// A token of issuer `issuer` for `sub`, with extra mint arguments.
    fn token(&self, issuer: &str, sub: &str, extra: &[&str]) -> String {
        let mut args = vec!["--issuer", issuer, "--sub", sub];
        args.extend_from_slice(extra);
        self.sandbox.mint(&self.config, &args, &[("ONE_SECRET", ONE_SECRET), ("TWO_SECRET", TWO_SECRET)])
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Resident memory of the gateway process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.child.id())).expect("proc status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
        kib * 1024
    }
}

/// `127.0.0.<n>`: Linux routes the whole 127/8 to loopback, so each is another address.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A TCP connection from `from` (any port), with a small receive buffer if asked.
async fn tcp_from(from: IpAddr, to: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket.bind(SocketAddr::new(from, 0)).expect("bind a loopback address");
    tokio::time::timeout(STEP, socket.connect(to)).await.expect("connect in time").expect("connect")
}

/// A WebSocket handshake from `from` to `url` with `headers`; the first frame read.
async fn ws_from(
    from: IpAddr,
    addr: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> (Outcome, Option<Ws>) {
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    let stream = MaybeTlsStream::Plain(tcp_from(from, addr, recv_buffer).await);
    match tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, stream)).await.expect("handshake in time") {
        Ok((mut ws, _)) => match next_frame(&mut ws).await {
            Frame::Text(v) => (Outcome::Welcome(v), Some(ws)),
            Frame::Close(code, reason) => (Outcome::Closed { code, reason }, None),
            Frame::End => panic!("connection ended without welcome or close frame"),
        },
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            (Outcome::Http { status, headers, body }, None)
        }
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

async fn bearer_from(from: IpAddr, gate: &Gate, path: &str, token: &str) -> (Outcome, Option<Ws>) {
    let auth = format!("Bearer {token}");
    ws_from(from, gate.addr(), &format!("{}{path}", gate.url()), &[("authorization", &auth)], None).await
}

async fn send(ws: &mut Ws, v: Value) {
    tokio::time::timeout(STEP, ws.send(Message::Text(v.to_string().into())))
        .await
        .expect("send in time")
        .expect("send");
}

/// Read frames until `pred` holds for a text frame; returns every frame read.
async fn read_until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        match next_frame(ws).await {
            Frame::Text(v) => {
                let done = pred(&v);
                seen.push(v);
                if done {
                    return seen;
                }
            }
            other => panic!("expected more frames, got {other:?} after {} frames", seen.len()),
        }
    }
}

fn is_terminal(v: &Value) -> bool {
    matches!(v["type"].as_str(), Some("agent_completed" | "agent_failed" | "run_cancelled"))
}

/// One plain HTTP/1.1 request from `from`; (status, head, body).
async fn http_from(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let mut stream = tcp_from(from, to, None).await;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut raw)).await.expect("response in time").expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_ascii_lowercase(), body)
}

async fn post_ticket(from: IpAddr, gate: &Gate, token: &str) -> (u16, String, Value) {
    let auth = format!("Bearer {token}");
    http_from(from, gate.addr(), "POST", "/v1/tickets", &[("Authorization", &auth)], "").await
}

/// `agentgate_connections_active` from `/metrics`.
async fn connections_active(gate: &Gate) -> u64 {
    let (status, _, _) = http_from(loopback(1), gate.addr(), "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    let mut stream = tcp_from(loopback(1), gate.addr(), None).await;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", gate.addr());
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut raw)).await.expect("metrics in time").unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.lines()
        .find(|l| l.starts_with("agentgate_connections_active"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Poll until `agentgate_connections_active` is `want`; returns how long it took.
async fn wait_connections(gate: &Gate, want: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let n = connections_active(gate).await;
        if n == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "still {n} connections after {limit:?} (want {want})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The honest user: `bob` of issuer `one` connects and completes a run.
async fn honest_user_is_served(gate: &Gate, token: &str) {
    let (o, ws) = bearer_from(loopback(200), gate, "", token).await;
    let w = o.welcome();
    assert_eq!(w["principal"]["subject"], "bob");
    let mut ws = ws.unwrap();
    send(&mut ws, json!({"type": "run.start", "ref": "h", "agent": "demo", "input": {"prompt": "one two three"}}))
        .await;
    let frames = read_until(&mut ws, is_terminal).await;
    assert_eq!(frames.last().unwrap()["type"], "agent_completed", "{frames:?}");
    close(Some(ws)).await;
}

// === sessions ===

#[test]
fn one_principal_from_many_addresses_holds_at_most_its_sessions() {
    let gate = Gate::start("[limits]\nsessions_per_principal = 8\n", &[]);
    let alice = gate.token("one", "alice", &[]);
    let bob = gate.token("one", "bob", &[]);
    block_on(async {
        // 60 connections from 30 addresses, each leaving its session detached.
        let mut sids = Vec::new();
        for i in 0..60u8 {
            let (o, ws) = bearer_from(loopback(10 + i % 30), &gate, "", &alice).await;
            sids.push(o.welcome()["session_id"].as_str().unwrap().to_owned());
            close(ws).await;
        }
        // Only the 8 newest survive: the oldest detached were dropped to make room.
        let resume = |sid: &str| format!("?session_id={sid}&last_seq=0");
        let (o, ws) = bearer_from(loopback(50), &gate, &resume(&sids[0]), &alice).await;
        assert_eq!(o.welcome()["resume_error"], "session_not_found");
        close(ws).await;
        let (o, ws) = bearer_from(loopback(50), &gate, &resume(&sids[59]), &alice).await;
        assert_eq!(o.welcome()["resumed"], true);
        close(ws).await;

        // Eight attached sessions: a ninth connection is refused before the upgrade.
        let mut held = Vec::new();
        for i in 0..8u8 {
            let (o, ws) = bearer_from(loopback(60 + i), &gate, "", &alice).await;
            o.welcome();
            held.push(ws);
        }
        let (o, _) = bearer_from(loopback(70), &gate, "", &alice).await;
        o.assert_http(429, "too_many_connections");
        // alice of the other issuer is another principal, with her own sessions.
        let alice_two = gate.token("two", "alice", &[]);
        let (o, ws) = bearer_from(loopback(71), &gate, "", &alice_two).await;
        o.welcome();
        close(ws).await;
        honest_user_is_served(&gate, &bob).await;
        for ws in held {
            close(ws).await;
        }
    });
}

/// A prompt whose `tool_executing` event is about `kib` KiB.
fn prompt(kib: usize) -> String {
    "word ".repeat(kib * 1024 / 5)
}

/// Start a demo run with `prompt` and read until its terminal event.
async fn big_run(ws: &mut Ws, prompt: &str) -> Vec<Value> {
    send(ws, json!({"type": "run.start", "ref": "big", "agent": "demo", "input": {"prompt": prompt}})).await;
    read_until(ws, is_terminal).await
}

#[test]
fn a_session_buffer_holds_at_most_buffer_bytes_of_frames() {
    let gate = Gate::start("[sessions]\nbuffer_bytes = 65536\n", &[]);
    let alice = gate.token("one", "alice", &[]);
    let bob = gate.token("one", "bob", &[]);
    let big = prompt(900);
    block_on(async {
        let (o, ws) = bearer_from(loopback(10), &gate, "", &alice).await;
        let sid = o.welcome()["session_id"].as_str().unwrap().to_owned();
        let mut ws = ws.unwrap();
        let mut last = 0;
        for _ in 0..3 {
            let frames = big_run(&mut ws, &big).await;
            last = frames.last().unwrap()["seq"].as_u64().unwrap();
        }
        close(Some(ws)).await;
        // Resume from the start: the 900 KiB events are gone, reported as truncation.
        let (o, ws) = bearer_from(loopback(11), &gate, &format!("?session_id={sid}&last_seq=0"), &alice).await;
        let w = o.welcome();
        assert_eq!(w["resumed"], true);
        assert_eq!(w["resume_error"], "history_truncated");
        let first = w["first_seq"].as_u64().unwrap();
        assert!(first > 1);
        let mut ws = ws.unwrap();
        let mut replayed = 0;
        for _ in first..=last {
            match next_frame(&mut ws).await {
                Frame::Text(v) => replayed += v.to_string().len(),
                other => panic!("{other:?}"),
            }
        }
        assert!(replayed <= 65536, "replayed {replayed} bytes");
        close(Some(ws)).await;
        honest_user_is_served(&gate, &bob).await;
    });
}

#[test]
fn the_node_memory_limit_drops_the_longest_detached_sessions_and_memory_stays_bounded() {
    // 1 MiB per session, 4 MiB for the node: 40 sessions each holding a 900 KiB event
    // would hold 36 MiB without the node limit.
    let gate = Gate::start("[sessions]\nmemory_limit_bytes = 4194304\n", &[]);
    let alice = gate.token("one", "alice", &[]);
    let bob = gate.token("one", "bob", &[]);
    let big = prompt(900);
    let before = gate.rss();
    block_on(async {
        let mut sids = Vec::new();
        for i in 0..40u8 {
            let (o, ws) = bearer_from(loopback(10 + i), &gate, "", &alice).await;
            sids.push(o.welcome()["session_id"].as_str().unwrap().to_owned());
            let mut ws = ws.unwrap();
            big_run(&mut ws, &big).await;
            close(Some(ws)).await;
        }
        let after = gate.rss();
        let grown = after.saturating_sub(before);
        eprintln!("RSS {} MiB -> {} MiB", before >> 20, after >> 20);
        assert!(grown < 48 << 20, "the gateway grew by {} MiB", grown >> 20);
        // The first sessions were detached longest ago: dropped. The newest is intact.
        let (o, ws) = bearer_from(loopback(90), &gate, &format!("?session_id={}&last_seq=0", sids[0]), &alice).await;
        assert_eq!(o.welcome()["resume_error"], "session_not_found");
        close(ws).await;
        let (o, ws) = bearer_from(loopback(91), &gate, &format!("?session_id={}&last_seq=0", sids[39]), &alice).await;
        let w = o.welcome();
        assert_eq!(w["resumed"], true, "{w}");
        assert!(w.get("resume_error").is_none(), "{w}");
        close(ws).await;
        honest_user_is_served(&gate, &bob).await;
    });
}

// === tickets and the HTTP APIs ===

#[test]
fn a_ticket_flood_is_capped_per_principal_and_the_apis_share_the_per_ip_bucket() {
    let gate = Gate::start("[limits]\ntickets_per_principal = 4\nhandshakes_per_ip_per_s = 5\n", &[]);
    let alice = gate.token("one", "alice", &[]);
    let alice_two = gate.token("two", "alice", &[]);
    let bob = gate.token("one", "bob", &[]);
    let admin = gate.token("one", "root", &["--scope", "admin"]);
    block_on(async {
        // Each from its own address, so the per-IP bucket is not what refuses.
        for i in 0..4u8 {
            let (status, _, body) = post_ticket(loopback(10 + i), &gate, &alice).await;
            assert_eq!(status, 201, "{body}");
        }
        for i in 4..8u8 {
            let (status, head, body) = post_ticket(loopback(10 + i), &gate, &alice).await;
            assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
            assert!(head.contains("retry-after:"), "{head}");
        }
        // Another issuer's alice, and bob, are other principals.
        assert_eq!(post_ticket(loopback(20), &gate, &alice_two).await.0, 201);
        assert_eq!(post_ticket(loopback(21), &gate, &bob).await.0, 201);

        // One address: the burst (twice 5 per second) runs out, for tickets and revoke alike.
        let mut limited = 0;
        for _ in 0..14 {
            let auth = format!("Bearer {admin}");
            let (status, head, body) = http_from(
                loopback(30),
                gate.addr(),
                "POST",
                "/v1/admin/revoke",
                &[("Authorization", &auth), ("Content-Type", "application/json")],
                r#"{"jti":"nothing"}"#,
            )
            .await;
            if status == 429 {
                assert_eq!(body["error"]["code"], "rate_limited");
                assert!(head.contains("retry-after:"), "{head}");
                limited += 1;
            } else {
                assert_eq!(status, 200, "{body}");
            }
        }
        assert!(limited >= 2, "{limited} of 14 revocations from one address were limited");
        let (status, _, body) = post_ticket(loopback(30), &gate, &bob).await;
        assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")));
        // Another address is served.
        honest_user_is_served(&gate, &bob).await;
    });
}

#[test]
fn revocation_inputs_are_bounded() {
    let gate = Gate::start("", &[]);
    let admin = gate.token("one", "root", &["--scope", "admin"]);
    let alice = gate.token("one", "alice", &[]);
    let alice_two = gate.token("two", "alice", &[]);
    let auth = format!("Bearer {admin}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let addr = gate.addr();
    block_on(async {
        let revoke = |body: Value| async move {
            http_from(loopback(10), addr, "POST", "/v1/admin/revoke", &headers, &body.to_string()).await
        };
        let (s, _, b) = revoke(json!({"jti": "j".repeat(257)})).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("protocol_error")), "{b}");
        let (s, _, b) = revoke(json!({"subject": "s".repeat(1025), "issued_before": 1})).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("protocol_error")), "{b}");
        assert_eq!(revoke(json!({"jti": "j".repeat(256)})).await.0, 200);
        // A revocation "until the end of time" is taken as now: it ends alice's tokens
        // of every issuer and her API key, but not a token issued after it.
        std::thread::sleep(Duration::from_millis(1100));
        let (s, _, b) = revoke(json!({"subject": "alice", "issued_before": i64::MAX})).await;
        assert_eq!(s, 200, "{b}");
        assert!(b["revoked"]["issued_before"].as_i64().unwrap() < i64::MAX);
        for token in [&alice, &alice_two, &API_KEY.to_owned()] {
            let (o, _) = bearer_from(loopback(11), &gate, "", token).await;
            o.assert_http(401, "token_revoked");
        }
    });
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = gate.token("one", "alice", &[]);
    block_on(async {
        let (o, ws) = bearer_from(loopback(12), &gate, "", &fresh).await;
        o.welcome();
        close(ws).await;
    });
}

// === clients that stop reading ===

/// Open a connection from `from` with a tiny receive buffer and start runs whose large
/// events it never reads, until the gateway's write to it is blocked.
async fn stalled(gate: &Gate, from: IpAddr, token: &str) -> Ws {
    let auth = format!("Bearer {token}");
    let (o, ws) = ws_from(from, gate.addr(), &gate.url(), &[("authorization", &auth)], Some(4096)).await;
    o.welcome();
    let mut ws = ws.unwrap();
    let big = prompt(900);
    for i in 0..10 {
        let frame = json!({"type": "run.start", "ref": format!("s{i}"), "agent": "demo", "input": {"prompt": big}});
        // Once the gateway is stuck writing to us, it reads no more: our send blocks too.
        match tokio::time::timeout(Duration::from_secs(2), ws.send(Message::Text(frame.to_string().into()))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    // Let the runs produce their events; the socket buffers fill, the write blocks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ws
}

/// Large queues and no write timeout to speak of: only revocation or expiry can end the
/// stalled connection.
const STALL_CONFIG: &str = "[sessions]\nbuffer_bytes = 33554432\n";
const STALL_ENV: &[(&str, &str)] =
    &[("AGENTGATE_SERVER__MAX_MESSAGE_BYTES", "16777216"), ("AGENTGATE_SERVER__WRITE_TIMEOUT_S", "600")];

#[test]
fn a_revoked_client_that_stopped_reading_is_gone_within_a_second() {
    let gate = Gate::start(STALL_CONFIG, STALL_ENV);
    let alice = gate.token("one", "alice", &["--jti", "alice-1"]);
    let admin = gate.token("one", "root", &["--scope", "admin"]);
    let bob = gate.token("one", "bob", &[]);
    block_on(async {
        let _stalled = stalled(&gate, loopback(10), &alice).await;
        assert_eq!(connections_active(&gate).await, 1);
        let auth = format!("Bearer {admin}");
        let (status, _, _) = http_from(
            loopback(11),
            gate.addr(),
            "POST",
            "/v1/admin/revoke",
            &[("Authorization", &auth)],
            r#"{"jti":"alice-1"}"#,
        )
        .await;
        assert_eq!(status, 200);
        let took = wait_connections(&gate, 0, Duration::from_secs(3)).await;
        eprintln!("the revoked, non-reading connection was gone {took:?} after the revocation");
        honest_user_is_served(&gate, &bob).await;
    });
}

#[test]
fn an_expired_client_that_stopped_reading_is_closed_on_time() {
    let mut env = STALL_ENV.to_vec();
    env.push(("AGENTGATE_AUTH__LEEWAY_S", "0"));
    let gate = Gate::start(STALL_CONFIG, &env);
    let alice = gate.token("one", "alice", &["--ttl", "10"]);
    let bob = gate.token("one", "bob", &[]);
    let minted = Instant::now();
    block_on(async {
        let _stalled = stalled(&gate, loopback(10), &alice).await;
        assert_eq!(connections_active(&gate).await, 1, "stalled {:?} after minting", minted.elapsed());
        // Closed once `exp + leeway_s` (0) has passed: within 10 s of minting plus the
        // second the token's `exp` may have been rounded by, plus the close.
        let limit = Duration::from_secs(13).saturating_sub(minted.elapsed());
        wait_connections(&gate, 0, limit).await;
        eprintln!("the expired, non-reading connection was gone {:?} after minting (ttl 10 s)", minted.elapsed());
        honest_user_is_served(&gate, &bob).await;
    });
}

#[test]
fn a_client_that_stopped_reading_is_dropped_after_the_write_timeout() {
    let gate = Gate::start(
        STALL_CONFIG,
        &[("AGENTGATE_SERVER__MAX_MESSAGE_BYTES", "16777216"), ("AGENTGATE_SERVER__WRITE_TIMEOUT_S", "1")],
    );
    let alice = gate.token("one", "alice", &[]);
    let bob = gate.token("one", "bob", &[]);
    block_on(async {
        let _stalled = stalled(&gate, loopback(10), &alice).await;
        wait_connections(&gate, 0, Duration::from_secs(5)).await;
        honest_user_is_served(&gate, &bob).await;
    });
}

// === identity ===

#[test]
fn the_same_subject_of_another_issuer_or_an_api_key_is_another_principal() {
    let gate = Gate::start("", &[]);
    let alice_one = gate.token("one", "alice", &[]);
    let alice_two = gate.token("two", "alice", &[]);
    block_on(async {
        let (o, ws) = bearer_from(loopback(10), &gate, "", &alice_one).await;
        let sid = o.welcome()["session_id"].as_str().unwrap().to_owned();
        let mut ws = ws.unwrap();
        send(
            &mut ws,
            json!({"type": "run.start", "ref": "a", "agent": "demo", "input": {"prompt": "x y", "delay_ms": 1500}}),
        )
        .await;
        let accepted = read_until(&mut ws, |v| v["type"] == "run.accepted").await;
        let run_id = accepted.last().unwrap()["run_id"].as_str().unwrap().to_owned();

        let resume = format!("?session_id={sid}&last_seq=0");
        let auth_two = format!("Bearer {alice_two}");
        let auth_key = format!("Bearer {API_KEY}");
        for auth in [&auth_two, &auth_key] {
            let url = format!("{}{resume}", gate.url());
            let (o, _) = ws_from(loopback(11), gate.addr(), &url, &[("authorization", auth)], None).await;
            o.assert_http(403, "session_forbidden");
            let (o, other) = ws_from(loopback(11), gate.addr(), &gate.url(), &[("authorization", auth)], None).await;
            assert_eq!(o.welcome()["principal"]["subject"], "alice");
            let mut other = other.unwrap();
            send(&mut other, json!({"type": "run.get", "ref": "g", "run_id": run_id})).await;
            let r = read_until(&mut other, |v| v["ref"] == "g").await;
            assert_eq!(r.last().unwrap()["code"], "run_not_found");
            send(&mut other, json!({"type": "run.cancel", "ref": "c", "run_id": run_id})).await;
            let r = read_until(&mut other, |v| v["ref"] == "c").await;
            assert_eq!(r.last().unwrap()["code"], "run_not_found");
            close(Some(other)).await;
        }
        // alice of issuer `one` was not disturbed: her run completes on her session.
        let frames = read_until(&mut ws, is_terminal).await;
        assert_eq!(frames.last().unwrap()["type"], "agent_completed");
        close(Some(ws)).await;
    });
}

// === logs ===

#[test]
fn a_subject_cannot_forge_log_lines_or_colour_the_log() {
    // Accepted connections (which carry the subject) are logged at debug.
    let gate = Gate::start("", &[("RUST_LOG", "info,agentgate_app::connection=debug")]);
    let evil = "mallory\nINFO forged: admin signed in\r\x1b[31mred\x1b[0m\u{85}";
    let token = gate.token("one", evil, &[]);
    let bob = gate.token("one", "bob", &[]);
    block_on(async {
        let (o, ws) = bearer_from(loopback(10), &gate, "", &token).await;
        assert_eq!(o.welcome()["principal"]["subject"], evil);
        close(ws).await;
        // And as a rejection (no scope for the admin API), which logs the subject too.
        let auth = format!("Bearer {token}");
        let (status, _, _) =
            http_from(loopback(10), gate.addr(), "POST", "/v1/admin/revoke", &[("Authorization", &auth)], "{}").await;
        assert_eq!(status, 403);
        honest_user_is_served(&gate, &bob).await;
    });
    let log = gate.server.stderr();
    assert!(log.contains("mallory\\nINFO forged"), "the subject is logged, escaped:\n{log}");
    for line in log.lines() {
        assert!(!line.trim_start().starts_with("INFO forged"), "a forged line: {line:?}");
        assert!(!line.chars().any(char::is_control), "a control character in: {line:?}");
    }
}

// === measurement (docs/security.md) ===

/// The worst case of one principal with the default limits: 64 sessions, each holding
/// a full 1 MiB buffer. Slow (about 64 MB through a debug build), so run on demand:
/// `cargo test -p agentgate --test abuse -- --ignored --nocapture`.
#[test]
#[ignore = "measurement for docs/security.md; run on demand"]
fn measure_one_principal_at_the_default_limits() {
    let gate = Gate::start("", &[("AGENTGATE_LIMITS__HANDSHAKES_PER_IP_PER_S", "1000")]);
    let alice = gate.token("one", "alice", &[]);
    let bob = gate.token("one", "bob", &[]);
    let big = prompt(1000);
    let before = gate.rss();
    block_on(async {
        for i in 0..80u8 {
            let (o, ws) = bearer_from(loopback(10 + i), &gate, "", &alice).await;
            o.welcome();
            let mut ws = ws.unwrap();
            big_run(&mut ws, &big).await;
            close(Some(ws)).await;
        }
        let after = gate.rss();
        eprintln!(
            "one principal, 80 sessions made (64 kept), each ~1 MiB buffered: RSS {} MiB -> {} MiB (+{} MiB)",
            before >> 20,
            after >> 20,
            (after - before) >> 20
        );
        assert!(after - before < 256 << 20);
        honest_user_is_served(&gate, &bob).await;
    });
}

// === MCP ===

/// An "MCP server" that writes a raw CR to stderr, then 100 KB lines to stdout forever.
fn flood_server() -> String {
    let script = "printf 'starting\\rINFO forged by mcp\\n' >&2; \
                  line=$(head -c 100000 /dev/zero | tr '\\0' x); \
                  while :; do printf '%s\\n' \"$line\" || exit 0; done";
    format!(
        "[[mcp.servers]]\nname = \"flood\"\ncommand = [\"sh\", \"-c\", {}]\n",
        serde_json::to_string(script).expect("a TOML basic string is a JSON string here")
    )
}

#[test]
fn a_revoked_mcp_client_that_stopped_reading_is_gone_within_a_second_and_mcp_stderr_is_escaped() {
    let gate = Gate::start(&flood_server(), &[("AGENTGATE_SERVER__WRITE_TIMEOUT_S", "600")]);
    let alice = gate.token("one", "alice", &["--jti", "alice-mcp", "--scope", "mcp:flood"]);
    let admin = gate.token("one", "root", &["--scope", "admin"]);
    let bob = gate.token("one", "bob", &[]);
    block_on(async {
        let url = format!("ws://{}/v1/mcp/flood", gate.addr());
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {alice}")).unwrap());
        let stream = MaybeTlsStream::Plain(tcp_from(loopback(10), gate.addr(), Some(4096)).await);
        let (_never_read, _) =
            tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, stream)).await.unwrap().unwrap();
        // The server's lines fill the socket buffers; the gateway's write blocks.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(connections_active(&gate).await, 1);
        let auth = format!("Bearer {admin}");
        let (status, _, _) = http_from(
            loopback(11),
            gate.addr(),
            "POST",
            "/v1/admin/revoke",
            &[("Authorization", &auth)],
            r#"{"jti":"alice-mcp"}"#,
        )
        .await;
        assert_eq!(status, 200);
        let took = wait_connections(&gate, 0, Duration::from_secs(3)).await;
        eprintln!("the revoked, non-reading MCP connection was gone {took:?} after the revocation");
        honest_user_is_served(&gate, &bob).await;
    });
    let log = gate.server.stderr();
    assert!(log.contains("starting\\rINFO forged by mcp"), "the MCP stderr line is logged, escaped:\n{log}");
    for line in log.lines() {
        assert!(!line.trim_start().starts_with("INFO forged"), "a forged line: {line:?}");
        assert!(!line.chars().any(char::is_control), "a control character in: {line:?}");
    }
}

// === runs ===

#[test]
fn finished_runs_are_kept_per_principal_up_to_the_cap_oldest_forgotten_first() {
    let gate = Gate::start("[runs]\nretained_per_principal = 5\n", &[]);
    let alice = gate.token("one", "alice", &[]);
    let bob = gate.token("one", "bob", &[]);
    block_on(async {
        let (o, ws) = bearer_from(loopback(10), &gate, "", &alice).await;
        o.welcome();
        let mut ws = ws.unwrap();
        let mut runs = Vec::new();
        for i in 0..12 {
            send(
                &mut ws,
                json!({"type": "run.start", "ref": format!("s{i}"), "agent": "demo", "input": {"prompt": "a"}}),
            )
            .await;
            let frames = read_until(&mut ws, is_terminal).await;
            runs.push(frames.last().unwrap()["run_id"].as_str().unwrap().to_owned());
        }
        for (i, run_id) in runs.iter().enumerate() {
            send(&mut ws, json!({"type": "run.get", "ref": format!("g{i}"), "run_id": run_id})).await;
            let reply = read_until(&mut ws, |v| v["ref"] == format!("g{i}")).await.pop().unwrap();
            if i < 7 {
                assert_eq!(reply["code"], "run_not_found", "run {i} is forgotten: {reply}");
            } else {
                assert_eq!(reply["status"], "completed", "run {i} is kept: {reply}");
                assert_eq!(reply["terminal"]["type"], "agent_completed");
            }
        }
        close(Some(ws)).await;
        honest_user_is_served(&gate, &bob).await;
    });
}

// === claims and headers ===

#[test]
fn mistyped_claims_extreme_times_and_smuggled_headers_get_exact_codes_without_a_panic() {
    let gate = Gate::start("", &[]);
    let min = i64::MIN.to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--claim".into(), "jti=42".into()], "token_malformed"),
        (vec!["--claim".into(), "tenant=[\"a\"]".into()], "token_malformed"),
        (vec!["--claim".into(), "tenant={\"a\":1}".into()], "token_malformed"),
        (vec!["--claim".into(), "tenant=true".into()], "token_malformed"),
        (vec!["--claim".into(), "role=7".into()], "token_malformed"),
        (vec!["--claim".into(), "role=ANON".into()], "anonymous_not_allowed"),
        (vec!["--claim".into(), "role=[\"user\",\"anon\"]".into()], "anonymous_not_allowed"),
        (vec!["--claim".into(), format!("exp={min}")], "token_expired"),
    ];
    let tokens: Vec<(String, &str)> = cases
        .iter()
        .map(|(args, code)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (gate.token("one", "alice", &args), *code)
        })
        .collect();
    let tenant_int = gate.token("one", "alice", &["--claim", "tenant=42"]);
    let valid = gate.token("one", "alice", &[]);
    block_on(async {
        for (token, code) in &tokens {
            let (o, _) = bearer_from(loopback(10), &gate, "", token).await;
            assert_eq!(o.code(), *code, "{token}");
        }
        let (o, ws) = bearer_from(loopback(10), &gate, "", &tenant_int).await;
        assert_eq!(o.welcome()["principal"]["tenant"], "42");
        close(ws).await;
        // A non-ASCII byte in the subprotocol header hides no second credential.
        let auth = format!("Bearer {valid}");
        let proto = format!("agentgate.v1, agentgate.bearer.{valid}");
        let mut stream = tcp_from(loopback(11), gate.addr(), None).await;
        let req = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: {auth}\r\nSec-WebSocket-Protocol: {proto}@\r\n\r\n"
        );
        let mut bytes = req.into_bytes();
        // The `@` after the offer becomes one raw 0xff byte.
        let at = bytes.windows(3).position(|w| w == b"@\r\n").unwrap();
        bytes[at] = 0xff;
        stream.write_all(&bytes).await.unwrap();
        // The connection stays open (keep-alive): read until the JSON body is in.
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&raw).contains("}}") {
            let n = tokio::time::timeout(STEP, stream.read(&mut chunk)).await.expect("an answer").unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains("protocol_error"), "{text}");
        // Two Origin headers: origin_not_allowed (delivered as a close, as with any Origin).
        let url = gate.url();
        let (o, _) = ws_from(
            loopback(12),
            gate.addr(),
            &url,
            &[("authorization", &auth), ("origin", "http://a"), ("origin", "http://b")],
            None,
        )
        .await;
        assert_eq!(o.code(), "origin_not_allowed");
    });
    // `token inspect` of the extreme `exp` reports, without overflowing.
    let extreme = &tokens.last().unwrap().0;
    let out = gate.sandbox.run_with_stdin(
        &["token", "inspect", "--config", &gate.config],
        &[("ONE_SECRET", ONE_SECRET), ("TWO_SECRET", TWO_SECRET)],
        extreme,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stdout_of(&out).contains("token_expired"), "{}", describe(&out));
    assert!(!gate.server.stderr().contains("panicked"), "{}", gate.server.stderr());
}

#[test]
fn shutdown_is_on_time_while_a_write_is_blocked() {
    let mut gate = Gate::start(STALL_CONFIG, STALL_ENV);
    let alice = gate.token("one", "alice", &[]);
    block_on(async {
        let _stalled = stalled(&gate, loopback(10), &alice).await;
        assert_eq!(connections_active(&gate).await, 1);
        let signalled = Instant::now();
        gate.server.signal_terminate();
        // The close frame cannot be written to a client that does not read: it is given
        // up, and the node exits long before `server.shutdown_grace_s` (10 s).
        let status = gate.server.wait_within(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0));
        eprintln!("exited {:?} after SIGTERM with a blocked write", signalled.elapsed());
    });
}

#[test]
fn json_logs_stay_one_valid_json_object_per_line_whatever_the_subject() {
    let sandbox = Sandbox::new();
    let config = sandbox.config("json.toml", &issuers());
    let env = [("ONE_SECRET", ONE_SECRET), ("TWO_SECRET", TWO_SECRET)];
    // Accepted connections (which carry the subject) are logged at debug.
    let log_env = [env[0], env[1], ("RUST_LOG", "info,agentgate_app::connection=debug")];
    let server = sandbox.serve(&["--log-format", "json"], &config, &log_env);
    let evil = "mallory\n{\"level\":\"INFO\",\"forged\":true}\r\x1b[31m\u{85}\u{2028}";
    let token = sandbox.mint(&config, &["--issuer", "one", "--sub", evil], &env);
    block_on(async {
        let auth = format!("Bearer {token}");
        let url = server.url();
        let (o, ws) = ws_from(loopback(10), server.addr(), &url, &[("authorization", &auth)], None).await;
        assert_eq!(o.welcome()["principal"]["subject"], evil);
        close(ws).await;
    });
    server.wait_for_log_line("\"connection accepted\" with the subject", |v| v["fields"]["subject"] == evil);
    let log = server.stderr();
    let mut subjects = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(v.get("forged").is_none(), "a forged line: {line}");
        assert!(!line.chars().any(char::is_control), "a control character in: {line:?}");
        if v["fields"]["subject"] == evil {
            subjects += 1;
        }
    }
    assert!(subjects >= 1, "the subject is logged, and reads back exactly:\n{log}");
}

#[test]
fn a_rate_limited_api_request_from_an_allowed_origin_keeps_its_cors_headers() {
    let gate = Gate::start(
        "[limits]\nhandshakes_per_ip_per_s = 1\n",
        &[("AGENTGATE_SERVER__ALLOWED_ORIGINS", "[\"http://app.test\"]")],
    );
    let bob = gate.token("one", "bob", &[]);
    block_on(async {
        let auth = format!("Bearer {bob}");
        let headers = [("Authorization", auth.as_str()), ("Origin", "http://app.test")];
        let mut limited = None;
        for _ in 0..4 {
            let (status, head, _) = http_from(loopback(10), gate.addr(), "POST", "/v1/tickets", &headers, "").await;
            if status == 429 {
                limited = Some(head);
                break;
            }
            assert_eq!(status, 201);
        }
        let head = limited.expect("the bucket (burst 2) ran out within 4 requests");
        assert!(head.contains("access-control-allow-origin: http://app.test"), "{head}");
        assert!(head.contains("retry-after:"), "{head}");
    });
}
