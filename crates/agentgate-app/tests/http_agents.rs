//! HTTP upstream agents (PROTOCOL.md section 11) against a real local upstream: every
//! row of the contract's table, the request the upstream receives, and cancellation.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use support::*;

const AGENT_SECRET: &str = "upstream-agent-secret-0123456789abcdef";

#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<(HeaderMap, Value)>>,
}

/// The upstream's behaviour is chosen by `input.mode`.
async fn agent(State(up): State<Arc<Upstream>>, headers: HeaderMap, body: String) -> Response {
    let req: Value = serde_json::from_str(&body).unwrap();
    up.seen.lock().unwrap().push((headers, req.clone()));
    let mode = req["input"]["mode"].as_str().unwrap_or("ndjson").to_owned();
    let lines = |ls: Vec<String>| {
        let stream = futures_util::stream::iter(ls.into_iter().map(|l| Ok::<_, std::io::Error>(format!("{l}\n"))));
        Response::builder().header("content-type", "application/x-ndjson").body(Body::from_stream(stream)).unwrap()
    };
    let ev = |t: &str, d: Value| json!({"type": t, "data": d}).to_string();
    match mode.as_str() {
        "ndjson" => lines(vec![
            ev("agent_thinking", json!({"text": "hmm"})),
            ev("agent_message", json!({"text": "hi"})),
            ev("agent_completed", json!({"result": {"ok": true}})),
            ev("agent_message", json!({"text": "ignored after the terminal event"})),
        ]),
        "sse" => {
            let body = format!(
                ": a comment\nevent: x\ndata: {}\n\ndata: {}\n\n",
                ev("agent_thinking", json!({"text": "sse"})),
                ev("agent_failed", json!({"code": "model_error", "message": "boom"}))
            );
            Response::builder().header("content-type", "text/event-stream").body(Body::from(body)).unwrap()
        }
        // An event whose data is exactly server.max_message_bytes (2048) bytes, one byte
        // more, and exactly 2048 with CRLF line endings.
        "sse_exact" | "sse_over" | "sse_exact_crlf" => {
            let size = if mode == "sse_over" { 2049 } else { 2048 };
            let empty = ev("agent_completed", json!({"result": {"pad": ""}}));
            let data = ev("agent_completed", json!({"result": {"pad": "x".repeat(size - empty.len())}}));
            assert_eq!(data.len(), size);
            let nl = if mode == "sse_exact_crlf" { "\r\n" } else { "\n" };
            let body = format!("event: message{nl}data: {data}{nl}{nl}");
            Response::builder().header("content-type", "text/event-stream").body(Body::from(body)).unwrap()
        }
        "status" => (StatusCode::BAD_GATEWAY, "nope").into_response(),
        "bad_json" => lines(vec!["this is not json".into()]),
        "unknown_type" => lines(vec![ev("agent_dancing", json!({}))]),
        "started" => lines(vec![ev("agent_started", json!({"agent": "x"}))]),
        "incomplete" => lines(vec![ev("agent_message", json!({"text": "and then..."}))]),
        "long_line" => {
            lines(vec![format!("{{\"type\":\"agent_message\",\"data\":{{\"text\":\"{}\"}}}}", "x".repeat(5000))])
        }
        "silent" | "slow" => {
            let first =
                if mode == "slow" { vec![ev("agent_thinking", json!({"text": "then silence"}))] } else { vec![] };
            let stream =
                futures_util::stream::iter(first.into_iter().map(|l| Ok::<_, std::io::Error>(format!("{l}\n"))))
                    .chain(futures_util::stream::pending());
            Response::builder().header("content-type", "application/x-ndjson").body(Body::from_stream(stream)).unwrap()
        }
        "headers_late" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            lines(vec![])
        }
        other => panic!("unknown mode {other}"),
    }
}

use futures_util::StreamExt;

async fn upstream() -> (Arc<Upstream>, std::net::SocketAddr) {
    let up = Arc::new(Upstream::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/run", post(agent)).with_state(Arc::clone(&up));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (up, addr)
}

async fn gateway(url: &str) -> TestServer {
    let cfg = format!(
        "[server]\nmax_message_bytes = 2048\n[[agents]]\nname = \"research\"\nkind = \"http\"\nurl = \"{url}\"\nsecret_env = \"RESEARCH_AGENT_SECRET\"\ntimeout_s = 1\n{HS_CONFIG}"
    );
    TestServer::start(&cfg, &[("TEST_HS_SECRET", HS_SECRET), ("RESEARCH_AGENT_SECRET", AGENT_SECRET)]).await
}

async fn run(ws: &mut Ws, mode: &str) -> Vec<Value> {
    send_json(ws, json!({"type": "run.start", "ref": mode, "agent": "research", "input": {"mode": mode}})).await;
    let accepted = recv_json(ws).await;
    assert_eq!(accepted["type"], "run.accepted", "{accepted}");
    collect_run(ws, accepted["run_id"].as_str().unwrap()).await
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn failure(events: &[Value]) -> (&str, &str) {
    let last = events.last().unwrap();
    assert_eq!(last["type"], "agent_failed", "{last}");
    (last["data"]["code"].as_str().unwrap(), last["data"]["message"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn ndjson_and_sse_streams_become_events_with_exactly_one_terminal() {
    let (up, addr) = upstream().await;
    let server = gateway(&format!("http://{addr}/run")).await;
    let token = server.mint_with("alice", |r| r.tenant = Some("acme".into()));
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;

    let events = run(&mut ws, "ndjson").await;
    assert_eq!(types(&events), ["agent_started", "agent_thinking", "agent_message", "agent_completed"]);
    assert_eq!(events[0]["data"], json!({"agent": "research"}));
    assert_eq!(events[3]["data"], json!({"result": {"ok": true}}));
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], (i + 1) as u64);
        assert!(e["ts_ms"].as_u64().is_some());
    }

    let events = run(&mut ws, "sse").await;
    assert_eq!(types(&events), ["agent_started", "agent_thinking", "agent_failed"]);
    assert_eq!(events[2]["data"], json!({"code": "model_error", "message": "boom"}));

    // What the upstream received: the agent's own secret, never the user's token.
    let (headers, body) = up.seen.lock().unwrap()[0].clone();
    assert_eq!(headers["authorization"], format!("Bearer {AGENT_SECRET}"));
    assert!(!headers["authorization"].to_str().unwrap().contains(&token));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["accept"], "application/x-ndjson, text/event-stream");
    assert_eq!(body["agent"], "research");
    assert_eq!(body["input"], json!({"mode": "ndjson"}));
    assert_eq!(body["session_id"], welcome["session_id"]);
    assert!(body["run_id"].as_str().unwrap().starts_with("r_"));
    assert_eq!(body["principal"], json!({"subject": "alice", "tenant": "acme", "scopes": ["agents:run"]}));
    server.shutdown().await;
}

#[tokio::test]
async fn an_sse_event_of_exactly_max_message_bytes_is_accepted_and_one_more_byte_is_not() {
    // The limit is on the event's data, not on the `data: ` line that carries it.
    let (_up, addr) = upstream().await;
    let server = gateway(&format!("http://{addr}/run")).await;
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    for mode in ["sse_exact", "sse_exact_crlf"] {
        let events = run(&mut ws, mode).await;
        assert_eq!(types(&events), ["agent_started", "agent_completed"], "{mode}: {events:?}");
        assert_eq!(events[1]["data"]["result"]["pad"].as_str().unwrap().len(), 2048 - 55, "{mode}");
    }
    let events = run(&mut ws, "sse_over").await;
    assert_eq!(failure(&events).0, "upstream_protocol", "{events:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn every_upstream_failure_ends_the_run_with_its_code() {
    let (_up, addr) = upstream().await;
    let server = gateway(&format!("http://{addr}/run")).await;
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    let cases = [
        ("status", "upstream_error", false),
        ("bad_json", "upstream_protocol", true),
        ("unknown_type", "upstream_protocol", true),
        ("started", "upstream_protocol", true),
        ("incomplete", "upstream_incomplete", true),
        ("long_line", "upstream_protocol", true),
        ("silent", "upstream_timeout", true),
        ("slow", "upstream_timeout", true),
        ("headers_late", "upstream_timeout", false),
    ];
    for (mode, code, started) in cases {
        let events = run(&mut ws, mode).await;
        let (got, message) = failure(&events);
        assert_eq!(got, code, "mode {mode}: {events:?}");
        assert_eq!(events[0]["type"] == "agent_started", started, "mode {mode}: {events:?}");
        if mode == "status" {
            assert!(message.contains("502"), "{message}");
            assert_eq!(events.len(), 1, "a run that never got a 2xx has agent_failed as its only event");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_upstream_unreachable_and_cancel_aborts_a_stream() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = gateway(&format!("http://127.0.0.1:{port}/run")).await;
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    let events = run(&mut ws, "ndjson").await;
    assert_eq!(failure(&events).0, "upstream_unreachable");
    assert_eq!(events.len(), 1);
    server.shutdown().await;

    let (_up, addr) = upstream().await;
    let cfg = format!(
        "[[agents]]\nname = \"research\"\nkind = \"http\"\nurl = \"http://{addr}/run\"\nsecret_env = \"RESEARCH_AGENT_SECRET\"\ntimeout_s = 30\n{HS_CONFIG}"
    );
    let server =
        TestServer::start(&cfg, &[("TEST_HS_SECRET", HS_SECRET), ("RESEARCH_AGENT_SECRET", AGENT_SECRET)]).await;
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    send_json(&mut ws, json!({"type": "run.start", "ref": "s", "agent": "research", "input": {"mode": "slow"}})).await;
    let run_id = recv_json(&mut ws).await["run_id"].as_str().unwrap().to_owned();
    // Wait for the upstream's first event, then cancel.
    loop {
        let v = recv_json(&mut ws).await;
        if v["type"] == "agent_thinking" {
            break;
        }
    }
    send_json(&mut ws, json!({"type": "run.cancel", "ref": "c", "run_id": run_id})).await;
    let events = collect_run(&mut ws, &run_id).await;
    assert_eq!(events.last().unwrap()["type"], "run_cancelled");
    server.shutdown().await;
}

#[tokio::test]
async fn http_agent_config_errors_name_the_key() {
    for (cfg, key) in [
        ("[[agents]]\nname = \"a\"\nkind = \"http\"\nsecret_env = \"X\"\n", "agents[0].url"),
        ("[[agents]]\nname = \"a\"\nkind = \"http\"\nurl = \"http://127.0.0.1:1/\"\n", "agents[0].secret_env"),
        (
            "[[agents]]\nname = \"a\"\nkind = \"http\"\nurl = \"http://127.0.0.1:1/\"\nsecret_env = \"UNSET_VAR_FOR_TEST\"\n",
            "agents[0].secret_env",
        ),
        ("[[agents]]\nname = \"a\"\nkind = \"http\"\nurl = \"ftp://x\"\nsecret_env = \"X\"\n", "agents[0].url"),
        ("[[agents]]\nname = \"a\"\nkind = \"grpc\"\n", "agents[0].kind"),
    ] {
        let err = TestServer::try_start(&format!("{cfg}{HS_CONFIG}"), &[("TEST_HS_SECRET", HS_SECRET), ("X", "x")])
            .await
            .err()
            .expect(cfg);
        assert_eq!(err.key, key, "{cfg}: {err}");
    }
}
