//! Helpers shared by the binary's end-to-end tests (`tests/cli.rs`, `tests/connect.rs`,
//! `tests/doctor.rs`, `tests/incidents.rs`): a sandbox with its own
//! `AGENTGATE_HOME`, the real binary with a clean environment, `agentgate serve` on
//! `127.0.0.1:0` announced through `server.addr_file`, a real `redis-server`, bounded
//! waits, and a raw WebSocket client that shows exactly what the gateway answered.
//!
//! Every spawned process is killed when its guard drops; every wait is bounded.

// Each test file uses a different subset.
#![allow(dead_code)]

pub(crate) mod pki;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Longest wait for a command that should finish (mint, doctor, connect).
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to write its addr file, or for an expected output line.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a server to exit after SIGTERM.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for one WebSocket step.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// A test HMAC secret (never a real one): 38 random-looking bytes.
pub(crate) const SECRET: &str = "Zq7wX9zK2mP4vL8nR3tY6uB1cD5fG0hJsecret";
/// A second, different test HMAC secret: the "other environment".
pub(crate) const OTHER_SECRET: &str = "Mv3kT8pW1xQ6zR9yN4bL7cJ2hF5dS0gAother";
/// A test API key; its SHA-256 goes in the config.
pub(crate) const API_KEY: &str = "agk_8f7e6d5c4b3a29180716f5e4d3c2b1a0Kx";

// ---------------------------------------------------------------------------------
// Sandbox and processes
// ---------------------------------------------------------------------------------

/// A fresh temporary directory: `AGENTGATE_HOME`, config files, addr files.
pub(crate) struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }

    /// The directory itself.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `AGENTGATE_HOME` for every command run here.
    pub(crate) fn home(&self) -> PathBuf {
        self.file("home")
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Write `text` to `name`; returns the path as a string.
    pub(crate) fn write(&self, name: &str, text: &str) -> String {
        let p = self.file(name);
        std::fs::write(&p, text).expect("write fixture");
        p.display().to_string()
    }

    /// Write config `name` (e.g. `a.toml`): a `[server]` on `127.0.0.1:0` announcing
    /// itself in `<name>.addr`, then `extra`. Returns the path.
    pub(crate) fn config(&self, name: &str, extra: &str) -> String {
        let addr = toml_str(&self.addr_file(name));
        self.write(name, &format!("[server]\nlisten = \"127.0.0.1:0\"\naddr_file = {addr}\n{extra}\n"))
    }

    /// The addr file of config `config_name` written by [`Sandbox::config`].
    pub(crate) fn addr_file(&self, config_name: &str) -> PathBuf {
        self.file(&format!("{config_name}.addr"))
    }

    /// The binary with a clean environment (no inherited `AGENTGATE_*` or
    /// `RUST_LOG`), `AGENTGATE_HOME` in this sandbox, then `env`.
    pub(crate) fn cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agentgate"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("AGENTGATE_") || k == "RUST_LOG" {
                c.env_remove(k.as_ref());
            }
        }
        c.env("AGENTGATE_HOME", self.home());
        c.args(args).envs(env.iter().copied());
        c
    }

    /// Run to completion (bounded), standard input closed.
    pub(crate) fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        run_bounded(self.cmd(args, env), None)
    }

    /// Run to completion (bounded), with `stdin` written to standard input (then closed).
    pub(crate) fn run_with_stdin(&self, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
        run_bounded(self.cmd(args, env), Some(stdin))
    }

    /// `agentgate token mint --config <config> <args>`, which must succeed.
    pub(crate) fn mint(&self, config: &str, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut full = vec!["--config", config];
        full.extend_from_slice(args);
        self.mint_args(&full, env)
    }

    /// `agentgate token mint <args>` (no `--config` added), which must succeed and print
    /// the token alone on one line.
    pub(crate) fn mint_args(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut full = vec!["token", "mint"];
        full.extend_from_slice(args);
        let out = self.run(&full, env);
        assert!(out.status.success(), "mint {args:?} failed: {}", describe(&out));
        let stdout = String::from_utf8(out.stdout.clone()).expect("UTF-8 token");
        assert!(stdout.ends_with('\n'), "mint prints the token and a newline: {stdout:?}");
        let token = stdout.trim_end_matches('\n');
        assert!(!token.contains('\n') && !token.contains(' '), "mint prints the token alone: {stdout:?}");
        assert_eq!(token.split('.').count(), 3, "a JWT: {token:?}");
        token.to_owned()
    }

    /// `agentgate doctor <args>`.
    pub(crate) fn doctor(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut full = vec!["doctor"];
        full.extend_from_slice(args);
        self.run(&full, env)
    }

    /// `agentgate [pre...] serve --config <config>` (written by [`Sandbox::config`]),
    /// once its addr file names the port.
    pub(crate) fn serve(&self, pre: &[&str], config: &str, env: &[(&str, &str)]) -> Server {
        let name = Path::new(config).file_name().expect("config file name").to_string_lossy().into_owned();
        let mut args: Vec<&str> = pre.to_vec();
        args.extend(["serve", "--config", config]);
        self.start_server(&args, env, &self.addr_file(&name))
    }

    /// `agentgate <args>` (a `serve`), once `addr_file` names the port.
    pub(crate) fn start_server(&self, args: &[&str], env: &[(&str, &str)], addr_file: &Path) -> Server {
        let _ = std::fs::remove_file(addr_file);
        let mut server = Server::spawn(self.cmd(args, env), false);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(addr_file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                assert!(addr.ip().is_loopback(), "listens on loopback: {addr}");
                server.addr = Some(addr);
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("serve exited early with {status}; output:\n{}", server.logs());
            }
            assert!(Instant::now() < deadline, "no addr file within {START_TIMEOUT:?}; output:\n{}", server.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A long-running process (`serve`, a `connect` that stays); killed and reaped on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: Option<SocketAddr>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Spawn with piped output; `keep_stdin` leaves standard input open (a pipe).
    pub(crate) fn spawn(mut c: Command, keep_stdin: bool) -> Self {
        c.stdin(if keep_stdin { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn agentgate");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            pump(child.stdout.take().expect("stdout pipe"), Arc::clone(&out)),
            pump(child.stderr.take().expect("stderr pipe"), Arc::clone(&err)),
        ];
        Self { child, addr: None, out, err, readers }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr.expect("server address")
    }

    /// `ws://<addr>/v1/ws`.
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr())
    }

    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Everything written so far (stdout then stderr).
    pub(crate) fn logs(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// Wait until a stdout line (a JSON object) satisfies `pred`.
    pub(crate) fn wait_for_line(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        self.wait_for_json_line(what, Self::stdout, pred);
    }

    /// Wait until a stderr line (a JSON log object) satisfies `pred`: the gateway has
    /// written it before the client saw what followed, but the pipe's reader may not
    /// have read it yet.
    pub(crate) fn wait_for_log_line(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        self.wait_for_json_line(what, Self::stderr, pred);
    }

    fn wait_for_json_line(&self, what: &str, output: fn(&Self) -> String, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if output(self).lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|v| pred(&v)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no {what} line in time; output:\n{}", self.logs());
    }

    /// SIGTERM, without waiting.
    pub(crate) fn signal_terminate(&self) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(st.success(), "kill -TERM {pid}");
    }

    /// Wait (bounded by [`EXIT_TIMEOUT`]) for the exit; the output pipes are then drained.
    pub(crate) fn wait(&mut self) -> ExitStatus {
        self.wait_within(EXIT_TIMEOUT)
    }

    /// Wait at most `limit` for the exit (else kill and panic); the output pipes are
    /// then drained.
    pub(crate) fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("did not exit within {limit:?}; output:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        self.signal_terminate();
        self.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn pump(mut r: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// Spawn, feed `stdin` (then close it), collect the output; killed after
/// [`CMD_TIMEOUT`].
pub(crate) fn run_bounded(mut c: Command, stdin: Option<&str>) -> Output {
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

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub(crate) fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------------
// A real Redis
// ---------------------------------------------------------------------------------

/// A real `redis-server` on a free loopback port, with `requirepass`, no persistence;
/// killed and reaped on drop.
pub(crate) struct RedisServer {
    child: Child,
    pub(crate) port: u16,
}

impl RedisServer {
    /// Started and answering; a missing `redis-server` fails the test (whatever CI
    /// says), naming how to install it.
    pub(crate) fn start(password: &str) -> Self {
        let Some(program) = std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).find(|p| p.is_file()))
        else {
            panic!(
                "redis-server is not on PATH, so this test cannot run (a missing peer is a failure, never a skip); \
                 install it: apt-get install redis-server (as .ci/run does)"
            );
        };
        // A port picked then released may be taken meanwhile: a few tries.
        let mut last = String::new();
        for _ in 0..3 {
            let port = closed_port();
            let mut c = Command::new(&program);
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--requirepass", password, "--loglevel", "warning"])
                .current_dir(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut server = Self { child: c.spawn().expect("spawn redis-server"), port };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}")
    }

    /// Until it answers `PING` (with `NOAUTH`: it wants the password), bounded.
    /// A TLS-only Redis (`--port 0 --tls-port P`) with this server certificate and key,
    /// not asking clients for certificates; started once its port accepts connections.
    pub(crate) fn start_tls(password: &str, cert: &Path, key: &Path) -> Self {
        let Some(program) = std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).find(|p| p.is_file()))
        else {
            panic!(
                "redis-server is not on PATH, so this test cannot run (a missing peer is a failure, never a skip); \
                 install it: apt-get install redis-server (as .ci/run does)"
            );
        };
        let mut last = String::new();
        for _ in 0..3 {
            let port = closed_port();
            let mut c = Command::new(&program);
            c.args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", "no", "--requirepass", password, "--loglevel", "warning"])
                .args(["--tls-cert-file", &cert.display().to_string(), "--tls-key-file", &key.display().to_string()])
                .args(["--tls-auth-clients", "no"])
                .current_dir(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut server = Self { child: c.spawn().expect("spawn redis-server"), port };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = server.child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = server.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    last = format!("exited with {status}: {err}");
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                if Instant::now() >= deadline {
                    last = format!("port {port} not accepting within {START_TIMEOUT:?}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server with TLS did not start (is it built with TLS support?): {last}")
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status} (port {} taken?)", self.port));
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok()
                    && let Ok(n) = s.read(&mut buf)
                    && buf[..n].starts_with(b"-NOAUTH")
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no NOAUTH answer to PING on port {} within {START_TIMEOUT:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:<port>`.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------
// Output, config snippets, digests
// ---------------------------------------------------------------------------------

pub(crate) fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn describe(out: &Output) -> String {
    format!("status {:?}\n--- stdout\n{}\n--- stderr\n{}", out.status.code(), stdout_of(out), stderr_of(out))
}

pub(crate) fn assert_status(out: &Output, status: i32) {
    assert_eq!(out.status.code(), Some(status), "{}", describe(out));
}

/// The finding lines of a human report: `<severity> <key>: <message>. Fix: ...`.
pub(crate) fn lines(out: &Output) -> Vec<String> {
    stdout_of(out).lines().map(str::to_owned).collect()
}

/// The one line with `severity` about `key` that contains every word of `parts`.
pub(crate) fn find_line(out: &Output, severity: &str, key: &str, parts: &[&str]) -> String {
    let prefix = format!("{severity:<6} {key}: ");
    lines(out)
        .into_iter()
        .find(|l| l.starts_with(&prefix) && parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no `{severity}` line for `{key}` with {parts:?}:\n{}", describe(out)))
}

/// A path as a TOML string.
pub(crate) fn toml_str(p: &Path) -> String {
    Value::String(p.display().to_string()).to_string()
}

/// An `[[auth.jwt]]` HS256 issuer `name` whose secret is in variable `var`.
pub(crate) fn hs_issuer(name: &str, var: &str) -> String {
    format!("[[auth.jwt]]\nname = \"{name}\"\nalgorithms = [\"HS256\"]\nsecret_env = \"{var}\"\n")
}

/// `[[auth.api_keys]]` for [`API_KEY`].
pub(crate) fn api_key_section() -> String {
    format!(
        "[[auth.api_keys]]\nname = \"ci\"\nsha256 = \"{}\"\nsubject = \"ci-bot\"\nscopes = [\"agents:run\"]\n",
        sha256_hex(API_KEY.as_bytes())
    )
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// CONFIG.md: the first 8 hex digits of the SHA-256 of the key bytes.
pub(crate) fn fingerprint(bytes: &[u8]) -> String {
    sha256_hex(bytes)[..8].to_owned()
}

/// Every `window`-character piece of `secret`.
pub(crate) fn pieces(secret: &str, window: usize) -> Vec<&str> {
    if secret.len() <= window {
        return vec![secret];
    }
    (0..=secret.len() - window).map(|i| &secret[i..i + window]).collect()
}

/// Panic if any `window`-character piece of `secret` appears in `text`.
pub(crate) fn assert_no_piece_of(what: &str, secret: &str, window: usize, text: &str) {
    for p in pieces(secret, window) {
        assert!(!text.contains(p), "part of the {what} ({p}) appears in:\n{text}");
    }
}

// ---------------------------------------------------------------------------------
// A raw WebSocket client
// ---------------------------------------------------------------------------------

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Run a future on a fresh current-thread runtime.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// What the gateway answered a handshake.
#[derive(Debug)]
pub(crate) enum Outcome {
    Welcome(Value),
    Http { status: u16, headers: HeaderMap, body: Value },
    Closed { code: u16, reason: String },
}

impl Outcome {
    /// `accepted`, or the reason code of the rejection (HTTP body or close reason).
    pub(crate) fn code(&self) -> String {
        match self {
            Outcome::Welcome(_) => "accepted".into(),
            Outcome::Http { body, .. } => body["error"]["code"].as_str().unwrap_or("?").into(),
            Outcome::Closed { code, reason } => serde_json::from_str::<Value>(reason)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("?{code} {reason}")),
        }
    }

    pub(crate) fn welcome(self) -> Value {
        match self {
            Outcome::Welcome(w) => w,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Assert an HTTP rejection with `status` and reason `code`; returns the `error`
    /// object of the body.
    pub(crate) fn assert_http(&self, status: u16, code: &str) -> Value {
        match self {
            Outcome::Http { status: s, body, .. } => {
                assert_eq!((*s, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
                body["error"].clone()
            }
            other => panic!("expected HTTP {status} {code}, got {other:?}"),
        }
    }

    /// [`Outcome::assert_http`], and the request id: `req_...` in the body and the same
    /// in `X-Request-Id`; on 401, `WWW-Authenticate` names the reason code. Returns the
    /// `error` object of the body.
    pub(crate) fn assert_http_traced(&self, status: u16, code: &str) -> Value {
        let err = self.assert_http(status, code);
        let Outcome::Http { headers, .. } = self else { unreachable!("assert_http passed") };
        let rid = err["request_id"].as_str().expect("request_id");
        assert!(rid.starts_with("req_"), "request id prefix: {rid}");
        assert_eq!(headers.get("x-request-id").and_then(|v| v.to_str().ok()), Some(rid), "X-Request-Id header");
        if status == 401 {
            let www = headers.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
            assert!(www.contains(&format!("error_description=\"{code}\"")), "WWW-Authenticate: {www}");
        }
        err
    }
}

/// One frame read from a socket.
#[derive(Debug)]
pub(crate) enum Frame {
    Text(Value),
    Close(u16, String),
    /// The connection ended (or failed) without a close frame.
    End,
}

/// The next text or close frame (control frames skipped), within [`STEP`].
pub(crate) async fn next_frame(ws: &mut Ws) -> Frame {
    for _ in 0..1000 {
        let msg = tokio::time::timeout(STEP, ws.next()).await.expect("a frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => return Frame::Text(serde_json::from_str(t.as_str()).expect("JSON frame")),
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return Frame::Close(u16::from(code), reason.as_str().to_owned());
            }
            Some(Ok(Message::Close(None))) => return Frame::Close(1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Frame::End,
        }
    }
    panic!("too many control frames")
}

/// Connect to `url` with these request headers, and read the first frame.
pub(crate) async fn connect(url: &str, headers: &[(&str, &str)]) -> (Outcome, Option<Ws>) {
    connect_with(url, headers, None).await
}

/// [`connect`] with a TLS connector (for `wss://`: a rustls client trusting only the
/// test's CA).
pub(crate) async fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
    tls: Option<tokio_tungstenite::Connector>,
) -> (Outcome, Option<Ws>) {
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    let connecting = tokio_tungstenite::connect_async_tls_with_config(req, None, true, tls);
    match tokio::time::timeout(STEP, connecting).await.expect("handshake in time") {
        Ok((mut ws, _)) => match next_frame(&mut ws).await {
            Frame::Text(v) => (Outcome::Welcome(v), Some(ws)),
            Frame::Close(code, reason) => (Outcome::Closed { code, reason }, None),
            Frame::End => panic!("connection ended without welcome or close frame"),
        },
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            (Outcome::Http { status, headers, body }, None)
        }
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

/// Connect with `Authorization: Bearer <token>` (plus `extra` headers).
pub(crate) async fn connect_bearer(url: &str, token: &str, extra: &[(&str, &str)]) -> (Outcome, Option<Ws>) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    connect(url, &headers).await
}

/// Close a socket politely (bounded).
pub(crate) async fn close(ws: Option<Ws>) {
    if let Some(mut ws) = ws {
        let _ = tokio::time::timeout(STEP, ws.close(None)).await;
        for _ in 0..100 {
            match tokio::time::timeout(STEP, ws.next()).await {
                Ok(Some(Ok(_))) => continue,
                _ => break,
            }
        }
    }
}
