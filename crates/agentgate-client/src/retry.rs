//! [`RetryPolicy`] (exponential backoff with full jitter) and [`ResumingClient`], which
//! reconnects on retryable failures and resumes the session so that every event is
//! handed out exactly once.

use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::run::Run;
use crate::{Client, ClientError, Connection, Resume, ServerMessage};

/// When and how often to try again.
///
/// The delay before retry `n` (from 0) is uniform in `[0, min(cap, base * 2^n)]`
/// ("full jitter"), so that clients dropped together by a restart do not come back
/// together; a `Retry-After` from the server is a floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
    /// Attempts in a row before giving up (at least 1 is made).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 250 ms doubling up to 30 s, 8 attempts (about a minute of trying at most).
    fn default() -> Self {
        Self { base: Duration::from_millis(250), cap: Duration::from_secs(30), max_attempts: 8 }
    }
}

impl RetryPolicy {
    /// A policy.
    pub fn new(base: Duration, cap: Duration, max_attempts: u32) -> Self {
        Self { base, cap, max_attempts }
    }

    /// The largest delay before retry `attempt` (from 0): `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(0..=ceiling))
    }

    /// Whether to try again after `error` when `attempts` tries in a row have failed.
    pub fn should_retry(&self, error: &ClientError, attempts: u32) -> bool {
        error.is_retryable() && attempts < self.max_attempts
    }
}

/// A connection that survives network faults and gateway restarts.
///
/// On a retryable failure ([`ClientError::is_retryable`]) it reconnects with backoff and
/// resumes the session after the last event it handed out; the gateway replays what
/// was missed and the connection skips anything already seen, so a consumer of
/// [`ResumingClient::next`] gets every event exactly once. Each reconnect's welcome is
/// handed out too, so the consumer learns of a `resume_error` (`history_truncated`, or
/// `session_not_found` after the resume window: then a new session starts).
///
/// Before each reconnect the client's [`crate::TokenProvider`], if any, supplies a
/// fresh token. Without one, a ticket credential cannot reconnect (tickets are
/// single-use). Sending is at most once: a message whose send fails is not resent.
#[derive(Debug)]
pub struct ResumingClient {
    client: Client,
    policy: RetryPolicy,
    conn: Option<Connection>,
    resume: Option<Resume>,
    /// Failures in a row without a message in between.
    streak: u32,
    /// Why the last connection was lost.
    lost: Option<ClientError>,
    reconnects: u32,
    next_ref: u64,
    /// The welcome of a reconnect made by `send`, handed out by the next `next`.
    pending: Option<ServerMessage>,
}

impl ResumingClient {
    /// Connect (retrying per `policy`) and start a new session.
    ///
    /// # Errors
    /// The first error that is not retryable, or the last one once `policy` gives up.
    pub async fn connect(client: Client, policy: RetryPolicy) -> Result<Self, ClientError> {
        Self::start(client, policy, None).await
    }

    /// Connect (retrying per `policy`) and resume `resume`.
    ///
    /// # Errors
    /// As [`ResumingClient::connect`].
    pub async fn resume(client: Client, policy: RetryPolicy, resume: Resume) -> Result<Self, ClientError> {
        Self::start(client, policy, Some(resume)).await
    }

    async fn start(client: Client, policy: RetryPolicy, resume: Option<Resume>) -> Result<Self, ClientError> {
        let mut me = Self {
            client,
            policy,
            conn: None,
            resume,
            streak: 0,
            lost: None,
            reconnects: 0,
            next_ref: 0,
            pending: None,
        };
        me.reconnect(false).await?;
        me.reconnects = 0;
        Ok(me)
    }

    /// The welcome of the current connection, if connected.
    pub fn welcome(&self) -> Option<&ServerMessage> {
        self.conn.as_ref().map(Connection::welcome)
    }

    /// The current session and the last event handed out.
    pub fn resume_point(&self) -> Option<Resume> {
        self.conn.as_ref().map(Connection::resume_point).or_else(|| self.resume.clone())
    }

    /// The highest event `seq` handed out.
    pub fn last_seq(&self) -> u64 {
        self.resume_point().map_or(0, |r| r.last_seq)
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// Drop the current connection without a close frame, as a network fault would; the
    /// next call reconnects and resumes. For callers that detect a dead path themselves.
    pub fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            self.resume = Some(c.resume_point());
        }
        self.lost = Some(ClientError::Network("disconnected by the caller".into()));
    }

    /// A new correlation id (`c1`, `c2`, ...), unique across reconnects.
    pub fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("c{}", self.next_ref)
    }

    /// Send a client message, reconnecting first if the connection is down. A send that
    /// fails is not repeated (the gateway may or may not have received it); the
    /// connection is re-established on the next call.
    ///
    /// # Errors
    /// A reconnect that fails for good, or the send's own failure.
    pub async fn send(&mut self, message: &Value) -> Result<(), ClientError> {
        if self.conn.is_none() {
            let welcome = self.reconnect(true).await?;
            self.pending = Some(welcome);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Network("not connected".into()));
        };
        match conn.send(message).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.lose(e.clone());
                Err(e)
            }
        }
    }

    /// The next server message, reconnecting and resuming as needed; `None` once the
    /// gateway closed with 1000.
    ///
    /// # Errors
    /// A failure that is not retryable (a credential refused on reconnect, a protocol
    /// fault), or the last retryable one once the policy gives up.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        if let Some(welcome) = self.pending.take() {
            return Ok(Some(welcome));
        }
        // Each pass either returns or loses a connection, and reconnect() gives up after
        // `max_attempts` failures in a row, so this ends.
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return self.reconnect(true).await.map(Some);
            };
            match conn.next().await {
                Ok(Some(m)) => {
                    self.streak = 0;
                    return Ok(Some(m));
                }
                Ok(None) => return Ok(None),
                Err(e) if e.is_retryable() => {
                    tracing::info!(error = %e, "connection lost; resuming");
                    self.lose(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Start a run and follow it (see [`Run`]); its events are handed out exactly once
    /// across reconnects.
    ///
    /// # Errors
    /// As [`ResumingClient::send`].
    pub async fn run(&mut self, agent: &str, input: Value) -> Result<Run<'_>, ClientError> {
        let r#ref = self.new_ref();
        self.send(&json!({"type": "run.start", "ref": r#ref, "agent": agent, "input": input})).await?;
        // A welcome still to be handed out came before run.start was sent.
        let skip_welcome = self.pending.is_some();
        Ok(Run::resuming(self, r#ref, skip_welcome))
    }

    /// Close the current connection with 1000; returns the messages that arrived
    /// meanwhile (see [`Connection::close`]).
    ///
    /// # Errors
    /// [`ClientError::Network`] when the close frame cannot be sent.
    pub async fn close(mut self) -> Result<Vec<ServerMessage>, ClientError> {
        let mut late: Vec<ServerMessage> = self.pending.take().into_iter().collect();
        if let Some(c) = self.conn.take() {
            late.extend(c.close().await?);
        }
        Ok(late)
    }

    fn lose(&mut self, error: ClientError) {
        if let Some(c) = self.conn.take() {
            self.resume = Some(c.resume_point());
        }
        self.lost = Some(error);
    }

    /// Connect or reconnect, resuming when a session is known; returns the welcome.
    /// `backoff` waits before the first attempt too (after a lost connection).
    async fn reconnect(&mut self, backoff: bool) -> Result<ServerMessage, ClientError> {
        let mut last = self.lost.take();
        let mut first = true;
        loop {
            if self.streak >= self.policy.max_attempts.max(1) {
                return Err(last.unwrap_or_else(|| ClientError::Network("gave up reconnecting".into())));
            }
            if backoff || !first {
                let mut delay = self.policy.delay(self.streak);
                if let Some(floor) = last.as_ref().and_then(ClientError::retry_after) {
                    delay = delay.max(floor);
                }
                tokio::time::sleep(delay).await;
                self.client.refresh_credential();
            }
            first = false;
            self.streak += 1;
            let attempt = match &self.resume {
                Some(r) => self.client.resume(r).await,
                None => self.client.connect().await,
            };
            match attempt {
                Ok(conn) => {
                    let welcome = conn.welcome().clone();
                    self.resume = Some(conn.resume_point());
                    self.conn = Some(conn);
                    self.reconnects += 1;
                    return Ok(welcome);
                }
                Err(e) if e.is_retryable() => {
                    tracing::info!(error = %e, attempt = self.streak, "connect failed; retrying");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap_with_full_jitter() {
        let p = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1), 5);
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(4), Duration::from_secs(1));
        assert_eq!(p.ceiling(200), Duration::from_secs(1));
        for attempt in 0..10 {
            for _ in 0..50 {
                assert!(p.delay(attempt) <= p.ceiling(attempt));
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..50).map(|_| p.delay(3)).collect();
        assert!(spread.len() > 1, "jittered");
    }

    #[test]
    fn only_retryable_errors_are_retried_and_only_so_often() {
        let p = RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(10), 3);
        let net = ClientError::Network("x".into());
        assert!(p.should_retry(&net, 0));
        assert!(p.should_retry(&net, 2));
        assert!(!p.should_retry(&net, 3));
        let denied = ClientError::closed(4401, r#"{"code":"token_expired"}"#);
        assert!(!p.should_retry(&denied, 0));
    }
}
