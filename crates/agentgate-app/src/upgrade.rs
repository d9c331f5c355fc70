//! WebSocket upgrades, done on the connection's own stream.
//!
//! A new connection's first request head is read here ([`read_head`]). A WebSocket
//! upgrade for `/v1/ws` or `/v1/mcp/{server}` is decided and answered on the raw
//! stream ([`serve_raw`]): the `101 Switching Protocols` (or the HTTP refusal) is
//! written here, and the connection then lives in the same task, with no HTTP machinery
//! left around it. Every other request (the HTTP APIs, health, metrics, anything
//! malformed or unusual) goes to hyper and axum with the bytes already read
//! ([`Prefixed`]); an upgrade that arrives later on such a keep-alive connection is
//! answered through hyper's upgrade ([`hyper_answer`]). Both paths take the same
//! decisions ([`answer`]) and run the same connection code ([`serve`]).
//!
//! Why: an idle connection then costs one task whose state is the connection itself,
//! and a handshake costs one head parse instead of hyper's connection, router and
//! upgrade hand-off (docs/performance.md).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentgate_protocol::{ErrorCode, MCP_SUBPROTOCOL, PROTOCOL_V1, id};
use axum::body::Bytes;
use axum::http::header::{
    CONNECTION, CONTENT_LENGTH, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING, UPGRADE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::config::FailureMode;
use crate::connection::{self, Start};
use crate::credentials;
use crate::error::Rejection;
use crate::state::AppState;
use crate::telemetry;

/// An upgraded connection.
pub(crate) type Socket = WebSocketStream<Io>;

/// Most headers in a request head handled here; a head with more goes to hyper.
const MAX_HEADERS: usize = 64;

/// The stream under a WebSocket: a plain or TLS TCP stream, or (rarely) hyper's
/// upgraded stream; with the bytes of a response head held back ([`Io::cork`]) to go
/// out with the first frame.
#[derive(Debug)]
pub(crate) struct Io {
    stream: Stream,
    /// Written before anything else: with the next write, flush or read.
    corked: Vec<u8>,
    /// Set by [`Io::last_write`]: what is written now is the last before the socket
    /// closes.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    last: bool,
}

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls' state is large.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// An upgrade answered through hyper (a keep-alive connection's later request).
    Hyper(Box<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>),
}

impl Io {
    /// A plain TCP stream.
    pub(crate) fn plain(s: TcpStream) -> Self {
        Self { stream: Stream::Plain(s), corked: Vec::new(), last: false }
    }

    /// A TLS stream.
    pub(crate) fn tls(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Self { stream: Stream::Tls(Box::new(s)), corked: Vec::new(), last: false }
    }

    fn hyper(u: hyper::upgrade::Upgraded) -> Self {
        Self { stream: Stream::Hyper(Box::new(hyper_util::rt::TokioIo::new(u))), corked: Vec::new(), last: false }
    }

    /// Hold `head` back to send it in one segment with the first frame (the 101 and
    /// the welcome: one write, one packet and one wakeup of the client instead of
    /// two). A read sends it first, so a client that must speak first (first-message
    /// auth) gets its 101 at once.
    fn cork(&mut self, head: Vec<u8>) {
        self.corked = head;
    }

    /// Hold back a text frame too, after the head: the welcome goes out with the 101,
    /// and never sits in the WebSocket's own write buffer afterwards.
    pub(crate) fn cork_text(&mut self, text: String) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let frame = Frame::message(text, OpCode::Data(Data::Text), true);
        self.corked.reserve(frame.len());
        // Formatting into a Vec cannot fail.
        let _ = frame.format(&mut self.corked);
    }

    /// What is written from now on is the last before the socket closes (the answer
    /// to a client's close frame). On plain TCP it is sent with `MSG_MORE`: the kernel
    /// holds it until the close, which sends it with the FIN in one segment instead of
    /// two. Each segment costs the server a transmit and, on loopback, the receiver's
    /// processing too (docs/performance.md). Call it only when the socket is closed
    /// right after the write: a held segment otherwise waits for the next write.
    /// Linux only (elsewhere the write goes out as usual).
    pub(crate) fn last_write(&mut self) {
        self.last = true;
    }

    /// Write out the held-back bytes.
    fn poll_uncork(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.corked.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.corked) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.corked.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.corked = Vec::new();
        Poll::Ready(Ok(()))
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Stream::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
            Stream::Hyper($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
            Stream::Hyper(io) => io.is_write_vectored(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.corked.is_empty() {
            std::task::ready!(this.poll_uncork(cx))?;
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // The held-back head and the first frame in one write.
        loop {
            if this.corked.is_empty() {
                return match &mut this.stream {
                    #[cfg(any(target_os = "linux", target_os = "android"))]
                    Stream::Plain(tcp) if this.last => poll_send_more(tcp, cx, buf),
                    stream => Pin::new(stream).poll_write(cx, buf),
                };
            }
            let held = this.corked.len();
            let slices = [io::IoSlice::new(&this.corked), io::IoSlice::new(buf)];
            match std::task::ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, &slices))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n if n > held => {
                    this.corked = Vec::new();
                    return Poll::Ready(Ok(n - held));
                }
                n => {
                    this.corked.drain(..n);
                    if this.corked.is_empty() {
                        this.corked = Vec::new();
                    }
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_uncork(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_uncork(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// Write `buf` with `MSG_MORE` (see [`Io::last_write`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn poll_send_more(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        let sent = tcp
            .try_io(tokio::io::Interest::WRITABLE, || socket2::SockRef::from(tcp).send_with_flags(buf, libc::MSG_MORE));
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            sent => return Poll::Ready(sent),
        }
    }
}

/// A stream that first yields bytes already read from it (the head read here, handed
/// to hyper).
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, preceded by `prefix`.
    pub(crate) fn new(inner: S, prefix: Vec<u8>) -> Self {
        Self { prefix, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Which WebSocket endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `/v1/ws`.
    Agent,
    /// `/v1/mcp/{server}`, the server's name percent-decoded.
    Mcp(String),
}

/// A WebSocket upgrade request read from the raw stream.
#[derive(Debug)]
pub(crate) struct WsRequest {
    target: Target,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    /// Bytes read after the head (frames the client sent at once).
    leftover: Vec<u8>,
}

impl WsRequest {
    /// The request's headers.
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// What the first request head of a connection is.
#[derive(Debug)]
pub(crate) enum Head {
    /// A WebSocket upgrade for an endpoint served on the raw stream.
    WebSocket(Box<WsRequest>),
    /// Anything else: the bytes read so far, for hyper.
    Other(Vec<u8>),
    /// The peer closed (or the read failed) before a whole head.
    Closed,
}

/// Read the first request head (at most `limit` bytes; a longer one goes to hyper,
/// which answers 431). The caller bounds the time.
pub(crate) async fn read_head(io: &mut Io, limit: usize) -> Head {
    // Below glibc's large-chunk size (1 KiB), so that it comes from the thread cache;
    // a longer head grows the buffer.
    let mut buf = Vec::with_capacity(HEAD_BUFFER);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
        buf = match classify(buf) {
            Ok(head) => return head,
            Err(partial) if partial.len() >= limit => return Head::Other(partial),
            Err(partial) => partial,
        };
    }
}

/// The first read's buffer for a request head.
const HEAD_BUFFER: usize = 1000;

/// What a whole head is; the buffer back while the head is incomplete.
///
/// The header values of a WebSocket request are slices of the buffer (shared, not
/// copied); the buffer is freed with the headers, once the request is answered.
fn classify(buf: Vec<u8>) -> Result<Head, Vec<u8>> {
    // Shared before parsing, so that the parsed values can be sliced out of it; a
    // uniquely held `Bytes` turns back into its `Vec` without a copy.
    let shared = Bytes::from(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(&shared) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(shared.into()),
        Err(_) => return Ok(Head::Other(shared.into())),
    };
    let request = websocket_request(&req, &shared);
    let Some((target, query, headers)) = request else {
        return Ok(Head::Other(shared.into()));
    };
    let leftover = shared[len..].to_vec();
    Ok(Head::WebSocket(Box::new(WsRequest { target, headers, query, leftover })))
}

/// The parts of a `GET` WebSocket upgrade (HTTP/1.1, no body) for one of our
/// endpoints, its header values sliced out of `shared`; `None` for anything else.
fn websocket_request(req: &httparse::Request<'_, '_>, shared: &Bytes) -> Option<(Target, Query, HeaderMap)> {
    if req.method? != "GET" || req.version? != 1 {
        return None;
    }
    let (path, query) = match req.path?.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path?, None),
    };
    let target = target_of(path)?;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let (mut upgrade, mut body) = (false, false);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == UPGRADE {
            upgrade |= std::str::from_utf8(h.value).is_ok_and(|v| has_token_str(v, "websocket"));
        } else if name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && h.value != b"0") {
            body = true;
        }
        // `h.value` was parsed out of `shared`, so this slices without copying.
        let value = HeaderValue::from_maybe_shared(shared.slice_ref(h.value)).ok()?;
        headers.append(name, value);
    }
    if !upgrade || body {
        return None;
    }
    Some((target, parse_query(query), headers))
}

fn target_of(path: &str) -> Option<Target> {
    if path == "/v1/ws" {
        return Some(Target::Agent);
    }
    let name = path.strip_prefix("/v1/mcp/")?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(name).decode_utf8().ok()?;
    Some(Target::Mcp(decoded.into_owned()))
}

/// Query parameters, in order.
pub(crate) type Query = Vec<(String, String)>;

/// Query parameters, decoded as `application/x-www-form-urlencoded`.
pub(crate) fn parse_query(query: Option<&str>) -> Query {
    query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|v| has_token_str(v, token))
}

/// [`has_token`] of a value as text.
fn has_token_str(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Key` of a valid upgrade request (`Connection: upgrade`,
/// `Upgrade: websocket`, `Sec-WebSocket-Version: 13`), or `None`.
fn websocket_key(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection = headers.get_all(CONNECTION).iter().any(|v| has_token(v, "upgrade"));
    let upgrade = headers.get(UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let version = headers.get(SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    if connection && upgrade && version { headers.get(SEC_WEBSOCKET_KEY).cloned() } else { None }
}

/// What a WebSocket request gets.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Switch protocols, then serve.
    Upgrade(Box<Upgrade>),
    /// An HTTP response (a refusal before the upgrade).
    Http(Response),
}

/// An accepted upgrade: what the 101 says and what follows it.
#[derive(Debug)]
pub(crate) struct Upgrade {
    key: HeaderValue,
    protocol: Option<&'static str>,
    request_id: String,
    then: Then,
}

/// What follows the 101.
#[derive(Debug)]
pub(crate) enum Then {
    /// An agent connection (`/v1/ws`).
    Agent(Start),
    /// An MCP relay (`/v1/mcp/{server}`).
    Mcp(Box<crate::mcp::Admitted>),
    /// A refusal delivered as an immediate close (`server.failure_mode`).
    Close(ErrorCode),
}

/// Decide a WebSocket request, in the contract's order, and say what it gets.
/// `upgradable`: whether the transport can switch protocols at all.
pub(crate) async fn answer(
    app: &AppState,
    target: &Target,
    headers: &HeaderMap,
    query: &[(String, String)],
    remote: &SocketAddr,
    upgradable: bool,
) -> Answer {
    let request_id = id::request_id();
    // The origin is read where it is passed, not held across the decision: this
    // future's size is every handshake's (below 1 KiB, the allocator's thread cache).
    let decision = match target {
        Target::Agent => {
            let started = std::time::Instant::now();
            let decision = crate::routes::decide(app, headers, query, origin_of(headers), remote, &request_id).await;
            crate::metrics::handshake_decided(started.elapsed(), decision.is_ok());
            decision.map(Then::Agent)
        }
        // Boxed: the rarer path's state should not size every agent handshake's.
        Target::Mcp(server) => {
            Box::pin(crate::mcp::decide(app, server, headers, query, origin_of(headers), *remote, &request_id))
                .await
                .map(|a| Then::Mcp(Box::new(a)))
        }
    };
    let key = if upgradable { websocket_key(headers) } else { None };
    let has_origin = headers.contains_key(ORIGIN);
    let profile = app.config.server.profile;
    match (decision, key) {
        (Ok(then), Some(key)) => {
            Answer::Upgrade(Box::new(Upgrade { key, protocol: select_protocol(headers), request_id, then }))
        }
        (Ok(_), None) => {
            let r = Rejection::new(
                ErrorCode::ProtocolError,
                "this endpoint speaks WebSocket only; send an upgrade request (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)",
                &request_id,
            );
            telemetry::log_rejection(&r, *remote);
            Answer::Http(r.into_http(profile))
        }
        (Err(r), key) => {
            telemetry::log_rejection(&r, *remote);
            let as_close = match app.config.server.failure_mode {
                FailureMode::Http => false,
                FailureMode::Close => true,
                FailureMode::Auto => has_origin,
            };
            match key {
                Some(key) if as_close => Answer::Upgrade(Box::new(Upgrade {
                    key,
                    protocol: select_protocol(headers),
                    request_id: r.request_id,
                    then: Then::Close(r.code),
                })),
                _ => Answer::Http(r.into_http(profile)),
            }
        }
    }
}

/// The request's `Origin`, if any (a value that is not text reads as empty).
fn origin_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(ORIGIN).map(|o| o.to_str().unwrap_or(""))
}

/// The subprotocol to select: `agentgate.v1` or `mcp`, whichever the client offered
/// (never a credential entry).
fn select_protocol(headers: &HeaderMap) -> Option<&'static str> {
    if credentials::offered_protocols(headers).any(|p| p == PROTOCOL_V1) {
        Some(PROTOCOL_V1)
    } else if credentials::offered_protocols(headers).any(|p| p == MCP_SUBPROTOCOL) {
        Some(MCP_SUBPROTOCOL)
    } else {
        None
    }
}

/// Read buffer of an agent WebSocket (`/v1/ws`). It is what an idle connection keeps
/// allocated; its clients send small frames (a run, a refresh, a ping) and a larger one
/// is still read, in several reads. tungstenite's default (128 KiB) would dominate the
/// cost of an idle connection.
pub(crate) const AGENT_READ_BUFFER_BYTES: usize = 128;

/// Read buffer of an MCP WebSocket, whose client sends whole JSON-RPC requests (and
/// whose connection holds a process anyway).
pub(crate) const MCP_READ_BUFFER_BYTES: usize = 4096;

/// Buffer sizes and frame limits of a WebSocket that will serve `then`.
fn ws_config(app: &AppState, then: &Then) -> WebSocketConfig {
    let max = app.config.server.max_message_bytes;
    let read = if matches!(then, Then::Mcp(_)) { MCP_READ_BUFFER_BYTES } else { AGENT_READ_BUFFER_BYTES };
    WebSocketConfig::default()
        .read_buffer_size(read)
        .write_buffer_size(0)
        .max_write_buffer_size(max.saturating_mul(2).max(64 * 1024))
        // Frames up to twice the limit are read and refused with a clean 1009; the
        // library refuses anything larger on its own.
        .max_message_size(Some(max.saturating_mul(2)))
        .max_frame_size(Some(max.saturating_mul(2)))
}

/// The `101 Switching Protocols` head of an accepted upgrade, as bytes.
fn switching_head(up: &Upgrade) -> Vec<u8> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(up.key.as_bytes());
    // Room for the welcome frame that follows it in the same write (`Io::cork_text`).
    let mut head = Vec::with_capacity(768);
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n");
    head.extend_from_slice(b"sec-websocket-accept: ");
    head.extend_from_slice(accept.as_bytes());
    if let Some(p) = up.protocol {
        head.extend_from_slice(b"\r\nsec-websocket-protocol: ");
        head.extend_from_slice(p.as_bytes());
    }
    if matches!(up.then, Then::Close(_)) {
        head.extend_from_slice(b"\r\nx-request-id: ");
        head.extend_from_slice(up.request_id.as_bytes());
    }
    head.extend_from_slice(b"\r\ndate: ");
    push_http_date(&mut head);
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// Append the current time as an HTTP date (`Sun, 06 Dec 2026 21:43:13 GMT`), formatted
/// once per second per thread, as hyper does.
fn push_http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Answer a WebSocket request read by [`read_head`] on the raw stream: the refusal,
/// or the 101 and the upgraded connection, ready to serve. `remote` is the client's
/// address (behind trusted proxies, the forwarded one).
pub(crate) async fn accept_raw(
    app: Arc<AppState>,
    mut io: Io,
    req: Box<WsRequest>,
    remote: SocketAddr,
) -> Option<Ready> {
    let WsRequest { target, headers, query, leftover } = *req;
    // Boxed: verifying may fetch a JWKS, a large future that the connection's task
    // should not reserve room for.
    let answer = Box::pin(answer(&app, &target, &headers, &query, &remote, true)).await;
    drop((target, headers, query));
    let write_timeout = app.config.server.write_timeout;
    match answer {
        Answer::Http(resp) => {
            Box::pin(write_refusal(io, resp, write_timeout)).await;
            None
        }
        Answer::Upgrade(up) => {
            io.cork(switching_head(&up));
            let Upgrade { request_id, then, .. } = *up;
            let config = ws_config(&app, &then);
            // Boxed: it completes at once, but its state would size the task.
            let socket = Box::pin(WebSocketStream::from_partially_read(io, leftover, Role::Server, Some(config))).await;
            Some(Ready { app, socket, then, remote, request_id })
        }
    }
}

/// Write an HTTP refusal on the raw stream, then end the connection: half-close,
/// and read what the client still sends (bounded) so that closing does not reset the
/// connection before the client has read the answer.
async fn write_refusal(mut io: Io, resp: Response, write_timeout: std::time::Duration) {
    let (parts, body) = resp.into_parts();
    let body = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return,
    };
    let mut out = Vec::with_capacity(256 + body.len());
    let reason = parts.status.canonical_reason().unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16()).as_bytes());
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\ndate: ");
    push_http_date(&mut out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    let written = tokio::time::timeout(write_timeout, async {
        io.write_all(&out).await?;
        io.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    // A refused connection holds no place in the connection counts, so the wait for
    // the client's end is short and bounded in bytes.
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut sink = [0u8; 1024];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match io.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Longest wait, after a refusal was written, for the client to end the connection.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Answer a WebSocket request that came through hyper (`on_upgrade`: hyper's upgrade
/// of the request, absent when the transport cannot switch).
pub(crate) fn hyper_answer(
    app: Arc<AppState>,
    answer: Answer,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    remote: SocketAddr,
) -> Response {
    let (up, on_upgrade) = match (answer, on_upgrade) {
        (Answer::Http(resp), _) => return resp,
        (Answer::Upgrade(up), Some(on)) => (up, on),
        (Answer::Upgrade(_), None) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(up.key.as_bytes());
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if let Some(p) = up.protocol {
        h.insert("sec-websocket-protocol", HeaderValue::from_static(p));
    }
    if matches!(up.then, Then::Close(_))
        && let Ok(v) = HeaderValue::from_str(&up.request_id)
    {
        h.insert("x-request-id", v);
    }
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let io = Io::hyper(upgraded);
        let Upgrade { request_id, then, .. } = *up;
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config(&app, &then))).await;
        Ready { app, socket, then, remote, request_id }.serve().await;
    });
    resp
}

/// An upgraded connection and what it is for.
#[derive(Debug)]
pub(crate) struct Ready {
    app: Arc<AppState>,
    socket: Socket,
    then: Then,
    remote: SocketAddr,
    request_id: String,
}

impl Ready {
    /// The life of the connection. A plain function choosing the future, not an async
    /// one wrapping it: the returned future is the connection's own, with no copy of
    /// the socket around it.
    pub(crate) fn serve(self) -> impl std::future::Future<Output = ()> + Send {
        use futures_util::future::Either;
        let Ready { app, mut socket, then, remote, request_id } = self;
        match then {
            Then::Agent(start) => Either::Left(connection::run(app, socket, start, remote, request_id)),
            // Boxed: an MCP relay's state should not size every agent connection's task.
            Then::Mcp(admitted) => {
                Either::Right(Either::Left(Box::pin(crate::mcp::relay(app, socket, *admitted, remote, request_id))))
            }
            Then::Close(code) => {
                Either::Right(Either::Right(async move { connection::close(&mut socket, code).await }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        classify(text.as_bytes().to_vec()).expect("complete head")
    }

    #[test]
    fn websocket_upgrades_for_our_endpoints_are_served_raw() {
        let h = head(
            "GET /v1/ws?session_id=s_1&last_seq=3 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x01\x02",
        );
        let Head::WebSocket(req) = h else { panic!("not raw: {h:?}") };
        assert_eq!(req.target, Target::Agent);
        assert_eq!(req.query, vec![("session_id".into(), "s_1".into()), ("last_seq".into(), "3".into())]);
        assert_eq!(req.leftover, b"\x01\x02");
        assert!(websocket_key(&req.headers).is_some());
        let h = head("GET /v1/mcp/fs%20x HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\n");
        let Head::WebSocket(req) = h else { panic!("not raw: {h:?}") };
        assert_eq!(req.target, Target::Mcp("fs x".into()));
        assert!(websocket_key(&req.headers).is_none(), "no Connection, version or key");
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for text in [
            "GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/mcp/a/b HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/mcp/ HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
            "GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/ws HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            let h = head(text);
            assert!(matches!(&h, Head::Other(b) if b == text.as_bytes()), "{text:?} -> {h:?}");
        }
        assert!(classify(b"GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\n".to_vec()).is_err(), "incomplete");
    }

    #[tokio::test]
    async fn prefixed_yields_the_prefix_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut p = Prefixed::new(a, b"hello".to_vec());
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
