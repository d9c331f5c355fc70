//! What must close a live connection on time, whatever it is doing: shutdown
//! (1012), revocation of its credential (4401 `token_revoked`, within 1 s) and expiry
//! (4401 `token_expired`). A connection races every write against these, and every
//! write against `server.write_timeout_s` (1013 `slow_consumer`), so a client that
//! stops reading can neither hold a connection task in a blocked write nor escape
//! revocation, expiry or shutdown (PROTOCOL.md sections 5, 8 and 10).

use std::future::Future;
use std::time::Duration;

use agentgate_auth::{Principal, Revocations};
use agentgate_protocol::ErrorCode;
use axum::extract::ws::{Message, WebSocket};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::{End, sleep_until_opt};
use crate::state::AppState;

/// When a live credential expiring at `exp` (Unix seconds) closes its connection
/// 4401 `token_expired`: the instant `agentgate_auth::is_expired` turns true. `None`
/// (an API key) never expires.
pub(crate) fn expiry_instant(exp: Option<i64>, leeway_s: i64) -> Option<Instant> {
    exp.map(|exp| instant_at(agentgate_auth::expires_after(exp, leeway_s)))
}

/// The monotonic instant of a Unix second (now, if it has passed).
pub(crate) fn instant_at(unix: i64) -> Instant {
    let secs = unix.saturating_sub(crate::telemetry::unix_now()).max(0);
    Instant::now() + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The signals one connection watches.
#[derive(Debug)]
pub(crate) struct Interrupts {
    shutdown: watch::Receiver<bool>,
    revoked: watch::Receiver<u64>,
    write_timeout: Duration,
}

impl Interrupts {
    /// Watch `app`'s shutdown flag and revocation list.
    pub(crate) fn new(app: &AppState) -> Self {
        Self {
            shutdown: app.shutdown_rx(),
            revoked: app.revocations.subscribe(),
            write_timeout: app.config.server.write_timeout,
        }
    }

    /// Completes with the code that closes the connection now: shutdown, `principal`
    /// revoked, or `expire_at` reached. Cancel-safe.
    pub(crate) async fn wait(
        &mut self,
        app: &AppState,
        principal: &Principal,
        expire_at: Option<Instant>,
    ) -> ErrorCode {
        tokio::select! {
            biased;
            () = crate::shutdown::wait(&mut self.shutdown) => ErrorCode::ServerRestart,
            () = revoked(&mut self.revoked, app, principal) => ErrorCode::TokenRevoked,
            () = sleep_until_opt(expire_at) => ErrorCode::TokenExpired,
        }
    }

    /// Run `work` unless an interrupt comes first.
    ///
    /// # Errors
    /// The interrupt's close code.
    pub(crate) async fn race<F: Future>(
        &mut self,
        app: &AppState,
        principal: &Principal,
        expire_at: Option<Instant>,
        work: F,
    ) -> Result<F::Output, ErrorCode> {
        tokio::select! {
            biased;
            code = self.wait(app, principal, expire_at) => Err(code),
            out = work => Ok(out),
        }
    }

    /// Send one frame within `server.write_timeout_s`, unless an interrupt comes first.
    ///
    /// # Errors
    /// How the connection ends: the interrupt's code, `slow_consumer` when the frame
    /// could not be written in time, or gone when the socket failed.
    pub(crate) async fn send(
        &mut self,
        app: &AppState,
        principal: &Principal,
        expire_at: Option<Instant>,
        socket: &mut WebSocket,
        msg: Message,
    ) -> Result<(), End> {
        let timeout = self.write_timeout;
        match self.race(app, principal, expire_at, tokio::time::timeout(timeout, socket.send(msg))).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(_))) => Err(End::Gone),
            Ok(Err(_elapsed)) => Err(End::Close(ErrorCode::SlowConsumer)),
            Err(code) => Err(End::Close(code)),
        }
    }
}

/// Completes once the revocation list changes so that `principal` is revoked.
async fn revoked(rx: &mut watch::Receiver<u64>, app: &AppState, principal: &Principal) {
    loop {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if app.revocations.is_revoked(principal.jti.as_deref(), &principal.subject, principal.issued_at) {
            return;
        }
    }
}
