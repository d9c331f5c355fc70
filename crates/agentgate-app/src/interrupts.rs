//! What must close a live connection on time, whatever it is doing: shutdown
//! (1012), revocation of its credential (4401 `token_revoked`, within 1 s) and expiry
//! (4401 `token_expired`). A connection races every write against these, and every
//! write against `server.write_timeout_s` (1013 `slow_consumer`), so a client that
//! stops reading can neither hold a connection task in a blocked write nor escape
//! revocation, expiry or shutdown (PROTOCOL.md sections 5, 8 and 10).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use agentgate_auth::{Principal, Revocations};
use agentgate_protocol::ErrorCode;
use futures_util::{Sink, SinkExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::connection::{End, sleep_until_opt};
use crate::state::AppState;
use crate::upgrade::Socket;

/// The monotonic instants of a live credential's expiry warning
/// (`auth.expiry_warning_s` before `exp`) and of its expiry, when it closes its
/// connection 4401 `token_expired`: the instant `agentgate_auth::is_expired` turns
/// true. Both `None` for a credential without `exp` (an API key). Instants already
/// passed are now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expiry {
    pub(crate) warn_at: Option<Instant>,
    pub(crate) expire_at: Option<Instant>,
}

impl Expiry {
    /// The instants of a credential expiring at `exp` (Unix seconds). Each clock is
    /// read once: a connection computes this when its credential arrives and at each
    /// heartbeat, not at every frame (clock reads were about 2% of a handshake's user
    /// time on a virtual machine; docs/performance.md).
    pub(crate) fn of(exp: Option<i64>, auth: &crate::config::AuthConfig) -> Self {
        let Some(exp) = exp else { return Self { warn_at: None, expire_at: None } };
        let (now_unix, now) = (crate::telemetry::unix_now(), Instant::now());
        let at = |unix: i64| now + Duration::from_secs(u64::try_from(unix.saturating_sub(now_unix)).unwrap_or(0));
        Self {
            warn_at: Some(at(exp.saturating_sub(auth.expiry_warning_s))),
            expire_at: Some(at(agentgate_auth::expires_after(exp, auth.leeway_s))),
        }
    }
}

/// The signals one connection watches: one channel, poked when the revocation list
/// changes and when the node starts shutting down.
#[derive(Debug)]
pub(crate) struct Interrupts {
    node: watch::Receiver<u64>,
    write_timeout: Duration,
}

impl Interrupts {
    /// Watch `app`'s revocation list and shutdown.
    pub(crate) fn new(app: &AppState) -> Self {
        let mut node = app.revocations.subscribe();
        if app.is_shutting_down() {
            node.mark_changed();
        }
        Self { node, write_timeout: app.config.server.write_timeout }
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
            code = self.signalled(app, principal) => code,
            () = sleep_until_opt(expire_at) => ErrorCode::TokenExpired,
        }
    }

    /// Completes with the code of a node-wide signal that closes the connection:
    /// shutdown, or `principal` revoked. Cancel-safe. (Expiry is the caller's timer.)
    pub(crate) async fn signalled(&mut self, app: &AppState, principal: &Principal) -> ErrorCode {
        loop {
            if self.node.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if app.is_shutting_down() {
                return ErrorCode::ServerRestart;
            }
            if app.revocations.is_revoked(principal.jti.as_deref(), &principal.subject, principal.issued_at) {
                return ErrorCode::TokenRevoked;
            }
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

    /// Send one frame (or, with `None`, flush what is buffered) within
    /// `server.write_timeout_s`, unless an interrupt comes first.
    ///
    /// A frame usually goes to the kernel at once ([`write_now`]): that path arms no
    /// timer, races nothing and its future is two words. Only a write that would block
    /// takes the slow path (boxed: its state, timers included, should not size every
    /// connection's task).
    ///
    /// # Errors
    /// How the connection ends: the interrupt's code, `slow_consumer` when the frame
    /// could not be written in time, or gone when the socket failed.
    pub(crate) fn send<'a>(
        &'a mut self,
        app: &'a AppState,
        principal: &'a Principal,
        expire_at: Option<Instant>,
        socket: &'a mut Socket,
        msg: Option<Message>,
    ) -> impl Future<Output = Result<(), End>> + Send + 'a {
        use futures_util::future::Either;
        match write_now(socket, msg) {
            Now::Done => Either::Left(std::future::ready(Ok(()))),
            Now::Failed => Either::Left(std::future::ready(Err(End::Gone))),
            Now::Blocked(msg) => Either::Right(Box::pin(async move {
                let write = async move {
                    match msg {
                        Some(msg) => SinkExt::send(socket, msg).await,
                        None => SinkExt::flush(socket).await,
                    }
                };
                self.bounded(app, principal, expire_at, write).await
            })),
        }
    }

    /// Finish a blocked write within `server.write_timeout_s`, unless an interrupt
    /// comes first.
    async fn bounded<F, E>(
        &mut self,
        app: &AppState,
        principal: &Principal,
        expire_at: Option<Instant>,
        write: F,
    ) -> Result<(), End>
    where
        F: Future<Output = Result<(), E>>,
    {
        let timeout = self.write_timeout;
        match self.race(app, principal, expire_at, tokio::time::timeout(timeout, write)).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(_))) => Err(End::Gone),
            Ok(Err(_elapsed)) => Err(End::Close(ErrorCode::SlowConsumer)),
            Err(code) => Err(End::Close(code)),
        }
    }
}

/// What an immediate write did.
enum Now {
    /// The frame is in the kernel's buffer.
    Done,
    /// The socket failed.
    Failed,
    /// The write would block: the frame is still to send (`Some`), or buffered and
    /// waiting to be flushed (`None`).
    Blocked(Option<Message>),
}

/// Try to write a frame (or only flush, with `None`) now, without waiting. A blocked
/// write registers no waker here (the slow path polls again with the task's own).
fn write_now(socket: &mut Socket, msg: Option<Message>) -> Now {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if let Some(msg) = msg {
        match Pin::new(&mut *socket).poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Now::Failed,
            Poll::Pending => return Now::Blocked(Some(msg)),
        }
        if Pin::new(&mut *socket).start_send(msg).is_err() {
            return Now::Failed;
        }
    }
    match Pin::new(&mut *socket).poll_flush(&mut cx) {
        Poll::Ready(Ok(())) => Now::Done,
        Poll::Ready(Err(_)) => Now::Failed,
        Poll::Pending => Now::Blocked(None),
    }
}
