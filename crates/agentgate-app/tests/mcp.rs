//! MCP over WebSocket (PROTOCOL.md section 7) with a real server process per
//! connection: authentication and its exact codes, byte-exact newline framing, process
//! isolation (own process, only the configured environment), and process lifecycle.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// The real interpreter, not a version-manager shim (which would add variables of
/// its own to the process environment).
fn python() -> String {
    let out = std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn config() -> String {
    let script = fixture("mcp/echo_server.py");
    format!(
        r#"
[[mcp.servers]]
name = "echo"
command = ["{}", "-u", "{}"]
env = {{ GREETING = "hello" }}

{HS_CONFIG}
"#,
        python(),
        script.display()
    )
}

async fn server() -> TestServer {
    TestServer::start(
        &config(),
        &[
            ("TEST_HS_SECRET", HS_SECRET),
            ("SECRET_OF_THE_GATEWAY", "must-not-leak"),
            ("AGENTGATE_LIMITS__HANDSHAKES_PER_IP_PER_S", "1000"),
        ],
    )
    .await
}

fn mcp_token(server: &TestServer, sub: &str) -> String {
    server.mint_with(sub, |r| r.scopes = vec!["mcp:echo".into()])
}

async fn open(server: &TestServer, token: &str) -> Ws {
    let req = request(&server.ws_url("/v1/mcp/echo"), &[("Authorization", &format!("Bearer {token}"))]);
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("upgrade");
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    ws
}

async fn call(ws: &mut Ws, request: Value) -> Value {
    ws.send(Message::Text(request.to_string().into())).await.unwrap();
    recv_json(ws).await
}

#[tokio::test]
async fn json_rpc_passes_through_unchanged_with_ids_of_any_type() {
    let server = server().await;
    let mut ws = open(&server, &mcp_token(&server, "alice")).await;
    // No welcome: the first frame is the server's answer.
    let init = call(&mut ws, json!({"jsonrpc": "2.0", "id": "init-1", "method": "initialize", "params": {}})).await;
    assert_eq!(init["id"], "init-1");
    assert_eq!(init["result"]["serverInfo"]["name"], "echo");
    for id in [json!(7), json!("seven"), json!(7.5), Value::Null] {
        let r = call(&mut ws, json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"})).await;
        assert_eq!(r["id"], id);
    }
    // A notification reaches the server and gets no answer; the next request does.
    ws.send(Message::Text(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}).to_string().into(),
    ))
    .await
    .unwrap();
    let r = call(&mut ws, json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "héllo ✓"}}})).await;
    assert_eq!(r["result"]["content"][0]["text"], "héllo ✓");
    // Byte for byte, whitespace and key order included.
    let raw = r#"{ "b" :1,"a":  [ 2 ] }"#;
    ws.send(Message::Text(format!("RAW {raw}").into())).await.unwrap();
    match tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await.unwrap() {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), raw),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn each_connection_gets_its_own_process_with_only_the_configured_environment() {
    let server = server().await;
    let mut a = open(&server, &mcp_token(&server, "alice")).await;
    let mut b = open(&server, &mcp_token(&server, "bob")).await;
    let pid = |v: Value| v["result"]["content"][0]["text"].as_str().unwrap().to_owned();
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pid"}});
    let pa = pid(call(&mut a, req.clone()).await);
    let pb = pid(call(&mut b, req).await);
    assert_ne!(pa, pb, "two users, two processes");
    let env = call(&mut a, json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "env"}})).await;
    let env: Value = serde_json::from_str(env["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    let keys: Vec<&str> = env.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(env["GREETING"], "hello");
    for k in &keys {
        assert!(["GREETING", "PATH", "HOME", "LC_CTYPE", "PWD", "SHLVL", "_"].contains(k), "unexpected variable {k}");
    }
    assert!(!env.to_string().contains("must-not-leak"));
    assert!(!env.to_string().contains(HS_SECRET));
    // Closing the connection ends the process.
    drop(a);
    let gone = async {
        for _ in 0..100 {
            if !std::path::Path::new(&format!("/proc/{pa}")).exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(gone.await, "process {pa} ended with its connection");
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_with_a_newline_is_protocol_error_and_a_server_exit_is_mcp_server_failed() {
    let server = server().await;
    let mut ws = open(&server, &mcp_token(&server, "alice")).await;
    ws.send(Message::Text("{\"jsonrpc\":\"2.0\",\n\"id\":1}".into())).await.unwrap();
    expect_close(&mut ws, 4400, "protocol_error").await;

    let mut ws = open(&server, &mcp_token(&server, "alice")).await;
    ws.send(Message::Text(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "exit"}}).to_string().into(),
    ))
    .await
    .unwrap();
    expect_close(&mut ws, 1011, "mcp_server_failed").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_closes_1011_mcp_server_failed() {
    let cfg = format!("[[mcp.servers]]\nname = \"broken\"\ncommand = [\"/nonexistent/mcp-server\"]\n{HS_CONFIG}");
    let server = TestServer::start(&cfg, HS_ENV).await;
    let token = server.mint_with("alice", |r| r.scopes = vec!["mcp:*".into()]);
    let (o, _) = connect(&server.ws_url("/v1/mcp/broken"), &[("Authorization", &format!("Bearer {token}"))]).await;
    assert!(matches!(o, Outcome::Closed { code: 1011, .. }), "{o:?}");
    assert_eq!(o.code(), "mcp_server_failed");
    server.shutdown().await;
}

#[tokio::test]
async fn mcp_handshakes_are_refused_with_exact_codes() {
    let server = server().await;
    let good = mcp_token(&server, "alice");
    let bearer = format!("Bearer {good}");
    // access_token is not a transport on MCP endpoints.
    let (o, _) = connect(&server.ws_url(&format!("/v1/mcp/echo?access_token={good}")), &[]).await;
    assert_eq!((o.status(), o.code().as_str()), (401, "token_missing"));
    let Outcome::Http { body, .. } = &o else { unreachable!() };
    assert!(body["error"]["message"].as_str().unwrap().contains("query tokens are not accepted"));
    let (o, _) = connect(&server.ws_url("/v1/mcp/nope"), &[("Authorization", &bearer)]).await;
    assert_eq!((o.status(), o.code().as_str()), (404, "mcp_server_unknown"));
    let (o, _) = connect(
        &server.ws_url("/v1/mcp/echo"),
        &[("Authorization", &bearer), ("Sec-WebSocket-Protocol", "graphql-ws")],
    )
    .await;
    assert_eq!((o.status(), o.code().as_str()), (400, "protocol_error"));
    let (o, _) =
        connect(&server.ws_url("/v1/mcp/echo"), &[("Authorization", &format!("Bearer {}", server.mint("alice")))])
            .await;
    assert_eq!((o.status(), o.code().as_str()), (403, "scope_missing"));
    let wildcard = server.mint_with("alice", |r| r.scopes = vec!["mcp:*".into()]);
    let mut ws = open(&server, &wildcard).await;
    assert_eq!(call(&mut ws, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await["id"], 1);
    let (o, _) = connect(&server.ws_url("/v1/mcp/echo"), &[("Authorization", "Bearer nonsense.token.here")]).await;
    assert_eq!((o.status(), o.code().as_str()), (401, "token_malformed"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_beside_the_mcp_subprotocol_is_accepted_and_only_mcp_is_selected() {
    let server = server().await;
    let token = mcp_token(&server, "alice");
    for entry in [format!("mcp, agentgate.bearer.{token}"), format!("mcp.auth.{token}, mcp")] {
        let req = request(&server.ws_url("/v1/mcp/echo"), &[("Sec-WebSocket-Protocol", &entry)]);
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("upgrade");
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "mcp");
        let r = call(&mut ws, json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
        assert_eq!(r["id"], 1);
    }
    server.shutdown().await;
}
