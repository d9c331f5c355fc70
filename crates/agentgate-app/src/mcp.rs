//! MCP servers hosted over WebSocket (PROTOCOL.md section 7): `GET /v1/mcp/{server}`
//! authenticates as `/v1/ws` does (but never from `access_token`), then relays each
//! text frame to a process of the server's own (one per connection) as one line on
//! its stdin, and each line of its stdout back as one text frame, byte for byte.
//!
//! The process gets only the environment the operator listed plus `PATH` and `HOME`,
//! never the gateway's secrets; it runs in its own process group, which is ended when
//! the connection closes; its stderr goes to the gateway's log with the connection id.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agentgate_auth::Principal;
use agentgate_protocol::{ErrorCode, MCP_SUBPROTOCOL};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio_util::codec::{AnyDelimiterCodec, FramedRead, LinesCodec};

use crate::config::McpServerConfig;
use crate::connection::{self, End, Inbound, Slots};
use crate::credentials::{self, Endpoint, Found};
use crate::error::Rejection;
use crate::limits::Slot;
use crate::routes;
use crate::session::Owner;
use crate::state::AppState;
use crate::upgrade::Socket;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Time allowed to write one message to the server's stdin.
const STDIN_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Time a server gets to exit after SIGTERM before its group is killed.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Longest stderr line logged (longer lines are cut).
const MAX_STDERR_LINE: usize = 8 * 1024;

/// A connection that passed every check, holding its places in the counts.
#[derive(Debug)]
pub(crate) struct Admitted {
    principal: Principal,
    server: McpServerConfig,
    _slots: Slots,
    _processes: (Slot<()>, Slot<Owner>),
}

/// `GET /v1/mcp/{server}` through hyper (see `routes::agent_ws`).
pub(crate) async fn mcp_ws(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(server): Path<String>,
    req: axum::extract::Request,
) -> Response {
    routes::ws_via_hyper(app, crate::upgrade::Target::Mcp(server), remote, req).await
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn decide(
    app: &AppState,
    server: &str,
    headers: &HeaderMap,
    query: &[(String, String)],
    origin: Option<&str>,
    remote: SocketAddr,
    request_id: &str,
) -> Result<Admitted, Rejection> {
    let ip_slot = crate::admission::admit_ip(app, remote, request_id)?;
    crate::admission::check_origin(app, headers, origin, request_id)?;
    crate::admission::check_backend(app, request_id)?;
    let found = credentials::extract(headers, query, Endpoint::Mcp, false)
        .map_err(|(code, msg)| Rejection::new(code, msg, request_id))?;
    let credential = match found {
        Found::One(c) => c,
        Found::None(msg) => return Err(Rejection::new(ErrorCode::TokenMissing, msg, request_id)),
    };
    let principal = crate::admission::principal_of(app, &credential, origin, request_id).await?;
    let fp = Some(principal.token_fp.clone());
    let Some(config) = app.config.mcp.servers.iter().find(|s| s.name == server) else {
        let known: Vec<&str> = app.config.mcp.servers.iter().map(|s| s.name.as_str()).collect();
        return Err(Rejection::new(
            ErrorCode::McpServerUnknown,
            format!(
                "no MCP server named {:?}; this gateway hosts {known:?}",
                server.chars().take(64).collect::<String>()
            ),
            request_id,
        )
        .with_token_fp(fp));
    };
    let mut offered = credentials::offered_protocols(headers).peekable();
    if offered.peek().is_some() && !offered.any(|p| p == MCP_SUBPROTOCOL) {
        return Err(Rejection::new(
            ErrorCode::ProtocolError,
            "Sec-WebSocket-Protocol must offer \"mcp\" (with the bearer entry beside it), or nothing",
            request_id,
        )
        .with_token_fp(fp));
    }
    let wanted = format!("mcp:{server}");
    if !(principal.has_scope(&wanted) || principal.has_scope("mcp:*")) {
        return Err(Rejection::new(
            ErrorCode::ScopeMissing,
            format!("MCP server {server:?} needs scope {wanted:?} or \"mcp:*\""),
            request_id,
        )
        .with_token_fp(fp));
    }
    let too_many = |msg: String| {
        let mut r = Rejection::new(ErrorCode::TooManyConnections, msg, request_id).with_token_fp(fp.clone());
        r.retry_after_s = Some(1);
        r
    };
    let principal_slot = crate::admission::admit_principal(app, &principal).map_err(|(_, m)| too_many(m))?;
    let total = app.mcp_processes.acquire(()).ok_or_else(|| {
        too_many(format!("{} MCP server processes are running (mcp.max_processes)", app.config.mcp.max_processes))
    })?;
    let mine = app.mcp_per_principal.acquire(Owner::of(&principal)).ok_or_else(|| {
        too_many(format!(
            "this principal already runs {} MCP server processes (mcp.max_processes_per_principal)",
            app.config.mcp.max_processes_per_principal
        ))
    })?;
    Ok(Admitted { principal, server: config.clone(), _slots: (ip_slot, principal_slot), _processes: (total, mine) })
}

pub(crate) async fn relay(
    app: Arc<AppState>,
    mut socket: Socket,
    admitted: Admitted,
    remote: SocketAddr,
    request_id: String,
) {
    let _gauge = crate::metrics::ConnectionGauge::open();
    let Some(_tracked) = app.track_connection() else {
        connection::close(&mut socket, ErrorCode::ServerRestart).await;
        return;
    };
    let conn_id = app.next_conn_id();
    let server = &admitted.server;
    let mut child = match spawn(server) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(conn_id, request_id = %request_id, server = %server.name, error = %e, "MCP server could not start");
            connection::close(&mut socket, ErrorCode::McpServerFailed).await;
            return;
        }
    };
    tracing::info!(
        conn_id,
        request_id = %request_id,
        server = %server.name,
        pid = child.id().unwrap_or(0),
        subject = %admitted.principal.subject,
        via = %admitted.principal.via,
        token_fp = %admitted.principal.token_fp,
        remote = %remote,
        "MCP connection accepted"
    );
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        stop(&mut child).await;
        connection::close(&mut socket, ErrorCode::McpServerFailed).await;
        return;
    };
    let name = server.name.clone();
    let log_stderr = tokio::spawn(async move {
        let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(MAX_STDERR_LINE));
        while let Some(line) = lines.next().await {
            match line {
                Ok(line) => tracing::info!(conn_id, server = %name, "mcp stderr: {line}"),
                Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => {
                    tracing::info!(conn_id, server = %name, "mcp stderr: (a line longer than {MAX_STDERR_LINE} bytes)")
                }
                Err(_) => break,
            }
        }
    });
    let max = app.config.server.max_message_bytes;
    let stdout = FramedRead::new(stdout, AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), max));
    let end = pump(&app, &mut socket, stdin, stdout, &admitted.principal, conn_id).await;
    // The client's close first, so that revocation and expiry end the connection on
    // time even when the server is slow to stop.
    close_client(&mut socket, end, conn_id, &server.name).await;
    drop(socket);
    drop(_gauge);
    stop(&mut child).await;
    log_stderr.abort();
}

async fn close_client(socket: &mut Socket, end: End, conn_id: u64, server: &str) {
    match end {
        End::Close(code) => {
            tracing::info!(conn_id, server = %server, reason = code.as_str(), "MCP connection closed by server");
            connection::close(socket, code).await;
        }
        End::ClientClosed => {
            // The answering close frame goes with the FIN: the socket is dropped next.
            socket.get_mut().last_write();
            let _ = tokio::time::timeout(connection::CLOSE_WRITE, futures_util::SinkExt::flush(socket)).await;
            tracing::info!(conn_id, server = %server, "MCP connection closed by client");
        }
        End::Gone => tracing::info!(conn_id, server = %server, "MCP connection lost"),
    }
}

async fn pump(
    app: &AppState,
    socket: &mut Socket,
    mut stdin: ChildStdin,
    mut stdout: FramedRead<tokio::process::ChildStdout, AnyDelimiterCodec>,
    principal: &Principal,
    conn_id: u64,
) -> End {
    let limiter = connection::message_limiter(app);
    // Shutdown, revocation and expiry close the connection on time, also while a write
    // (to the client or to the server's stdin) is blocked.
    let mut interrupts = crate::interrupts::Interrupts::new(app);
    let expire_at = crate::interrupts::Expiry::of(principal.expires_at, &app.config.auth).expire_at;
    let max = app.config.server.max_message_bytes;
    loop {
        tokio::select! {
            biased;
            code = interrupts.wait(app, principal, expire_at) => return End::Close(code),
            line = stdout.next() => match line {
                Some(Ok(bytes)) => {
                    let Ok(text) = Utf8Bytes::try_from(bytes) else {
                        tracing::warn!(conn_id, "MCP server wrote a line that is not UTF-8");
                        return End::Close(ErrorCode::McpServerFailed);
                    };
                    if let Err(end) = interrupts.send(app, principal, expire_at, socket, Some(Message::Text(text))).await {
                        return end;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(conn_id, error = %e, "MCP server output refused (a line above server.max_message_bytes?)");
                    return End::Close(ErrorCode::McpServerFailed);
                }
                None => {
                    tracing::info!(conn_id, "MCP server closed its stdout (exited)");
                    return End::Close(ErrorCode::McpServerFailed);
                }
            },
            frame = socket.next() => match connection::inbound(frame, max, &limiter) {
                Inbound::Text(text) => {
                    if text.as_str().contains('\n') {
                        return End::Close(ErrorCode::ProtocolError);
                    }
                    let mut line = Vec::with_capacity(text.len() + 1);
                    line.extend_from_slice(text.as_bytes());
                    line.push(b'\n');
                    let write = tokio::time::timeout(STDIN_WRITE_TIMEOUT, stdin.write_all(&line));
                    let written = match interrupts.race(app, principal, expire_at, write).await {
                        Ok(w) => w,
                        Err(code) => return End::Close(code),
                    };
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::info!(conn_id, error = %e, "MCP server stdin closed");
                            return End::Close(ErrorCode::McpServerFailed);
                        }
                        Err(_) => {
                            tracing::warn!(conn_id, "MCP server did not read its stdin for {STDIN_WRITE_TIMEOUT:?}");
                            return End::Close(ErrorCode::McpServerFailed);
                        }
                    }
                }
                Inbound::Control => {}
                Inbound::End(end) => return end,
            },
        }
    }
}

fn spawn(server: &McpServerConfig) -> std::io::Result<Child> {
    let mut cmd = Command::new(&server.command[0]);
    cmd.args(&server.command[1..]).env_clear();
    for var in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.envs(&server.env);
    if let Some(cwd) = &server.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    cmd.spawn()
}

/// End the server's whole process group: SIGTERM, then SIGKILL after a grace.
async fn stop(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_err() {
            let _ = killpg(group, Signal::SIGKILL);
        } else {
            // The leader exited; anything it left in its group goes too.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
    let _ = child.kill().await;
}
