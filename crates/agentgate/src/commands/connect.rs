//! `agentgate connect URL [--token-env VAR | --token-file F] [--ca-file F] [--run AGENT --input JSON]`.
//!
//! Every server message goes to stdout as one JSON line; diagnostics go to stderr. The
//! exit status is the class of what ended the session (CONFIG.md): 0 success, 3
//! unauthorized, 4 forbidden, 5 rate limited or unavailable, 6 network, 7 protocol,
//! 8 run failed, 64 usage. Nothing is retried: the status says what happened.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use agentgate_app::Env;
use agentgate_client::{Client, ClientError, Connection, Credential, ErrorClass, RunOutcome, ServerMessage};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{EXIT_USAGE, process_env};
use crate::cli::ConnectArgs;

/// The variable read when neither `--token-env` nor `--token-file` is given.
const DEFAULT_TOKEN_ENV: &str = "AGENTGATE_TOKEN";

/// Standard-input lines buffered ahead of the socket.
const STDIN_QUEUE: usize = 16;

pub(crate) fn run(args: ConnectArgs) -> u8 {
    let env = process_env();
    let token = match read_token(&env, &args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("agentgate connect: usage: {e}");
            return EXIT_USAGE;
        }
    };
    let run = match &args.run {
        None => None,
        Some(agent) => match parse_input(args.input.as_deref()) {
            Ok(input) => Some((agent.clone(), input)),
            Err(e) => {
                eprintln!("agentgate connect: usage: {e}");
                return EXIT_USAGE;
            }
        },
    };
    let mut client = Client::new(args.url.clone(), Credential::Header(token));
    if let Some(ca) = &args.ca_file {
        client = client.ca_file(ca);
    }
    if let Some(path) = args.token_file.clone() {
        // A rotated token file answers auth.expiring; an unchanged one is not resent.
        client = client.token_provider(move || read_file_token(&path).ok());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentgate connect: cannot start the runtime: {e}");
            return super::EXIT_FAILURE;
        }
    };
    let status = runtime.block_on(session(client, run));
    // The stdin reader may still be blocked in read(2); do not wait for it.
    runtime.shutdown_background();
    status
}

/// The token from `--token-env`, `--token-file` or `AGENTGATE_TOKEN`; never from the
/// command line. The error names every place looked.
fn read_token(env: &Env, args: &ConnectArgs) -> Result<String, String> {
    if let Some(path) = &args.token_file {
        return read_file_token(path);
    }
    let (var, how) = match &args.token_env {
        Some(var) => (var.as_str(), "named by --token-env"),
        None => (DEFAULT_TOKEN_ENV, "read when neither --token-env nor --token-file is given"),
    };
    match env.get(var).map(|t| t.trim()) {
        Some(t) if !t.is_empty() => Ok(t.to_owned()),
        Some(_) => Err(format!("no token: environment variable {var} ({how}) is empty")),
        None => Err(format!(
            "no token: environment variable {var} ({how}) is not set; a token is never taken from \
             the command line (mint one with: agentgate token mint --sub NAME)"
        )),
    }
}

fn read_file_token(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("no token: cannot read --token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("no token: --token-file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// `--input`: a JSON object, `{}` by default.
fn parse_input(input: Option<&str>) -> Result<Value, String> {
    let Some(text) = input else { return Ok(Value::Object(Default::default())) };
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("--input must be a JSON object, e.g. '{\"prompt\":\"hello\"}'".to_owned()),
        Err(e) => Err(format!("--input is not valid JSON: {e}")),
    }
}

async fn session(client: Client, run: Option<(String, Value)>) -> u8 {
    let conn = match client.connect().await {
        Ok(c) => c,
        Err(e) => return failed(&e),
    };
    print_line(conn.welcome());
    match run {
        Some((agent, input)) => run_agent(conn, &agent, input).await,
        None => relay(conn).await,
    }
}

/// `--run`: start the run, print everything until its terminal event, exit by outcome.
async fn run_agent(mut conn: Connection, agent: &str, input: Value) -> u8 {
    let mut run = match conn.run(agent, input).await {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    loop {
        match run.next().await {
            Ok(Some(m)) => print_line(&m),
            Ok(None) => break,
            Err(e) => return failed(&e),
        }
    }
    let run_id = run.run_id().unwrap_or("-").to_owned();
    let outcome = run.outcome().cloned();
    // The run is over; what else arrives is printed, and a failed close does not
    // change how the run ended.
    if let Ok(late) = conn.close().await {
        late.iter().for_each(print_line);
    }
    let Some(outcome) = outcome else {
        return failed(&ClientError::Protocol("the run ended without an outcome".into()));
    };
    let Some(class) = outcome.class() else { return 0 };
    let what = match &outcome {
        RunOutcome::Completed { .. } => String::new(),
        RunOutcome::Failed { code, message } => format!("run {run_id} ended agent_failed {code}: {message}"),
        RunOutcome::Cancelled => format!("run {run_id} ended run_cancelled"),
        RunOutcome::Refused { code, message } => format!("run.start refused: {code}: {message}"),
    };
    eprintln!("agentgate connect: {} (exit {}): {}", class, class.exit_status(), one_line(&what));
    class.exit_status()
}

/// Without `--run`: send each non-blank standard-input line as a text frame; exit when
/// the gateway closes (1000: 0) or standard input ends (close 1000, then 0).
async fn relay(mut conn: Connection) -> u8 {
    let (tx, mut lines) = mpsc::channel::<String>(STDIN_QUEUE);
    // A plain thread: a blocking read of a terminal must not hold the runtime open.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = conn.next() => match msg {
                Ok(Some(m)) => print_line(&m),
                Ok(None) => return 0,
                Err(e) => return failed(&e),
            },
            line = lines.recv(), if stdin_open => match line {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => {
                    if let Err(e) = conn.send_text(line.trim_end_matches('\r')).await {
                        return failed(&e);
                    }
                }
                None => {
                    // Close 1000, then print what is still in flight until the
                    // gateway's answer ends the loop above.
                    stdin_open = false;
                    if let Err(e) = conn.send_close().await {
                        return failed(&e);
                    }
                }
            },
        }
    }
}

/// One stderr line naming the class, status or close code, reason code, message and
/// request id; returns the exit status.
fn failed(e: &ClientError) -> u8 {
    let class: ErrorClass = e.class();
    eprintln!("agentgate connect: {} (exit {}): {}", class, class.exit_status(), one_line(&e.to_string()));
    class.exit_status()
}

/// A server message as one line on stdout (its exact text, unless that spans lines).
fn print_line(m: &ServerMessage) {
    let text =
        if m.text().contains('\n') { serde_json::to_string(m.json()).unwrap_or_default() } else { m.text().to_owned() };
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) is not this command's failure.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(token_env: Option<&str>, token_file: Option<&str>) -> ConnectArgs {
        ConnectArgs {
            url: "ws://127.0.0.1:1/v1/ws".into(),
            token_env: token_env.map(str::to_owned),
            token_file: token_file.map(PathBuf::from),
            run: None,
            input: None,
            ca_file: None,
        }
    }

    #[test]
    fn missing_tokens_name_the_place_looked() {
        let env = Env::new();
        let e = read_token(&env, &args(None, None)).unwrap_err();
        assert!(e.contains("AGENTGATE_TOKEN") && e.contains("not set"), "{e}");
        let e = read_token(&env, &args(Some("MY_TOKEN"), None)).unwrap_err();
        assert!(e.contains("MY_TOKEN") && e.contains("--token-env"), "{e}");
        let e = read_token(&env, &args(None, Some("/nonexistent/token"))).unwrap_err();
        assert!(e.contains("/nonexistent/token"), "{e}");
        let env: Env = [("AGENTGATE_TOKEN".to_owned(), " ".to_owned())].into_iter().collect();
        let e = read_token(&env, &args(None, None)).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn input_must_be_an_object() {
        assert_eq!(parse_input(None).unwrap(), serde_json::json!({}));
        assert!(parse_input(Some("[1]")).is_err());
        assert!(parse_input(Some("{")).is_err());
        assert_eq!(parse_input(Some(r#"{"a":1}"#)).unwrap()["a"], 1);
    }
}
