//! `agentgate mcp-shim --url URL [--token-env VAR | --token-file F] [--env-file F] [--ca-file F]`: a
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
//! - a `wss://` certificate that does not verify (`--ca-file` names the only trusted
//!   CAs): every waiting request is answered at once with an error naming the TLS error;
//!   the next request tries again.
//! - notifications never get a reply; at the end of standard input the answers to what
//!   was relayed are still delivered (for up to 10 s; what is unanswered then gets an
//!   error), then the shim exits 0.
//!
//! Layout: [`target`] (the URL), [`credential`] (where the token comes from),
//! [`connecting`] (the handshake, through agentgate-client), [`jsonrpc`] (what the shim
//! reads of each message), [`relay`] (the state machine), [`advice`] (what errors say).

mod advice;
mod connecting;
mod credential;
mod jsonrpc;
mod relay;
mod target;

use std::io::BufRead;
use std::time::Duration;

use agentgate_client::RetryPolicy;
use tokio::sync::mpsc;

use super::{EXIT_FAILURE, EXIT_USAGE, process_env};
use crate::cli::McpShimArgs;
use credential::{Source, Sources};
use relay::Shim;
use target::Target;

/// The variable read when neither `--token-env` nor `--token-file` is given.
const DEFAULT_TOKEN_ENV: &str = "AGENTGATE_TOKEN";
/// Standard-input lines read ahead.
const STDIN_QUEUE: usize = 64;
/// Prefix of every diagnostic line.
const ME: &str = "agentgate mcp-shim";

/// Reconnects: 200 ms doubling up to 10 s, full jitter, 8 attempts per outage.
fn policy() -> RetryPolicy {
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(10), 8)
}

pub(crate) fn run(args: McpShimArgs) -> u8 {
    let target = match Target::parse(&args.url) {
        Ok(t) => Target { ca_file: args.ca_file.clone(), ..t },
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
