//! The demo agent and the run messages through a real server and client:
//! event order, `seq`, `run.get`, `run.cancel`, limits and error replies.

mod support;

use serde_json::{Value, json};
use support::*;

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn demo_run_emits_events_in_order_with_contiguous_seq() {
    let server = hs_server("").await;
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["protocol"], "agentgate.v1");
    assert_eq!(welcome["resumed"], false);
    assert!(welcome.get("resume_error").is_none());
    assert!(welcome["session_id"].as_str().unwrap().starts_with("s_"));
    assert!(welcome["session_id"].as_str().unwrap().len() >= 22);
    assert_eq!(welcome["principal"]["subject"], "alice");
    assert_eq!(welcome["principal"]["tenant"], Value::Null);
    assert_eq!(welcome["principal"]["scopes"], json!(["agents:run"]));
    assert_eq!(welcome["principal"]["via"], "jwt:local");
    assert!(welcome["expires_at"].as_i64().unwrap() > now());
    assert_eq!(welcome["heartbeat_ms"], 25000);

    let run_id = start_demo(&mut ws, "c1", json!({"prompt": "the quick brown fox"})).await;
    assert!(run_id.starts_with("r_"));
    let events = collect_run(&mut ws, &run_id).await;
    let t = types(&events);
    assert_eq!(&t[..4], ["agent_started", "agent_thinking", "tool_executing", "tool_completed"]);
    assert_eq!(t.last(), Some(&"agent_completed"));
    assert!(t[4..t.len() - 1].iter().all(|x| *x == "agent_message") && t.len() >= 6);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], (i + 1) as u64, "seq grows by one from 1");
        assert!(e["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    assert_eq!(events[0]["data"], json!({"agent": "demo"}));
    assert_eq!(events[2]["data"]["tool"], "word_count");
    assert_eq!(events[2]["data"]["arguments"], json!({"text": "the quick brown fox"}));
    assert_eq!(events[3]["data"]["result"], json!({"words": 4}));
    assert_eq!(events.last().unwrap()["data"], json!({"result": {"words": 4}}));

    // A second run continues the session's seq.
    let run2 = start_demo(&mut ws, "c2", json!({"prompt": "one", "fail": true})).await;
    let events2 = collect_run(&mut ws, &run2).await;
    assert_eq!(events2[0]["seq"], events.len() as u64 + 1);
    let last = events2.last().unwrap();
    assert_eq!(last["type"], "agent_failed");
    assert_eq!(last["data"]["code"], "demo_failure");

    send_json(&mut ws, json!({"type": "run.get", "ref": "g", "run_id": run_id})).await;
    let state = recv_json(&mut ws).await;
    assert_eq!(state["type"], "run.state");
    assert_eq!(state["ref"], "g");
    assert_eq!(state["status"], "completed");
    assert_eq!(state["terminal"], *events.last().unwrap());
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_ends_a_run_with_run_cancelled_and_unknown_runs_are_not_found() {
    let server = hs_server("").await;
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    let run_id = start_demo(&mut ws, "c1", json!({"prompt": "slow", "delay_ms": 2000})).await;
    send_json(&mut ws, json!({"type": "run.get", "ref": "g1", "run_id": run_id})).await;
    loop {
        let v = recv_json(&mut ws).await;
        if v["type"] == "run.state" {
            assert_eq!(v["status"], "running");
            assert_eq!(v["terminal"], Value::Null);
            break;
        }
    }
    send_json(&mut ws, json!({"type": "run.cancel", "ref": "c2", "run_id": run_id})).await;
    let events = collect_run(&mut ws, &run_id).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "run_cancelled");
    assert_eq!(last["data"], json!({}));
    send_json(&mut ws, json!({"type": "run.cancel", "ref": "c3", "run_id": run_id})).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("run_not_found"), Some("c3"))
    );
    send_json(&mut ws, json!({"type": "run.get", "ref": "c4", "run_id": "r_unknown000000000000000"})).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(e["code"], "run_not_found");

    // Another principal cannot see or cancel the run.
    let (_, mut other) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("bob")).await;
    send_json(&mut other, json!({"type": "run.get", "ref": "x", "run_id": run_id})).await;
    assert_eq!(recv_json(&mut other).await["code"], "run_not_found");
    server.shutdown().await;
}

#[tokio::test]
async fn run_start_errors_are_replies_and_the_connection_stays() {
    let server = hs_server("[limits]\nruns_per_principal = 1\n").await;
    let token = server.mint_with("alice", |r| r.scopes = vec!["other".into()]);
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &token).await;
    send_json(&mut ws, json!({"type": "run.start", "ref": "a", "agent": "demo", "input": {"prompt": "x"}})).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("scope_missing"), Some("a"))
    );
    send_json(&mut ws, json!({"type": "run.start", "ref": "b", "agent": "nope"})).await;
    assert_eq!(recv_json(&mut ws).await["code"], "agent_unknown");

    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    for bad in [json!({"prompt": 5}), json!({"prompt": "x", "delay_ms": 5001}), json!({"prompt": "x", "fail": "no"})] {
        send_json(&mut ws, json!({"type": "run.start", "ref": "p", "agent": "demo", "input": bad})).await;
        let e = recv_json(&mut ws).await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("protocol_error")), "{e}");
    }
    let run_id = start_demo(&mut ws, "r1", json!({"prompt": "x", "delay_ms": 1000})).await;
    send_json(&mut ws, json!({"type": "run.start", "ref": "r2", "agent": "demo", "input": {"prompt": "y"}})).await;
    loop {
        let v = recv_json(&mut ws).await;
        if v["type"] == "error" {
            assert_eq!(v["code"], "too_many_runs");
            assert_eq!(v["ref"], "r2");
            break;
        }
    }
    send_json(&mut ws, json!({"type": "ping", "ref": "still-here"})).await;
    loop {
        let v = recv_json(&mut ws).await;
        if v["type"] == "pong" {
            assert_eq!(v["ref"], "still-here");
            break;
        }
    }
    let _ = collect_run(&mut ws, &run_id).await;
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_close_with_protocol_error() {
    let server = hs_server("").await;
    let frames = [
        "not json".to_owned(),
        json!({"type": "nope"}).to_string(),
        json!({"type": "run.start"}).to_string(),
        json!({"type": "run.start", "agent": "demo", "input": "text"}).to_string(),
        json!({"type": "run.cancel"}).to_string(),
        json!({"type": "auth", "token": "x"}).to_string(),
    ];
    for frame in frames {
        let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
        use futures_util::SinkExt;
        ws.send(tokio_tungstenite::tungstenite::Message::Text(frame.clone().into())).await.unwrap();
        expect_close(&mut ws, 4400, "protocol_error").await;
    }
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(vec![1u8, 2, 3].into())).await.unwrap();
    expect_close(&mut ws, 4400, "protocol_error").await;
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_closes_1009_and_message_flood_closes_4429() {
    let server = hs_server("[server]\nmax_message_bytes = 1024\n[limits]\nmessages_per_s = 5\n").await;
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    send_json(&mut ws, json!({"type": "ping", "ref": "x".repeat(2000)})).await;
    expect_close(&mut ws, 1009, "message_too_large").await;

    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    for i in 0..40 {
        send_json(&mut ws, json!({"type": "ping", "ref": i})).await;
    }
    loop {
        match next_frame(&mut ws).await {
            Frame::Text(v) => assert_eq!(v["type"], "pong"),
            Frame::Close(code, reason) => {
                assert_eq!(code, 4429);
                assert_eq!(reason, r#"{"code":"rate_limited"}"#);
                break;
            }
            Frame::End => panic!("no close frame"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let server = hs_server("").await;
    let (_, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame { code: 1000.into(), reason: "bye".into() },
    )))
    .await
    .unwrap();
    match next_frame(&mut ws).await {
        Frame::Close(code, _) => assert_eq!(code, 1000),
        other => panic!("expected the server's answering close frame, got {other:?}"),
    }
    server.shutdown().await;
}
