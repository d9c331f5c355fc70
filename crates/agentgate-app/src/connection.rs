//! One authenticated WebSocket: the welcome, replay, then a single task that reads
//! client frames, writes session events from a bounded queue, sends heartbeats and
//! expiry warnings, and closes with the exact code when anything ends it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use agentgate_auth::Principal;
use agentgate_protocol::{ClientMessage, ErrorCode, PROTOCOL_V1, PrincipalInfo, Reply, Welcome};
use futures_util::{SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::interrupts::Expiry;
use crate::limits::Slot;
use crate::runs::RunStatus;
use crate::session::{Delivery, FastHash, Holder, Owner, Subscription};
use crate::state::AppState;
use crate::telemetry;
use crate::upgrade::Socket;
use std::net::IpAddr;

/// Events queued for one connection before it counts as a slow consumer.
pub const OUTBOUND_QUEUE: usize = 256;

/// A peer silent for this many heartbeats is considered dead and closed.
const DEAD_AFTER_HEARTBEATS: u32 = 3;

/// Longest wait to write a close frame (after a blocked write, the pending bytes of
/// the frame it was writing go first); then the connection is dropped without one.
pub(crate) const CLOSE_WRITE: Duration = Duration::from_millis(500);

/// How long to wait for the client's close frame after ours.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// How a connection starts after the upgrade.
#[derive(Debug)]
pub(crate) enum Start {
    /// Credential verified before the upgrade. `resumable` says whether the session
    /// of `resume` exists and belongs to the principal.
    Authenticated { principal: Box<Principal>, resume: Option<(String, u64)>, resumable: bool, slots: Slots },
    /// First-message auth: wait for `{"type":"auth"}`.
    AwaitAuth { resume: Option<(String, u64)>, ip_slot: Slot<IpAddr> },
}

/// The connection's places in the per-IP and per-principal counts, held until it ends.
pub(crate) type Slots = (Slot<IpAddr>, Slot<Owner, FastHash>);

/// Why a connection loop ended.
pub(crate) enum End {
    /// Close with this code.
    Close(ErrorCode),
    /// The client sent a close frame: answer it (RFC 6455 5.5.1).
    ClientClosed,
    /// The socket failed or the peer vanished: nothing more to send.
    Gone,
}

/// The life of one upgraded connection: opening (first-message auth, attaching the
/// session), then the welcome and the replay, the live loop, and the close.
///
/// Opening runs in its own heap allocation, freed when it ends (kept below 1 KiB, so
/// that it comes from the allocator's thread cache); the future returned here then
/// holds exactly a [`Live`] connection and its loop. This state is what each idle
/// connection costs, so nothing transient is kept in it (measured in
/// docs/performance.md).
pub(crate) fn run(
    app: Arc<AppState>,
    mut socket: Socket,
    start: Start,
    remote: SocketAddr,
    request_id: String,
) -> impl std::future::Future<Output = ()> + Send {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    type Opening = std::pin::Pin<Box<dyn std::future::Future<Output = Option<(Live, Greeting)>> + Send>>;
    let gauge = crate::metrics::ConnectionGauge::open();
    // Decided here, before any await, so that the opening's own future holds each
    // part once. The rare paths (shutdown, first-message auth) are futures of their own.
    let opening: Opening = match (app.track_connection(), start) {
        (None, _) => Box::pin(async move {
            close(&mut socket, ErrorCode::ServerRestart).await;
            drop(gauge);
            None
        }),
        (Some(tracked), Start::Authenticated { principal, resume, resumable, slots }) => {
            let ready = Opened { app, socket, guards: (gauge, tracked), remote, request_id };
            Box::pin(open(ready, principal, resume, resumable, slots))
        }
        (Some(tracked), Start::AwaitAuth { resume, ip_slot }) => Box::pin(async move {
            let (p, resume, resumable, slots) =
                await_auth(&app, &mut socket, resume, remote, &request_id, ip_slot).await?;
            let ready = Opened { app, socket, guards: (gauge, tracked), remote, request_id };
            open(ready, Box::new(p), resume, resumable, slots).await
        }),
    };
    opening.then(|opened| match opened {
        Some((live, greeting)) => Either::Left(live.serve(greeting)),
        None => Either::Right(std::future::ready(())),
    })
}

/// An upgraded, authenticated connection before its session is attached.
struct Opened {
    app: Arc<AppState>,
    socket: Socket,
    /// The open-connection gauge and the shutdown tracker.
    guards: (crate::metrics::ConnectionGauge, crate::state::Tracked),
    remote: SocketAddr,
    request_id: String,
}

/// Attach the session of an authenticated connection and hold the welcome back for
/// the live connection to write (with the 101); `None` when that failed (the
/// connection is closed then).
///
/// This future is allocated for every connection; below 1 KiB it comes from the
/// allocator's thread cache, so its parts are used in place, never copied into
/// locals, and its rare paths are boxed.
#[allow(clippy::manual_async_fn)] // deliberate: an `async fn` keeps a second copy of its arguments
fn open(
    mut o: Opened,
    principal: Box<Principal>,
    resume: Option<(String, u64)>,
    resumable: bool,
    slots: Slots,
) -> impl std::future::Future<Output = Option<(Live, Greeting)>> + Send {
    async move {
        let app = &o.app;
        let conn_id = app.next_conn_id();
        let holder = Holder { node: app.node_id.clone(), conn_id };
        let opened = Box::pin(Subscription::open(
            &app.backend,
            Arc::clone(&app.hub),
            holder,
            slots.1.key(),
            resume,
            resumable,
            OUTBOUND_QUEUE,
        ))
        .await;
        let (sub, opened) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(conn_id, request_id = %o.request_id, error = %e, "cannot attach a session");
                let code = match e {
                    crate::session::StoreError::SessionLimit(_) => ErrorCode::TooManyConnections,
                    _ => ErrorCode::ServiceUnavailable,
                };
                Box::pin(close(&mut o.socket, code)).await;
                return None;
            }
        };
        // Debug, not info: one line per connection costs about 7% of a handshake's CPU
        // (docs/performance.md). Refusals and server-side closes stay at info; accepted
        // connections are counted in `agentgate_handshakes_total`.
        tracing::debug!(
            conn_id,
            request_id = %o.request_id,
            session_id = %opened.session_id,
            subject = %principal.subject,
            via = %principal.via,
            token_fp = %principal.token_fp,
            remote = %o.remote,
            resumed = opened.resumed,
            replayed = opened.replay.len(),
            "connection accepted"
        );
        let welcome = Welcome {
            ty: "welcome",
            protocol: PROTOCOL_V1,
            session_id: &opened.session_id,
            resumed: opened.resumed,
            resume_error: opened.resume_error,
            first_seq: opened.first_seq,
            principal: PrincipalInfo {
                subject: &principal.subject,
                tenant: principal.tenant.as_deref(),
                scopes: &principal.scopes,
                via: &principal.via,
            },
            expires_at: principal.expires_at,
            heartbeat_ms: u64::try_from(app.config.server.heartbeat.as_millis()).unwrap_or(u64::MAX),
        };
        let welcome = welcome.to_json();
        let interrupts = crate::interrupts::Interrupts::new(app);
        // Written with the 101 (held back until now), in one segment, by the live
        // connection's first write.
        o.socket.get_mut().cork_text(welcome);
        let Opened { app, socket, guards: (gauge, tracked), .. } = o;
        let live = Live {
            expiry: Expiry::of(principal.expires_at, &app.config.auth),
            app,
            socket,
            sub,
            principal,
            conn_id,
            interrupts,
            ended: None,
            _guards: (gauge, tracked, slots),
        };
        Some((live, Greeting { replay: opened.replay, resumed: opened.resumed }))
    }
}

/// What a live connection sends first, after the welcome held back in its socket.
struct Greeting {
    /// Events of a resumed session after the client's `last_seq`.
    replay: Vec<crate::session::StoredEvent>,
    resumed: bool,
}

/// A live connection: everything it holds for its life.
struct Live {
    app: Arc<AppState>,
    socket: Socket,
    sub: Subscription,
    principal: Box<Principal>,
    /// When to warn about and when to end the credential, as instants.
    expiry: Expiry,
    conn_id: u64,
    interrupts: crate::interrupts::Interrupts,
    /// Why the last failed send ended the connection.
    ended: Option<End>,
    /// The open-connection gauge, the shutdown tracker and the places in the per-IP
    /// and per-principal counts, released when the connection ends.
    _guards: (crate::metrics::ConnectionGauge, crate::state::Tracked, Slots),
}

impl Live {
    /// The welcome and the replay, the live loop, then the close.
    #[allow(clippy::manual_async_fn)] // deliberate: an `async fn` keeps a second copy of `self`
    fn serve(mut self, greeting: Greeting) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let end = match self.welcome(greeting).await {
                Ok(()) => self.serve_loop().await,
                Err(end) => end,
            };
            self.finish(end).await;
        }
    }

    /// Detach the session, then close the socket as `end` says.
    async fn finish(&mut self, end: End) {
        self.sub.close().await;
        let (conn_id, session_id) = (self.conn_id, self.sub.session_id());
        match end {
            End::Close(code) => {
                tracing::info!(conn_id, session_id = %session_id, reason = code.as_str(), "connection closed by server");
                close(&mut self.socket, code).await;
            }
            End::ClientClosed => {
                // tungstenite queued the answering close frame; flushing sends it, with
                // the FIN of the socket's close that follows at once.
                self.socket.get_mut().last_write();
                let _ = tokio::time::timeout(CLOSE_WRITE, self.socket.flush()).await;
                tracing::debug!(conn_id, session_id = %session_id, "connection closed by client");
            }
            End::Gone => tracing::debug!(conn_id, session_id = %session_id, "connection lost"),
        }
    }
    /// The welcome, then the replay, each write bounded like every other.
    async fn welcome(&mut self, greeting: Greeting) -> Result<(), End> {
        let Greeting { replay, resumed } = greeting;
        // The 101 and the welcome, held back in the socket until now.
        self.write(None).await?;
        crate::metrics::accepted(resumed);
        for event in replay {
            self.send(Message::Text(event.text.as_ref().to_owned().into())).await?;
            crate::metrics::events_sent(1);
        }
        Ok(())
    }

    /// Send one frame within `server.write_timeout_s`; shutdown, revocation and
    /// expiry still close the connection on time while the write is blocked.
    fn send(&mut self, msg: Message) -> impl std::future::Future<Output = Result<(), End>> + Send + '_ {
        self.write(Some(msg))
    }

    /// Send a frame, or (with `None`) flush what is buffered, as [`Self::send`].
    fn write(&mut self, msg: Option<Message>) -> impl std::future::Future<Output = Result<(), End>> + Send + '_ {
        self.interrupts.send(&self.app, &self.principal, self.expiry.expire_at, &mut self.socket, msg)
    }

    async fn serve_loop(&mut self) -> End {
        // Made with the first client frame: most connections only listen.
        let mut limiter: Option<Box<MessageLimiter>> = None;
        let heartbeat = self.app.config.server.heartbeat;
        let mut last_seen = Instant::now();
        let mut next_ping = last_seen + heartbeat;
        let mut warned = false;
        // One timer for the heartbeat, the expiry warning and the expiry itself.
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);
        loop {
            // Read from `self.expiry` in the arms, not copied into locals: locals held
            // across the `select!` would grow every idle connection's task.
            let due = [self.expiry.warn_at.filter(|_| !warned), self.expiry.expire_at]
                .into_iter()
                .flatten()
                .fold(next_ping, Instant::min);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                biased;
                code = self.interrupts.signalled(&self.app, &self.principal) => return End::Close(code),
                () = &mut timer => {
                    let now = Instant::now();
                    if self.expiry.expire_at.is_some_and(|at| now >= at) {
                        return End::Close(ErrorCode::TokenExpired);
                    }
                    if !warned && self.expiry.warn_at.is_some_and(|at| now >= at) {
                        warned = true;
                        // Boxed: rare, and a reply's state is large.
                        if let Some(exp) = self.principal.expires_at
                            && !Box::pin(self.reply(Reply::AuthExpiring { expires_at: exp })).await
                        {
                            return self.ended.take().unwrap_or(End::Gone);
                        }
                    }
                    if now >= next_ping {
                        next_ping = now + heartbeat;
                        // A step of the wall clock moves the credential's instants.
                        self.expiry = Expiry::of(self.principal.expires_at, &self.app.config.auth);
                        if last_seen.elapsed() >= heartbeat * DEAD_AFTER_HEARTBEATS {
                            tracing::info!(conn_id = self.conn_id, "peer silent for {} heartbeats; closing", DEAD_AFTER_HEARTBEATS);
                            return End::Gone;
                        }
                        if let Err(end) = self.send(Message::Ping(Default::default())).await {
                            return end;
                        }
                    }
                }
                delivery = self.sub.next() => match delivery {
                    Delivery::Kicked(code) => return End::Close(code),
                    Delivery::Event(event) => {
                        for event in self.sub.accept(event).await {
                            if let Err(end) = self.send(Message::Text(event.text.as_ref().to_owned().into())).await {
                                return end;
                            }
                            crate::metrics::events_sent(1);
                            crate::metrics::event_delivered(&event.text);
                        }
                    }
                },
                frame = self.socket.next() => {
                    last_seen = Instant::now();
                    let limiter = limiter.get_or_insert_with(|| Box::new(message_limiter(&self.app)));
                    match inbound(frame, self.app.config.server.max_message_bytes, limiter) {
                        Inbound::Text(text) => {
                            // Boxed: handling a message is brief; its state should not size
                            // every idle connection's task.
                            if let Some(end) = Box::pin(self.on_text(text.as_str(), &mut warned)).await {
                                return end;
                            }
                        }
                        Inbound::Control => {}
                        Inbound::End(end) => return end,
                    }
                }
            }
        }
    }

    /// Send a reply; `false` when the connection ends, its reason kept in `ended`.
    async fn reply(&mut self, reply: Reply) -> bool {
        match self.send(Message::Text(reply.to_json().into())).await {
            Ok(()) => true,
            Err(end) => {
                self.ended = Some(end);
                false
            }
        }
    }

    /// Handle one client message; `Some` ends the connection.
    async fn on_text(&mut self, text: &str, warned: &mut bool) -> Option<End> {
        let msg = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(conn_id = self.conn_id, reason = e.code.as_str(), detail = %e.message, "client frame refused");
                return Some(End::Close(e.code));
            }
        };
        let sent = match msg {
            ClientMessage::Auth { .. } => {
                tracing::info!(conn_id = self.conn_id, reason = "protocol_error", "auth message after authentication");
                return Some(End::Close(ErrorCode::ProtocolError));
            }
            ClientMessage::AuthRefresh { token } => {
                // Boxed: verifying may fetch a JWKS over HTTP, a large future that
                // would otherwise be reserved in every idle connection's task.
                let p = match Box::pin(self.app.verify(&token)).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::info!(
                            conn_id = self.conn_id,
                            reason = e.code().as_str(),
                            token_fp = %agentgate_auth::fingerprint(token.as_bytes()),
                            "auth.refresh refused"
                        );
                        return Some(End::Close(e.code()));
                    }
                };
                if !p.same_identity(&self.principal) {
                    tracing::info!(conn_id = self.conn_id, reason = "principal_mismatch", token_fp = %p.token_fp, "auth.refresh refused");
                    return Some(End::Close(ErrorCode::PrincipalMismatch));
                }
                let expires_at = p.expires_at;
                *self.principal = p;
                self.expiry = Expiry::of(self.principal.expires_at, &self.app.config.auth);
                *warned = false;
                self.reply(Reply::AuthRefreshed { expires_at }).await
            }
            ClientMessage::RunStart { r#ref, agent, input } => {
                let prepared = self
                    .app
                    .runs
                    .prepare(&self.app.config, &agent, &input, &self.principal, self.sub.session_id())
                    .await;
                match prepared {
                    Ok(run) => {
                        let run_id = run.run_id.clone();
                        let ok = self.reply(Reply::RunAccepted { r#ref, run_id }).await;
                        run.start();
                        ok
                    }
                    Err(e) => self.reply(Reply::Error { r#ref, code: e.code, message: e.message }).await,
                }
            }
            ClientMessage::RunCancel { r#ref, run_id } => {
                match self.app.runs.cancel(&run_id, &Owner::of(&self.principal)).await {
                    Ok(true) => true,
                    Ok(false) => {
                        self.reply(Reply::Error {
                            r#ref,
                            code: ErrorCode::RunNotFound,
                            message: "no running run with that id belongs to this principal".into(),
                        })
                        .await
                    }
                    Err(e) => self.reply(unavailable(r#ref, &e)).await,
                }
            }
            ClientMessage::RunGet { r#ref, run_id } => {
                match self.app.runs.get(&run_id, &Owner::of(&self.principal)).await {
                    Ok(Some((status, terminal))) => {
                        let terminal = if status == RunStatus::Running { None } else { terminal };
                        self.reply(Reply::RunState { r#ref, run_id, status: status.as_str(), terminal }).await
                    }
                    Err(e) => self.reply(unavailable(r#ref, &e)).await,
                    Ok(None) => {
                        self.reply(Reply::Error {
                            r#ref,
                            code: ErrorCode::RunNotFound,
                            message: "no run with that id is known for this principal".into(),
                        })
                        .await
                    }
                }
            }
            ClientMessage::Ping { r#ref } => self.reply(Reply::Pong { r#ref }).await,
        };
        if sent { None } else { Some(self.ended.take().unwrap_or(End::Gone)) }
    }
}

/// The error reply to a request the backend could not answer.
fn unavailable(r#ref: Option<serde_json::Value>, e: &crate::session::StoreError) -> Reply {
    Reply::Error {
        r#ref,
        code: ErrorCode::ServiceUnavailable,
        message: format!("the shared backend is unreachable ({e}); retry shortly"),
    }
}

/// First-message auth: the first frame must be `{"type":"auth","token":...}` within
/// the deadline. Returns the principal and resume target, or closes and returns `None`.
async fn await_auth(
    app: &Arc<AppState>,
    socket: &mut Socket,
    resume: Option<(String, u64)>,
    remote: SocketAddr,
    request_id: &str,
    ip_slot: Slot<IpAddr>,
) -> Option<(Principal, Option<(String, u64)>, bool, Slots)> {
    let deadline = app.config.auth.first_message_timeout;
    let mut shutdown = app.shutdown_rx();
    let first = tokio::select! {
        () = crate::shutdown::wait(&mut shutdown) => {
            close(socket, ErrorCode::ServerRestart).await;
            return None;
        }
        r = tokio::time::timeout(deadline, socket.next()) => r,
    };
    let fail = |code: ErrorCode, message: String, fp: Option<String>| {
        crate::error::Rejection::new(code, message, request_id).with_token_fp(fp)
    };
    let outcome = match first {
        Err(_) => {
            Err(fail(ErrorCode::AuthTimeout, format!("no auth message within {} ms", deadline.as_millis()), None))
        }
        Ok(None | Some(Ok(Message::Close(_))) | Some(Err(_))) => return None,
        Ok(Some(Ok(Message::Text(text)))) => match ClientMessage::parse(text.as_str()) {
            Ok(ClientMessage::Auth { token, session_id, last_seq }) => {
                let fp = Some(agentgate_auth::fingerprint(token.as_bytes()));
                match app.verify(&token).await {
                    Ok(p) => {
                        let resume = match session_id.filter(|s| !s.is_empty()) {
                            Some(sid) => Some((sid, last_seq.unwrap_or(0))),
                            None => resume,
                        };
                        match crate::admission::admit_principal(app, &p) {
                            Err((code, message)) => Err(fail(code, message, fp)),
                            Ok(slot) => match crate::admission::resume_check(app, &p, resume.as_ref()).await {
                                Ok(resumable) => Ok((p, resume, resumable, (ip_slot, slot))),
                                Err((code, message)) => Err(fail(code, message, fp)),
                            },
                        }
                    }
                    Err(e) => Err(fail(e.code(), e.message().to_owned(), fp)),
                }
            }
            Ok(_) => Err(fail(
                ErrorCode::TokenMissing,
                "the first frame must be {\"type\":\"auth\",\"token\":...}".into(),
                None,
            )),
            Err(e) if e.code == ErrorCode::TokenMissing => Err(fail(e.code, e.message, None)),
            Err(e) => Err(fail(
                ErrorCode::TokenMissing,
                format!("the first frame must be an auth message: {}", e.message),
                None,
            )),
        },
        Ok(Some(Ok(_))) => {
            Err(fail(ErrorCode::TokenMissing, "the first frame must be a text auth message".into(), None))
        }
    };
    match outcome {
        Ok(x) => Some(x),
        Err(r) => {
            telemetry::log_rejection(&r, remote);
            close(socket, r.code).await;
            None
        }
    }
}

/// A client frame, checked for what every endpoint refuses alike.
pub(crate) enum Inbound {
    /// A text frame within the size and rate limits.
    Text(tungstenite::Utf8Bytes),
    /// A ping or pong (answered by the WebSocket layer).
    Control,
    /// The connection ends: oversize (1009), rate (4429), binary (4400), the
    /// client's close, or a broken socket.
    End(End),
}

/// The per-connection client message limiter: `limits.messages_per_s`, burst twice.
pub(crate) type MessageLimiter = governor::DefaultDirectRateLimiter;

/// A limiter for one connection.
pub(crate) fn message_limiter(app: &AppState) -> MessageLimiter {
    let per_s = NonZeroU32::new(app.config.limits.messages_per_s).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_s.get().saturating_mul(2)).unwrap_or(per_s);
    RateLimiter::direct_with_clock(Quota::per_second(per_s).allow_burst(burst), app.limits.clock().clone())
}

/// Classify a received frame.
pub(crate) fn inbound(
    frame: Option<Result<Message, tungstenite::Error>>,
    max: usize,
    limiter: &MessageLimiter,
) -> Inbound {
    match frame {
        Some(Ok(Message::Text(text))) => {
            if text.len() > max {
                Inbound::End(End::Close(ErrorCode::MessageTooLarge))
            } else if limiter.check().is_err() {
                Inbound::End(End::Close(ErrorCode::RateLimited))
            } else {
                Inbound::Text(text)
            }
        }
        Some(Ok(Message::Binary(data))) if data.len() > max => Inbound::End(End::Close(ErrorCode::MessageTooLarge)),
        Some(Ok(Message::Binary(_))) => Inbound::End(End::Close(ErrorCode::ProtocolError)),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Inbound::Control,
        Some(Ok(Message::Close(_))) => Inbound::End(End::ClientClosed),
        None => Inbound::End(End::Gone),
        // The library refuses frames above twice the limit on its own.
        Some(Err(tungstenite::Error::Capacity(_))) => Inbound::End(End::Close(ErrorCode::MessageTooLarge)),
        Some(Err(_)) => Inbound::End(End::Gone),
    }
}

/// Sleep until `at`, or forever without one.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Send a close frame with `code`'s close code and `{"code":"..."}` reason, then wait
/// briefly for the client's close (750 ms in all). A close that cannot be written
/// within [`CLOSE_WRITE`] (a client that stopped reading) is given up: the connection
/// is dropped, so revocation and expiry end it on time.
pub(crate) async fn close(socket: &mut Socket, code: ErrorCode) {
    let frame = CloseFrame { code: code.close_code().into(), reason: code.close_reason().into() };
    // Writing our close and reading the client's share one deadline, so a client that
    // stopped reading is gone within it (revocation: closed within 1 s).
    let deadline = Instant::now() + CLOSE_WRITE + CLOSE_WRITE / 2;
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_WRITE, socket.send(Message::Close(Some(frame)))).await {
        let _ = tokio::time::timeout_at(deadline, drain_after_close(socket)).await;
    }
}

/// Read until the peer's close frame (or end of stream), at most [`CLOSE_DRAIN`].
pub(crate) async fn drain_after_close(socket: &mut Socket) {
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
