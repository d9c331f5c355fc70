//! Serving: shared state, the accept loop (axum over a bound listener), periodic
//! sweeps, and graceful shutdown (close every WebSocket 1012 at once, wait up to
//! `server.shutdown_grace_s`, then return).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::state::{AppState, Waits};

/// How often expired sessions and runs are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Serve on `listener` until `shutdown` completes, then shut down gracefully.
///
/// Bind `listener` with [`bind`]: connections that reach a listener bound otherwise
/// before this call get no `TCP_NODELAY` (see [`bind`]).
///
/// # Errors
/// The `addr_file` cannot be written, or the listener fails.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listening = Listening::new(listener)?;
    let signals = Signals::install(&config)?;
    let grace = config.server.shutdown_grace;
    let (state, waits) = AppState::new(config).await?;
    serve_state(listening, state, waits, grace, signals, shutdown).await
}

/// Serve one node of a memory backend shared with other in-process nodes (the
/// backend contract tests run two nodes this way).
///
/// # Errors
/// As [`serve`].
pub async fn serve_on(
    listener: TcpListener,
    config: Config,
    memory: crate::backend::memory::MemoryBackend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listening = Listening::new(listener)?;
    let signals = Signals::install(&config)?;
    let grace = config.server.shutdown_grace;
    let node_id = agentgate_protocol::id::new_id("n_");
    let (state, waits) = AppState::with_backend(config, node_id, Some(memory)).await?;
    serve_state(listening, state, waits, grace, signals, shutdown).await
}

/// Bind `addr` (`host:port`, resolved and tried in order like
/// `TcpListener::bind`) for [`serve`], with `TCP_NODELAY` set before `listen`.
///
/// Accepted sockets inherit the option from their listener at the moment the kernel
/// completes their TCP handshake, which may be long before the accept loop takes them
/// (while the node starts, or under load). A listener that gets the option only after
/// `listen` leaves those first connections with Nagle's algorithm: each small frame
/// written while the previous one is unacknowledged then waits for the client's
/// delayed ACK, about 40 ms on Linux. The backlog is 1024 connections (the kernel caps
/// it at `net.core.somaxconn`).
///
/// # Errors
/// The address does not resolve, or no address it resolves to can be bound.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        match listen_on(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolves to no socket address")
    }))
}

fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As std's bind does on Unix: a restarted node binds its port at once, even while
    // its predecessor's connections are in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The listener being served and what was learnt of it before serving.
struct Listening {
    listener: TcpListener,
    local: SocketAddr,
    /// Whether accepted sockets inherit `TCP_NODELAY` from the listener (Linux); where
    /// they do not, the accept loop sets it on each.
    nodelay_inherited: bool,
}

impl Listening {
    /// Set `TCP_NODELAY` on the listener first, before anything else. Connections the
    /// kernel completed before this do not inherit it: a listener from [`bind`] has it
    /// from the start.
    fn new(listener: TcpListener) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let nodelay_inherited =
            cfg!(target_os = "linux") && socket2::SockRef::from(&listener).set_tcp_nodelay(true).is_ok();
        Ok(Self { listener, local, nodelay_inherited })
    }
}

/// The TLS pair and the SIGHUP handler, set up before the address is announced: from
/// then on SIGHUP never ends the process.
struct Signals {
    tls: Option<Arc<crate::tls::Tls>>,
    sighup: tokio::task::JoinHandle<()>,
}

impl Signals {
    fn install(config: &Config) -> std::io::Result<Self> {
        let tls = match &config.server.tls {
            Some(t) => Some(crate::tls::Tls::new(t).map_err(std::io::Error::other)?),
            None => None,
        };
        let sighup = crate::tls::spawn_sighup(tls.clone())?;
        Ok(Self { tls, sighup })
    }
}

async fn serve_state(
    listening: Listening,
    state: Arc<AppState>,
    waits: Waits,
    grace: Duration,
    signals: Signals,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Waits { connections: mut tracked, runs: mut drivers } = waits;
    let Signals { tls, sighup } = signals;
    let Listening { listener, local, nodelay_inherited } = listening;
    // Announced once the node's state is built (HTTP clients, backend), before any
    // task starts: a script that waits for the file reaches a node that answers at
    // once, and a file that cannot be written stops the node before it serves.
    if let Some(path) = &state.config.server.addr_file {
        write_addr_file(path, local)?;
    }
    tracing::info!(addr = %local, tls = tls.is_some(), "agentgate listening");
    let metrics_server = match &state.config.server.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} (server.metrics_listen): {e}"))
            })?;
            tracing::info!(addr = %l.local_addr()?, "metrics listening");
            Some(tokio::spawn(async move { axum::serve(l, crate::routes::metrics_router()).await }))
        }
        None => None,
    };
    let sweeper = tokio::spawn(sweep(Arc::clone(&state)));
    let refresher = tokio::spawn(refresh_jwks(Arc::clone(&state)));
    let app = crate::routes::router(Arc::clone(&state));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let trigger_state = Arc::clone(&state);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: closing connections with 1012 server_restart");
        let _ = trigger_state.shutdown.send(true);
        // Live connections watch the revocation channel for shutdown too.
        trigger_state.revocations.poke();
        let _ = stop_tx.send(());
    });
    let transport = Transport {
        tls: tls.as_ref().map(|t| t.acceptor()),
        proxies: Arc::new(state.config.server.trusted_proxies.clone()),
    };
    let head_timeout = state.config.server.handshake_timeout;
    accept_loop(listener, nodelay_inherited, app, Arc::clone(&state), stop_rx, head_timeout, transport).await;
    // The accept loop has stopped; WebSockets are closing. Wait for them, bounded.
    drop(state.tracker.lock().unwrap_or_else(|p| p.into_inner()).take());
    state.runs.close_drivers();
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, tracked.recv()).await.is_err() {
        tracing::warn!(grace_s = grace.as_secs(), "shutdown grace elapsed; dropping remaining connections");
    }
    // Every run's terminal event (`node_shutdown`) is stored before the node leaves.
    if tokio::time::timeout_at(deadline, drivers.recv()).await.is_err() {
        tracing::warn!(grace_s = grace.as_secs(), "shutdown grace elapsed with runs still ending");
    }
    state.backend.leave.leave().await;
    sweeper.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    refresher.abort();
    sighup.abort();
    tracing::info!("agentgate stopped");
    Ok(())
}

/// Largest request head (request line and headers); larger ones get 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What the accept loop wraps around each TCP connection: TLS, when configured, and
/// the client address behind trusted proxies.
struct Transport {
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxies: Arc<crate::client_ip::TrustedProxies>,
}

/// What every connection task shares.
struct Shared {
    app: axum::Router,
    state: Arc<AppState>,
    head_timeout: Duration,
    transport: Transport,
}

/// Accept connections until `stop` fires, one task each ([`connection`]). Unlike
/// `axum::serve`, this bounds the time to the end of the request head
/// (`server.handshake_timeout_ms`, the slowloris bound, which also bounds the TLS
/// handshake) and its size, serves a WebSocket upgrade on the raw stream, and hands
/// each request its client address (the TCP peer, or the address a trusted proxy
/// forwarded; see [`crate::client_ip`]).
async fn accept_loop(
    listener: TcpListener,
    nodelay_inherited: bool,
    app: axum::Router,
    state: Arc<AppState>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    head_timeout: Duration,
    transport: Transport,
) {
    let (closing, closed) = watch::channel(());
    let shared = Arc::new(Shared { app, state, head_timeout, transport });
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // No Nagle delay on any connection: inherited from the listener on Linux
        // (`Listening::new`), set on each accepted socket elsewhere.
        if !nodelay_inherited {
            let _ = stream.set_nodelay(true);
        }
        tokio::spawn(connection(Arc::clone(&shared), stream, remote, closed.clone()));
    }
    drop(closing);
}

/// One TCP connection, from accept to end, in one task: the [`handshake`], then the
/// WebSocket it upgraded to, if any. Chained, not nested: once the handshake is done,
/// its state is gone and the task holds only the connection's.
fn connection(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    closed: watch::Receiver<()>,
) -> impl Future<Output = ()> + Send {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    handshake(shared, stream, remote, closed).then(|ready| match ready {
        Some(ready) => Either::Left(ready.serve()),
        None => Either::Right(std::future::ready(())),
    })
}

/// TLS, the first request head, then either a WebSocket upgrade on the raw stream
/// (returned, to be served) or HTTP/1.1 through hyper (served here).
async fn handshake(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    closed: watch::Receiver<()>,
) -> Option<crate::upgrade::Ready> {
    use crate::upgrade::{Head, Io};
    let io = match &shared.transport.tls {
        None => Io::plain(stream),
        // Boxed: the TLS handshake's state should not size every connection's task.
        Some(tls) => match Box::pin(tokio::time::timeout(shared.head_timeout, tls.accept(stream))).await {
            Ok(Ok(stream)) => Io::tls(stream),
            Ok(Err(e)) => {
                crate::metrics::tls_handshake_failed("error");
                tracing::debug!(remote = %remote, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                crate::metrics::tls_handshake_failed("timeout");
                tracing::debug!(remote = %remote, "TLS handshake timed out (server.handshake_timeout_ms)");
                return None;
            }
        },
    };
    let mut io = io;
    let head = tokio::time::timeout(shared.head_timeout, crate::upgrade::read_head(&mut io, MAX_HEAD_BYTES)).await;
    match head {
        Ok(Head::WebSocket(req)) => {
            let client = shared.transport.proxies.client_addr(remote, req.headers());
            let state = Arc::clone(&shared.state);
            drop(shared);
            crate::upgrade::accept_raw(state, io, req, client).await
        }
        Ok(Head::Other(prefix)) => {
            // Boxed: hyper's connection state should not size WebSocket tasks.
            Box::pin(serve_http(shared, crate::upgrade::Prefixed::new(io, prefix), remote, closed)).await;
            None
        }
        Ok(Head::Closed) => None,
        Err(_) => {
            tracing::debug!(remote = %remote, "no request head within server.handshake_timeout_ms");
            None
        }
    }
}

/// Serve HTTP/1.1 with upgrades on one connection (plain or TLS) until it ends or the
/// server closes.
async fn serve_http<IO>(shared: Arc<Shared>, io: IO, remote: SocketAddr, mut closed: watch::Receiver<()>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let proxies = Arc::clone(&shared.transport.proxies);
    let service = shared.app.clone().map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        let client = proxies.client_addr(remote, req.headers());
        req.extensions_mut().insert(ConnectInfo(client));
        req.extensions_mut().insert(crate::client_ip::PeerAddr(remote));
        req.map(axum::body::Body::new)
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(shared.head_timeout).max_buf_size(MAX_HEAD_BYTES);
    drop(shared);
    // The request head is capped at exactly MAX_HEAD_BYTES, whatever hyper buffers.
    let io = crate::head_limit::HeadLimit::new(io, MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(remote = %remote, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = closed.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

fn write_addr_file(path: &std::path::Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Fetch every JWKS at start, then whenever its refresh interval has passed.
async fn refresh_jwks(state: Arc<AppState>) {
    if state.config.jwks.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for source in &state.config.jwks {
            if source.refresh_due() {
                let _ = source.fetch(&state.http).await;
            }
        }
    }
}

async fn sweep(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        state.backend.sessions.sweep().await;
        state.backend.runs.sweep();
        state.tickets.sweep();
        state.limits.sweep();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// Accepted sockets inherit `TCP_NODELAY` from their listener when the kernel
    /// completes their handshake, not when they are accepted: set after `listen`, it
    /// misses a connection already waiting in the backlog; set by [`super::bind`]
    /// before `listen`, it reaches every connection.
    #[tokio::test]
    async fn a_connection_waiting_in_the_backlog_has_no_nagle_delay() {
        let late = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        late.set_nonblocking(true).unwrap();
        let late = tokio::net::TcpListener::from_std(late).unwrap();
        let port = late.local_addr().unwrap().port();
        let waiting = tokio::net::TcpStream::connect(late.local_addr().unwrap()).await.unwrap();
        // The kernel has made the accepted socket once it is in the accept queue.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while accept_queue(port) == 0 {
            assert!(std::time::Instant::now() < deadline, "the connection never reached the accept queue");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        socket2::SockRef::from(&late).set_tcp_nodelay(true).unwrap();
        let (accepted, _) = late.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap(), "set after listen, the option missed the waiting connection");
        drop((waiting, accepted));

        let listener = super::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "a connection accepted from the backlog");
        let later = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted_later, _) = listener.accept().await.unwrap();
        assert!(accepted_later.nodelay().unwrap(), "a connection accepted at once");
        drop((waiting, later));
    }

    /// Connections waiting in the accept queue of the IPv4 listener on `port`: the
    /// `rx_queue` column of its LISTEN row in `/proc/net/tcp`.
    fn accept_queue(port: u16) -> usize {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let local = format!(":{port:04X}");
        table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 4 && f[3] == "0A" && f[1].ends_with(&local))
            .and_then(|f| f[4].split(':').nth(1).and_then(|rx| usize::from_str_radix(rx, 16).ok()))
            .unwrap_or(0)
    }
}
