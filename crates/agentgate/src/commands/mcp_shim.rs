//! `agentgate mcp-shim --url URL [--token-env VAR | --token-file F] [--env-file F]`: a
//! stdio MCP server, as an IDE launches one, that relays to an MCP server hosted by the
//! gateway on `GET /v1/mcp/{server}` (PROTOCOL.md section 7).
//!
//! Each standard-input line is sent as one text frame, unchanged (blank lines are
//! skipped); each text frame is written to standard output as one line. Both MCP eras
//! pass through untouched: `initialize` sessions (2025-11-25) and the stateless
//! `server/discover` (2026-07-28). Diagnostics go to standard error; the token never
//! appears anywhere, only its fingerprint (first 8 hex digits of its SHA-256).
//!
//! The credential comes from `--token-file`, `--token-env VAR` or `AGENTGATE_TOKEN`,
//! after loading `--env-file` (whose values never override a variable already set,
//! even to an empty value). Without a token the shim exits 64 at once, naming every
//! place it looked (INCIDENTS.md row 1): an empty token is never sent.
//!
//! Failures, as the IDE sees them (each pending request gets exactly one answer):
//! - the connection is lost (network, close 1012 `server_restart`, 1013, 4429, 4409,
//!   1011 `mcp_server_failed`, ...): every request in flight is answered with a
//!   JSON-RPC error (code -32000) saying so and that it may be retried; the shim
//!   reconnects with exponential backoff and full jitter (200 ms doubling to 10 s, 8
//!   attempts per outage), holding new messages meanwhile (a request held for 15 s is
//!   answered with an error; the attempts go on). The new connection has a new
//!   server process: when the client had initialized a session (2025-11-25), the shim
//!   replays its `initialize` (under an id of its own, whose answer it keeps to itself)
//!   and `notifications/initialized` before anything else, so the client's session goes
//!   on. `1011 mcp_server_failed` is retried too: the process died and its state is
//!   lost, but a new one may well work (bounded by the same attempts: a connection that
//!   lived less than 10 s counts as a failed attempt, so a server that keeps dying is
//!   not restarted without end).
//! - attempts run out: held and later requests get an error naming the last failure;
//!   the next request makes one new attempt.
//! - the gateway refuses (HTTP 4xx but 429, close 4400/4401/4403/4404/4408): every pending and
//!   every later request gets an error naming the reason code and what to do; nothing
//!   is retried, except that when the token came from a file (`--token-file`, or the
//!   `--env-file`) a later request re-reads it, and a changed token is tried once.
//! - notifications never get a reply; standard input is read to its end, which exits 0.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use agentgate_app::Env;
use agentgate_client::{ClientError, RetryPolicy};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{EXIT_FAILURE, EXIT_USAGE, process_env};
use crate::cli::McpShimArgs;

/// The variable read when neither `--token-env` nor `--token-file` is given.
const DEFAULT_TOKEN_ENV: &str = "AGENTGATE_TOKEN";
/// Limit for the TCP connect plus the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for sending one frame (a path that does not drain is taken for dead).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that stayed up this long was healthy: its loss starts a new outage with
/// a fresh budget of attempts. A shorter-lived one counts as a failed attempt, so a
/// server process that keeps dying is not restarted without end.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// A WebSocket ping goes out this often ...
const PING_EVERY: Duration = Duration::from_secs(20);
/// ... and a connection that heard nothing for this long is taken for dead.
const DEAD_AFTER: Duration = Duration::from_secs(60);
/// How long the answer to a replayed `initialize` is awaited before held messages go
/// out anyway.
const REINIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages held while (re)connecting; past this, requests are answered at once.
const QUEUE_MAX: usize = 1024;
/// Longest a request is held while (re)connecting before it is answered with an
/// error (the attempts go on).
const HOLD_MAX: Duration = Duration::from_secs(15);
/// How long the gateway's answering close frame is awaited at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Standard-input lines read ahead.
const STDIN_QUEUE: usize = 64;
/// The JSON-RPC error code of every answer the shim makes itself ("server error").
const SHIM_ERROR: i64 = -32000;
/// Prefix of the ids of the shim's own replayed `initialize` requests.
const REINIT_ID_PREFIX: &str = "agentgate-shim-reinitialize-";
/// Prefix of every diagnostic line.
const ME: &str = "agentgate mcp-shim";

/// Reconnects: 200 ms doubling up to 10 s, full jitter, 8 attempts per outage.
fn policy() -> RetryPolicy {
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10), 8)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) fn run(args: McpShimArgs) -> u8 {
    let target = match Target::parse(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{ME}: usage: {e}");
            return EXIT_USAGE;
        }
    };
    let sources = Sources {
        token: match (&args.token_file, &args.token_env) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(var)) => Source::Var { name: var.clone(), default: false },
            (None, None) => Source::Var { name: DEFAULT_TOKEN_ENV.to_owned(), default: true },
        },
        env_file: args.env_file.clone(),
    };
    let env = process_env();
    let token = match sources.resolve(&env) {
        Ok(t) => t,
        Err(report) => {
            eprintln!("{ME}: {report}");
            return EXIT_USAGE;
        }
    };
    eprintln!(
        "{ME}: relaying standard input and output to {} with the token from {} (fingerprint {})",
        target.shown, token.from, token.fp
    );
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{ME}: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let (tx, lines) = mpsc::channel::<String>(STDIN_QUEUE);
    // A plain thread: a blocking read of standard input must not hold the runtime.
    std::thread::spawn(move || read_stdin(&tx));
    let status = runtime.block_on(Shim::new(target, sources, env, token, lines).run());
    runtime.shutdown_background();
    status
}

/// Send each standard-input line (without its line ending) until end of input.
fn read_stdin(tx: &mpsc::Sender<String>) {
    let mut input = std::io::stdin().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        match String::from_utf8(std::mem::take(&mut buf)) {
            Ok(line) => {
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
            Err(_) => eprintln!("{ME}: skipped a standard-input line that is not UTF-8 (JSON-RPC is UTF-8 text)"),
        }
    }
}

// ---------------------------------------------------------------------------------
// The URL
// ---------------------------------------------------------------------------------

/// Where to connect.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    /// `host:port/path`: what diagnostics show (never user info or a query).
    shown: String,
    /// The MCP server's name, the last segment of `/v1/mcp/{server}`.
    server: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let req = url
            .into_client_request()
            .map_err(|_| "--url must be a WebSocket URL like ws://127.0.0.1:8079/v1/mcp/everything".to_owned())?;
        let uri = req.uri();
        if uri.scheme_str() == Some("wss") {
            // tokio-tungstenite is built without TLS (docs/crates.md).
            return Err("this build speaks ws:// only (no TLS): reach a wss:// gateway through a local \
                 TLS-terminating proxy and give its ws:// URL"
                .to_owned());
        }
        if let Some(q) = uri.query()
            && q.split('&').any(|kv| {
                let k = kv.split('=').next().unwrap_or("");
                k == "access_token" || k == "ticket"
            })
        {
            return Err("--url carries a credential in its query; a token is never a command-line value \
                 (and /v1/mcp does not read access_token): use --token-env, --token-file or AGENTGATE_TOKEN"
                .to_owned());
        }
        let path = uri.path();
        let server = path
            .rsplit_once("/v1/mcp/")
            .map(|(_, name)| name)
            .filter(|name| !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| {
                format!(
                    "--url must name an MCP server as .../v1/mcp/{{server}} (e.g. ws://127.0.0.1:8079/v1/mcp/everything); \
                     got the path {path:?}"
                )
            })?
            .to_owned();
        let host = uri.host().unwrap_or("?");
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self { url: url.to_owned(), shown: format!("{host}:{port}{path}"), server })
    }
}

// ---------------------------------------------------------------------------------
// The credential
// ---------------------------------------------------------------------------------

/// Where the token is read.
#[derive(Debug, Clone)]
enum Source {
    /// `--token-file`.
    File(PathBuf),
    /// `--token-env VAR`, or `AGENTGATE_TOKEN` (`default`).
    Var { name: String, default: bool },
}

/// The token's source and the env file.
#[derive(Debug, Clone)]
struct Sources {
    token: Source,
    env_file: Option<PathBuf>,
}

/// A token, where it came from, and its fingerprint. `Debug` shows no value.
#[derive(Clone)]
struct Token {
    value: String,
    fp: String,
    /// e.g. "environment variable AGENTGATE_TOKEN".
    from: String,
    /// A file that a later request re-reads after a refusal.
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(fp {}, from {})", self.fp, self.from)
    }
}

/// What an env file holds, as far as the shim is concerned.
enum EnvFile {
    /// Its variables, first declaration first.
    Read(Vec<(String, String)>),
    Missing,
    Unreadable(String),
}

impl EnvFile {
    fn load(path: &Path) -> Self {
        let iter = match dotenvy::from_path_iter(path) {
            Ok(i) => i,
            Err(e) if e.not_found() => return Self::Missing,
            Err(dotenvy::Error::Io(e)) => return Self::Unreadable(e.to_string()),
            Err(_) => return Self::Unreadable("cannot be read".to_owned()),
        };
        let mut vars = Vec::new();
        for item in iter {
            match item {
                Ok(kv) => vars.push(kv),
                // The line itself is not shown: it may hold a secret.
                Err(dotenvy::Error::LineParse(_, at)) => {
                    return Self::Unreadable(format!("is not KEY=VALUE lines (parse error at character {at})"));
                }
                Err(e) => return Self::Unreadable(format!("cannot be parsed: {}", kind_of(&e))),
            }
        }
        Self::Read(vars)
    }

    fn get(&self, name: &str) -> Option<&str> {
        match self {
            Self::Read(vars) => vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// A dotenvy error without any text of the file.
fn kind_of(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::Io(e) => e.to_string(),
        dotenvy::Error::EnvVar(_) => "a variable substitution failed".to_owned(),
        _ => "malformed".to_owned(),
    }
}

fn token_of(value: &str, from: String, file: Option<PathBuf>) -> Token {
    let value = value.trim().to_owned();
    Token { fp: agentgate_auth::fingerprint(value.as_bytes()), value, from, file }
}

impl Sources {
    /// The token, or a report naming every place looked and what was found there.
    fn resolve(&self, env: &Env) -> Result<Token, String> {
        let env_file = self.env_file.as_deref().map(|p| (p, EnvFile::load(p)));
        // An env file that was asked for must be there, whatever else holds a token.
        if let Some((path, state)) = &env_file {
            match state {
                EnvFile::Missing => {
                    return Err(format!(
                        "--env-file {} does not exist; fix the path in the MCP server's command line \
                         (a token is never taken from the command line itself)",
                        path.display()
                    ));
                }
                EnvFile::Unreadable(why) => return Err(format!("--env-file {} {why}", path.display())),
                EnvFile::Read(_) => {}
            }
        }
        let mut looked: Vec<String> = Vec::new();
        match &self.token {
            Source::File(path) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    let token = token_of(&text, format!("token file {}", path.display()), Some(path.clone()));
                    return check_header(token);
                }
                Ok(_) => looked.push(format!("token file {} (--token-file): exists but is empty", path.display())),
                Err(e) => looked.push(format!("token file {} (--token-file): cannot be read: {e}", path.display())),
            },
            Source::Var { name, default } => {
                let how = if *default { "the default; --token-env VAR names another" } else { "named by --token-env" };
                let in_file = env_file.as_ref().map(|(p, s)| (*p, s.get(name)));
                match env.get(name) {
                    Some(v) if !v.trim().is_empty() => {
                        return check_header(token_of(v, format!("environment variable {name}"), None));
                    }
                    Some(_) => looked.push(format!(
                        "environment variable {name} ({how}): set but empty in the shim's environment (check the \
                         \"env\" block of the IDE's MCP config); a value in an env file never overrides a \
                         variable that is set, even to an empty value"
                    )),
                    None => match in_file {
                        Some((path, Some(v))) if !v.trim().is_empty() => {
                            let token =
                                token_of(v, format!("{name} in env file {}", path.display()), Some(path.to_path_buf()));
                            return check_header(token);
                        }
                        _ => looked.push(format!("environment variable {name} ({how}): not set")),
                    },
                }
                match in_file {
                    None => looked.push("env file: none given (--env-file F)".to_owned()),
                    Some((path, None)) => looked
                        .push(format!("env file {} (--env-file): exists, but does not set {name}", path.display())),
                    Some((path, Some(v))) if v.trim().is_empty() => {
                        looked.push(format!("env file {} (--env-file): sets {name} to an empty value", path.display()))
                    }
                    Some((path, Some(_))) => looked.push(format!(
                        "env file {} (--env-file): sets {name}, but the empty variable above takes precedence",
                        path.display()
                    )),
                }
                looked.push("token file: none given (--token-file F)".to_owned());
            }
        }
        if let (Source::File(_), Some((path, _))) = (&self.token, &env_file) {
            looked.push(format!("env file {} (--env-file): loaded, but --token-file names the token", path.display()));
        }
        Err(format!(
            "no token, so not starting (an empty token is never sent). Looked in:\n{}\nA token is never taken from \
             the command line. Mint one with `agentgate token mint --sub NAME --scope \"mcp:SERVER\"` and put it in \
             one of those places.",
            looked.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n")
        ))
    }
}

/// A token that can travel in an `Authorization` header.
fn check_header(token: Token) -> Result<Token, String> {
    if HeaderValue::from_str(&format!("Bearer {}", token.value)).is_err() || token.value.contains(char::is_whitespace) {
        return Err(format!(
            "the token from {} (fingerprint {}) holds whitespace or control characters and cannot be sent in \
             an Authorization header; is it really a token?",
            token.from, token.fp
        ));
    }
    Ok(token)
}

// ---------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------

/// The handshake request: `Authorization: Bearer`, and subprotocol `mcp` offered.
fn handshake(target: &Target, token: &str) -> Result<Request, ClientError> {
    let mut req = target.url.as_str().into_client_request().map_err(|_| ClientError::InvalidInput("--url".into()))?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ClientError::InvalidInput("the token cannot travel in a header".into()))?;
    auth.set_sensitive(true);
    req.headers_mut().insert("authorization", auth);
    req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(agentgate_protocol::MCP_SUBPROTOCOL));
    Ok(req)
}

async fn connect(target: Target, token: String) -> Result<Ws, ClientError> {
    let req = handshake(&target, &token)?;
    drop(token);
    let endpoint = target.shown;
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async_with_config(req, None, true)).await {
        Err(_) => Err(ClientError::Timeout(format!("no handshake answer from {endpoint} within {CONNECT_TIMEOUT:?}"))),
        Ok(Err(e)) => Err(ws_error(e, &endpoint)),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// A tungstenite error as the client library's typed error.
fn ws_error(e: tungstenite::Error, endpoint: &str) -> ClientError {
    use tungstenite::Error as E;
    use tungstenite::error::{ProtocolError, UrlError};
    match e {
        E::Http(resp) => rejected(&resp),
        E::Io(e) => ClientError::Network(format!("cannot talk to {endpoint}: {e}")),
        E::Tls(e) => ClientError::Network(format!("TLS with {endpoint} failed: {e}")),
        E::Url(UrlError::TlsFeatureNotEnabled) => ClientError::Protocol(
            "wss:// needs TLS, which this build does not include; use ws:// through a local TLS-terminating proxy"
                .to_owned(),
        ),
        E::Url(UrlError::UnableToConnect(_)) => ClientError::Network(format!("cannot connect to {endpoint}")),
        E::Url(e) => ClientError::InvalidInput(format!("invalid URL: {e}")),
        E::Protocol(ProtocolError::ResetWithoutClosingHandshake) | E::ConnectionClosed | E::AlreadyClosed => {
            ClientError::Network(format!("{endpoint} dropped the connection without a close frame"))
        }
        E::WriteBufferFull(_) => ClientError::Network(format!("the connection to {endpoint} is not draining")),
        other => ClientError::Protocol(format!("{endpoint}: {other}")),
    }
}

/// An HTTP refusal of the handshake (PROTOCOL.md section 3).
fn rejected(resp: &Response<Option<Vec<u8>>>) -> ClientError {
    let body: Option<Value> = resp.body().as_deref().and_then(|b| serde_json::from_slice(b).ok());
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get("error"))
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(|s| excerpt(s, 300))
    };
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let code = field("code").or_else(|| {
        header("www-authenticate").and_then(|w| {
            let (_, rest) = w.split_once("error_description=\"")?;
            rest.split('"').next().map(str::to_owned)
        })
    });
    ClientError::Rejected {
        status: resp.status().as_u16(),
        code,
        message: field("message")
            .unwrap_or_else(|| resp.status().canonical_reason().unwrap_or("no reason given").to_owned()),
        request_id: field("request_id").or_else(|| header("x-request-id")),
        retry_after_s: header("retry-after").and_then(|v| v.trim().parse().ok()),
    }
}

fn closed(frame: Option<&CloseFrame>) -> ClientError {
    let (close_code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
    let code = serde_json::from_str::<Value>(&reason)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned));
    ClientError::Closed { close_code, code, reason: excerpt(&reason, 300) }
}

fn excerpt(s: &str, max: usize) -> String {
    let one: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one.chars().count() > max { format!("{}...", one.chars().take(max).collect::<String>()) } else { one }
}

/// Whether a failure is worth another attempt: network faults, timeouts, HTTP 429 and
/// 5xx, and closes other than the refusals (4400, 4401, 4403, 4404, 4408) and the
/// protocol faults (1002, 1003, 1007, 1008, 1010).
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Network(_) | ClientError::Timeout(_) => true,
        ClientError::Rejected { status, .. } => *status == 429 || *status >= 500,
        ClientError::Closed { close_code, .. } => {
            !matches!(close_code, 4400 | 4401 | 4403 | 4404 | 4408 | 1002 | 1003 | 1007 | 1008 | 1010)
        }
        ClientError::Protocol(_) | ClientError::InvalidInput(_) => false,
    }
}

/// "HTTP 401 token_expired", "close 1012 server_restart", "network: ...".
fn what(e: &ClientError) -> String {
    match e {
        ClientError::Rejected { status, code, .. } => {
            format!("HTTP {status}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())
        }
        ClientError::Closed { close_code, code, reason } => match code {
            Some(c) => format!("close {close_code} {c}"),
            None if !reason.is_empty() => format!("close {close_code} ({reason})"),
            None => format!("close {close_code}"),
        },
        ClientError::Network(m) => format!("network: {m}"),
        ClientError::Timeout(m) => format!("timeout: {m}"),
        ClientError::Protocol(m) => format!("protocol: {m}"),
        ClientError::InvalidInput(m) => format!("invalid input: {m}"),
    }
}

// ---------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------

/// The parts of a JSON-RPC message the shim looks at; the rest passes untouched.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<String>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    params: Option<Value>,
}

/// A request the client sent: its id (exact text, and a key to match answers) and
/// method.
#[derive(Debug, Clone)]
struct Req {
    key: String,
    raw_id: String,
    method: String,
}

/// One standard-input line, classified.
#[derive(Debug)]
struct Outgoing {
    line: String,
    /// The requests in it (one, or several in a batch).
    requests: Vec<Req>,
    /// The request ids a `notifications/cancelled` in it cancels.
    cancels: Vec<String>,
    is_initialize: bool,
    is_initialized: bool,
    /// When it was held for want of a connection.
    held_at: Option<Instant>,
}

/// The key of an id: its JSON value re-serialized, so `"7"` and `7` stay apart.
fn id_key(raw: &RawValue) -> String {
    serde_json::from_str::<Value>(raw.get()).map_or_else(|_| raw.get().to_owned(), |v| v.to_string())
}

fn envelopes(line: &str) -> Vec<Envelope<'_>> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<Envelope<'_>>>(line).unwrap_or_default()
    } else {
        serde_json::from_str::<Envelope<'_>>(line).map(|e| vec![e]).unwrap_or_default()
    }
}

impl Outgoing {
    fn classify(line: String) -> Self {
        let mut out = Self {
            requests: Vec::new(),
            cancels: Vec::new(),
            is_initialize: false,
            is_initialized: false,
            held_at: None,
            line: String::new(),
        };
        for env in envelopes(&line) {
            let (Some(method), id) = (env.method, env.id) else { continue };
            if let Some(id) = id {
                out.is_initialize |= method == "initialize";
                out.requests.push(Req { key: id_key(id), raw_id: id.get().to_owned(), method });
            } else if method == "notifications/cancelled" {
                if let Some(rid) = env.params.as_ref().and_then(|p| p.get("requestId")) {
                    out.cancels.push(rid.to_string());
                }
            } else if method == "notifications/initialized" {
                out.is_initialized = true;
            }
        }
        out.line = line;
        out
    }
}

/// An answer from the server: the key of its id, and whether it is a success.
fn answer_of(text: &str) -> Option<(String, bool)> {
    let env = serde_json::from_str::<Envelope<'_>>(text).ok()?;
    if env.method.is_some() {
        return None;
    }
    Some((id_key(env.id?), env.result.is_some()))
}

/// A JSON-RPC error answer to `raw_id` (its exact text).
fn error_answer(raw_id: &str, message: &str, data: &Value) -> String {
    let error = json!({"code": SHIM_ERROR, "message": message, "data": {"agentgate": data}});
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{raw_id},\"error\":{error}}}")
}

// ---------------------------------------------------------------------------------
// The relay
// ---------------------------------------------------------------------------------

type Connecting = Pin<Box<dyn Future<Output = Result<Ws, ClientError>>>>;

/// The state of the link to the gateway.
enum Link {
    Up(Box<Up>),
    /// An attempt in flight.
    Connecting(Connecting),
    /// Waiting before the next attempt.
    Backoff(Instant),
    /// An outage's attempts ran out; the next request makes one more.
    Down(String),
    /// The gateway refused; nothing is retried unless the token changes.
    Refused(Refusal),
}

struct Up {
    ws: Ws,
    since: Instant,
    last_heard: Instant,
    /// The id of a replayed `initialize` awaiting its answer, and the deadline.
    reinit: Option<(String, Instant)>,
}

#[derive(Debug, Clone)]
struct Refusal {
    /// The JSON-RPC error message for every request.
    message: String,
    data: Value,
    /// The fingerprint of the refused token.
    fp: String,
}

enum Event {
    Frame(Option<Result<Message, tungstenite::Error>>),
    ReinitTimeout,
    Connected(Result<Box<Ws>, ClientError>),
    BackoffDone,
}

async fn next_event(link: &mut Link) -> Event {
    match link {
        Link::Up(up) => match up.reinit.as_ref().map(|(_, at)| *at) {
            Some(at) => tokio::select! {
                f = up.ws.next() => Event::Frame(f),
                () = tokio::time::sleep_until(at) => Event::ReinitTimeout,
            },
            None => Event::Frame(up.ws.next().await),
        },
        Link::Connecting(fut) => Event::Connected(fut.as_mut().await.map(Box::new)),
        Link::Backoff(at) => {
            tokio::time::sleep_until(*at).await;
            Event::BackoffDone
        }
        Link::Down(_) | Link::Refused(_) => std::future::pending().await,
    }
}

struct Shim {
    target: Target,
    sources: Sources,
    env: Env,
    token: Token,
    lines: mpsc::Receiver<String>,
    link: Link,
    /// Failed attempts in a row in this outage.
    streak: u32,
    /// Requests sent on the current connection and not yet answered.
    pending: HashMap<String, Req>,
    /// Messages held while (re)connecting.
    queue: VecDeque<Outgoing>,
    /// `initialize` requests in flight (key → line), to remember the one that succeeds.
    init_in_flight: HashMap<String, String>,
    /// The client's last successful `initialize`, replayed on a new connection.
    init_memo: Option<String>,
    /// The client's `notifications/initialized`, replayed after it.
    initialized_memo: Option<String>,
    replays: u64,
    /// What the last failed attempt or lost connection was (for messages).
    last_failure: String,
    /// Standard output is gone: nothing more can be said to the client.
    stdout_gone: bool,
}

impl Shim {
    fn new(target: Target, sources: Sources, env: Env, token: Token, lines: mpsc::Receiver<String>) -> Self {
        let link = Link::Connecting(Box::pin(connect(target.clone(), token.value.clone())));
        Self {
            target,
            sources,
            env,
            token,
            lines,
            link,
            streak: 0,
            pending: HashMap::new(),
            queue: VecDeque::new(),
            init_in_flight: HashMap::new(),
            init_memo: None,
            initialized_memo: None,
            replays: 0,
            last_failure: "not connected yet".to_owned(),
            stdout_gone: false,
        }
    }

    async fn run(mut self) -> u8 {
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.stdout_gone {
                eprintln!("{ME}: standard output is closed; exiting");
                self.close().await;
                return 0;
            }
            let held = self.hold_deadline();
            tokio::select! {
                () = tokio::time::sleep_until(held.unwrap_or_else(Instant::now)), if held.is_some() => self.expire_held(),
                line = self.lines.recv() => match line {
                    Some(line) => self.on_line(line).await,
                    None => {
                        self.close().await;
                        return 0;
                    }
                },
                event = next_event(&mut self.link) => self.on_event(event).await,
                _ = ping.tick() => self.on_tick().await,
            }
        }
    }

    // --- standard input ---

    async fn on_line(&mut self, line: String) {
        if line.trim().is_empty() {
            return;
        }
        let msg = Outgoing::classify(line);
        match &self.link {
            Link::Up(up) if up.reinit.is_none() => self.send(msg).await,
            Link::Up(_) | Link::Connecting(_) | Link::Backoff(_) => self.hold(msg),
            Link::Down(why) => {
                if msg.requests.is_empty() {
                    return;
                }
                eprintln!("{ME}: a new request: trying {} again (last failure: {why})", self.target.shown);
                self.hold(msg);
                self.attempt_once();
            }
            Link::Refused(refusal) => {
                let refusal = refusal.clone();
                if msg.requests.is_empty() {
                    return;
                }
                if self.token.file.is_some()
                    && let Ok(token) = self.sources.resolve(&self.env)
                    && token.fp != refusal.fp
                {
                    eprintln!(
                        "{ME}: the token in {} changed (fingerprint {} -> {}); trying {} again",
                        token.from, refusal.fp, token.fp, self.target.shown
                    );
                    self.token = token;
                    self.hold(msg);
                    self.attempt_once();
                    return;
                }
                for r in &msg.requests {
                    self.say(&error_answer(&r.raw_id, &refusal.message, &refusal.data));
                }
            }
        }
    }

    /// Hold a message until the connection is up; answer its requests if too many wait.
    fn hold(&mut self, mut msg: Outgoing) {
        if self.queue.len() >= QUEUE_MAX {
            let data = json!({"reason": "queue_full", "retryable": true});
            for r in &msg.requests {
                let text = format!(
                    "agentgate: {QUEUE_MAX} messages are already waiting for the connection to {}; the request may be retried",
                    self.target.shown
                );
                self.say(&error_answer(&r.raw_id, &text, &data));
            }
            return;
        }
        msg.held_at = Some(Instant::now());
        self.queue.push_back(msg);
    }

    /// When the oldest held message has waited long enough.
    fn hold_deadline(&self) -> Option<Instant> {
        self.queue.front().and_then(|m| m.held_at).map(|t| t + HOLD_MAX)
    }

    /// Answer the requests held for [`HOLD_MAX`] (dropping the notifications held
    /// before them); the attempts go on.
    fn expire_held(&mut self) {
        let now = Instant::now();
        let message = format!(
            "agentgate: no connection to the MCP server at {} for {} s (last failure: {}); still trying; the request \
             may be retried",
            self.target.shown,
            HOLD_MAX.as_secs(),
            self.last_failure
        );
        let data = json!({"reason": "not_connected", "retryable": true, "cause": self.last_failure});
        while self.queue.front().and_then(|m| m.held_at).is_some_and(|t| t + HOLD_MAX <= now) {
            let Some(msg) = self.queue.pop_front() else { break };
            for r in &msg.requests {
                self.say(&error_answer(&r.raw_id, &message, &data));
            }
        }
    }

    /// One attempt, after which a failure counts as the end of the outage.
    fn attempt_once(&mut self) {
        self.streak = policy().max_attempts.saturating_sub(1);
        self.start_attempt();
    }

    fn start_attempt(&mut self) {
        self.link = Link::Connecting(Box::pin(connect(self.target.clone(), self.token.value.clone())));
    }

    /// Send a message on the live connection, tracking its requests.
    async fn send(&mut self, msg: Outgoing) {
        for r in &msg.requests {
            self.pending.insert(r.key.clone(), r.clone());
            if msg.is_initialize && r.method == "initialize" {
                self.init_in_flight.insert(r.key.clone(), msg.line.clone());
            }
        }
        if msg.is_initialized {
            self.initialized_memo = Some(msg.line.clone());
        }
        let sent = self.send_text(msg.line).await;
        for key in &msg.cancels {
            // A cancelled request gets no answer (the server sends none either).
            self.pending.remove(key);
        }
        if let Err(e) = sent {
            self.lost(e).await;
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        let Link::Up(up) = &mut self.link else {
            return Err(ClientError::Network("not connected".into()));
        };
        match tokio::time::timeout(SEND_TIMEOUT, up.ws.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ws_error(e, &self.target.shown)),
            Err(_) => Err(ClientError::Timeout(format!(
                "a frame to {} did not go out within {SEND_TIMEOUT:?}",
                self.target.shown
            ))),
        }
    }

    /// Send the held messages, in order, while the connection is up and ready.
    async fn flush(&mut self) {
        while matches!(&self.link, Link::Up(up) if up.reinit.is_none()) {
            let Some(msg) = self.queue.pop_front() else { return };
            self.send(msg).await;
        }
    }

    // --- the gateway ---

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Frame(Some(Ok(Message::Text(text)))) => self.on_text(text.as_str()).await,
            Event::Frame(Some(Ok(Message::Close(frame)))) => self.lost(closed(frame.as_ref())).await,
            Event::Frame(Some(Ok(Message::Binary(_)))) => {
                self.heard();
                eprintln!("{ME}: ignored a binary frame from the gateway (MCP messages are text)");
            }
            Event::Frame(Some(Ok(_))) => self.heard(),
            Event::Frame(Some(Err(e))) => {
                let e = ws_error(e, &self.target.shown);
                self.lost(e).await;
            }
            Event::Frame(None) => {
                let e =
                    ClientError::Network(format!("{} ended the connection without a close frame", self.target.shown));
                self.lost(e).await;
            }
            Event::ReinitTimeout => {
                eprintln!(
                    "{ME}: no answer to the replayed initialize within {REINIT_TIMEOUT:?}; sending held messages anyway"
                );
                self.reinit_done().await;
            }
            Event::Connected(Ok(ws)) => self.connected(ws).await,
            Event::Connected(Err(e)) => self.failed(e),
            Event::BackoffDone => self.start_attempt(),
        }
    }

    fn heard(&mut self) {
        if let Link::Up(up) = &mut self.link {
            up.last_heard = Instant::now();
        }
    }

    async fn on_text(&mut self, text: &str) {
        self.heard();
        if let Some((key, ok)) = answer_of(text) {
            let replayed = matches!(&self.link, Link::Up(up) if up.reinit.as_ref().is_some_and(|(id, _)| *id == key));
            if replayed {
                if !ok {
                    eprintln!("{ME}: the MCP server refused the replayed initialize: {}", excerpt(text, 500));
                }
                self.reinit_done().await;
                return;
            }
            self.pending.remove(&key);
            if let Some(line) = self.init_in_flight.remove(&key)
                && ok
            {
                self.init_memo = Some(line);
            }
        }
        self.say(text);
    }

    async fn connected(&mut self, ws: Box<Ws>) {
        let now = Instant::now();
        self.link = Link::Up(Box::new(Up { ws: *ws, since: now, last_heard: now, reinit: None }));
        eprintln!("{ME}: connected to {} (token fingerprint {})", self.target.shown, self.token.fp);
        let client_initializes = self.queue.iter().any(|m| m.is_initialize);
        if let (Some(init), false) = (self.init_memo.clone(), client_initializes) {
            // A new connection is a new server process: re-establish the session the
            // client already has before anything of the client's reaches it.
            self.replays += 1;
            let id = format!("{REINIT_ID_PREFIX}{}", self.replays);
            let Ok(mut v) = serde_json::from_str::<Value>(&init) else { return self.flush().await };
            v["id"] = Value::String(id.clone());
            if let Err(e) = self.send_text(v.to_string()).await {
                return self.lost(e).await;
            }
            eprintln!("{ME}: replayed the client's initialize on the new connection");
            if let Link::Up(up) = &mut self.link {
                // Kept as the key its answer is matched by (the id as JSON).
                up.reinit = Some((Value::String(id).to_string(), Instant::now() + REINIT_TIMEOUT));
            }
            return;
        }
        self.flush().await;
    }

    async fn reinit_done(&mut self) {
        if let Link::Up(up) = &mut self.link {
            up.reinit = None;
        }
        if let Some(line) = self.initialized_memo.clone()
            && let Err(e) = self.send_text(line).await
        {
            return self.lost(e).await;
        }
        self.flush().await;
    }

    /// An attempt failed.
    fn failed(&mut self, e: ClientError) {
        if !retryable(&e) {
            return self.refuse(&e);
        }
        self.streak += 1;
        eprintln!("{ME}: attempt {} to reach {} failed: {}", self.streak, self.target.shown, what(&e));
        self.retry_later(&e);
    }

    /// The live connection ended.
    async fn lost(&mut self, e: ClientError) {
        let healthy = matches!(&self.link, Link::Up(up) if up.since.elapsed() >= HEALTHY_AFTER);
        if let Link::Up(up) = &mut self.link {
            // A close frame of our own, in case the gateway is still there (a stalled path).
            let _ = tokio::time::timeout(Duration::from_millis(200), up.ws.close(None)).await;
        }
        self.link = Link::Down(String::new());
        self.init_in_flight.clear();
        if !retryable(&e) {
            return self.refuse(&e);
        }
        let (reason, message) = lost_message(&e);
        let data = json!({"reason": reason, "retryable": true, "cause": what(&e)});
        let pending: Vec<Req> = self.pending.drain().map(|(_, r)| r).collect();
        for r in &pending {
            self.say(&error_answer(&r.raw_id, &message, &data));
        }
        eprintln!(
            "{ME}: the connection to {} was lost ({}); {} request(s) in flight answered with an error",
            self.target.shown,
            what(&e),
            pending.len()
        );
        self.streak = if healthy { 0 } else { self.streak + 1 };
        self.retry_later(&e);
    }

    /// Back off before the next attempt, or give up this outage.
    fn retry_later(&mut self, e: &ClientError) {
        self.last_failure = what(e);
        let policy = policy();
        if self.streak >= policy.max_attempts {
            let why = what(e);
            eprintln!(
                "{ME}: giving up on {} after {} attempts ({why}); the next request tries again",
                self.target.shown, policy.max_attempts
            );
            let message = format!(
                "agentgate: cannot reach the MCP server at {} ({why}) after {} attempts; check that the gateway is \
                 running and reachable; the next request tries again",
                self.target.shown, policy.max_attempts
            );
            let data = json!({"reason": "gateway_unreachable", "retryable": true, "cause": why});
            self.answer_held(&message, &data);
            self.link = Link::Down(why);
            return;
        }
        let mut delay = policy.delay(self.streak);
        if let Some(floor) = e.retry_after() {
            delay = delay.max(floor);
        }
        eprintln!(
            "{ME}: reconnecting to {} in {} ms (attempt {} of {})",
            self.target.shown,
            delay.as_millis(),
            self.streak + 1,
            policy.max_attempts
        );
        self.link = Link::Backoff(Instant::now() + delay);
    }

    /// The gateway refused: answer everything waiting, and every later request.
    fn refuse(&mut self, e: &ClientError) {
        let refusal = refusal(e, &self.target, &self.token);
        eprintln!("{ME}: {}", refusal.message);
        let pending: Vec<Req> = self.pending.drain().map(|(_, r)| r).collect();
        for r in &pending {
            self.say(&error_answer(&r.raw_id, &refusal.message, &refusal.data));
        }
        self.answer_held(&refusal.message, &refusal.data);
        self.link = Link::Refused(refusal);
    }

    /// Answer the held requests with an error; drop the held notifications.
    fn answer_held(&mut self, message: &str, data: &Value) {
        let held: Vec<Outgoing> = self.queue.drain(..).collect();
        for r in held.iter().flat_map(|m| &m.requests) {
            self.say(&error_answer(&r.raw_id, message, data));
        }
    }

    async fn on_tick(&mut self) {
        let Link::Up(up) = &mut self.link else { return };
        if up.last_heard.elapsed() >= DEAD_AFTER {
            let e = ClientError::Timeout(format!("nothing from {} for {DEAD_AFTER:?}", self.target.shown));
            return self.lost(e).await;
        }
        let ping = tokio::time::timeout(SEND_TIMEOUT, up.ws.send(Message::Ping(Vec::new().into()))).await;
        if !matches!(ping, Ok(Ok(()))) {
            let e = ClientError::Network(format!("cannot ping {}", self.target.shown));
            self.lost(e).await;
        }
    }

    /// End of standard input: close with 1000, relay what is still in flight for a
    /// moment, and end.
    async fn close(&mut self) {
        let Link::Up(up) = &mut self.link else { return };
        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        if tokio::time::timeout(CLOSE_WAIT, up.ws.close(Some(frame))).await.is_err() {
            return;
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        loop {
            let Link::Up(up) = &mut self.link else { return };
            match tokio::time::timeout_at(deadline, up.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => self.say(t.as_str()),
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => return,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// One line to the client.
    fn say(&mut self, text: &str) {
        if self.stdout_gone {
            return;
        }
        let mut out = std::io::stdout().lock();
        if out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).is_err() {
            self.stdout_gone = true;
        }
    }
}

/// The reason code and JSON-RPC message for requests lost with a connection.
fn lost_message(e: &ClientError) -> (String, String) {
    let reason = e.reason_code().map_or_else(|| "connection_lost".to_owned(), str::to_owned);
    let why = match e.reason_code() {
        Some("mcp_server_failed") => format!(
            "the MCP server process failed ({}) and its state is lost; a new process is started for the next request",
            what(e)
        ),
        Some("server_restart") => format!("the gateway is restarting ({})", what(e)),
        _ => what(e),
    };
    (
        reason,
        format!(
            "agentgate: the connection to the gateway was lost before the answer came: {why}; the request may be retried"
        ),
    )
}

/// What a refusal means and what to do, for the JSON-RPC errors and the log.
fn refusal(e: &ClientError, target: &Target, token: &Token) -> Refusal {
    let code = e.reason_code().unwrap_or("").to_owned();
    let server = &target.server;
    let renew = match &token.file {
        Some(_) => format!(
            "mint a new token (agentgate token mint --sub NAME --scope \"mcp:{server}\") and write it to {}: the next \
             request picks it up (or restart the MCP server in your IDE)",
            token.from
        ),
        None => format!(
            "mint a new token (agentgate token mint --sub NAME --scope \"mcp:{server}\"), put it in {}, and restart the \
             MCP server in your IDE",
            token.from
        ),
    };
    let hint = match code.as_str() {
        "token_expired" => format!("the token (fingerprint {}) has expired: {renew}", token.fp),
        "token_revoked" => format!("the token (fingerprint {}) was revoked: {renew}", token.fp),
        "signature_invalid" | "key_unknown" | "issuer_invalid" | "audience_invalid" | "algorithm_not_allowed" => {
            format!(
                "the token (fingerprint {}) was not issued for this gateway (compare keys with `agentgate token inspect` \
             and `agentgate doctor`): {renew}",
                token.fp
            )
        }
        "token_malformed"
        | "api_key_invalid"
        | "claim_missing"
        | "token_type_invalid"
        | "token_not_yet_valid"
        | "token_missing"
        | "auth_timeout"
        | "ticket_invalid" => {
            format!("the token (fingerprint {}) is not a usable access token: {renew}", token.fp)
        }
        "scope_missing" => format!(
            "the token lacks scope \"mcp:{server}\" (or \"mcp:*\"): mint one with --scope \"mcp:{server}\", put it in \
             {}, and restart the MCP server in your IDE",
            token.from
        ),
        "mcp_server_unknown" => {
            format!("the gateway hosts no MCP server named {server:?}: fix --url in your IDE's MCP config")
        }
        "anonymous_not_allowed" => format!("the token's principal is anonymous: {renew}"),
        _ => format!("see the gateway's log; check --url {}", target.shown),
    };
    let shown_code = if code.is_empty() { what(e) } else { code.clone() };
    let mut message = format!("agentgate rejected the connection: {shown_code} — {hint}");
    let mut data = json!({"reason": if code.is_empty() { "rejected".to_owned() } else { code.clone() },
        "retryable": false, "cause": what(e), "token_fingerprint": token.fp});
    if let ClientError::Rejected { message: server_message, request_id, .. } = e {
        message.push_str(&format!(" (gateway: {server_message}"));
        if let Some(id) = request_id {
            message.push_str(&format!("; request_id {id}"));
            data["request_id"] = json!(id);
        }
        message.push(')');
    }
    Refusal { message, data, fp: token.fp.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn var_sources(env_file: Option<PathBuf>) -> Sources {
        Sources { token: Source::Var { name: DEFAULT_TOKEN_ENV.into(), default: true }, env_file }
    }

    #[test]
    fn env_file_values_never_override_set_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(&file, "# comment\nexport AGENTGATE_TOKEN=\"from-file\"\nOTHER='x'\n").unwrap();
        let t = var_sources(Some(file.clone())).resolve(&env(&[])).unwrap();
        assert_eq!(t.value, "from-file");
        assert!(t.from.contains("env file"), "{}", t.from);
        assert_eq!(t.file.as_deref(), Some(file.as_path()));
        let t = var_sources(Some(file.clone())).resolve(&env(&[("AGENTGATE_TOKEN", "from-env")])).unwrap();
        assert_eq!(t.value, "from-env");
        assert!(t.file.is_none());
        let e = var_sources(Some(file.clone())).resolve(&env(&[("AGENTGATE_TOKEN", "")])).unwrap_err();
        assert!(e.contains("set but empty") && e.contains("never overrides"), "{e}");
    }

    #[test]
    fn a_missing_token_names_every_place_looked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agentgate.env");
        std::fs::write(&file, "OTHER=1\n").unwrap();
        let e = var_sources(Some(file.clone())).resolve(&env(&[])).unwrap_err();
        assert!(e.contains("AGENTGATE_TOKEN") && e.contains("not set"), "{e}");
        assert!(e.contains(&file.display().to_string()) && e.contains("does not set AGENTGATE_TOKEN"), "{e}");
        assert!(e.contains("--token-file"), "{e}");
        std::fs::write(&file, "AGENTGATE_TOKEN=\n").unwrap();
        let e = var_sources(Some(file.clone())).resolve(&env(&[])).unwrap_err();
        assert!(e.contains("empty value"), "{e}");
        let e = var_sources(Some(dir.path().join("nope.env"))).resolve(&env(&[])).unwrap_err();
        assert!(e.contains("nope.env") && e.contains("does not exist"), "{e}");
        let e = var_sources(None).resolve(&env(&[])).unwrap_err();
        assert!(e.contains("none given (--env-file"), "{e}");
        let s = Sources { token: Source::File(dir.path().join("token")), env_file: None };
        let e = s.resolve(&env(&[])).unwrap_err();
        assert!(e.contains("token file") && e.contains("cannot be read"), "{e}");
    }

    #[test]
    fn a_parse_error_in_the_env_file_does_not_show_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(&file, "AGENTGATE_TOKEN='sekrit-value\n").unwrap();
        let e = var_sources(Some(file)).resolve(&env(&[])).unwrap_err();
        assert!(!e.contains("sekrit"), "{e}");
    }

    #[test]
    fn urls_must_name_an_mcp_server_and_carry_no_token() {
        let t = Target::parse("ws://127.0.0.1:9/v1/mcp/everything").unwrap();
        assert_eq!((t.server.as_str(), t.shown.as_str()), ("everything", "127.0.0.1:9/v1/mcp/everything"));
        assert!(Target::parse("wss://gw.example/v1/mcp/fs").unwrap_err().contains("ws:// only"));
        let t = Target::parse("ws://user:pw@gw.example:80/prefix/v1/mcp/fs").unwrap();
        assert_eq!(t.server, "fs");
        assert!(!t.shown.contains("pw"));
        assert!(Target::parse("ws://127.0.0.1:9/v1/ws").is_err());
        assert!(Target::parse("ws://127.0.0.1:9/v1/mcp/").is_err());
        assert!(Target::parse("http ://x").is_err());
        let e = Target::parse("ws://127.0.0.1:9/v1/mcp/x?access_token=abc").unwrap_err();
        assert!(!e.contains("abc"), "{e}");
    }

    #[test]
    fn requests_cancellations_and_answers_are_recognized_with_ids_kept_exact() {
        let m = Outgoing::classify(r#"{"jsonrpc":"2.0","id":"7","method":"initialize","params":{}}"#.into());
        assert!(m.is_initialize);
        assert_eq!(m.requests[0].raw_id, r#""7""#);
        let m = Outgoing::classify(r#"{"jsonrpc":"2.0","id": 1e2 ,"method":"tools/list"}"#.into());
        assert_eq!(m.requests[0].raw_id, "1e2");
        let m = Outgoing::classify(
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}"#.into(),
        );
        assert!(m.requests.is_empty());
        assert_eq!(m.cancels, vec!["7".to_owned()]);
        let m = Outgoing::classify(r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]"#.into());
        assert_eq!(m.requests.len(), 1);
        let m = Outgoing::classify("not json".into());
        assert!(m.requests.is_empty());
        // A client's answer to a server's request is not a request.
        let m = Outgoing::classify(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#.into());
        assert!(m.requests.is_empty());
        assert_eq!(answer_of(r#"{"jsonrpc":"2.0","id":"7","result":{}}"#), Some((r#""7""#.to_owned(), true)));
        assert_eq!(answer_of(r#"{"jsonrpc":"2.0","id":7,"error":{}}"#), Some(("7".to_owned(), false)));
        assert_eq!(answer_of(r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage"}"#), None);
        let e = error_answer(r#""a\u0062""#, "m", &json!({}));
        assert!(e.starts_with(r#"{"jsonrpc":"2.0","id":"a\u0062","error":{"#), "{e}");
        let v: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["error"]["code"], SHIM_ERROR);
    }

    #[test]
    fn refusals_are_not_retried_and_losses_are() {
        let closed =
            |c: u16, code: &str| ClientError::Closed { close_code: c, code: Some(code.into()), reason: String::new() };
        for e in [closed(1012, "server_restart"), closed(1011, "mcp_server_failed"), closed(4429, "rate_limited")] {
            assert!(retryable(&e), "{e:?}");
        }
        assert!(retryable(&ClientError::Network("x".into())));
        for e in [closed(4401, "token_expired"), closed(4403, "scope_missing"), closed(4404, "mcp_server_unknown")] {
            assert!(!retryable(&e), "{e:?}");
        }
        let rejected = |status: u16| ClientError::Rejected {
            status,
            code: None,
            message: String::new(),
            request_id: None,
            retry_after_s: None,
        };
        assert!(!retryable(&rejected(401)) && !retryable(&rejected(404)));
        assert!(retryable(&rejected(503)) && retryable(&rejected(429)) && retryable(&rejected(502)));
    }

    #[test]
    fn refusal_messages_name_the_code_and_what_to_do_without_the_token() {
        let target = Target::parse("ws://127.0.0.1:9/v1/mcp/everything").unwrap();
        let token = token_of("tok-secret", "environment variable AGENTGATE_TOKEN".into(), None);
        let e = ClientError::Closed { close_code: 4401, code: Some("token_expired".into()), reason: String::new() };
        let r = refusal(&e, &target, &token);
        assert!(r.message.starts_with("agentgate rejected the connection: token_expired — "), "{}", r.message);
        assert!(r.message.contains("restart the MCP server in your IDE"), "{}", r.message);
        assert!(!r.message.contains("tok-secret"));
        assert_eq!(r.data["reason"], "token_expired");
        let e = ClientError::Rejected {
            status: 403,
            code: Some("scope_missing".into()),
            message: "needs scope".into(),
            request_id: Some("req_1".into()),
            retry_after_s: None,
        };
        let r = refusal(&e, &target, &token);
        assert!(r.message.contains("mcp:everything") && r.message.contains("req_1"), "{}", r.message);
    }
}
