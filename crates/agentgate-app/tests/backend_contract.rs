//! One contract for the `Backend` seam, run against both implementations: the memory
//! backend (two in-process nodes sharing one `MemoryBackend`) and the Redis backend
//! (two nodes connected to a real `redis-server` started on a spare loopback port).
//! Two-node cases: takeover across nodes, cancel on another node, two concurrent ticket
//! takes of which exactly one wins, a revocation seen by the other node, the run cap
//! held across nodes, live delivery to the holder's node, and exactly one terminal
//! event per run.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentgate_app::Config;
use agentgate_app::backend::memory::MemoryBackend;
use agentgate_app::backend::{Backend, Inbox, RunRecord, RunStatus, Signal, StoredTicket};
use agentgate_app::revocation::{RevocationList, Revoke};
use agentgate_app::session::{Holder, NewEvent, Owner, StoreError, StoredEvent};
use agentgate_auth::Revocations;
use agentgate_protocol::{ErrorCode, EventType};
use serde_json::json;

/// An inbox that records what reaches its node.
#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<(String, u64)>>,
    signals: Mutex<Vec<Signal>>,
}

impl Inbox for Recorder {
    fn event(&self, session_id: &str, event: StoredEvent) {
        self.events.lock().unwrap().push((session_id.to_owned(), event.seq));
    }

    fn signal(&self, signal: Signal) {
        self.signals.lock().unwrap().push(signal);
    }

    fn attached_sessions(&self) -> Vec<String> {
        Vec::new()
    }
}

struct Node {
    id: &'static str,
    backend: Backend,
    inbox: Arc<Recorder>,
    cache: Arc<RevocationList>,
}

/// Wait (bounded) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 3 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn owner(subject: &str) -> Owner {
    Owner { issuer: "local".into(), subject: subject.into(), tenant: None }
}

fn event(run: &str, ty: EventType, rseq: u64) -> NewEvent {
    NewEvent { ty, run_id: run.into(), ts_ms: 1, data: json!({"n": rseq}), rseq }
}

fn config(extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\n\
         secret = \"contract-test-secret-0123456789abcdef\"\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), &BTreeMap::new()).expect("config")
}

fn node_of(id: &'static str, build: impl FnOnce(Arc<dyn Inbox>, Arc<RevocationList>) -> Backend) -> Node {
    let inbox = Arc::new(Recorder::default());
    let cache = Arc::new(RevocationList::default());
    let backend = build(Arc::clone(&inbox) as Arc<dyn Inbox>, Arc::clone(&cache));
    Node { id, backend, inbox, cache }
}

fn memory_pair() -> (Node, Node) {
    let m = MemoryBackend::with_sizes(64, Duration::from_secs(300));
    (node_of("n_a", |i, c| m.node("n_a", i, c)), node_of("n_b", |i, c| m.node("n_b", i, c)))
}

/// A real redis-server on a spare loopback port, killed on drop.
struct RedisProcess(Child, u16);

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> RedisProcess {
    let program = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).find(|p| p.is_file()))
        .expect("redis-server is not on PATH: install it (apt-get install redis-server; scripts/test does)");
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(&program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return RedisProcess(child, port);
            }
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("redis-server did not start");
}

async fn redis_pair(redis: &RedisProcess) -> (Node, Node) {
    let cfg = config(&format!("[backend]\nkind = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n", redis.1));
    let mut nodes = Vec::new();
    for id in ["n_a", "n_b"] {
        let inbox = Arc::new(Recorder::default());
        let cache = Arc::new(RevocationList::default());
        let backend =
            agentgate_app::backend::redis::connect(&cfg, id, Arc::clone(&inbox) as Arc<dyn Inbox>, Arc::clone(&cache))
                .await
                .expect("connect");
        nodes.push(Node { id, backend, inbox, cache });
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    (a, b)
}

/// The contract, on two nodes of one deployment.
async fn contract(a: Node, b: Node) {
    // Live delivery goes to the holder's node; takeover returns the previous holder.
    let sid = a.backend.sessions.create(owner("alice")).await.unwrap();
    assert_eq!(a.backend.sessions.attach(&sid, Holder { node: a.id.into(), conn_id: 1 }).await.unwrap(), None);
    let previous = b.backend.sessions.attach(&sid, Holder { node: b.id.into(), conn_id: 7 }).await.unwrap();
    assert_eq!(previous, Some(Holder { node: a.id.into(), conn_id: 1 }), "takeover names the holder on the other node");
    let kick = Signal::Kick { session_id: sid.clone(), conn_id: 1, code: ErrorCode::SessionTakenOver };
    b.backend.bus.send(a.id, kick.clone()).await.unwrap();
    eventually("the takeover reaches node A", || a.inbox.signals.lock().unwrap().contains(&kick)).await;

    let first = a.backend.sessions.append(&sid, event("r_1", EventType::AgentStarted, 1)).await.unwrap();
    assert_eq!(first.seq, 1);
    eventually("the event reaches the holder's node B", || b.inbox.events.lock().unwrap().contains(&(sid.clone(), 1)))
        .await;
    assert!(a.inbox.events.lock().unwrap().is_empty(), "nothing for a node that does not hold the session");
    // A retried append of the same event is stored once; a second terminal event never.
    assert!(matches!(
        a.backend.sessions.append(&sid, event("r_1", EventType::AgentStarted, 1)).await,
        Err(StoreError::Duplicate)
    ));
    let done = a.backend.sessions.append(&sid, event("r_1", EventType::AgentCompleted, 2)).await.unwrap();
    assert_eq!(done.seq, 2);
    let again = b.backend.sessions.append(&sid, event("r_1", EventType::AgentFailed, 3)).await;
    match again {
        // Redis answers with the stored terminal event; memory with Duplicate.
        Ok(e) => assert_eq!(e.seq, 2, "the first terminal event stays the only one"),
        Err(e) => assert!(matches!(e, StoreError::Duplicate), "{e}"),
    }
    let history = b.backend.sessions.read_after(&sid, 0).await.unwrap();
    assert_eq!(history.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(history.last_seq, 2);

    // Cancel a run executing on the other node.
    let cancel = Signal::Cancel { run_id: "r_remote".into() };
    a.backend.bus.send(b.id, cancel.clone()).await.unwrap();
    eventually("the cancel reaches node B", || b.inbox.signals.lock().unwrap().contains(&cancel)).await;

    // Two concurrent takes of one ticket, on two nodes: exactly one wins.
    for i in 0..10u8 {
        let digest = [i; 32];
        let principal = agentgate_auth::Principal {
            issuer: "local".into(),
            subject: "alice".into(),
            tenant: None,
            scopes: vec![],
            via: "jwt:local".into(),
            expires_at: None,
            jti: None,
            issued_at: None,
            token_fp: "00000000".into(),
        };
        let ticket = StoredTicket { principal, origin: None, expires_at_ms: u64::MAX };
        a.backend.tickets.put(digest, ticket, Duration::from_secs(30), 64).await.unwrap();
        let (x, y) = tokio::join!(a.backend.tickets.take(digest), b.backend.tickets.take(digest));
        let wins = [x.unwrap().is_some(), y.unwrap().is_some()];
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "exactly one take wins: {wins:?}");
    }

    // A revocation made on A is seen by B.
    a.backend.revocations.add(Revoke::Jti("jti-contract".into())).await.unwrap();
    assert!(a.cache.is_revoked(Some("jti-contract"), "x", None), "at once on the revoking node");
    eventually("the revocation reaches node B", || b.cache.is_revoked(Some("jti-contract"), "x", None)).await;

    // The running-run cap holds across nodes.
    let rec = |node: &str| RunRecord {
        owner: owner("carol"),
        node: node.into(),
        session_id: sid.clone(),
        status: RunStatus::Running,
        terminal: None,
    };
    let (x, y) =
        tokio::join!(a.backend.runs.register("r_x", rec(a.id), 1), b.backend.runs.register("r_y", rec(b.id), 1));
    assert_eq!([x.unwrap(), y.unwrap()].iter().filter(|ok| **ok).count(), 1, "one run of two at cap 1");
    let (winner, node) = if a.backend.runs.get("r_x").await.unwrap().is_some() { ("r_x", &b) } else { ("r_y", &a) };
    let retention = agentgate_app::backend::Retention { ttl: Duration::from_secs(60), per_principal: 8 };
    node.backend
        .runs
        .finish(winner, RunStatus::Completed, json!({"type": "agent_completed"}), retention)
        .await
        .unwrap();
    let seen = a.backend.runs.get(winner).await.unwrap().expect("known on every node");
    assert_eq!(seen.status, RunStatus::Completed);
    assert!(b.backend.runs.register("r_z", rec(b.id), 1).await.unwrap(), "a finished run frees its place");
}

#[tokio::test]
async fn the_memory_backend_keeps_the_contract() {
    let (a, b) = memory_pair();
    contract(a, b).await;
}

#[tokio::test]
async fn the_redis_backend_keeps_the_contract() {
    let redis = redis_server();
    let (a, b) = redis_pair(&redis).await;
    contract(a, b).await;
}
