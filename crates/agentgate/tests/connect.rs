//! End-to-end tests of `agentgate connect` (CONFIG.md: the command and its exit
//! statuses; INCIDENTS.md rows 3 and 7): the real binary against a gateway started by
//! the binary itself (`agentgate serve --config`), with tokens from
//! `agentgate token mint`.
//!
//! Every test uses a fresh `AGENTGATE_HOME`, servers listen on `127.0.0.1:0` and
//! announce their port through `server.addr_file`, every spawned process is killed
//! when its guard drops, and every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest wait for a command that should finish (connect, mint).
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to write its addr file, or for an expected output line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------

/// A temporary directory with `AGENTGATE_HOME`, a config, and the addr file.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox whose config is `[server]` on `127.0.0.1:0` plus `extra` TOML.
    fn new(extra: &str) -> Self {
        let sb = Self { dir: tempfile::tempdir().expect("temp dir") };
        let addr_file = Value::String(sb.file("addr").display().to_string());
        let toml = format!("[server]\nlisten = \"127.0.0.1:0\"\naddr_file = {addr_file}\n{extra}\n");
        std::fs::write(sb.config(), toml).expect("write config");
        sb
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.file("agentgate.toml")
    }

    /// The binary with a clean environment: no inherited `AGENTGATE_*` or `RUST_LOG`.
    fn cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agentgate"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("AGENTGATE_") || k == "RUST_LOG" {
                c.env_remove(k.as_ref());
            }
        }
        c.env("AGENTGATE_HOME", self.file("home"));
        c.args(args).envs(env.iter().copied());
        c
    }

    /// `agentgate token mint --config <config> --sub alice <args>`.
    fn mint(&self, args: &[&str]) -> String {
        let config = self.config().display().to_string();
        let mut full = vec!["token", "mint", "--config", &config, "--sub", "alice"];
        full.extend_from_slice(args);
        let out = run_bounded(self.cmd(&full, &[]), None);
        assert!(out.status.success(), "mint failed: {}", describe(&out));
        String::from_utf8(out.stdout).expect("UTF-8").trim().to_owned()
    }

    /// `agentgate serve --config <config>`, once its addr file names the port.
    fn serve(&self) -> Proc {
        let config = self.config().display().to_string();
        let mut server = Proc::spawn(self.cmd(&["serve", "--config", &config], &[]), false);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(self.file("addr"))
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                assert!(addr.ip().is_loopback());
                server.addr = Some(addr);
                return server;
            }
            assert!(server.child.try_wait().expect("try_wait").is_none(), "serve exited: {}", server.stderr());
            assert!(Instant::now() < deadline, "no addr file in time: {}", server.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `agentgate connect <url> <args>` with `env`, to completion.
    fn connect(&self, url: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut full = vec!["connect", url];
        full.extend_from_slice(args);
        run_bounded(self.cmd(&full, env), stdin)
    }
}

/// Spawn, feed `stdin` (then close it), collect output; killed after [`CMD_TIMEOUT`].
fn run_bounded(mut c: Command, stdin: Option<&str>) -> Output {
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn agentgate");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CMD_TIMEOUT) {
        Ok(out) => out.expect("wait for agentgate"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("agentgate did not finish within {CMD_TIMEOUT:?}");
        }
    }
}

/// A long-running process whose output is collected as it comes; killed on drop.
struct Proc {
    child: Child,
    addr: Option<SocketAddr>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Proc {
    /// Spawn with piped output; `keep_stdin` leaves standard input open (a pipe).
    fn spawn(mut c: Command, keep_stdin: bool) -> Self {
        c.stdin(if keep_stdin { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn agentgate");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        pump(child.stdout.take().expect("stdout"), Arc::clone(&out));
        pump(child.stderr.take().expect("stderr"), Arc::clone(&err));
        Self { child, addr: None, out, err }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr.expect("an address"))
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Wait until a stdout line satisfies `pred`.
    fn wait_for_line(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.stdout().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|v| pred(&v)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no {what} line in time; stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr());
    }

    /// SIGTERM.
    fn terminate(&self) {
        let st = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(st.success());
    }

    /// Wait (bounded) for the exit status.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + CMD_TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code();
            }
            assert!(Instant::now() < deadline, "did not exit in time; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn pump(mut r: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    });
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every stdout line, each of which must be a JSON object.
fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_status(out: &Output, status: i32) {
    assert_eq!(out.status.code(), Some(status), "{}", describe(out));
}

// ---------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------

#[test]
fn completed_demo_run_exits_0_and_prints_json_lines() {
    let sb = Sandbox::new("");
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
    let sb = Sandbox::new("");
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
    let sb = Sandbox::new("");
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
    let sb = Sandbox::new("");
    let server = sb.serve();
    let token = sb.mint(&["--scope", "other"]);
    let out = sb.connect(&server.url(), &["--run", "demo"], &[("AGENTGATE_TOKEN", &token)], None);
    assert_status(&out, 4);
    assert_eq!(json_lines(&out).last().unwrap()["code"], "scope_missing");
    assert!(stderr_of(&out).contains("scope_missing"), "{}", describe(&out));
}

#[test]
fn too_many_runs_exits_5() {
    let sb = Sandbox::new("[limits]\nruns_per_principal = 1\n");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let url = server.url();
    let long =
        sb.cmd(&["connect", &url, "--run", "demo", "--input", r#"{"delay_ms":2000}"#], &[("AGENTGATE_TOKEN", &token)]);
    let first = Proc::spawn(long, false);
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
    let sb = Sandbox::new("");
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
    let sb = Sandbox::new("");
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let out = sb.connect(&url, &["--run", "demo"], &[("AGENTGATE_TOKEN", "some-token")], None);
    assert_status(&out, 6);
    assert!(stderr_of(&out).contains("network"), "{}", describe(&out));
    assert!(!stderr_of(&out).contains("some-token"));
}

#[test]
fn server_restart_exits_5() {
    let sb = Sandbox::new("");
    let server = sb.serve();
    let token = sb.mint(&[]);
    let mut conn = Proc::spawn(sb.cmd(&["connect", &server.url()], &[("AGENTGATE_TOKEN", &token)]), true);
    conn.wait_for_line("welcome", |v| v["type"] == "welcome");
    server.terminate();
    assert_eq!(conn.wait(), Some(5), "stderr: {}", conn.stderr());
    assert!(conn.stderr().contains("1012"), "{}", conn.stderr());
}

// ---------------------------------------------------------------------------------
// Without --run
// ---------------------------------------------------------------------------------

#[test]
fn stdin_lines_are_sent_and_end_of_input_exits_0() {
    let sb = Sandbox::new("");
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
    let sb = Sandbox::new("");
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
    let sb = Sandbox::new("");
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
    let sb = Sandbox::new("");
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
