//! The upgrade on the raw stream (`upgrade.rs`), byte by byte over real TCP: what a
//! library client would not show (a frame sent with the request head, an upgrade on a
//! keep-alive connection after a plain request, the refusal's framing).

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

fn upgrade_head(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Read one response head (up to the blank line); the bytes after it are returned too.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8(buf).expect("utf-8 head"), rest);
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(n > 0, "the connection ended before a whole response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn welcome(ws: &mut WebSocketStream<TcpStream>) -> Value {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).expect("json"),
        other => panic!("expected the welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn the_101_and_the_welcome_arrive_and_the_accept_key_is_right() {
    let server = hs_server("").await;
    let token = server.mint("alice");
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let head =
        upgrade_head("/v1/ws", &format!("Authorization: Bearer {token}\r\nSec-WebSocket-Protocol: agentgate.v1\r\n"));
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (resp, rest) = read_head(&mut tcp).await;
    assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
    // RFC 6455 section 1.3's example key and answer.
    assert_eq!(header(&resp, "sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert_eq!(header(&resp, "sec-websocket-protocol"), Some("agentgate.v1"));
    assert!(header(&resp, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    let mut ws = WebSocketStream::from_partially_read(tcp, rest, Role::Client, None).await;
    let w = welcome(&mut ws).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["principal"]["subject"], "alice");
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_sent_with_the_request_head_is_not_lost() {
    let server = hs_server("[auth]\nfirst_message = true\n").await;
    let token = server.mint("bob");
    let auth = json!({"type": "auth", "token": token}).to_string();
    let mut frame = Frame::message(auth, OpCode::Data(Data::Text), true);
    frame.header_mut().mask = Some([7, 1, 9, 3]);
    let mut bytes = upgrade_head("/v1/ws", "").into_bytes();
    frame.format(&mut bytes).unwrap();
    // The head and the first-message auth frame in one write.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&bytes).await.unwrap();
    let (resp, rest) = read_head(&mut tcp).await;
    assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
    let mut ws = WebSocketStream::from_partially_read(tcp, rest, Role::Client, None).await;
    let w = welcome(&mut ws).await;
    assert_eq!(w["principal"]["subject"], "bob");
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_on_the_same_connection_is_served() {
    let server = hs_server("").await;
    let token = server.mint("carol");
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway.test\r\n\r\n").await.unwrap();
    let (resp, mut rest) = read_head(&mut tcp).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let len: usize = header(&resp, "content-length").expect("content-length").parse().unwrap();
    while rest.len() < len {
        let mut chunk = [0u8; 256];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(rest.len(), len, "nothing after the body");
    // The same connection, now upgraded (through hyper this time).
    tcp.write_all(upgrade_head("/v1/ws", &format!("Authorization: Bearer {token}\r\n")).as_bytes()).await.unwrap();
    let (resp, rest) = read_head(&mut tcp).await;
    assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
    assert_eq!(header(&resp, "sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let mut ws = WebSocketStream::from_partially_read(tcp, rest, Role::Client, None).await;
    assert_eq!(welcome(&mut ws).await["principal"]["subject"], "carol");
    server.shutdown().await;
}

#[tokio::test]
async fn a_refusal_on_the_raw_stream_is_a_whole_http_response_then_the_end() {
    let server = hs_server("").await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(upgrade_head("/v1/ws", "").as_bytes()).await.unwrap();
    let (resp, mut body) = read_head(&mut tcp).await;
    assert!(resp.starts_with("HTTP/1.1 401 "), "{resp}");
    assert_eq!(header(&resp, "connection"), Some("close"));
    assert!(header(&resp, "x-request-id").is_some_and(|v| v.starts_with("req_")), "{resp}");
    assert!(header(&resp, "www-authenticate").is_some_and(|v| v.contains("token_missing")), "{resp}");
    let len: usize = header(&resp, "content-length").expect("content-length").parse().unwrap();
    // Then the server ends the connection: read to the end.
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut body)).await.expect("EOF within 5 s").unwrap();
    assert_eq!(body.len(), len);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "token_missing");
    assert_eq!(Some(v["error"]["request_id"].as_str().unwrap()), header(&resp, "x-request-id"));
    server.shutdown().await;
}

/// A client's close is answered with a close frame and then the end of the stream, at
/// once: the answer is written with `MSG_MORE` and leaves with the FIN of the socket's
/// close (`Io::last_write`), so a socket left open after that write would hold it back.
#[tokio::test]
async fn a_clients_close_is_answered_then_the_stream_ends_at_once() {
    let server = hs_server("").await;
    for round in 0..20 {
        let token = server.mint(&format!("closer-{round}"));
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let head = upgrade_head(
            "/v1/ws",
            &format!("Authorization: Bearer {token}\r\nSec-WebSocket-Protocol: agentgate.v1\r\n"),
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let (resp, mut rest) = read_head(&mut tcp).await;
        assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
        // At least the header of the welcome (an unmasked text frame).
        while rest.len() < 4 {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the welcome did not arrive");
            rest.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(rest[0], 0x81, "a final text frame first");
        // A masked close frame with code 1000.
        let mask = [1u8, 2, 3, 4];
        let payload = 1000u16.to_be_bytes();
        let frame = [0x88, 0x82, mask[0], mask[1], mask[2], mask[3], payload[0] ^ mask[0], payload[1] ^ mask[1]];
        tcp.write_all(&frame).await.unwrap();
        let started = std::time::Instant::now();
        // Everything after the welcome, to the end of the stream.
        let mut after = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut after))
            .await
            .expect("the stream ends within 2 s of the client's close")
            .expect("read to the end");
        let took = started.elapsed();
        let mut all = rest;
        all.extend_from_slice(&after);
        let welcome_len = 2 + usize::from(all[1] & 0x7f);
        let welcome_len =
            if all[1] & 0x7f == 126 { 4 + usize::from(u16::from_be_bytes([all[2], all[3]])) } else { welcome_len };
        assert_eq!(&all[welcome_len..], &[0x88, 0x02, 0x03, 0xe8], "the close echoed (1000), then the end");
        assert!(took < Duration::from_secs(1), "round {round}: the close took {took:?}");
    }
    server.shutdown().await;
}
