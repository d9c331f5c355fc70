//! `/metrics` in Prometheus text format, on the main listener unless
//! `server.metrics_listen` moves it.

mod support;

use serde_json::json;
use support::*;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

async fn scrape(server: &TestServer) -> String {
    let r = http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    String::from_utf8(r.body).unwrap()
}

#[tokio::test]
async fn metrics_count_handshakes_failures_events_runs_and_connections() {
    let server = hs_server("").await;
    let before = scrape(&server).await;
    for name in [
        "agentgate_connections_active",
        "agentgate_handshakes_total{outcome=\"accepted\"}",
        "agentgate_handshakes_total{outcome=\"rejected\"}",
        "agentgate_events_sent_total",
        "agentgate_runs_active",
        "agentgate_sessions_resumed_total",
    ] {
        value(&before, name);
    }
    let (o, _) = connect(&server.ws_url("/v1/ws"), &[("Authorization", "Bearer s_AAAAAAAAAAAAAAAAAAAAAA")]).await;
    assert_eq!(o.code(), "token_malformed");
    let (welcome, mut ws) = connect_ok(&server.ws_url("/v1/ws"), &server.mint("alice")).await;
    let run = start_demo(&mut ws, "m", json!({"prompt": "a b c"})).await;
    let events = collect_run(&mut ws, &run).await;
    drop(ws);
    let sid = welcome["session_id"].as_str().unwrap();
    let (resumed, _ws) =
        connect_ok(&server.ws_url(&format!("/v1/ws?session_id={sid}&last_seq=0")), &server.mint("alice")).await;
    assert_eq!(resumed["resumed"], true);

    let after = scrape(&server).await;
    let d = |s: &str| value(&after, s) - value(&before, s);
    assert!(d("agentgate_handshakes_total{outcome=\"accepted\"}") >= 2.0);
    assert!(d("agentgate_handshakes_total{outcome=\"rejected\"}") >= 1.0);
    assert!(value(&after, "agentgate_auth_failures_total{code=\"token_malformed\"}") >= 1.0);
    // The live events, then all of them again on the replay.
    assert!(d("agentgate_events_sent_total") >= 2.0 * events.len() as f64);
    assert!(d("agentgate_sessions_resumed_total") >= 1.0);
    assert!(value(&after, "agentgate_connections_active") >= 1.0);
    // Latency histograms: Prometheus histograms with buckets, counts and sums.
    assert!(value(&after, "agentgate_handshake_duration_seconds_count{outcome=\"accepted\"}") >= 2.0, "{after}");
    assert!(value(&after, "agentgate_handshake_duration_seconds_count{outcome=\"rejected\"}") >= 1.0, "{after}");
    assert!(
        after.contains("agentgate_handshake_duration_seconds_bucket{outcome=\"accepted\",le=\"0.005\"}"),
        "{after}"
    );
    assert!(value(&after, "agentgate_event_delivery_seconds_count") >= events.len() as f64, "{after}");
    assert!(value(&after, "agentgate_event_delivery_seconds_bucket{le=\"+Inf\"}") >= events.len() as f64);
    assert!(after.contains("# TYPE agentgate_event_delivery_seconds histogram"), "{after}");
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_listen_moves_metrics_off_the_main_listener() {
    let server = hs_server("[server]\nmetrics_listen = \"127.0.0.1:0\"\n").await;
    let r = http(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 404);
    server.shutdown().await;
}
