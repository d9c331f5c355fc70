//! End-to-end tests of `agentgate mcp-shim` (CONFIG.md; PROTOCOL.md section 7;
//! INCIDENTS.md rows 1, 6 and 7) with real MCP peers:
//!
//! raw JSON-RPC client (this file) → `agentgate mcp-shim` (the real binary, over its
//! stdio) → `agentgate serve` (the real binary) → an MCP server process:
//! - npm `@modelcontextprotocol/server-everything` (TypeScript SDK, 2025-11-25 era),
//!   run with node from `target/mcp-peers` (installed by `.ci/run`);
//! - `tests/fixtures/mcp/py_server.py` on the Python `mcp` SDK (2.x speaks both eras).
//!
//! A test whose peer is not installed fails, saying how to install it (`.ci/run`
//! installs them). Every test uses a fresh `AGENTGATE_HOME`, servers listen on
//! `127.0.0.1:0`, every spawned process is killed when its guard drops, and every wait
//! is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/pki.rs"]
mod pki;

/// Longest wait for one expected line from the shim, or for a process to exit.
const STEP: Duration = Duration::from_secs(30);
/// Longest wait for a server to write its addr file.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// What "at once" means for a shim that must refuse to start.
const AT_ONCE: Duration = Duration::from_secs(5);

/// The gateway's JWT secret, and a variable of its environment that is no business of
/// any MCP server; neither may reach one.
const JWT_SECRET: &str = "jwt-secret-of-the-gateway-7f3a9c1e5b2d4680aa";
const GATEWAY_SECRET: &str = "the-gateway-keeps-this-to-itself-5e1d";

// ---------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------

/// A missing peer fails the test, whatever CI says, naming how to install it.
fn missing(what: &str) -> ! {
    panic!(
        "{what} is not installed, so this test cannot run (a missing peer is a failure, never a skip); \
         install the MCP peers as .ci/run does:\n  \
         npm install --prefix target/mcp-peers @modelcontextprotocol/server-everything@2026.8.31\n  \
         python3 -m pip install 'mcp>=2,<3'"
    )
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// An executable on `PATH`, as an absolute path (MCP servers get only `PATH` and `HOME`).
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The command that runs server-everything on stdio.
fn everything() -> Vec<String> {
    let peers =
        std::env::var_os("AGENTGATE_MCP_PEERS").map_or_else(|| repo_root().join("target/mcp-peers"), PathBuf::from);
    let entry = peers.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let Some(node) = which("node") else { missing("node (for @modelcontextprotocol/server-everything)") };
    if !entry.is_file() {
        missing(&format!("@modelcontextprotocol/server-everything ({} not found)", entry.display()));
    }
    vec![node.display().to_string(), entry.display().to_string(), "stdio".into()]
}

/// The command that runs the Python fixture server: the real interpreter (not a
/// version-manager shim, which needs variables of its own), with the `mcp` SDK 2.x (as
/// `.ci/run` installs it: 1.x has no 2026-07-28 era).
fn python_server() -> Vec<String> {
    const PROBE: &str = "import sys, importlib.metadata as m, mcp; print(sys.executable); print(m.version('mcp'))";
    let out = Command::new("python3").args(["-c", PROBE]).output();
    let (exe, version) = match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let mut lines = text.lines().map(|l| l.trim().to_owned());
            (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
        }
        _ => missing("the Python `mcp` SDK (python3 -c 'import mcp' failed)"),
    };
    if !version.starts_with("2.") {
        missing(&format!("the Python `mcp` SDK 2.x (found {version})"));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp/py_server.py");
    vec![exe, "-u".into(), script.display().to_string()]
}

// ---------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------

/// A process whose stdout lines and stderr are collected as they come; killed on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    err: Arc<Mutex<Vec<u8>>>,
    /// The thread collecting stderr: [`Proc::wait`] joins it, so that everything the
    /// process wrote is there once it has exited.
    err_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(mut c: Command) -> Self {
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let err = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&err);
        let mut stderr = child.stderr.take().expect("stderr");
        let err_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        let stdin = child.stdin.take();
        Self { child, stdin, lines, err, err_reader: Some(err_reader) }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Wait until stderr holds `text`.
    fn wait_stderr(&self, text: &str) {
        let deadline = Instant::now() + STEP;
        while !self.stderr().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} on stderr within {STEP:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
    }

    /// The exit status, waiting at most `limit`; then the stderr reader has read
    /// everything (it is joined: the pipe closes with the process).
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                if let Some(reader) = self.err_reader.take() {
                    let _ = reader.join();
                }
                return s.code();
            }
            assert!(Instant::now() < deadline, "did not exit within {limit:?}; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            // A gateway gets the chance to end its MCP server processes first.
            self.signal("-TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The binary with a clean environment: no inherited `AGENTGATE_*` or `RUST_LOG`.
fn agentgate(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agentgate"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("AGENTGATE_") || k == "RUST_LOG" || k == "SECRET_OF_THE_GATEWAY" {
            c.env_remove(k.as_ref());
        }
    }
    c.env("AGENTGATE_HOME", home).args(args).envs(env.iter().copied());
    c
}

fn toml_list(items: &[String]) -> String {
    Value::from(items.to_vec()).to_string()
}

/// `agentgate serve` with an HS256 issuer reading `AGENTGATE_JWT_SECRET`, the MCP
/// servers given, and a secret of its own in its environment.
struct Gateway {
    dir: tempfile::TempDir,
    proc: Option<Proc>,
    addr: SocketAddr,
    extra_env: Vec<(String, String)>,
}

impl Gateway {
    fn start(servers: &[(&str, Vec<String>)], extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr_file = Value::String(dir.path().join("addr").display().to_string());
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naddr_file = {addr_file}\n\n[[auth.jwt]]\nname = \"local\"\n\
             algorithms = [\"HS256\"]\nsecret_env = \"AGENTGATE_JWT_SECRET\"\n"
        );
        for (name, command) in servers {
            toml.push_str(&format!("\n[[mcp.servers]]\nname = \"{name}\"\ncommand = {}\n", toml_list(command)));
        }
        std::fs::write(dir.path().join("agentgate.toml"), toml).expect("write config");
        let extra_env = extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut gw = Self { dir, proc: None, addr: "127.0.0.1:1".parse().unwrap(), extra_env };
        gw.serve(None);
        gw
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> String {
        self.path("agentgate.toml").display().to_string()
    }

    /// Start `serve` (on `listen`, when given) and wait for its address.
    fn serve(&mut self, listen: Option<SocketAddr>) {
        let _ = std::fs::remove_file(self.path("addr"));
        let config = self.config();
        let listen = listen.map(|a| a.to_string());
        let mut env: Vec<(&str, &str)> = vec![
            ("AGENTGATE_JWT_SECRET", JWT_SECRET),
            ("SECRET_OF_THE_GATEWAY", GATEWAY_SECRET),
            ("AGENTGATE_LIMITS__HANDSHAKES_PER_IP_PER_S", "1000"),
        ];
        env.extend(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(l) = &listen {
            env.push(("AGENTGATE_SERVER__LISTEN", l));
        }
        let proc = Proc::spawn(agentgate(&self.path("home"), &["serve", "--config", &config], &env));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(self.path("addr"))
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                assert!(addr.ip().is_loopback());
                self.addr = addr;
                self.proc = Some(proc);
                return;
            }
            assert!(Instant::now() < deadline, "no addr file in time:\n{}", proc.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (close 1012 `server_restart` to every client), and wait for the exit.
    fn stop(&mut self) {
        let mut proc = self.proc.take().expect("running");
        proc.signal("-TERM");
        assert_eq!(proc.wait(STEP), Some(0), "serve exits 0 on SIGTERM");
    }

    fn logs(&self) -> String {
        self.proc.as_ref().map(Proc::stderr).unwrap_or_default()
    }

    fn url(&self, server: &str) -> String {
        format!("ws://{}/v1/mcp/{server}", self.addr)
    }

    /// `agentgate token mint` for `sub`, signed with `secret`.
    fn mint_signed(&self, sub: &str, scope: &str, ttl: i64, secret: &str) -> String {
        let ttl = ttl.to_string();
        let args = ["token", "mint", "--config", &self.config(), "--sub", sub, "--scope", scope, "--ttl", &ttl];
        let mut c = agentgate(&self.path("home"), &args, &[("AGENTGATE_JWT_SECRET", secret)]);
        c.stdin(Stdio::null());
        let out = c.output().expect("mint");
        assert!(out.status.success(), "mint failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8").trim().to_owned()
    }

    fn mint(&self, sub: &str, scope: &str) -> String {
        self.mint_signed(sub, scope, 900, JWT_SECRET)
    }
}

/// `agentgate mcp-shim` driven as an MCP client drives a stdio server: newline-delimited
/// JSON-RPC on its stdin and stdout.
struct Shim {
    proc: Proc,
    /// Notifications and server requests seen while waiting for answers.
    seen: Vec<Value>,
    next_id: i64,
}

impl Shim {
    fn spawn(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut full = vec!["mcp-shim"];
        full.extend_from_slice(args);
        Self { proc: Proc::spawn(agentgate(home, &full, env)), seen: Vec::new(), next_id: 0 }
    }

    /// A shim to `url` with the token in `AGENTGATE_TOKEN`.
    fn with_token(gw: &Gateway, url: &str, token: &str) -> Self {
        Self::spawn(&gw.path("home"), &["--url", url], &[("AGENTGATE_TOKEN", token)])
    }

    fn send_raw(&mut self, line: &str) {
        let stdin = self.proc.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
            .expect("write");
    }

    fn send(&mut self, msg: &Value) {
        self.send_raw(&msg.to_string());
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// The next stdout line as JSON, within [`STEP`].
    fn line(&mut self) -> Value {
        match self.proc.lines.recv_timeout(STEP) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}")),
            Err(RecvTimeoutError::Timeout) => {
                panic!("no line from the shim within {STEP:?}; stderr:\n{}", self.proc.stderr())
            }
            Err(RecvTimeoutError::Disconnected) => panic!("the shim's stdout ended; stderr:\n{}", self.proc.stderr()),
        }
    }

    /// The answer to `id` (same JSON value, type included); other messages are kept in
    /// `seen`. An answer to another id fails the test.
    fn answer(&mut self, id: &Value) -> Value {
        loop {
            let v = self.line();
            if v.get("method").is_some() {
                self.seen.push(v);
                continue;
            }
            assert_eq!(&v["id"], id, "an answer to another request: {v}");
            assert_eq!(v["jsonrpc"], "2.0", "{v}");
            return v;
        }
    }

    /// Send a request with `id`; return its answer.
    fn request_with(&mut self, id: Value, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.answer(&id)
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        self.request_with(json!(self.next_id), method, params)
    }

    /// The 2025-11-25 handshake: `initialize`, then `notifications/initialized`.
    fn initialize(&mut self) -> Value {
        let params = json!({"protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "agentgate-tests", "version": "1"}});
        let r = self.request("initialize", params);
        assert_eq!(r["result"]["protocolVersion"], "2025-11-25", "{r}");
        self.notify("notifications/initialized", json!({}));
        r
    }

    /// `tools/call` of `name`; the text of its first content item.
    fn call_text(&mut self, name: &str, arguments: Value) -> String {
        let r = self.request("tools/call", json!({"name": name, "arguments": arguments}));
        text_of(&r)
    }

    /// Close stdin; the exit status.
    fn finish(&mut self) -> Option<i32> {
        drop(self.proc.stdin.take());
        self.proc.wait(STEP)
    }
}

/// The Python server's record of cancelled `slow` calls, once it has one (the
/// cancellation is applied to the call's task asynchronously).
fn cancelled_calls(shim: &mut Shim) -> Value {
    for _ in 0..50 {
        let record: Value = serde_json::from_str(&shim.call_text("cancelled", json!({}))).expect("JSON");
        if record.as_array().is_some_and(|a| !a.is_empty()) {
            return record;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server recorded no cancelled call");
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text content: {answer}")).to_owned()
}

/// The error message of an error answer from the shim (code -32000).
fn shim_error(answer: &Value) -> String {
    assert_eq!(answer["error"]["code"], -32000, "a JSON-RPC error from the shim: {answer}");
    answer["error"]["message"].as_str().expect("message").to_owned()
}

/// The `_meta` every 2026-07-28 request carries.
fn modern_meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "agentgate-tests", "version": "1"}})
}

// ---------------------------------------------------------------------------------
// Credentials (no peer needed)
// ---------------------------------------------------------------------------------

/// Run a shim that must refuse to start: exit 64 at once, nothing on stdout; its stderr.
fn refused_start(home: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let started = Instant::now();
    let mut shim = Shim::spawn(home, args, env);
    // Standard input stays open: the shim must not wait for it.
    let status = shim.proc.wait(STEP);
    let err = shim.proc.stderr();
    assert_eq!(status, Some(64), "exit 64; stderr:\n{err}");
    assert!(started.elapsed() < AT_ONCE, "exits at once, took {:?}", started.elapsed());
    assert!(shim.proc.lines.try_recv().is_err(), "nothing on stdout");
    err
}

#[test]
fn no_credential_exits_64_at_once_naming_the_variable_and_the_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let url = "ws://127.0.0.1:9/v1/mcp/everything";
    // INCIDENTS row 1: an env file that lacks the token.
    let env_file = dir.path().join("agentgate.env");
    std::fs::write(&env_file, "# the IDE's env file\nexport OTHER_SETTING=\"1\"\n").unwrap();
    let env_path = env_file.display().to_string();
    let err = refused_start(&home, &["--url", url, "--env-file", &env_path], &[]);
    assert!(err.contains("AGENTGATE_TOKEN") && err.contains("not set"), "{err}");
    assert!(err.contains(&env_path) && err.contains("does not set AGENTGATE_TOKEN"), "{err}");
    assert!(err.contains("never sent"), "{err}");

    // The variable named by --token-env, set but empty: the env file's value does not
    // override it.
    std::fs::write(&env_file, "MY_MCP_TOKEN=abc.def.ghi\n").unwrap();
    let err = refused_start(
        &home,
        &["--url", url, "--token-env", "MY_MCP_TOKEN", "--env-file", &env_path],
        &[("MY_MCP_TOKEN", "")],
    );
    assert!(err.contains("MY_MCP_TOKEN") && err.contains("set but empty"), "{err}");
    assert!(err.contains(&env_path), "{err}");
    assert!(!err.contains("abc.def.ghi"), "the token is never printed: {err}");

    // An env file that sets the variable to nothing.
    std::fs::write(&env_file, "AGENTGATE_TOKEN=\n").unwrap();
    let err = refused_start(&home, &["--url", url, "--env-file", &env_path], &[]);
    assert!(err.contains(&env_path) && err.contains("empty"), "{err}");

    // No env file at that path, an empty token file, no credential at all.
    let nowhere = dir.path().join("nowhere.env").display().to_string();
    let err = refused_start(&home, &["--url", url, "--env-file", &nowhere], &[("AGENTGATE_TOKEN", "x.y.z")]);
    assert!(err.contains(&nowhere) && err.contains("does not exist"), "{err}");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "\n").unwrap();
    let tf = token_file.display().to_string();
    let err = refused_start(&home, &["--url", url, "--token-file", &tf], &[]);
    assert!(err.contains(&tf) && err.contains("empty"), "{err}");
    let err = refused_start(&home, &["--url", url], &[]);
    assert!(err.contains("AGENTGATE_TOKEN") && err.contains("--env-file") && err.contains("--token-file"), "{err}");

    // A token is never a command-line value, not even in the URL.
    let err = refused_start(&home, &["--url", &format!("{url}?access_token=abc.def.ghi")], &[("AGENTGATE_TOKEN", "x")]);
    assert!(err.contains("never a command-line value") && !err.contains("abc.def.ghi"), "{err}");
    let err = refused_start(&home, &["--url", "ws://127.0.0.1:9/v1/ws"], &[("AGENTGATE_TOKEN", "x")]);
    assert!(err.contains("/v1/mcp/"), "{err}");
}

// ---------------------------------------------------------------------------------
// server-everything (TypeScript SDK)
// ---------------------------------------------------------------------------------

#[test]
fn everything_session_tools_progress_and_ids_pass_through_the_shim() {
    let cmd = everything();
    let gw = Gateway::start(&[("everything", cmd)], &[]);
    let token = gw.mint("alice", "mcp:everything");
    let mut shim = Shim::with_token(&gw, &gw.url("everything"), &token);

    // A stateless-era probe first, as a 2026-07-28 client does: this peer is of the
    // 2025-11-25 era and answers "method not found", which tells the client to fall
    // back to initialize. The answer comes through with the probe's id.
    let probe = shim.request_with(json!("discover-1"), "server/discover", json!({"_meta": modern_meta()}));
    assert_eq!(probe["error"]["code"], -32601, "{probe}");

    let init = shim.initialize();
    assert!(init["result"]["serverInfo"]["name"].as_str().unwrap().contains("everything"), "{init}");

    let tools = shim.request_with(json!("list-1"), "tools/list", json!({}));
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    for t in ["echo", "trigger-long-running-operation", "get-env"] {
        assert!(names.contains(&t), "{t} in {names:?}");
    }

    // Ids of any type come back unchanged.
    for id in [json!("call-é-1"), json!(42), json!(0), json!("42")] {
        let r = shim.request_with(id, "tools/call", json!({"name": "echo", "arguments": {"message": "héllo ✓"}}));
        assert_eq!(text_of(&r), "Echo: héllo ✓");
    }

    // Progress notifications of a long-running call are relayed before its answer.
    shim.seen.clear();
    let params = json!({"name": "trigger-long-running-operation", "arguments": {"duration": 1, "steps": 4},
        "_meta": {"progressToken": "prog-1"}});
    let r = shim.request_with(json!(7), "tools/call", params);
    assert!(text_of(&r).contains("completed"), "{r}");
    let progress: Vec<i64> = shim
        .seen
        .iter()
        .filter(|m| m["method"] == "notifications/progress" && m["params"]["progressToken"] == "prog-1")
        .map(|m| m["params"]["progress"].as_i64().unwrap())
        .collect();
    assert_eq!(progress, vec![1, 2, 3, 4]);

    assert_eq!(shim.finish(), Some(0), "exit 0 on end of input; stderr:\n{}", shim.proc.stderr());
    assert!(!shim.proc.stderr().contains(&token), "the token is never printed");
}

#[test]
fn everything_get_env_shows_none_of_the_gateways_secrets() {
    let cmd = everything();
    let gw = Gateway::start(&[("everything", cmd)], &[]);
    let token = gw.mint("alice", "mcp:*");
    let mut shim = Shim::with_token(&gw, &gw.url("everything"), &token);
    shim.initialize();
    let env = shim.call_text("get-env", json!({}));
    let vars: Value = serde_json::from_str(&env).expect("get-env returns the environment as JSON");
    assert!(vars.get("PATH").is_some(), "{env}");
    for secret in [JWT_SECRET, GATEWAY_SECRET, token.as_str()] {
        assert!(!env.contains(secret), "a secret of the gateway reached the MCP server: {env}");
    }
    for name in ["AGENTGATE_JWT_SECRET", "SECRET_OF_THE_GATEWAY", "AGENTGATE_HOME", "AGENTGATE_TOKEN"] {
        assert!(vars.get(name).is_none(), "{name} reached the MCP server: {env}");
    }
    assert_eq!(shim.finish(), Some(0));
}

// ---------------------------------------------------------------------------------
// The Python SDK server
// ---------------------------------------------------------------------------------

#[test]
fn python_server_speaks_both_eras_through_the_shim() {
    let cmd = python_server();
    let gw = Gateway::start(&[("py", cmd)], &[]);
    let token = gw.mint("alice", "mcp:py");

    // 2026-07-28: no initialize; server/discover, then requests that carry _meta.
    let mut modern = Shim::with_token(&gw, &gw.url("py"), &token);
    let d = modern.request_with(json!("d-1"), "server/discover", json!({"_meta": modern_meta()}));
    let versions = d["result"]["supportedVersions"].as_array().unwrap_or_else(|| panic!("{d}"));
    assert!(versions.contains(&json!("2026-07-28")), "{d}");
    let tools = modern.request("tools/list", json!({"_meta": modern_meta()}));
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&"echo") && names.contains(&"slow"), "{names:?}");
    let r = modern.request_with(
        json!("modern-echo"),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "stateless ✓"}, "_meta": modern_meta()}),
    );
    assert_eq!(text_of(&r), "stateless ✓");

    // 2025-11-25: initialize, then plain requests.
    let mut legacy = Shim::with_token(&gw, &gw.url("py"), &token);
    legacy.initialize();
    assert_eq!(legacy.call_text("echo", json!({"text": "session ✓"})), "session ✓");
    let r = legacy.request_with(
        json!(9_007_199_254_740_993_i64),
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "big id"}}),
    );
    assert_eq!(text_of(&r), "big id");

    assert_eq!(modern.finish(), Some(0));
    assert_eq!(legacy.finish(), Some(0));
}

#[test]
fn python_progress_is_relayed_and_cancellation_reaches_the_server() {
    let cmd = python_server();
    let gw = Gateway::start(&[("py", cmd)], &[]);
    let mut shim = Shim::with_token(&gw, &gw.url("py"), &gw.mint("alice", "mcp:py"));
    shim.initialize();

    let r = shim.request_with(
        json!("slow-1"),
        "tools/call",
        json!({"name": "slow", "arguments": {"steps": 3, "delay_ms": 50}, "_meta": {"progressToken": 11}}),
    );
    assert_eq!(text_of(&r), "done after 3 steps");
    let steps: Vec<&Value> = shim.seen.iter().filter(|m| m["params"]["progressToken"] == 11).collect();
    assert_eq!(steps.len(), 3, "{:?}", shim.seen);
    assert_eq!(steps[2]["params"]["message"], "step 3 of 3");

    // A long call, cancelled after two progress notifications.
    shim.send(&json!({"jsonrpc": "2.0", "id": "long", "method": "tools/call",
        "params": {"name": "slow", "arguments": {"steps": 200, "delay_ms": 50}, "_meta": {"progressToken": "p-long"}}}));
    let mut heard = 0;
    while heard < 2 {
        let v = shim.line();
        assert_eq!(v["method"], "notifications/progress", "{v}");
        heard += 1;
    }
    shim.notify("notifications/cancelled", json!({"requestId": "long", "reason": "the user pressed stop"}));
    // The server saw it: its task was cancelled partway (and it never answers "long").
    let cancelled = cancelled_calls(&mut shim);
    let step = cancelled[0]["step"].as_i64().unwrap_or_else(|| panic!("no cancelled call recorded: {cancelled}"));
    assert!((2..200).contains(&step), "{cancelled}");
    // Nothing answers "long" later either.
    shim.send(&json!({"jsonrpc": "2.0", "id": "after", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(text_of(&shim.answer(&json!("after"))), "x");
    assert_eq!(shim.finish(), Some(0));
}

#[test]
fn two_users_get_two_separate_server_processes() {
    let cmd = python_server();
    let gw = Gateway::start(&[("py", cmd)], &[]);
    let mut alice = Shim::with_token(&gw, &gw.url("py"), &gw.mint("alice", "mcp:py"));
    let mut bob = Shim::with_token(&gw, &gw.url("py"), &gw.mint("bob", "mcp:*"));
    alice.initialize();
    bob.initialize();
    let pa = alice.call_text("pid", json!({}));
    let pb = bob.call_text("pid", json!({}));
    assert_ne!(pa, pb, "two users, two processes");
    // State is per process: alice's cancellation record is not bob's.
    alice.send(&json!({"jsonrpc": "2.0", "id": "a-long", "method": "tools/call",
        "params": {"name": "slow", "arguments": {"steps": 100, "delay_ms": 50}, "_meta": {"progressToken": "a"}}}));
    let _ = alice.line();
    alice.notify("notifications/cancelled", json!({"requestId": "a-long"}));
    assert_eq!(cancelled_calls(&mut alice).as_array().map(Vec::len), Some(1));
    assert_eq!(bob.call_text("cancelled", json!({})), "[]");
    assert_eq!(alice.finish(), Some(0));
    assert_eq!(bob.finish(), Some(0));
}

// ---------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------

#[test]
fn an_expired_token_surfaces_as_token_expired_and_a_new_token_in_the_file_recovers() {
    let cmd = python_server();
    let gw = Gateway::start(&[("py", cmd)], &[("AGENTGATE_AUTH__LEEWAY_S", "0")]);
    let token_file = gw.path("mcp-token");
    // Short-lived (leeway 0), yet long enough for the Python server to start and answer.
    std::fs::write(&token_file, gw.mint_signed("alice", "mcp:py", 8, JWT_SECRET)).unwrap();
    let tf = token_file.display().to_string();
    let mut shim = Shim::spawn(&gw.path("home"), &["--url", &gw.url("py"), "--token-file", &tf], &[]);
    shim.initialize();
    assert_eq!(shim.call_text("echo", json!({"text": "before"})), "before");

    // The gateway closes 4401 token_expired when the token expires; the next request
    // is told why, and what to do, instead of hanging.
    shim.proc.wait_stderr("token_expired");
    let r = shim.request("tools/call", json!({"name": "echo", "arguments": {"text": "after"}}));
    let message = shim_error(&r);
    assert!(message.contains("token_expired") && message.contains("mint a new token"), "{message}");
    assert!(message.contains(&tf), "names the file to put the new token in: {message}");
    assert_eq!(r["error"]["data"]["agentgate"]["reason"], "token_expired", "{r}");
    assert_eq!(r["error"]["data"]["agentgate"]["retryable"], false, "{r}");
    // A notification gets no reply; the next request gets the same answer at once.
    shim.notify("notifications/roots/list_changed", json!({}));
    let r = shim.request_with(json!("again"), "tools/list", json!({}));
    assert!(shim_error(&r).contains("token_expired"), "{r}");

    // A fresh token in the file: the next request reconnects, and the client's session
    // goes on (the shim replays its initialize to the new server process).
    std::fs::write(&token_file, gw.mint("alice", "mcp:py")).unwrap();
    assert_eq!(shim.call_text("echo", json!({"text": "renewed"})), "renewed");
    let err = shim.proc.stderr();
    assert!(err.contains("changed") && err.contains("replayed the client's initialize"), "{err}");
    assert_eq!(shim.finish(), Some(0));
}

#[test]
fn a_wrong_token_gets_json_rpc_errors_naming_signature_invalid_instead_of_hanging() {
    let cmd = python_server();
    let gw = Gateway::start(&[("py", cmd)], &[]);
    // Signed with another secret: INCIDENTS row 5's drift.
    let token = gw.mint_signed("alice", "mcp:py", 900, "another-environment's-secret-000000000000");
    let mut shim = Shim::with_token(&gw, &gw.url("py"), &token);
    let started = Instant::now();
    let params =
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
    let r = shim.request_with(json!(1), "initialize", params);
    let message = shim_error(&r);
    assert!(message.starts_with("agentgate rejected the connection: signature_invalid — "), "{message}");
    assert!(message.contains("request_id req_"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered in {:?}", started.elapsed());
    shim.notify("notifications/initialized", json!({}));
    let r = shim.request_with(json!("second"), "tools/list", json!({}));
    assert!(shim_error(&r).contains("signature_invalid"), "{r}");
    assert_eq!(shim.finish(), Some(0));

    // No hammering: one handshake, one rejection.
    let logs = gw.logs();
    assert_eq!(logs.matches("handshake rejected").count(), 1, "{logs}");
    let fp = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(token.as_bytes())[..4])
    };
    let err = shim.proc.stderr();
    assert!(err.contains(&fp), "diagnostics name the token by fingerprint {fp}: {err}");
    assert!(!err.contains(&token) && !logs.contains(&token), "the token is never printed");
}

#[test]
fn a_server_process_failure_answers_the_request_and_the_next_gets_a_new_process() {
    let cmd = python_server();
    let gw = Gateway::start(&[("py", cmd)], &[]);
    let mut shim = Shim::with_token(&gw, &gw.url("py"), &gw.mint("alice", "mcp:py"));
    shim.initialize();
    let before = shim.call_text("pid", json!({}));
    // The process dies: close 1011 mcp_server_failed; the call in flight is answered.
    let r = shim.request_with(json!("boom"), "tools/call", json!({"name": "crash", "arguments": {}}));
    let message = shim_error(&r);
    assert!(message.contains("mcp_server_failed") && message.contains("may be retried"), "{message}");
    assert_eq!(r["error"]["data"]["agentgate"]["reason"], "mcp_server_failed");
    // The shim reconnects; the client's session goes on in a new process.
    let after = shim.call_text("pid", json!({}));
    assert_ne!(before, after);
    assert_eq!(shim.finish(), Some(0));
}

#[test]
fn an_unreachable_gateway_answers_requests_with_an_error_instead_of_hanging() {
    // A loopback port that nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("ws://127.0.0.1:{port}/v1/mcp/everything");
    let mut shim = Shim::spawn(&dir.path().join("home"), &["--url", &url], &[("AGENTGATE_TOKEN", "a.b.c")]);
    let started = Instant::now();
    let params =
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
    let r = shim.request_with(json!("init"), "initialize", params);
    let message = shim_error(&r);
    assert!(message.contains(&format!("127.0.0.1:{port}")) && message.contains("network"), "{message}");
    assert_eq!(r["error"]["data"]["agentgate"]["retryable"], true, "{r}");
    assert!(started.elapsed() < Duration::from_secs(25), "answered in {:?}", started.elapsed());
    let err = shim.proc.stderr();
    assert!(err.contains("attempt 1 to reach") && err.contains("reconnecting"), "{err}");
    assert_eq!(shim.finish(), Some(0));
}

#[test]
fn a_gateway_restart_answers_the_request_in_flight_and_the_shim_reconnects() {
    let cmd = python_server();
    let mut gw = Gateway::start(&[("py", cmd)], &[]);
    let mut shim = Shim::with_token(&gw, &gw.url("py"), &gw.mint("alice", "mcp:py"));
    shim.initialize();
    shim.send(&json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"steps": 400, "delay_ms": 50}, "_meta": {"progressToken": "r"}}}));
    assert_eq!(shim.line()["method"], "notifications/progress");

    let addr = gw.addr;
    gw.stop();
    let r = shim.answer(&json!(77));
    let message = shim_error(&r);
    assert!(message.contains("server_restart") && message.contains("may be retried"), "{message}");
    assert_eq!(r["error"]["data"]["agentgate"]["retryable"], true);

    gw.serve(Some(addr));
    assert_eq!(shim.call_text("echo", json!({"text": "back"})), "back");
    assert_eq!(shim.finish(), Some(0));
}

#[test]
fn piped_input_gets_its_answers_before_the_shim_exits() {
    // `printf '<initialize>\n<call>\n' | agentgate mcp-shim ...`: standard input ends
    // before the gateway has answered; the answers still come, then exit 0.
    let gw = Gateway::start(&[("py", python_server())], &[]);
    let token = gw.mint("alice", "mcp:py");
    let mut shim = Shim::with_token(&gw, &gw.url("py"), &token);
    let params = json!({"protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "agentgate-tests", "version": "1"}});
    shim.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}));
    shim.notify("notifications/initialized", json!({}));
    shim.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "after EOF"}}}));
    drop(shim.proc.stdin.take());
    let started = Instant::now();
    assert_eq!(shim.proc.wait(STEP), Some(0), "stderr:\n{}", shim.proc.stderr());
    assert!(started.elapsed() < Duration::from_secs(12), "bounded by the drain timeout: {:?}", started.elapsed());
    let init = shim.answer(&json!(1));
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
    assert_eq!(text_of(&shim.answer(&json!(2))), "after EOF");
}

#[test]
fn the_shim_speaks_wss_with_ca_file_and_names_the_tls_error_without_it() {
    let certs = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("agentgate test CA");
    let (cert, key) = pki::write_pair(certs.path(), "server", &ca.server("gw"));
    let ca_file = ca.write(certs.path(), "ca.pem").display().to_string();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let gw = Gateway::start(
        &[("py", python_server())],
        &[("AGENTGATE_SERVER__TLS_CERT_FILE", &cert), ("AGENTGATE_SERVER__TLS_KEY_FILE", &key)],
    );
    let token = gw.mint("alice", "mcp:py");
    let url = format!("wss://{}/v1/mcp/py", gw.addr);

    let mut shim =
        Shim::spawn(&gw.path("home"), &["--url", &url, "--ca-file", &ca_file], &[("AGENTGATE_TOKEN", &token)]);
    shim.initialize();
    assert_eq!(shim.call_text("echo", json!({"text": "over TLS"})), "over TLS");
    assert_eq!(shim.finish(), Some(0));

    // The system's roots do not hold the test CA: the request is answered at once with
    // an error naming the TLS failure and --ca-file.
    let mut shim = Shim::with_token(&gw, &url, &token);
    let started = Instant::now();
    let r = shim.request("tools/list", json!({}));
    let message = shim_error(&r);
    assert!(message.contains("invalid peer certificate: UnknownIssuer"), "{message}");
    assert!(message.contains("--ca-file"), "{message}");
    assert_eq!(r["error"]["data"]["agentgate"]["reason"], "tls", "{r}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered at once: {:?}", started.elapsed());
    assert_eq!(shim.finish(), Some(0));
}
