//! Run the built-in demo agent and print its events.
//!
//! ```sh
//! agentgate serve &                                   # development defaults, 127.0.0.1:8079
//! export AGENTGATE_TOKEN="$(agentgate token mint --sub alice)"
//! cargo run -p agentgate-client --example run_demo
//! ```

use std::process::ExitCode;

use agentgate_client::{Client, Credential, RunOutcome};
use serde_json::json;

const URL: &str = "ws://127.0.0.1:8079/v1/ws";

#[tokio::main]
async fn main() -> ExitCode {
    let token = match std::env::var("AGENTGATE_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            eprintln!("run_demo: set AGENTGATE_TOKEN (agentgate token mint --sub alice)");
            return ExitCode::from(64);
        }
    };
    let client = Client::new(URL, Credential::Header(token));
    let mut conn = match client.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("run_demo: {} (exit {}): {e}", e.class(), e.class().exit_status());
            return ExitCode::from(e.class().exit_status());
        }
    };
    println!("{}", conn.welcome());
    let input = json!({"prompt": "count the words of this prompt", "delay_ms": 200});
    let mut run = match conn.run("demo", input).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("run_demo: {e}");
            return ExitCode::from(e.class().exit_status());
        }
    };
    loop {
        match run.next_event().await {
            Ok(Some(event)) => println!("{event}"),
            Ok(None) => break,
            Err(e) => {
                eprintln!("run_demo: {e}");
                return ExitCode::from(e.class().exit_status());
            }
        }
    }
    match run.outcome() {
        Some(RunOutcome::Completed { result }) => {
            eprintln!("run_demo: completed: {result}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("run_demo: {other:?}");
            ExitCode::from(other.class().map_or(1, |c| c.exit_status()))
        }
        None => ExitCode::FAILURE,
    }
}
