//! The relay: standard input to the gateway and back, holding messages while
//! (re)connecting, answering every pending request exactly once, replaying
//! `initialize` on a new connection, and draining at end of input.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

use agentgate_app::Env;
use agentgate_client::ClientError;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::advice::{Refusal, lost_message, refusal};
use super::connecting::{Ws, connect, excerpt, retryable, what};
use super::credential::{Sources, Token};
use super::jsonrpc::{Outgoing, Req, answer_of, error_answer};
use super::target::Target;
use super::{ME, policy};

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
/// After the end of standard input, how long the answers to requests already relayed
/// (or held) are awaited before the shim answers them itself and exits.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// How long the gateway's answering close frame is awaited at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Prefix of the ids of the shim's own replayed `initialize` requests.
const REINIT_ID_PREFIX: &str = "agentgate-shim-reinitialize-";

pub(super) type Connecting = Pin<Box<dyn Future<Output = Result<Ws, ClientError>>>>;

/// The state of the link to the gateway.
pub(super) enum Link {
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

pub(super) struct Up {
    pub(super) ws: Ws,
    pub(super) since: Instant,
    pub(super) last_heard: Instant,
    /// The id of a replayed `initialize` awaiting its answer, and the deadline.
    pub(super) reinit: Option<(String, Instant)>,
}

pub(super) enum Event {
    Frame(Option<Result<Message, tungstenite::Error>>),
    ReinitTimeout,
    Connected(Result<Box<Ws>, ClientError>),
    BackoffDone,
}

pub(super) async fn next_event(link: &mut Link) -> Event {
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

pub(super) struct Shim {
    pub(super) target: Target,
    pub(super) sources: Sources,
    pub(super) env: Env,
    pub(super) token: Token,
    pub(super) lines: mpsc::Receiver<String>,
    pub(super) link: Link,
    /// Failed attempts in a row in this outage.
    pub(super) streak: u32,
    /// Requests sent on the current connection and not yet answered.
    pub(super) pending: HashMap<String, Req>,
    /// Messages held while (re)connecting.
    pub(super) queue: VecDeque<Outgoing>,
    /// `initialize` requests in flight (key → line), to remember the one that succeeds.
    pub(super) init_in_flight: HashMap<String, String>,
    /// The client's last successful `initialize`, replayed on a new connection.
    pub(super) init_memo: Option<String>,
    /// The client's `notifications/initialized`, replayed after it.
    pub(super) initialized_memo: Option<String>,
    pub(super) replays: u64,
    /// What the last failed attempt or lost connection was (for messages).
    pub(super) last_failure: String,
    /// Standard output is gone: nothing more can be said to the client.
    pub(super) stdout_gone: bool,
}

impl Shim {
    pub(super) fn new(target: Target, sources: Sources, env: Env, token: Token, lines: mpsc::Receiver<String>) -> Self {
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

    pub(super) async fn run(mut self) -> u8 {
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set at the end of standard input: until then, the answers to what was sent are
        // still relayed (bounded by DRAIN_MAX), so `echo REQUEST | agentgate mcp-shim`
        // prints the answer.
        let mut draining: Option<Instant> = None;
        loop {
            if self.stdout_gone {
                eprintln!("{ME}: standard output is closed; exiting");
                self.close().await;
                return 0;
            }
            if let Some(deadline) = draining {
                if self.pending.is_empty() && self.queue.is_empty() {
                    self.close().await;
                    return 0;
                }
                if Instant::now() >= deadline {
                    self.answer_unfinished();
                    self.close().await;
                    return 0;
                }
            }
            let held = self.hold_deadline();
            tokio::select! {
                () = tokio::time::sleep_until(held.unwrap_or_else(Instant::now)), if held.is_some() => self.expire_held(),
                () = tokio::time::sleep_until(draining.unwrap_or_else(Instant::now)), if draining.is_some() => {}
                line = self.lines.recv(), if draining.is_none() => match line {
                    Some(line) => self.on_line(line).await,
                    None => draining = Some(Instant::now() + DRAIN_MAX),
                },
                event = next_event(&mut self.link) => self.on_event(event).await,
                _ = ping.tick() => self.on_tick().await,
            }
        }
    }

    // --- standard input ---

    pub(super) async fn on_line(&mut self, line: String) {
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
                if refusal.data["reason"] == "tls" {
                    eprintln!("{ME}: a new request: trying {} again (last failure: TLS)", self.target.shown);
                    self.hold(msg);
                    self.attempt_once();
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
    pub(super) fn hold(&mut self, mut msg: Outgoing) {
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
    pub(super) fn hold_deadline(&self) -> Option<Instant> {
        self.queue.front().and_then(|m| m.held_at).map(|t| t + HOLD_MAX)
    }

    /// Answer the requests held for [`HOLD_MAX`] (dropping the notifications held
    /// before them); the attempts go on.
    pub(super) fn expire_held(&mut self) {
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
    pub(super) fn attempt_once(&mut self) {
        self.streak = policy().max_attempts.saturating_sub(1);
        self.start_attempt();
    }

    pub(super) fn start_attempt(&mut self) {
        self.link = Link::Connecting(Box::pin(connect(self.target.clone(), self.token.value.clone())));
    }

    /// Send a message on the live connection, tracking its requests.
    pub(super) async fn send(&mut self, msg: Outgoing) {
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

    pub(super) async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        let Link::Up(up) = &mut self.link else {
            return Err(ClientError::Network("not connected".into()));
        };
        match tokio::time::timeout(SEND_TIMEOUT, up.ws.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::from_ws(e, &self.target.shown)),
            Err(_) => Err(ClientError::Timeout(format!(
                "a frame to {} did not go out within {SEND_TIMEOUT:?}",
                self.target.shown
            ))),
        }
    }

    /// Send the held messages, in order, while the connection is up and ready.
    pub(super) async fn flush(&mut self) {
        while matches!(&self.link, Link::Up(up) if up.reinit.is_none()) {
            let Some(msg) = self.queue.pop_front() else { return };
            self.send(msg).await;
        }
    }

    // --- the gateway ---

    pub(super) async fn on_event(&mut self, event: Event) {
        match event {
            Event::Frame(Some(Ok(Message::Text(text)))) => self.on_text(text.as_str()).await,
            Event::Frame(Some(Ok(Message::Close(frame)))) => self.lost(ClientError::from_close(frame.as_ref())).await,
            Event::Frame(Some(Ok(Message::Binary(_)))) => {
                self.heard();
                eprintln!("{ME}: ignored a binary frame from the gateway (MCP messages are text)");
            }
            Event::Frame(Some(Ok(_))) => self.heard(),
            Event::Frame(Some(Err(e))) => {
                let e = ClientError::from_ws(e, &self.target.shown);
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

    pub(super) fn heard(&mut self) {
        if let Link::Up(up) = &mut self.link {
            up.last_heard = Instant::now();
        }
    }

    pub(super) async fn on_text(&mut self, text: &str) {
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

    pub(super) async fn connected(&mut self, ws: Box<Ws>) {
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

    pub(super) async fn reinit_done(&mut self) {
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
    pub(super) fn failed(&mut self, e: ClientError) {
        if !retryable(&e) {
            return self.refuse(&e);
        }
        self.streak += 1;
        eprintln!("{ME}: attempt {} to reach {} failed: {}", self.streak, self.target.shown, what(&e));
        self.retry_later(&e);
    }

    /// The live connection ended.
    pub(super) async fn lost(&mut self, e: ClientError) {
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
    pub(super) fn retry_later(&mut self, e: &ClientError) {
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
    pub(super) fn refuse(&mut self, e: &ClientError) {
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
    pub(super) fn answer_held(&mut self, message: &str, data: &Value) {
        let held: Vec<Outgoing> = self.queue.drain(..).collect();
        for r in held.iter().flat_map(|m| &m.requests) {
            self.say(&error_answer(&r.raw_id, message, data));
        }
    }

    pub(super) async fn on_tick(&mut self) {
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
    pub(super) async fn close(&mut self) {
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

    /// Standard input ended [`DRAIN_MAX`] ago: answer every request still waiting.
    fn answer_unfinished(&mut self) {
        let message = format!(
            "agentgate: standard input ended and no answer came from {} within {} s; the request may be retried",
            self.target.shown,
            DRAIN_MAX.as_secs()
        );
        let data = json!({"reason": "input_ended", "retryable": true, "cause": self.last_failure});
        let pending: Vec<Req> = self.pending.drain().map(|(_, r)| r).collect();
        for r in &pending {
            self.say(&error_answer(&r.raw_id, &message, &data));
        }
        self.answer_held(&message, &data);
    }

    /// One line to the client.
    pub(super) fn say(&mut self, text: &str) {
        if self.stdout_gone {
            return;
        }
        let mut out = std::io::stdout().lock();
        if out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).is_err() {
            self.stdout_gone = true;
        }
    }
}
