//! Several real gateway processes on one real Redis (`backend.kind = "redis"`): a
//! session resumes on any node with every event exactly once; takeover, revocation and
//! tickets work across nodes; a killed node's runs end `node_lost`; SIGTERM ends runs
//! `node_shutdown` and the session resumes elsewhere; a Redis outage keeps live
//! connections and loses nothing; two prefixes share nothing.
//!
//! Redis is started by the tests on a spare loopback port (`appendonly yes`, so a
//! restart keeps everything). A missing `redis-server` fails these tests.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const SECRET_VAR: &str = "AG_CLUSTER_SECRET";

/// A real `redis-server` with append-only persistence in its own directory, which can
/// be stopped and started again on the same port.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("redis dir");
        let mut r = Self { child: None, port: 0, dir };
        for _ in 0..3 {
            r.port = closed_port();
            if r.spawn().is_ok() {
                return r;
            }
        }
        panic!("redis-server did not start (is it installed? apt-get install redis-server, as .ci/run does)");
    }

    fn program() -> PathBuf {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).find(|p| p.is_file()))
            .expect("redis-server is not on PATH: install it (apt-get install redis-server, as .ci/run does)")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(Self::program())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status}"));
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok()
                    && let Ok(n) = s.read(&mut buf)
                    && buf[..n].starts_with(b"+PONG")
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err("no PONG in time".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop (SIGTERM: the append-only file is complete) and wait for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + EXIT_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.spawn().expect("redis-server restarts on its port");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Gateways sharing one Redis.
struct Cluster {
    sb: Sandbox,
    redis: Redis,
    configs: Vec<String>,
}

impl Cluster {
    fn new(nodes: usize, extra: &str) -> Self {
        Self::with_prefixes(&vec!["agentgate:"; nodes], extra)
    }

    fn with_prefixes(prefixes: &[&str], extra: &str) -> Self {
        let sb = Sandbox::new();
        let redis = Redis::start();
        let configs = prefixes
            .iter()
            .enumerate()
            .map(|(i, prefix)| {
                sb.config(
                    &format!("node{i}.toml"),
                    &format!(
                        "{}[backend]\nkind = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\n{extra}",
                        hs_issuer("local", SECRET_VAR),
                        redis.url()
                    ),
                )
            })
            .collect();
        Self { sb, redis, configs }
    }

    fn env() -> [(&'static str, &'static str); 1] {
        [(SECRET_VAR, SECRET)]
    }

    fn start(&self, i: usize) -> Server {
        self.sb.serve(&["--log-format", "json"], &self.configs[i], &Self::env())
    }

    fn mint(&self, args: &[&str]) -> String {
        self.sb.mint(&self.configs[0], args, &Self::env())
    }
}

fn is_event(v: &Value) -> bool {
    v.get("seq").is_some()
}

fn is_terminal(v: &Value) -> bool {
    matches!(v["type"].as_str(), Some("agent_completed" | "agent_failed" | "run_cancelled"))
}

async fn send(ws: &mut Ws, v: Value) {
    tokio::time::timeout(STEP, ws.send(Message::text(v.to_string()))).await.expect("send in time").expect("send");
}

/// Frames until `stop` says so (the frame that stopped is included).
async fn read_until(ws: &mut Ws, mut stop: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match next_frame(ws).await {
            Frame::Text(v) => {
                let done = stop(&v);
                out.push(v);
                if done {
                    return out;
                }
            }
            other => panic!("connection ended while reading: {other:?} after {out:?}"),
        }
    }
}

/// Resume `sid` after `last` on `url`.
async fn resume(url: &str, token: &str, sid: &str, last: u64) -> (Value, Ws) {
    let url = format!("{url}?session_id={sid}&last_seq={last}");
    let (outcome, ws) = connect_bearer(&url, token, &[]).await;
    (outcome.welcome(), ws.expect("socket"))
}

/// Every event seq exactly once, contiguous from `from`.
fn assert_contiguous(events: &[Value], from: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (from..from + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "events exactly once, in order");
}

fn demo_run(prompt: &str, delay_ms: u64) -> Value {
    json!({"type": "run.start", "ref": "c1", "agent": "demo", "input": {"prompt": prompt, "delay_ms": delay_ms}})
}

/// Connect on `url`, start a demo run and read until its `agent_started`: the session
/// id, the socket, and the events read so far.
async fn start_run(url: &str, token: &str, prompt: &str, delay_ms: u64) -> (String, Ws, Vec<Value>) {
    let (outcome, ws) = connect_bearer(url, token, &[]).await;
    let sid = outcome.welcome()["session_id"].as_str().unwrap().to_owned();
    let mut ws = ws.unwrap();
    send(&mut ws, demo_run(prompt, delay_ms)).await;
    let first = read_until(&mut ws, |v| v["type"] == "agent_started").await;
    (sid, ws, first.into_iter().filter(is_event).collect())
}

/// `POST /v1/tickets` with a bearer: the status and the body.
async fn post_ticket(addr: std::net::SocketAddr, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/tickets"))
        .bearer_auth(token)
        .send()
        .await
        .expect("ticket request");
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null))
}

/// `POST /v1/admin/revoke` of `jti` with an admin bearer: the status.
async fn post_revoke(addr: std::net::SocketAddr, admin: &str, jti: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{addr}/v1/admin/revoke"))
        .bearer_auth(admin)
        .header("content-type", "application/json")
        .body(json!({"jti": jti}).to_string())
        .send()
        .await
        .expect("revoke request")
        .status()
        .as_u16()
}

#[test]
fn a_session_resumes_on_another_node_with_every_event_exactly_once() {
    let cluster = Cluster::new(3, "");
    let (a, b, c) = (cluster.start(0), cluster.start(1), cluster.start(2));
    let token = cluster.mint(&["--sub", "alice"]);
    block_on(async {
        let (outcome, ws) = connect_bearer(&a.url(), &token, &[]).await;
        let sid = outcome.welcome()["session_id"].as_str().unwrap().to_owned();
        let mut ws = ws.unwrap();
        send(&mut ws, demo_run("one two three four five six seven", 150)).await;
        let first = read_until(&mut ws, |v| v["seq"].as_u64() == Some(2)).await;
        let mut events: Vec<Value> = first.into_iter().filter(is_event).collect();
        drop(ws); // gone without a close frame
        // Resume on B after seq 2, then drop again, then on C.
        let (welcome, mut ws) = resume(&b.url(), &token, &sid, 2).await;
        assert_eq!((welcome["resumed"].as_bool(), welcome["session_id"].as_str()), (Some(true), Some(sid.as_str())));
        assert!(welcome.get("resume_error").is_none(), "{welcome}");
        let more = read_until(&mut ws, |v| v["seq"].as_u64() == Some(4)).await;
        events.extend(more.into_iter().filter(is_event));
        drop(ws);
        let (welcome, mut ws) = resume(&c.url(), &token, &sid, 4).await;
        assert_eq!(welcome["resumed"], true);
        let rest = read_until(&mut ws, is_terminal).await;
        events.extend(rest.into_iter().filter(is_event));
        assert_contiguous(&events, 1);
        assert_eq!(events.iter().filter(|e| is_terminal(e)).count(), 1);
        assert_eq!(events.last().unwrap()["type"], "agent_completed");
        assert_eq!(events.last().unwrap()["data"]["result"]["words"], 7);
        // run.get on yet another node knows the run.
        let run_id = events[0]["run_id"].as_str().unwrap().to_owned();
        let (outcome, ws) = connect_bearer(&a.url(), &token, &[]).await;
        outcome.welcome();
        let mut ws = ws.unwrap();
        send(&mut ws, json!({"type": "run.get", "ref": "g", "run_id": run_id})).await;
        let state = read_until(&mut ws, |v| v["type"] == "run.state").await.pop().unwrap();
        assert_eq!(state["status"], "completed", "{state}");
        assert_eq!(state["terminal"]["type"], "agent_completed");
    });
    drop((a, b, c));
}

#[test]
fn resuming_on_another_node_takes_the_session_over_4409() {
    let cluster = Cluster::new(2, "");
    let (a, b) = (cluster.start(0), cluster.start(1));
    let token = cluster.mint(&["--sub", "alice"]);
    block_on(async {
        let (outcome, ws) = connect_bearer(&a.url(), &token, &[]).await;
        let sid = outcome.welcome()["session_id"].as_str().unwrap().to_owned();
        let mut old = ws.unwrap();
        let (welcome, _new) = resume(&b.url(), &token, &sid, 0).await;
        assert_eq!(welcome["resumed"], true);
        match next_frame(&mut old).await {
            Frame::Close(code, reason) => {
                assert_eq!(code, 4409);
                assert!(reason.contains("session_taken_over"), "{reason}");
            }
            other => panic!("expected close 4409, got {other:?}"),
        }
    });
}

#[test]
fn a_revocation_on_one_node_closes_a_connection_on_another_within_a_second() {
    let cluster = Cluster::new(3, "");
    let (a, _b, c) = (cluster.start(0), cluster.start(1), cluster.start(2));
    let token = cluster.mint(&["--sub", "alice", "--jti", "jti-cluster-1"]);
    let admin = cluster.mint(&["--sub", "ops", "--scope", "admin"]);
    block_on(async {
        let (outcome, ws) = connect_bearer(&c.url(), &token, &[]).await;
        outcome.welcome();
        let mut ws = ws.unwrap();
        let started = Instant::now();
        assert_eq!(post_revoke(a.addr(), &admin, "jti-cluster-1").await, 200);
        match next_frame(&mut ws).await {
            Frame::Close(code, reason) => {
                assert_eq!((code, reason.contains("token_revoked")), (4401, true), "{reason}");
            }
            other => panic!("expected close 4401, got {other:?}"),
        }
        let took = started.elapsed();
        eprintln!("revocation on node A closed the connection on node C after {took:?}");
        assert!(took < Duration::from_secs(1), "PROTOCOL.md section 8: within 1 s on every node; took {took:?}");
        // And the token is refused on every node from now on.
        for node in [&a, &c] {
            let (outcome, _) = connect_bearer(&node.url(), &token, &[]).await;
            outcome.assert_http(401, "token_revoked");
        }
    });
}

#[test]
fn a_ticket_made_on_one_node_works_once_on_another_and_never_again() {
    let cluster = Cluster::new(3, "");
    let (a, b, c) = (cluster.start(0), cluster.start(1), cluster.start(2));
    let token = cluster.mint(&["--sub", "alice"]);
    block_on(async {
        let (status, body) = post_ticket(a.addr(), &token).await;
        assert_eq!(status, 201, "{body}");
        let ticket = body["ticket"].as_str().unwrap().to_owned();
        let (outcome, ws) = connect(&format!("{}?ticket={ticket}", b.url()), &[]).await;
        let welcome = outcome.welcome();
        assert_eq!(welcome["principal"]["via"], "ticket:jwt:local");
        close(ws).await;
        for node in [&a, &b, &c] {
            let (outcome, _) = connect(&format!("{}?ticket={ticket}", node.url()), &[]).await;
            outcome.assert_http(401, "ticket_invalid");
        }
    });
}

#[test]
fn two_concurrent_takes_of_one_ticket_on_two_nodes_let_exactly_one_in() {
    let cluster = Cluster::new(2, "");
    let (a, b) = (cluster.start(0), cluster.start(1));
    let token = cluster.mint(&["--sub", "alice"]);
    block_on(async {
        for _ in 0..10 {
            let (status, body) = post_ticket(a.addr(), &token).await;
            assert_eq!(status, 201, "{body}");
            let ticket = body["ticket"].as_str().unwrap().to_owned();
            let (ua, ub) = (format!("{}?ticket={ticket}", a.url()), format!("{}?ticket={ticket}", b.url()));
            let ((oa, _wa), (ob, _wb)) = tokio::join!(connect(&ua, &[]), connect(&ub, &[]));
            let codes = [oa.code(), ob.code()];
            assert_eq!(
                codes.iter().filter(|c| *c == "accepted").count(),
                1,
                "exactly one of two concurrent uses wins: {codes:?}"
            );
            assert!(codes.contains(&"ticket_invalid".to_owned()), "{codes:?}");
        }
    });
}

#[test]
fn a_run_is_cancelled_from_another_node() {
    let cluster = Cluster::new(2, "");
    let (a, b) = (cluster.start(0), cluster.start(1));
    let token = cluster.mint(&["--sub", "alice"]);
    block_on(async {
        let (outcome, ws) = connect_bearer(&a.url(), &token, &[]).await;
        let sid = outcome.welcome()["session_id"].as_str().unwrap().to_owned();
        let mut ws = ws.unwrap();
        send(&mut ws, demo_run("a slow run", 2000)).await;
        let accepted = read_until(&mut ws, |v| v["type"] == "run.accepted").await.pop().unwrap();
        let run_id = accepted["run_id"].as_str().unwrap().to_owned();
        drop(ws);
        let (_, mut ws) = resume(&b.url(), &token, &sid, 0).await;
        send(&mut ws, json!({"type": "run.cancel", "ref": "x", "run_id": run_id})).await;
        let frames = read_until(&mut ws, is_terminal).await;
        let events: Vec<Value> = frames.into_iter().filter(is_event).collect();
        assert_contiguous(&events, 1);
        assert_eq!(events.last().unwrap()["type"], "run_cancelled");
        assert_eq!(events.iter().filter(|e| is_terminal(e)).count(), 1);
    });
}

#[test]
fn kill_9_of_the_running_node_ends_its_run_node_lost_within_the_orphan_timeout() {
    let cluster = Cluster::new(2, "[runs]\norphan_timeout_s = 2\n");
    let (mut a, b) = (cluster.start(0), cluster.start(1));
    let token = cluster.mint(&["--sub", "alice"]);
    block_on(async {
        let (sid, ws, mut events) = start_run(&a.url(), &token, "a run that outlives its node", 3000).await;
        let _ = a.child.kill(); // SIGKILL: no shutdown, no terminal event from A
        let _ = a.child.wait();
        let died = Instant::now();
        drop(ws);
        let (welcome, mut ws) = resume(&b.url(), &token, &sid, 1).await;
        assert_eq!(welcome["resumed"], true, "{welcome}");
        let rest = read_until(&mut ws, is_terminal).await;
        let took = died.elapsed();
        events.extend(rest.into_iter().filter(is_event));
        assert_contiguous(&events, 1);
        let last = events.last().unwrap();
        assert_eq!((last["type"].as_str(), last["data"]["code"].as_str()), (Some("agent_failed"), Some("node_lost")));
        assert_eq!(events.iter().filter(|e| is_terminal(e)).count(), 1);
        eprintln!("node_lost arrived {took:?} after the kill (orphan_timeout_s = 2)");
        assert!(took < Duration::from_secs(2 + 2 + 1), "within runs.orphan_timeout_s + 2 s: {took:?}");
        // Nothing more after the terminal event.
        send(&mut ws, json!({"type": "ping", "ref": "p"})).await;
        let pong = read_until(&mut ws, |v| v["type"] == "pong").await;
        assert_eq!(pong.len(), 1, "no event after the terminal one: {pong:?}");
    });
}

#[test]
fn sigterm_closes_1012_and_the_session_resumes_elsewhere_with_the_run_ended_node_shutdown() {
    let cluster = Cluster::new(2, "");
    let (mut a, b) = (cluster.start(0), cluster.start(1));
    let token = cluster.mint(&["--sub", "alice"]);
    block_on(async {
        let (sid, mut ws, mut events) = start_run(&a.url(), &token, "a run during a rolling restart", 3000).await;
        a.signal_terminate();
        let mut closed = None;
        loop {
            match next_frame(&mut ws).await {
                Frame::Text(v) if is_event(&v) => events.push(v),
                Frame::Text(_) => {}
                Frame::Close(code, reason) => {
                    closed = Some((code, reason));
                    break;
                }
                Frame::End => break,
            }
        }
        let (code, reason) = closed.expect("a close frame");
        assert_eq!(code, 1012, "{reason}");
        assert!(a.wait().success());
        let last = events.last().map_or(0, |e| e["seq"].as_u64().unwrap());
        let (welcome, mut ws) = resume(&b.url(), &token, &sid, last).await;
        assert_eq!(welcome["resumed"], true, "{welcome}");
        let rest = read_until(&mut ws, is_terminal).await;
        events.extend(rest.into_iter().filter(is_event));
        assert_contiguous(&events, 1);
        let last = events.last().unwrap();
        assert_eq!(last["data"]["code"], "node_shutdown", "{last}");
        assert_eq!(events.iter().filter(|e| is_terminal(e)).count(), 1);
    });
}

#[test]
fn a_redis_outage_keeps_live_connections_and_loses_nothing() {
    let mut cluster = Cluster::new(2, "");
    let (a, b) = (cluster.start(0), cluster.start(1));
    let token = cluster.mint(&["--sub", "alice"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (sid, mut ws, mut events) = rt.block_on(async {
        let (outcome, ws) = connect_bearer(&a.url(), &token, &[]).await;
        let sid = outcome.welcome()["session_id"].as_str().unwrap().to_owned();
        let mut ws = ws.unwrap();
        send(&mut ws, demo_run("words during an outage of the shared backend", 700)).await;
        let first = read_until(&mut ws, |v| v["type"] == "agent_started").await;
        (sid, ws, first.into_iter().filter(is_event).collect::<Vec<_>>())
    });
    cluster.redis.stop();
    rt.block_on(async {
        // Both nodes unready, naming redis; new handshakes 503; the live connection stays.
        for node in [&a, &b] {
            let deadline = Instant::now() + Duration::from_secs(5);
            let (status, body) = loop {
                let r = reqwest::get(format!("http://{}/readyz", node.addr())).await.expect("readyz");
                let status = r.status().as_u16();
                let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
                if status == 503 || Instant::now() > deadline {
                    break (status, body);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["status"], "unready");
            assert!(body["checks"]["redis"].as_str().is_some_and(|e| e != "ok"), "{body}");
        }
        let (outcome, _) = connect_bearer(&b.url(), &token, &[]).await;
        outcome.assert_http(503, "service_unavailable");
        send(&mut ws, json!({"type": "ping", "ref": "during"})).await;
        let frames = read_until(&mut ws, |v| v["type"] == "pong").await;
        events.extend(frames.into_iter().filter(is_event));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    });
    cluster.redis.restart();
    rt.block_on(async {
        let rest = read_until(&mut ws, is_terminal).await;
        events.extend(rest.into_iter().filter(is_event));
        assert_contiguous(&events, 1);
        assert_eq!(events.iter().filter(|e| is_terminal(e)).count(), 1);
        assert_eq!(events.last().unwrap()["type"], "agent_completed");
        // The whole history is still there: a resume from 0 on the other node replays it.
        let (welcome, mut ws2) = resume(&b.url(), &token, &sid, 0).await;
        assert_eq!(welcome["resumed"], true, "{welcome}");
        let replay = read_until(&mut ws2, is_terminal).await;
        assert_eq!(replay, events, "the replay on another node is the same events");
        drop(ws);
    });
    drop((a, b));
}

#[test]
fn two_prefixes_on_one_redis_share_nothing() {
    let cluster = Cluster::with_prefixes(&["tenant-a:", "tenant-b:"], "");
    let (a, b) = (cluster.start(0), cluster.start(1));
    let token = cluster.mint(&["--sub", "alice", "--jti", "jti-prefix"]);
    let admin = cluster.mint(&["--sub", "ops", "--scope", "admin"]);
    block_on(async {
        let (outcome, ws) = connect_bearer(&a.url(), &token, &[]).await;
        let sid = outcome.welcome()["session_id"].as_str().unwrap().to_owned();
        close(ws).await;
        let url = format!("{}?session_id={sid}&last_seq=0", b.url());
        let (outcome, ws) = connect_bearer(&url, &token, &[]).await;
        let welcome = outcome.welcome();
        assert_eq!(
            (welcome["resumed"].as_bool(), welcome["resume_error"].as_str()),
            (Some(false), Some("session_not_found"))
        );
        close(ws).await;
        let (_, ticket) = post_ticket(a.addr(), &token).await;
        let (outcome, _) = connect(&format!("{}?ticket={}", b.url(), ticket["ticket"].as_str().unwrap()), &[]).await;
        outcome.assert_http(401, "ticket_invalid");
        assert_eq!(post_revoke(a.addr(), &admin, "jti-prefix").await, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (outcome, ws) = connect_bearer(&b.url(), &token, &[]).await;
        assert_eq!(outcome.code(), "accepted", "a revocation under another prefix does not apply");
        close(ws).await;
    });
    drop((a, b));
}

#[test]
fn per_principal_bounds_and_buffer_bytes_hold_across_nodes() {
    let cluster = Cluster::new(
        2,
        "[limits]\nsessions_per_principal = 2\ntickets_per_principal = 2\n[sessions]\nbuffer_bytes = 700\n",
    );
    let (a, b) = (cluster.start(0), cluster.start(1));
    let token = cluster.mint(&["--sub", "alice"]);
    block_on(async {
        // Two attached sessions, one per node: a third is refused before the upgrade.
        let (first, ws1) = connect_bearer(&a.url(), &token, &[]).await;
        let first_sid = first.welcome()["session_id"].as_str().unwrap().to_owned();
        let (second, ws2) = connect_bearer(&b.url(), &token, &[]).await;
        second.welcome();
        let (third, _) = connect_bearer(&a.url(), &token, &[]).await;
        third.assert_http(429, "too_many_connections");
        // Detach the first: the next session drops it (the one detached longest ago).
        close(ws1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (third, ws3) = connect_bearer(&b.url(), &token, &[]).await;
        third.welcome();
        close(ws3).await;
        close(ws2).await;
        let url = format!("{}?session_id={first_sid}&last_seq=0", a.url());
        let (again, ws) = connect_bearer(&url, &token, &[]).await;
        let w = again.welcome();
        assert_eq!(w["resume_error"], "session_not_found", "the dropped session is gone on every node: {w}");
        close(ws).await;

        // Tickets: two live ones per principal, whichever node issued them.
        assert_eq!(post_ticket(a.addr(), &token).await.0, 201);
        assert_eq!(post_ticket(b.addr(), &token).await.0, 201);
        assert_eq!(post_ticket(a.addr(), &token).await.0, 429);

        // Buffer bytes: large events push the oldest out; a resume from 0 says so.
        let other = cluster.mint(&["--sub", "bob"]);
        let (outcome, ws) = connect_bearer(&a.url(), &other, &[]).await;
        let sid = outcome.welcome()["session_id"].as_str().unwrap().to_owned();
        let mut ws = ws.unwrap();
        send(&mut ws, demo_run(&"word ".repeat(80), 0)).await;
        let live = read_until(&mut ws, is_terminal).await;
        let last = live.iter().filter_map(|v| v["seq"].as_u64()).max().unwrap();
        drop(ws);
        let (w, mut ws) = resume(&b.url(), &other, &sid, 0).await;
        assert_eq!(w["resume_error"], "history_truncated", "{w}");
        let first_seq = w["first_seq"].as_u64().unwrap();
        assert!(first_seq > 1, "{w}");
        let replay = read_until(&mut ws, is_terminal).await;
        assert_contiguous(&replay, first_seq);
        assert_eq!(replay.last().unwrap()["seq"].as_u64(), Some(last));
        let bytes: usize = replay.iter().map(|v| v.to_string().len()).sum();
        assert!(replay.len() == 1 || bytes <= 700, "the buffer holds at most 700 bytes (or only the newest event)");
    });
}
