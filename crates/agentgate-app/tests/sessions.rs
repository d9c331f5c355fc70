//! Sessions through a real server and a real client (PROTOCOL.md sections 4, 5, 6 and
//! 10): resume after a disconnect at any point, truncated history, unknown, expired and
//! foreign sessions, takeover, first-message resume, slow consumers, live credential
//! expiry and refresh, heartbeats, graceful shutdown and run retention.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// `delay_ms` of the slow demo runs: long enough that a run outlives a reconnect,
/// short enough that the tests stay quick.
const DELAY_MS: u64 = 200;

/// The browser origin allowed where a test needs one.
const ORIGIN: &str = "http://app.test";

/// Events of one demo run: started, thinking, tool executing, tool completed, one
/// message, terminal.
const RUN_EVENTS: u64 = 6;

// === helpers ===

fn is_terminal(ev: &Value) -> bool {
    matches!(ev["type"].as_str(), Some("agent_completed" | "agent_failed" | "run_cancelled"))
}

fn is_event(v: &Value) -> bool {
    v.get("seq").is_some()
}

fn seq(ev: &Value) -> u64 {
    ev["seq"].as_u64().expect("event seq is an integer")
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(seq).collect()
}

/// `/v1/ws?session_id=...&last_seq=N`.
fn resume_path(session_id: &str, last_seq: u64) -> String {
    format!("/v1/ws?session_id={session_id}&last_seq={last_seq}")
}

/// The `exp` claim of a JWT.
fn token_exp(token: &str) -> i64 {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"].as_i64().expect("exp")
}

/// Start runs with `inputs` (refs `r0`, `r1`, ...) and wait for every `run.accepted`;
/// event frames that arrive meanwhile are returned too.
async fn start_runs(ws: &mut Ws, inputs: &[Value]) -> (Vec<String>, Vec<Value>) {
    for (i, input) in inputs.iter().enumerate() {
        send_json(ws, json!({"type": "run.start", "ref": format!("r{i}"), "agent": "demo", "input": input})).await;
    }
    let mut ids: Vec<Option<String>> = vec![None; inputs.len()];
    let mut events = Vec::new();
    while ids.iter().any(Option::is_none) {
        let v = recv_json(ws).await;
        if is_event(&v) {
            events.push(v);
            continue;
        }
        assert_eq!(v["type"], "run.accepted", "{v}");
        let i: usize = v["ref"].as_str().unwrap()[1..].parse().unwrap();
        ids[i] = Some(v["run_id"].as_str().unwrap().to_owned());
    }
    (ids.into_iter().map(Option::unwrap).collect(), events)
}

/// Read exactly `n` event frames (any other frame fails the test).
async fn read_events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = recv_json(ws).await;
        assert!(is_event(&v), "expected an event, got {v}");
        out.push(v);
    }
    out
}

/// Read event frames until every run of `runs` has had its terminal event, counting
/// the terminals already in `seen`.
async fn read_until_terminals(ws: &mut Ws, runs: &[String], seen: &[Value]) -> Vec<Value> {
    let mut done: HashSet<String> =
        seen.iter().filter(|e| is_terminal(e)).map(|e| e["run_id"].as_str().unwrap().to_owned()).collect();
    let mut out = Vec::new();
    while runs.iter().any(|r| !done.contains(r)) {
        let v = recv_json(ws).await;
        assert!(is_event(&v), "expected an event, got {v}");
        if is_terminal(&v) {
            done.insert(v["run_id"].as_str().unwrap().to_owned());
        }
        out.push(v);
    }
    out
}

/// Send a ping and expect the pong as the very next frame: nothing else (no replayed
/// event) is pending before it.
async fn expect_nothing_pending(ws: &mut Ws, r#ref: &str) {
    send_json(ws, json!({"type": "ping", "ref": r#ref})).await;
    let v = recv_json(ws).await;
    assert_eq!(v, json!({"type": "pong", "ref": r#ref}), "expected no pending frame before the pong");
}

/// Every event in `events` exactly once, seq contiguous from `first`.
fn assert_contiguous(events: &[Value], first: u64) {
    let got = seqs(events);
    let want: Vec<u64> = (first..first + got.len() as u64).collect();
    assert_eq!(got, want, "seqs must be contiguous from {first}, no gap, no duplicate");
}

/// Each run's events, in delivery order, have the demo shape and one terminal event.
fn assert_runs_complete(events: &[Value], runs: &[String]) {
    let mut per_run: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in events {
        per_run.entry(e["run_id"].as_str().unwrap()).or_default().push(e["type"].as_str().unwrap());
    }
    for r in runs {
        let t = per_run.get(r.as_str()).unwrap_or_else(|| panic!("no events for run {r}"));
        assert_eq!(
            t,
            &[
                "agent_started",
                "agent_thinking",
                "tool_executing",
                "tool_completed",
                "agent_message",
                "agent_completed"
            ],
            "events of run {r}"
        );
    }
}

/// The welcome of a successful resume without truncation.
fn assert_resumed(welcome: &Value, session_id: &str) {
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["session_id"], session_id);
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert!(welcome.get("resume_error").is_none(), "{welcome}");
    assert!(welcome.get("first_seq").is_none(), "{welcome}");
}

/// A new session after a failed resume.
fn assert_not_found(welcome: &Value, asked: &str) {
    assert_eq!(welcome["type"], "welcome");
    let sid = welcome["session_id"].as_str().unwrap();
    assert!(sid.starts_with("s_") && sid.len() >= 22, "{welcome}");
    assert_ne!(sid, asked, "a new session id");
    assert_eq!(welcome["resumed"], false, "{welcome}");
    assert_eq!(welcome["resume_error"], "session_not_found", "{welcome}");
    assert!(welcome.get("first_seq").is_none(), "{welcome}");
}

/// Open a WebSocket with no credential (first-message mode): no frame is awaited.
async fn connect_raw(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("upgrade");
    ws
}

// === resume after a disconnect ===

/// Start a delayed run, read `k` of its events, drop the socket, let the run go on,
/// and resume with `last_seq = k` (or without `last_seq` when `k == 0` and
/// `omit_last_seq`): exactly the missed events arrive, in order, then live ones.
async fn resume_after_reading(k: usize, omit_last_seq: bool) {
    let server = hs_server("").await;
    let token = server.mint("alice");
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "one two three", "delay_ms": DELAY_MS})]).await;
    let mut seen = early;
    if seen.len() < k {
        let more = read_events(&mut ws, k - seen.len()).await;
        seen.extend(more);
    }
    seen.truncate(k);
    assert_contiguous(&seen, 1);
    drop(ws);
    // The run goes on while nobody is attached.
    tokio::time::sleep(Duration::from_millis(DELAY_MS * 2 + 50)).await;

    let path = if omit_last_seq { format!("/v1/ws?session_id={sid}") } else { resume_path(&sid, k as u64) };
    let (welcome, mut ws) = connect_ok(&server.ws_url(&path), &token).await;
    assert_resumed(&welcome, &sid);
    let rest = if k as u64 == RUN_EVENTS { Vec::new() } else { read_until_terminals(&mut ws, &runs, &seen).await };
    assert_contiguous(&rest, k as u64 + 1);
    let all: Vec<Value> = seen.into_iter().chain(rest).collect();
    assert_contiguous(&all, 1);
    assert_eq!(all.len() as u64, RUN_EVENTS);
    assert_runs_complete(&all, &runs);
    expect_nothing_pending(&mut ws, "after").await;

    // The session goes on: a new run continues its seq.
    let (runs2, early) = start_runs(&mut ws, &[json!({"prompt": "x"})]).await;
    let mut more = early;
    more.extend(read_until_terminals(&mut ws, &runs2, &more).await);
    assert_contiguous(&more, RUN_EVENTS + 1);
    server.shutdown().await;
}

#[tokio::test]
async fn resume_after_welcome_only_replays_every_event_of_the_run() {
    resume_after_reading(0, false).await;
}

#[tokio::test]
async fn resume_without_last_seq_replays_from_the_first_event() {
    resume_after_reading(0, true).await;
}

#[tokio::test]
async fn resume_after_one_event_replays_exactly_the_missed_events_then_live_ones() {
    resume_after_reading(1, false).await;
}

#[tokio::test]
async fn resume_mid_run_replays_exactly_the_missed_events_then_live_ones() {
    resume_after_reading(3, false).await;
}

#[tokio::test]
async fn resume_after_the_terminal_event_replays_nothing_and_seq_continues() {
    resume_after_reading(RUN_EVENTS as usize, false).await;
}

#[tokio::test]
async fn a_disconnect_in_the_middle_of_a_replay_resumes_from_the_last_seq_received() {
    let server = hs_server("").await;
    let token = server.mint("alice");
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    // A slow run that is still going during both reconnects, and a fast one.
    let inputs = [json!({"prompt": "slow run", "delay_ms": 250}), json!({"prompt": "fast run"})];
    let (runs, _) = start_runs(&mut ws, &inputs).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Read only part of the replay, then drop the socket.
    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, 0)), &token).await;
    assert_resumed(&welcome, &sid);
    let part = read_events(&mut ws, 4).await;
    assert_contiguous(&part, 1);
    let last = seq(part.last().unwrap());
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, last)), &token).await;
    assert_resumed(&welcome, &sid);
    let rest = read_until_terminals(&mut ws, &runs, &part).await;
    assert_contiguous(&rest, last + 1);
    let all: Vec<Value> = part.into_iter().chain(rest).collect();
    assert_contiguous(&all, 1);
    assert_eq!(all.len() as u64, 2 * RUN_EVENTS);
    assert_runs_complete(&all, &runs);
    expect_nothing_pending(&mut ws, "end").await;
    server.shutdown().await;
}

#[tokio::test]
async fn last_seq_at_or_beyond_the_latest_seq_replays_nothing_and_live_events_continue() {
    let server = hs_server("").await;
    let token = server.mint("alice");
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "a b"})]).await;
    let mut first = early;
    first.extend(read_until_terminals(&mut ws, &runs, &first).await);
    assert_contiguous(&first, 1);
    drop(ws);

    for last in [RUN_EVENTS, RUN_EVENTS + 1, 1_000_000] {
        let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, last)), &token).await;
        assert_resumed(&welcome, &sid);
        expect_nothing_pending(&mut ws, &format!("at-{last}")).await;
    }

    // Beyond the latest seq while a run is live: nothing replayed, later live events
    // still arrive and the seq goes on from the session's latest.
    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, 1_000_000)), &token).await;
    assert_resumed(&welcome, &sid);
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "c d", "delay_ms": 100})]).await;
    let mut live = early;
    live.extend(read_until_terminals(&mut ws, &runs, &live).await);
    assert_contiguous(&live, RUN_EVENTS + 1);
    assert_runs_complete(&live, &runs);
    drop(ws);

    // Resuming beyond the latest seq during a run: the rest of the run still arrives.
    let (_, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, 2 * RUN_EVENTS)), &token).await;
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "e", "delay_ms": DELAY_MS})]).await;
    let mut seen = early;
    if seen.len() < 2 {
        let more = read_events(&mut ws, 2 - seen.len()).await;
        seen.extend(more);
    }
    drop(ws);
    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, 999)), &token).await;
    assert_resumed(&welcome, &sid);
    let rest = read_until_terminals(&mut ws, &runs, &seen).await;
    assert!(!rest.is_empty(), "live events of the run still arrive");
    let first_live = seq(&rest[0]);
    assert!(first_live > 2 * RUN_EVENTS + 2, "events up to the latest seq are not replayed");
    assert_contiguous(&rest, first_live);
    assert_eq!(seq(rest.last().unwrap()), 3 * RUN_EVENTS);
    assert!(is_terminal(rest.last().unwrap()));
    server.shutdown().await;
}

// === truncated history ===

#[tokio::test]
async fn missing_more_than_the_buffer_reports_history_truncated_and_replays_from_first_seq() {
    let server = hs_server("[sessions]\nbuffer_events = 3\n").await;
    let token = server.mint("alice");
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "x y z", "delay_ms": 50})]).await;
    let mut seen = early;
    if seen.is_empty() {
        seen = read_events(&mut ws, 1).await;
    }
    assert_eq!(seq(&seen[0]), 1);
    drop(ws);
    // The run ends while detached: 6 events, the buffer keeps seq 4, 5, 6.
    tokio::time::sleep(Duration::from_millis(600)).await;

    for last in [0, 1, 2] {
        let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, last)), &token).await;
        assert_eq!(welcome["session_id"], sid.as_str());
        assert_eq!(welcome["resumed"], true, "{welcome}");
        assert_eq!(welcome["resume_error"], "history_truncated", "{welcome}");
        assert_eq!(welcome["first_seq"], 4, "{welcome}");
        let replay = read_events(&mut ws, 3).await;
        assert_contiguous(&replay, 4);
        assert!(is_terminal(&replay[2]));
        assert_eq!(replay[2]["run_id"], runs[0].as_str());
        expect_nothing_pending(&mut ws, "t").await;
    }

    // The buffer holds every event after 3: an ordinary resume.
    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, 3)), &token).await;
    assert_resumed(&welcome, &sid);
    let replay = read_events(&mut ws, 3).await;
    assert_contiguous(&replay, 4);
    expect_nothing_pending(&mut ws, "u").await;

    // Then live events, seq continuing.
    let (runs2, early) = start_runs(&mut ws, &[json!({"prompt": "w"})]).await;
    let mut live = early;
    live.extend(read_until_terminals(&mut ws, &runs2, &live).await);
    assert_contiguous(&live, RUN_EVENTS + 1);
    server.shutdown().await;
}

// === sessions that cannot be resumed ===

#[tokio::test]
async fn resuming_an_unknown_session_gives_a_new_session_with_session_not_found() {
    let server = hs_server("").await;
    let token = server.mint("alice");
    let asked = "s_doesnotexist0000000000000000";
    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(asked, 4)), &token).await;
    assert_not_found(&welcome, asked);
    expect_nothing_pending(&mut ws, "p").await;
    // The new session's seq starts at 1.
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "a"})]).await;
    let mut events = early;
    events.extend(read_until_terminals(&mut ws, &runs, &events).await);
    assert_contiguous(&events, 1);
    drop(ws);

    // The new session is itself resumable.
    let sid = welcome["session_id"].as_str().unwrap();
    let (w2, _ws) = connect_ok(&server.ws_url(&resume_path(sid, RUN_EVENTS)), &token).await;
    assert_resumed(&w2, sid);
    server.shutdown().await;
}

#[tokio::test]
async fn resuming_after_the_resume_window_gives_a_new_session_with_session_not_found() {
    let server = hs_server("[sessions]\nresume_window_s = 1\n").await;
    let token = server.mint("alice");
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "a"})]).await;
    let mut events = early;
    events.extend(read_until_terminals(&mut ws, &runs, &events).await);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, 2)), &token).await;
    assert_not_found(&welcome, &sid);
    expect_nothing_pending(&mut ws, "p").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_session_within_its_resume_window_is_resumed() {
    let server = hs_server("[sessions]\nresume_window_s = 3\n").await;
    let token = server.mint("alice");
    let (welcome, ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (welcome, _ws) = connect_ok(&server.ws_url(&resume_path(&sid, 0)), &token).await;
    assert_resumed(&welcome, &sid);
    server.shutdown().await;
}

#[tokio::test]
async fn resuming_another_subjects_or_tenants_session_is_403_session_forbidden() {
    let server = hs_server(&format!("[server]\nallowed_origins = [\"{ORIGIN}\"]\n")).await;
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let url = server.ws_url(&resume_path(&sid, 0));

    let others = [
        ("bob", server.mint("bob")),
        ("alice of tenant t1", server.mint_with("alice", |r| r.tenant = Some("t1".into()))),
    ];
    for (who, token) in &others {
        let auth = format!("Bearer {token}");
        let (outcome, _) = connect(&url, &[("authorization", &auth)]).await;
        assert_eq!(outcome.status(), 403, "{who}: {outcome:?}");
        assert_eq!(outcome.code(), "session_forbidden", "{who}: {outcome:?}");
        if let Outcome::Http { headers, body, .. } = &outcome {
            let rid = headers.get("x-request-id").expect("X-Request-Id").to_str().unwrap();
            assert_eq!(body["error"]["request_id"], rid);
        }
        // With an Origin (a browser), the same rejection is an upgrade and a close.
        let (outcome, _) = connect(&url, &[("authorization", &auth), ("origin", ORIGIN)]).await;
        match &outcome {
            Outcome::Closed { code, .. } => assert_eq!(*code, 4403, "{who}: {outcome:?}"),
            other => panic!("{who}: expected close 4403, got {other:?}"),
        }
        assert_eq!(outcome.code(), "session_forbidden", "{who}: {outcome:?}");
    }
    // The owner's connection was not disturbed.
    expect_nothing_pending(&mut ws, "still").await;
    drop(ws);

    // A session of tenant t1 is also closed to the same subject without a tenant.
    let t1 = server.mint_with("alice", |r| r.tenant = Some("t1".into()));
    let (welcome, _ws) = connect_ok(&server.ws_url("/v1/ws"), &t1).await;
    let sid_t1 = welcome["session_id"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {}", server.mint("alice"));
    let (outcome, _) = connect(&server.ws_url(&resume_path(&sid_t1, 0)), &[("authorization", &auth)]).await;
    assert_eq!((outcome.status(), outcome.code()), (403, "session_forbidden".to_owned()), "{outcome:?}");

    // The owner can still resume.
    let (welcome, _ws2) = connect_ok(&url, &server.mint("alice")).await;
    assert_resumed(&welcome, &sid);
    server.shutdown().await;
}

// === takeover ===

#[tokio::test]
async fn resuming_on_a_second_connection_closes_the_first_4409_session_taken_over() {
    let server = hs_server("").await;
    let token = server.mint("alice");
    let (welcome, mut first) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (runs, early) = start_runs(&mut first, &[json!({"prompt": "take over", "delay_ms": DELAY_MS})]).await;
    let mut seen = early;
    if seen.len() < 2 {
        let more = read_events(&mut first, 2 - seen.len()).await;
        seen.extend(more);
    }
    seen.truncate(2);
    assert_contiguous(&seen, 1);

    let (welcome, mut second) = connect_ok(&server.ws_url(&resume_path(&sid, 2)), &token).await;
    assert_resumed(&welcome, &sid);
    expect_close(&mut first, 4409, "session_taken_over").await;

    let rest = read_until_terminals(&mut second, &runs, &seen).await;
    assert_contiguous(&rest, 3);
    let all: Vec<Value> = seen.into_iter().chain(rest).collect();
    assert_runs_complete(&all, &runs);

    // The second connection is the session's connection now.
    let (runs2, early) = start_runs(&mut second, &[json!({"prompt": "again"})]).await;
    let mut more = early;
    more.extend(read_until_terminals(&mut second, &runs2, &more).await);
    assert_contiguous(&more, RUN_EVENTS + 1);
    server.shutdown().await;
}

// === first-message auth ===

#[tokio::test]
async fn resume_through_the_first_message_auth_frame() {
    let server = hs_server("[auth]\nfirst_message = true\n").await;
    let token = server.mint("alice");
    let mut ws = connect_raw(&server.ws_url("/v1/ws")).await;
    send_json(&mut ws, json!({"type": "auth", "token": token})).await;
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["resumed"], false);
    assert!(welcome.get("resume_error").is_none(), "{welcome}");
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "first message", "delay_ms": DELAY_MS})]).await;
    let mut seen = early;
    if seen.is_empty() {
        seen = read_events(&mut ws, 1).await;
    }
    seen.truncate(1);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(DELAY_MS + 50)).await;

    // session_id and last_seq in the auth frame.
    let mut ws = connect_raw(&server.ws_url("/v1/ws")).await;
    send_json(&mut ws, json!({"type": "auth", "token": token, "session_id": sid, "last_seq": 1})).await;
    let welcome = recv_json(&mut ws).await;
    assert_resumed(&welcome, &sid);
    let part = read_events(&mut ws, 2).await;
    assert_contiguous(&part, 2);
    drop(ws);

    // Query parameters with a first-message credential.
    let mut ws = connect_raw(&server.ws_url(&resume_path(&sid, 3))).await;
    send_json(&mut ws, json!({"type": "auth", "token": token})).await;
    let welcome = recv_json(&mut ws).await;
    assert_resumed(&welcome, &sid);
    let seen3 = [seen, part].concat();
    let rest = read_until_terminals(&mut ws, &runs, &seen3).await;
    assert_contiguous(&rest, 4);
    assert_runs_complete(&[seen3, rest].concat(), &runs);
    drop(ws);

    // An unknown session in the auth frame.
    let mut ws = connect_raw(&server.ws_url("/v1/ws")).await;
    let asked = "s_unknownunknownunknown00000";
    send_json(&mut ws, json!({"type": "auth", "token": token, "session_id": asked, "last_seq": 2})).await;
    assert_not_found(&recv_json(&mut ws).await, asked);
    drop(ws);

    // Another subject's session in the auth frame: closed 4403 session_forbidden.
    let mut ws = connect_raw(&server.ws_url("/v1/ws")).await;
    send_json(&mut ws, json!({"type": "auth", "token": server.mint("bob"), "session_id": sid, "last_seq": 0})).await;
    expect_close(&mut ws, 4403, "session_forbidden").await;
    server.shutdown().await;
}

// === slow consumer ===

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_1013_slow_consumer_and_resumes_without_loss() {
    // Many concurrent runs whose `tool_executing` event carries a large prompt: once
    // the kernel's socket buffers are full, the next 256 events fill the connection's
    // queue. The prompts go out before any large event comes back (delay 1 s). The
    // buffer is made large enough in bytes for every event, so the resume is lossless.
    const RUNS: usize = 200;
    let server = hs_server(&format!(
        "[limits]\nruns_per_principal = {RUNS}\nmessages_per_s = 1000\n[sessions]\nbuffer_events = 4096\nbuffer_bytes = 67108864\n"
    ))
    .await;
    let token = server.mint("alice");
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let prompt = "word ".repeat(64 * 1024 / 5);
    for i in 0..RUNS {
        let frame = json!({"type": "run.start", "ref": format!("r{i}"), "agent": "demo",
            "input": {"prompt": prompt, "delay_ms": 1000}});
        tokio::time::timeout(STEP, send_json(&mut ws, frame)).await.expect("run.start sent in time");
    }
    // Do not read while the runs produce their events.
    tokio::time::sleep(Duration::from_millis(7000)).await;

    let mut runs = Vec::new();
    let mut events = Vec::new();
    let closed = loop {
        match next_frame(&mut ws).await {
            Frame::Text(v) if is_event(&v) => events.push(v),
            Frame::Text(v) => {
                assert_eq!(v["type"], "run.accepted", "{v}");
                runs.push(v["run_id"].as_str().unwrap().to_owned());
            }
            Frame::Close(code, reason) => break (code, reason),
            Frame::End => panic!("connection ended without a close frame"),
        }
        if !runs.is_empty() && runs.len() == RUNS && events.len() == RUNS * RUN_EVENTS as usize {
            panic!("every event was delivered: the consumer was never found slow");
        }
    };
    assert_eq!(closed, (1013, r#"{"code":"slow_consumer"}"#.to_owned()));
    assert!(!runs.is_empty());
    assert_contiguous(&events, 1);
    let last = events.last().map_or(0, seq);
    drop(ws);

    // Resume with the last seq received: nothing is lost.
    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, last)), &token).await;
    assert_resumed(&welcome, &sid);
    let rest = read_until_terminals(&mut ws, &runs, &events).await;
    assert_contiguous(&rest, last + 1);
    let all: Vec<Value> = events.into_iter().chain(rest).collect();
    assert_eq!(all.len(), runs.len() * RUN_EVENTS as usize);
    assert_runs_complete(&all, &runs);
    expect_nothing_pending(&mut ws, "done").await;
    server.shutdown().await;
}

// === live credential expiry ===

const EXPIRY_CONFIG: &str = "[auth]\nleeway_s = 0\nexpiry_warning_s = 2\n";

#[tokio::test]
async fn an_expiring_token_is_warned_once_then_closed_4401_token_expired() {
    let server = hs_server(EXPIRY_CONFIG).await;
    let token = server.mint_with("alice", |r| r.ttl_s = 3);
    let exp = token_exp(&token);
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    assert_eq!(welcome["expires_at"], exp);

    let mut warnings = 0;
    loop {
        match next_frame(&mut ws).await {
            Frame::Text(v) => {
                assert_eq!(v, json!({"type": "auth.expiring", "expires_at": exp}));
                assert!(now() >= exp - 2, "warned at {} before expires_at - expiry_warning_s", now());
                assert!(now() < exp, "warned at {}, not before expires_at", now());
                warnings += 1;
            }
            Frame::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (4401, r#"{"code":"token_expired"}"#));
                assert!(now() >= exp, "closed at {} before expires_at + leeway_s", now());
                assert!(now() <= exp + 3, "closed at {}, long after expires_at + leeway_s", now());
                break;
            }
            Frame::End => panic!("no close frame"),
        }
    }
    assert_eq!(warnings, 1, "auth.expiring is sent once per credential");
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_expiring_within_the_warning_window_is_warned_at_connect() {
    let server = hs_server("[auth]\nleeway_s = 0\nexpiry_warning_s = 60\n").await;
    let token = server.mint_with("alice", |r| r.ttl_s = 30);
    let exp = token_exp(&token);
    let started = Instant::now();
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v, json!({"type": "auth.expiring", "expires_at": exp}));
    assert!(started.elapsed() < Duration::from_secs(2), "warned at connect time");
    expect_nothing_pending(&mut ws, "once").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_live_connection_is_closed_only_after_expires_at_plus_leeway_s() {
    let server = hs_server("[auth]\nleeway_s = 2\nexpiry_warning_s = 1\n").await;
    let token = server.mint_with("alice", |r| r.ttl_s = 2);
    let exp = token_exp(&token);
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    assert_eq!(recv_json(&mut ws).await, json!({"type": "auth.expiring", "expires_at": exp}));
    // Past expires_at, within the leeway: still served.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_nothing_pending(&mut ws, "in-leeway").await;
    match next_frame(&mut ws).await {
        Frame::Close(code, reason) => {
            assert_eq!((code, reason.as_str()), (4401, r#"{"code":"token_expired"}"#));
            assert!(now() >= exp + 2, "closed at {} before expires_at + leeway_s = {}", now(), exp + 2);
        }
        other => panic!("expected close 4401 token_expired, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn auth_refresh_extends_the_connection_and_the_new_credential_gets_its_own_warning() {
    let server = hs_server(EXPIRY_CONFIG).await;
    let token = server.mint_with("alice", |r| r.ttl_s = 3);
    let exp1 = token_exp(&token);
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    assert_eq!(recv_json(&mut ws).await, json!({"type": "auth.expiring", "expires_at": exp1}));

    let fresh = server.mint_with("alice", |r| r.ttl_s = 6);
    let exp2 = token_exp(&fresh);
    assert!(exp2 >= exp1 + 3);
    send_json(&mut ws, json!({"type": "auth.refresh", "token": fresh})).await;
    assert_eq!(recv_json(&mut ws).await, json!({"type": "auth.refreshed", "expires_at": exp2}));

    // Past the old credential's expiry (plus the server's rounding), still served.
    let mut warnings2 = 0;
    while now() < exp1 + 2 {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v, json!({"type": "auth.expiring", "expires_at": exp2}));
                warnings2 += 1;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("connection ended at the old expiry: {other:?}"),
        }
    }
    send_json(&mut ws, json!({"type": "ping", "ref": "alive"})).await;
    let closed = loop {
        match next_frame(&mut ws).await {
            Frame::Text(v) if v["type"] == "pong" => assert_eq!(v["ref"], "alive"),
            Frame::Text(v) => {
                assert_eq!(v, json!({"type": "auth.expiring", "expires_at": exp2}));
                assert!(now() >= exp2 - 2);
                warnings2 += 1;
            }
            Frame::Close(code, reason) => break (code, reason),
            Frame::End => panic!("no close frame"),
        }
    };
    assert_eq!(warnings2, 1, "the refreshed credential is warned once");
    assert_eq!(closed, (4401, r#"{"code":"token_expired"}"#.to_owned()));
    assert!(now() >= exp2, "closed only once the new credential expired");
    server.shutdown().await;
}

#[tokio::test]
async fn auth_refresh_with_another_subject_or_tenant_closes_4403_principal_mismatch() {
    let server = hs_server("").await;
    let others = [server.mint("bob"), server.mint_with("alice", |r| r.tenant = Some("t1".into()))];
    for other in others {
        let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
        send_json(&mut ws, json!({"type": "auth.refresh", "token": other})).await;
        expect_close(&mut ws, 4403, "principal_mismatch").await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn auth_refresh_with_an_invalid_token_closes_4401_with_its_code() {
    let server = hs_server("").await;
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 600);
    expired["iat"] = json!(now() - 1200);
    let cases = [
        (json!({"type": "auth.refresh", "token": sign_hs(&header, &expired, HS_SECRET.as_bytes())}), "token_expired"),
        (
            json!({"type": "auth.refresh", "token": sign_hs(&header, &claims("alice"), b"another-secret-0123456789abcdef01")}),
            "signature_invalid",
        ),
        (json!({"type": "auth.refresh", "token": ""}), "token_missing"),
        (json!({"type": "auth.refresh"}), "token_missing"),
        (json!({"type": "auth.refresh", "token": 5}), "token_missing"),
    ];
    for (frame, code) in cases {
        let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
        send_json(&mut ws, frame.clone()).await;
        match next_frame(&mut ws).await {
            Frame::Close(c, reason) => {
                assert_eq!(c, 4401, "{frame}");
                assert_eq!(serde_json::from_str::<Value>(&reason).unwrap(), json!({"code": code}), "{frame}");
            }
            other => panic!("{frame}: expected close 4401 {code}, got {other:?}"),
        }
    }
    server.shutdown().await;
}

// === heartbeat ===

#[tokio::test]
async fn the_server_sends_websocket_pings_every_heartbeat_ms() {
    let server = hs_server("[server]\nheartbeat_ms = 200\n").await;
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    assert_eq!(welcome["heartbeat_ms"], 200);
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("a ping in time");
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // Answered pings keep the connection alive.
    expect_nothing_pending(&mut ws, "hb").await;
    server.shutdown().await;
}

// === graceful shutdown ===

#[tokio::test]
async fn shutdown_closes_connections_1012_server_restart_within_the_grace() {
    let server = hs_server("[server]\nshutdown_grace_s = 2\n").await;
    let token = server.mint("alice");
    let (_, mut reading) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let (runs, _) = start_runs(&mut reading, &[json!({"prompt": "long", "delay_ms": 1000})]).await;
    assert_eq!(runs.len(), 1);
    // A second client that never reads: its close handshake never completes.
    let (_, mut idle) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("bob")).await;

    // The first client reads (and so answers the close) until its stream ends.
    let reader = tokio::spawn(async move {
        let mut close = None;
        loop {
            match tokio::time::timeout(STEP, reading.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    close = Some((u16::from(f.code), f.reason.to_string(), Instant::now()));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return close,
            }
        }
    });
    let started = Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(2500), "shutdown took {took:?}, grace is 2 s");
    let (code, reason, at) = tokio::time::timeout(STEP, reader).await.unwrap().unwrap().expect("a close frame");
    assert_eq!((code, reason.as_str()), (1012, r#"{"code":"server_restart"}"#));
    assert!(at.duration_since(started) < Duration::from_secs(1), "closed at once, not after {:?}", at - started);
    expect_close(&mut idle, 1012, "server_restart").await;
}

// === run retention ===

#[tokio::test]
async fn run_get_knows_a_finished_run_until_retention_s_then_run_not_found() {
    let server = hs_server("[runs]\nretention_s = 1\n").await;
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    let (runs, early) = start_runs(&mut ws, &[json!({"prompt": "keep me"})]).await;
    let mut events = early;
    events.extend(read_until_terminals(&mut ws, &runs, &events).await);
    let terminal = events.last().unwrap().clone();
    assert!(is_terminal(&terminal));

    send_json(&mut ws, json!({"type": "run.get", "ref": "g1", "run_id": runs[0]})).await;
    let state = recv_json(&mut ws).await;
    assert_eq!(state["type"], "run.state");
    assert_eq!(state["ref"], "g1");
    assert_eq!(state["run_id"], runs[0].as_str());
    assert_eq!(state["status"], "completed");
    assert_eq!(state["terminal"], terminal);

    tokio::time::sleep(Duration::from_millis(2000)).await;
    send_json(&mut ws, json!({"type": "run.get", "ref": "g2", "run_id": runs[0]})).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("run_not_found"), Some("g2")),
        "{e}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn run_get_after_a_resume_reports_runs_that_ended_while_detached() {
    let server = hs_server("[sessions]\nbuffer_events = 2\n").await;
    let token = server.mint("alice");
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    let sid = welcome["session_id"].as_str().unwrap().to_owned();
    let (runs, _) =
        start_runs(&mut ws, &[json!({"prompt": "a", "delay_ms": 20}), json!({"prompt": "b", "fail": true})]).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (welcome, mut ws) = connect_ok(&server.ws_url(&resume_path(&sid, 0)), &token).await;
    assert_eq!(welcome["resume_error"], "history_truncated");
    let _replay = read_events(&mut ws, 2).await;
    let mut statuses = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        send_json(&mut ws, json!({"type": "run.get", "ref": format!("g{i}"), "run_id": r})).await;
        let state = recv_json(&mut ws).await;
        assert_eq!(state["type"], "run.state", "{state}");
        assert_eq!(state["terminal"]["run_id"], r.as_str());
        statuses.insert(i, state["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses.into_values().collect::<Vec<_>>(), ["completed", "failed"]);
    server.shutdown().await;
}

/// A peer that completes the handshake and then goes silent (never answers pings) is
/// dropped after three heartbeats, and its session is left detached, ready to resume.
#[tokio::test]
async fn a_silent_peer_is_dropped_after_three_heartbeats_and_its_session_resumes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = hs_server("[server]\nheartbeat_ms = 100\n").await;
    let token = server.mint("alice");
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n\r\n",
        server.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Read (and never answer) until the server hangs up.
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the server dropped the silent peer within 5 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= std::time::Duration::from_millis(250), "dropped too early: {elapsed:?}");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let start = text.find("{\"type\":\"welcome\"").expect("a welcome frame");
    let end = start
        + text[start..].find("\"heartbeat_ms\":100}").expect("end of the welcome")
        + "\"heartbeat_ms\":100}".len();
    let welcome: serde_json::Value = serde_json::from_str(&text[start..end]).unwrap();
    // Pings were sent (opcode 0x89) before the drop.
    assert!(seen.contains(&0x89), "the server pinged the peer");
    let sid = welcome["session_id"].as_str().unwrap();
    let (resumed, _ws) = connect_ok(&server.ws_url(&format!("/v1/ws?session_id={sid}&last_seq=0")), &token).await;
    assert_eq!(resumed["resumed"], true);
    server.shutdown().await;
}
