//! A real browser (headless Chromium) against the real gateway: a page on another origin
//! sees exact close codes and reasons for refused handshakes (`failure_mode = "auto"`
//! upgrades and closes, since browsers cannot read handshake statuses), authenticates
//! with the bearer subprotocol, and fetches and uses a one-time ticket through CORS.

mod support;

use std::path::PathBuf;

use axum::Router;
use axum::response::Html;
use axum::routing::{get, post};
use serde_json::Value;
use support::*;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[tokio::test]
async fn a_browser_page_sees_close_codes_and_uses_subprotocols_and_tickets() {
    let Some(browser) = chromium() else {
        panic!(
            "no chromium on this machine, so this test cannot run (a missing peer is a failure, never a skip); \
             install it: apt-get install chromium (as .ci/run does)"
        );
    };
    // The page's own origin; it posts its results back to `/results`.
    let page = std::fs::read_to_string(fixture("browser/page.html")).unwrap();
    let (results_tx, mut results_rx) = tokio::sync::mpsc::channel::<String>(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(move || async move { Html(page.clone()) })).route(
        "/results",
        post(move |body: String| async move {
            let _ = results_tx.send(body).await;
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let server = hs_server(&format!("[server]\nallowed_origins = [\"http://{page_addr}\"]\n")).await;
    let token = server.mint("alice");
    let url = format!("http://{page_addr}/?gw={}&token={token}", server.addr);
    let profile = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let text = tokio::time::timeout(std::time::Duration::from_secs(60), results_rx.recv())
        .await
        .expect("the page reported its results within 60 s")
        .unwrap();
    let _ = child.kill().await;
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("page results: {text}"));

    // Refusals reach page script as close codes with a JSON reason.
    assert_eq!(r["bad_token"]["code"], 4401, "{r}");
    assert_eq!(r["bad_token"]["reason"], r#"{"code":"token_malformed"}"#);
    assert_eq!(r["no_token"]["code"], 4401);
    assert_eq!(r["no_token"]["reason"], r#"{"code":"token_missing"}"#);
    // The bearer subprotocol works, and only agentgate.v1 is selected.
    assert_eq!(r["subprotocol"]["protocol"], "agentgate.v1");
    assert_eq!(r["subprotocol"]["first"]["type"], "welcome");
    assert_eq!(r["subprotocol"]["first"]["principal"]["subject"], "alice");
    // A ticket fetched through CORS connects once.
    assert_eq!(r["ticket_status"], 201, "{r}");
    assert_eq!(r["ticket"]["first"]["principal"]["via"], "ticket:jwt:local");
    assert_eq!(r["ticket_reused"]["code"], 4401);
    assert_eq!(r["ticket_reused"]["reason"], r#"{"code":"ticket_invalid"}"#);
    server.shutdown().await;
}
