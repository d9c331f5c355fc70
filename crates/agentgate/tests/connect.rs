//! End-to-end tests of `agentgate connect` (CONFIG.md: the command and its exit
//! statuses; INCIDENTS.md rows 3 and 7): the real binary against a gateway started by
//! the binary itself (`agentgate serve --config`), with tokens from
//! `agentgate token mint`.
//!
//! Every test uses a fresh `AGENTGATE_HOME`, servers listen on `127.0.0.1:0` and
//! announce their port through `server.addr_file`, every spawned process is killed
//! when its guard drops, and every wait is bounded.

mod support;

use std::ops::Deref;
use std::process::Output;

use serde_json::Value;
use support::*;

// ---------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------

/// A [`Sandbox`] with one config, `agentgate.toml`: `[server]` on `127.0.0.1:0` plus
/// extra TOML.
struct Setup {
    sb: Sandbox,
    config: String,
}

impl Setup {
    fn new(extra: &str) -> Self {
        let sb = Sandbox::new();
        let config = sb.config("agentgate.toml", extra);
        Self { sb, config }
    }

    /// `agentgate token mint --config <config> --sub alice <args>`.
    fn mint(&self, args: &[&str]) -> String {
        let mut full = vec!["--sub", "alice"];
        full.extend_from_slice(args);
        self.sb.mint(&self.config, &full, &[])
    }

    /// `agentgate serve --config <config>`, once its addr file names the port.
    fn serve(&self) -> Server {
        self.sb.serve(&[], &self.config, &[])
    }

    /// `agentgate connect <url> <args>` with `env`, to completion.
    fn connect(&self, url: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut full = vec!["connect", url];
        full.extend_from_slice(args);
        run_bounded(self.sb.cmd(&full, env), stdin)
    }
}

impl Deref for Setup {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sb
    }
}

/// Every stdout line, each of which must be a JSON object.
fn json_lines(out: &Output) -> Vec<Value> {
    stdout_of(out)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------

#[test]
fn completed_demo_run_exits_0_and_prints_json_lines() {
    let sb = Setup::new("");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let out = sb.connect(
        &server.url(),
        &["--run", "demo", "--input", r#"{"prompt":"one two three"}"#],
        &[("AGENTGATE_TOKEN", &token)],
        None,
    );
    assert_status(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["type"], "welcome");
    assert_eq!(lines[1]["type"], "run.accepted");
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "agent_completed");
    assert_eq!(last["data"]["result"]["words"], 3);
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert!(!stderr_of(&out).contains(&token), "the token is never printed");
}

#[test]
fn token_file_and_token_env_are_read() {
    let sb = Setup::new("");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let path = sb.file("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    let file = path.display().to_string();
    let out = sb.connect(&server.url(), &["--token-file", &file, "--run", "demo"], &[], None);
    assert_status(&out, 0);
    let out = sb.connect(&server.url(), &["--token-env", "MY_TOKEN", "--run", "demo"], &[("MY_TOKEN", &token)], None);
    assert_status(&out, 0);
}

#[test]
fn failed_run_and_unknown_agent_exit_8() {
    let sb = Setup::new("");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let env = [("AGENTGATE_TOKEN", token.as_str())];
    let out = sb.connect(&server.url(), &["--run", "demo", "--input", r#"{"fail":true}"#], &env, None);
    assert_status(&out, 8);
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["type"], "agent_failed");
    assert!(stderr_of(&out).contains("demo_failure"), "{}", describe(&out));

    let out = sb.connect(&server.url(), &["--run", "no_such_agent"], &env, None);
    assert_status(&out, 8);
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["code"], "agent_unknown");
}

#[test]
fn token_without_the_scope_exits_4() {
    let sb = Setup::new("");
    let server = sb.serve();
    let token = sb.mint(&["--scope", "other"]);
    let out = sb.connect(&server.url(), &["--run", "demo"], &[("AGENTGATE_TOKEN", &token)], None);
    assert_status(&out, 4);
    assert_eq!(json_lines(&out).last().unwrap()["code"], "scope_missing");
    assert!(stderr_of(&out).contains("scope_missing"), "{}", describe(&out));
}

#[test]
fn too_many_runs_exits_5() {
    let sb = Setup::new("[limits]\nruns_per_principal = 1\n");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let url = server.url();
    let long =
        sb.cmd(&["connect", &url, "--run", "demo", "--input", r#"{"delay_ms":2000}"#], &[("AGENTGATE_TOKEN", &token)]);
    let first = Server::spawn(long, false);
    first.wait_for_line("run.accepted", |v| v["type"] == "run.accepted");
    let out = sb.connect(&url, &["--run", "demo"], &[("AGENTGATE_TOKEN", &token)], None);
    assert_status(&out, 5);
    assert_eq!(json_lines(&out).last().unwrap()["code"], "too_many_runs");
}

// ---------------------------------------------------------------------------------
// Rejections
// ---------------------------------------------------------------------------------

#[test]
fn expired_and_invalid_tokens_exit_3_naming_status_code_and_request_id() {
    let sb = Setup::new("");
    let server = sb.serve();
    let expired = sb.mint(&["--ttl", "-300"]);
    let out = sb.connect(&server.url(), &["--run", "demo"], &[("AGENTGATE_TOKEN", &expired)], None);
    assert_status(&out, 3);
    assert!(json_lines(&out).is_empty(), "no welcome");
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for part in ["unauthorized", "401", "token_expired", "req_"] {
        assert!(err.contains(part), "{part} in {err}");
    }
    assert!(!err.contains(&expired));

    let out = sb.connect(&server.url(), &[], &[("AGENTGATE_TOKEN", "staging_jwt_token_u1")], None);
    assert_status(&out, 3);
    assert!(stderr_of(&out).contains("401"), "{}", describe(&out));
}

#[test]
fn nothing_listening_exits_6() {
    let sb = Setup::new("");
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let out = sb.connect(&url, &["--run", "demo"], &[("AGENTGATE_TOKEN", "some-token")], None);
    assert_status(&out, 6);
    assert!(stderr_of(&out).contains("network"), "{}", describe(&out));
    assert!(!stderr_of(&out).contains("some-token"));
}

#[test]
fn server_restart_exits_5() {
    let sb = Setup::new("");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let mut conn = Server::spawn(sb.cmd(&["connect", &server.url()], &[("AGENTGATE_TOKEN", &token)]), true);
    conn.wait_for_line("welcome", |v| v["type"] == "welcome");
    server.signal_terminate();
    assert_eq!(conn.wait_within(CMD_TIMEOUT).code(), Some(5), "stderr: {}", conn.stderr());
    assert!(conn.stderr().contains("1012"), "{}", conn.stderr());
}

// ---------------------------------------------------------------------------------
// Without --run
// ---------------------------------------------------------------------------------

#[test]
fn stdin_lines_are_sent_and_end_of_input_exits_0() {
    let sb = Setup::new("");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let stdin = "{\"type\":\"ping\",\"ref\":\"p1\"}\n\n{\"type\":\"ping\",\"ref\":\"p2\"}\n";
    let out = sb.connect(&server.url(), &[], &[("AGENTGATE_TOKEN", &token)], Some(stdin));
    assert_status(&out, 0);
    let lines = json_lines(&out);
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["welcome", "pong", "pong"]);
    assert_eq!(lines[2]["ref"], "p2");
}

#[test]
fn a_frame_the_gateway_refuses_exits_7() {
    let sb = Setup::new("");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let out = sb.connect(&server.url(), &[], &[("AGENTGATE_TOKEN", &token)], Some("not json\n"));
    assert_status(&out, 7);
    let err = stderr_of(&out);
    assert!(err.contains("4400") && err.contains("protocol_error"), "{err}");
}

// ---------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------

#[test]
fn missing_or_empty_token_exits_64_naming_where_it_looked() {
    let sb = Setup::new("");
    let url = "ws://127.0.0.1:9/v1/ws";
    let out = sb.connect(url, &["--run", "demo"], &[], None);
    assert_status(&out, 64);
    assert!(stderr_of(&out).contains("AGENTGATE_TOKEN"), "{}", describe(&out));

    let out = sb.connect(url, &["--token-env", "NOT_SET_VAR"], &[("AGENTGATE_TOKEN", "ignored")], None);
    assert_status(&out, 64);
    assert!(stderr_of(&out).contains("NOT_SET_VAR"), "{}", describe(&out));

    let out = sb.connect(url, &[], &[("AGENTGATE_TOKEN", "")], None);
    assert_status(&out, 64);
    assert!(stderr_of(&out).contains("empty"), "{}", describe(&out));

    let empty = sb.file("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let file = empty.display().to_string();
    let out = sb.connect(url, &["--token-file", &file], &[], None);
    assert_status(&out, 64);
    assert!(stderr_of(&out).contains(&file), "{}", describe(&out));
}

#[test]
fn a_token_is_never_a_command_line_value_and_bad_input_is_64() {
    let sb = Setup::new("");
    let url = "ws://127.0.0.1:9/v1/ws";
    let out = sb.connect(url, &["--token", "abc"], &[("AGENTGATE_TOKEN", "t")], None);
    assert_status(&out, 64);
    let out = sb.connect(url, &["--run", "demo", "--input", "[1]"], &[("AGENTGATE_TOKEN", "t")], None);
    assert_status(&out, 64);
    let out = sb.connect(url, &["--input", "{}"], &[("AGENTGATE_TOKEN", "t")], None);
    assert_status(&out, 64);
    let out = sb.connect("not a url", &[], &[("AGENTGATE_TOKEN", "t")], None);
    assert_status(&out, 64);
}
