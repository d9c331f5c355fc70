//! One authenticated WebSocket: the welcome, replay, then a single task that reads
//! client frames, writes session events from a bounded queue, sends heartbeats and
//! expiry warnings, and closes with the exact code when anything ends it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use agentgate_auth::Principal;
use agentgate_protocol::{ClientMessage, ErrorCode, PROTOCOL_V1, PrincipalInfo, Reply, Welcome};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::limits::Slot;
use crate::runs::RunStatus;
use crate::session::{Holder, Owner, Subscription};
use crate::state::AppState;
use crate::telemetry;
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
pub(crate) type Slots = (Slot<IpAddr>, Slot<Owner>);

/// Why a connection loop ended.
pub(crate) enum End {
    /// Close with this code.
    Close(ErrorCode),
    /// The client sent a close frame: answer it (RFC 6455 5.5.1).
    ClientClosed,
    /// The socket failed or the peer vanished: nothing more to send.
    Gone,
}

/// The life of one upgraded connection. A plain function returning an `async move`
/// block, not an `async fn`: an `async fn` keeps a second copy of every argument in
/// its state, and this state is what each idle connection costs.
#[allow(clippy::manual_async_fn)] // deliberate: see above (measured in docs/performance.md)
pub(crate) fn run(
    app: Arc<AppState>,
    mut socket: WebSocket,
    start: Start,
    remote: SocketAddr,
    request_id: String,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let _gauge = crate::metrics::ConnectionGauge::open();
        let Some(_tracked) = app.track_connection() else {
            close(&mut socket, ErrorCode::ServerRestart).await;
            return;
        };
        let (principal, resume, resumable, _slots) = match start {
            Start::Authenticated { principal, resume, resumable, slots } => (*principal, resume, resumable, slots),
            Start::AwaitAuth { resume, ip_slot } => {
                // Boxed: first-message auth is the rare path; its state should not size
                // every connection's task.
                match Box::pin(await_auth(&app, &mut socket, resume, remote, &request_id, ip_slot)).await {
                    Some(x) => x,
                    None => return,
                }
            }
        };
        let conn_id = app.next_conn_id();
        let holder = Holder { node: app.node_id.clone(), conn_id };
        let opened = Subscription::open(
            &app.backend,
            Arc::clone(&app.hub),
            holder,
            &Owner::of(&principal),
            resume,
            resumable,
            OUTBOUND_QUEUE,
        )
        .await;
        let (mut sub, opened) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(conn_id, request_id = %request_id, error = %e, "cannot attach a session");
                let code = match e {
                    crate::session::StoreError::SessionLimit(_) => ErrorCode::TooManyConnections,
                    _ => ErrorCode::ServiceUnavailable,
                };
                close(&mut socket, code).await;
                return;
            }
        };
        let session_id = opened.session_id.clone();
        tracing::info!(
            conn_id,
            request_id = %request_id,
            session_id = %session_id,
            subject = %principal.subject,
            via = %principal.via,
            token_fp = %principal.token_fp,
            remote = %remote,
            resumed = opened.resumed,
            replayed = opened.replay.len(),
            "connection accepted"
        );
        let welcome = Welcome {
            ty: "welcome",
            protocol: PROTOCOL_V1,
            session_id: session_id.clone(),
            resumed: opened.resumed,
            resume_error: opened.resume_error,
            first_seq: opened.first_seq,
            principal: PrincipalInfo {
                subject: principal.subject.clone(),
                tenant: principal.tenant.clone(),
                scopes: principal.scopes.clone(),
                via: principal.via.clone(),
            },
            expires_at: principal.expires_at,
            heartbeat_ms: u64::try_from(app.config.server.heartbeat.as_millis()).unwrap_or(u64::MAX),
        };
        let end = {
            let interrupts = crate::interrupts::Interrupts::new(&app);
            let mut conn =
                Conn { app: &app, socket: &mut socket, sub: &mut sub, principal, conn_id, interrupts, ended: None };
            // Boxed: the welcome and replay run once; their state should not size every
            // idle connection's task.
            match Box::pin(conn.welcome(welcome, opened.replay, opened.resumed)).await {
                Ok(()) => conn.serve().await,
                Err(end) => end,
            }
        };
        sub.close().await;
        match end {
            End::Close(code) => {
                tracing::info!(conn_id, session_id = %session_id, reason = code.as_str(), "connection closed by server");
                close(&mut socket, code).await;
            }
            End::ClientClosed => {
                // tungstenite queued the answering close frame; flushing sends it.
                let _ = tokio::time::timeout(CLOSE_WRITE, futures_util::SinkExt::flush(&mut socket)).await;
                tracing::debug!(conn_id, session_id = %session_id, "connection closed by client");
            }
            End::Gone => tracing::debug!(conn_id, session_id = %session_id, "connection lost"),
        }
    }
}

struct Conn<'a> {
    app: &'a Arc<AppState>,
    socket: &'a mut WebSocket,
    sub: &'a mut Subscription,
    principal: Principal,
    conn_id: u64,
    interrupts: crate::interrupts::Interrupts,
    /// Why the last failed send ended the connection.
    ended: Option<End>,
}

impl Conn<'_> {
    /// The welcome, then the replay, each write bounded like every other.
    async fn welcome(
        &mut self,
        welcome: Welcome,
        replay: Vec<crate::session::StoredEvent>,
        resumed: bool,
    ) -> Result<(), End> {
        self.send(Message::Text(serde_json::to_string(&welcome).unwrap_or_default().into())).await?;
        crate::metrics::accepted(resumed);
        for event in replay {
            self.send(Message::Text(event.text.as_ref().to_owned().into())).await?;
            crate::metrics::events_sent(1);
        }
        Ok(())
    }

    /// Send one frame within `server.write_timeout_s`; shutdown, revocation and
    /// expiry still close the connection on time while the write is blocked.
    async fn send(&mut self, msg: Message) -> Result<(), End> {
        let (_, expire_at) = self.expiry_deadlines();
        self.interrupts.send(self.app, &self.principal, expire_at, self.socket, msg).await
    }

    async fn serve(&mut self) -> End {
        let limiter = message_limiter(self.app);
        let heartbeat = self.app.config.server.heartbeat;
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        let mut last_seen = Instant::now();
        let mut warned = false;
        loop {
            let (warn_at, expire_at) = self.expiry_deadlines();
            tokio::select! {
                biased;
                code = self.interrupts.wait(self.app, &self.principal, expire_at) => return End::Close(code),
                changed = self.sub.kicked.changed() => {
                    let code = if changed.is_ok() { *self.sub.kicked.borrow() } else { None };
                    return End::Close(code.unwrap_or(ErrorCode::InternalError));
                }
                event = self.sub.events.recv() => match event {
                    Some(event) => {
                        for event in self.sub.accept(event).await {
                            if let Err(end) = self.send(Message::Text(event.text.as_ref().to_owned().into())).await {
                                return end;
                            }
                            crate::metrics::events_sent(1);
                            crate::metrics::event_delivered(&event.text);
                        }
                    }
                    None => return End::Close(ErrorCode::SlowConsumer),
                },
                frame = self.socket.recv() => {
                    last_seen = Instant::now();
                    match inbound(frame, self.app.config.server.max_message_bytes, &limiter) {
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
                () = sleep_until_opt(warn_at), if !warned => {
                    warned = true;
                    if let Some(exp) = self.principal.expires_at
                        && !self.reply(Reply::AuthExpiring { expires_at: exp }).await
                    {
                        return self.ended.take().unwrap_or(End::Gone);
                    }
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() >= heartbeat * DEAD_AFTER_HEARTBEATS {
                        tracing::info!(conn_id = self.conn_id, "peer silent for {} heartbeats; closing", DEAD_AFTER_HEARTBEATS);
                        return End::Gone;
                    }
                    if let Err(end) = self.send(Message::Ping(Default::default())).await {
                        return end;
                    }
                }
            }
        }
    }

    /// When to warn and when to close, for the live credential.
    fn expiry_deadlines(&self) -> (Option<Instant>, Option<Instant>) {
        let Some(exp) = self.principal.expires_at else { return (None, None) };
        let cfg = &self.app.config.auth;
        let warn_at = crate::interrupts::instant_at(exp.saturating_sub(cfg.expiry_warning_s));
        (Some(warn_at), crate::interrupts::expiry_instant(Some(exp), cfg.leeway_s))
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
                self.principal = p;
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
    socket: &mut WebSocket,
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
        r = tokio::time::timeout(deadline, socket.recv()) => r,
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
    Text(axum::extract::ws::Utf8Bytes),
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
pub(crate) fn inbound(frame: Option<Result<Message, axum::Error>>, max: usize, limiter: &MessageLimiter) -> Inbound {
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
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Control,
        Some(Ok(Message::Close(_))) => Inbound::End(End::ClientClosed),
        None => Inbound::End(End::Gone),
        Some(Err(e)) => {
            // The library refuses frames above twice the limit on its own.
            let text = e.to_string();
            if text.contains("too long") || text.contains("Space limit") {
                Inbound::End(End::Close(ErrorCode::MessageTooLarge))
            } else {
                Inbound::End(End::Gone)
            }
        }
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
pub(crate) async fn close(socket: &mut WebSocket, code: ErrorCode) {
    let frame = CloseFrame { code: code.close_code(), reason: code.close_reason().into() };
    // Writing our close and reading the client's share one deadline, so a client that
    // stopped reading is gone within it (revocation: closed within 1 s).
    let deadline = Instant::now() + CLOSE_WRITE + CLOSE_WRITE / 2;
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_WRITE, socket.send(Message::Close(Some(frame)))).await {
        let _ = tokio::time::timeout_at(deadline, drain_after_close(socket)).await;
    }
}

/// Read until the peer's close frame (or end of stream), at most [`CLOSE_DRAIN`].
pub(crate) async fn drain_after_close(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
