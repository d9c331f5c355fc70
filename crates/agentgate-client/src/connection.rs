//! [`Client`] (where and how to connect) and [`Connection`] (one live WebSocket): the
//! handshake, the welcome, sending, and receiving with `seq` tracking, duplicate
//! suppression and automatic `auth.refresh`.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::credential::build_request;
use crate::run::Run;
use crate::{ClientError, Credential, Resume, ServerMessage, TokenProvider};

/// Default limit for the TCP connect plus handshake, and again for the welcome.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that hears nothing (not even a server ping) for this many heartbeat
/// intervals is taken for dead: the gateway pings every `heartbeat_ms`, so silence
/// means the path is broken even when TCP has not noticed.
const DEAD_AFTER_HEARTBEATS: u32 = 3;

/// Heartbeat assumed when the welcome names none (the gateway's default, 25 s).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);

/// How long [`Connection::close`] waits for the server's answering close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A client WebSocket, plain or TLS.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and how to connect: the `/v1/ws` URL, the credential, and options.
///
/// `Debug` never shows the token.
#[derive(Clone)]
pub struct Client {
    url: String,
    credential: Credential,
    origin: Option<String>,
    connect_timeout: Duration,
    provider: Option<Arc<dyn TokenProvider>>,
    ca_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL is not shown either: it may carry a ticket or access token.
        f.debug_struct("Client")
            .field("credential", &self.credential)
            .field("origin", &self.origin)
            .field("connect_timeout", &self.connect_timeout)
            .field("token_provider", &self.provider.is_some())
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `url` (`ws://host:port/v1/ws`) presenting `credential`.
    pub fn new(url: impl Into<String>, credential: Credential) -> Self {
        Self {
            url: url.into(),
            credential,
            origin: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            provider: None,
            ca_file: None,
        }
    }

    /// For `wss://`: verify the gateway's certificate against only the PEM
    /// certificates of this file, instead of the system's trust roots.
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Send this `Origin` header, as a browser would.
    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Limit for connect plus handshake, and again for the welcome.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Answer `auth.expiring` with `auth.refresh` carrying `provider`'s token, and use
    /// a fresh token from it for each reconnect of a [`crate::ResumingClient`].
    #[must_use]
    pub fn token_provider(mut self, provider: impl TokenProvider + 'static) -> Self {
        self.provider = Some(Arc::new(provider));
        self
    }

    /// The credential presented.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// Replace the credential with a fresh token from the provider, if there is one
    /// and it gives a token.
    pub(crate) fn refresh_credential(&mut self) {
        if let Some(token) = self.provider.as_ref().and_then(|p| p.token()).filter(|t| !t.is_empty()) {
            self.credential = self.credential.with_token(token);
        }
    }

    /// Connect, authenticate and wait for the welcome of a new session.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] for an HTTP refusal, [`ClientError::Closed`] when the
    /// gateway upgrades and closes at once (browser-style refusals, first-message auth),
    /// [`ClientError::Network`] or [`ClientError::Timeout`] when it cannot be reached
    /// in time, [`ClientError::Protocol`] when the first message is not a welcome, and
    /// [`ClientError::InvalidInput`] for a bad URL or empty token.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        self.open(None).await
    }

    /// Connect and resume the session `resume.session_id` after `resume.last_seq`. The
    /// welcome says whether it worked (`resumed`, `resume_error`); events up to
    /// `last_seq` are never handed out again.
    ///
    /// # Errors
    /// As [`Client::connect`]; resuming another principal's session is
    /// [`ClientError::Rejected`] 403 `session_forbidden`.
    pub async fn resume(&self, resume: &Resume) -> Result<Connection, ClientError> {
        self.open(Some(resume)).await
    }

    async fn open(&self, resume: Option<&Resume>) -> Result<Connection, ClientError> {
        let (request, endpoint) = build_request(&self.url, &self.credential, resume, self.origin.as_deref())?;
        let limit = self.connect_timeout;
        let mut ws = connect_raw(request, self.ca_file.as_deref(), limit, &endpoint).await?;
        if let Credential::FirstMessage(token) = &self.credential {
            let mut auth = json!({"type": "auth", "token": token});
            if let Some(r) = resume {
                auth["session_id"] = json!(r.session_id);
                auth["last_seq"] = json!(r.last_seq);
            }
            ws.send(Message::Text(auth.to_string().into())).await.map_err(|e| ClientError::from_ws(e, &endpoint))?;
        }
        let welcome = match tokio::time::timeout(limit, first_message(&mut ws, &endpoint)).await {
            Err(_) => return Err(ClientError::Timeout(format!("no welcome from {endpoint} within {limit:?}"))),
            Ok(r) => r?,
        };
        if welcome.kind() != "welcome" {
            return Err(ClientError::Protocol(format!(
                "the first message was {:?}, not a welcome",
                crate::error::excerpt(welcome.kind())
            )));
        }
        let Some(session_id) = welcome.str("session_id").map(str::to_owned) else {
            return Err(ClientError::Protocol("the welcome has no session_id".to_owned()));
        };
        let resumed = welcome.json().get("resumed").and_then(Value::as_bool).unwrap_or(false);
        let last_seq = match resume {
            Some(r) if resumed && r.session_id == session_id => r.last_seq,
            _ => 0,
        };
        let heartbeat = welcome
            .json()
            .get("heartbeat_ms")
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0)
            .map_or(DEFAULT_HEARTBEAT, Duration::from_millis);
        let expires_at = welcome.json().get("expires_at").and_then(Value::as_i64);
        tracing::debug!(session_id = %session_id, resumed, last_seq, "connected");
        Ok(Connection {
            ws,
            endpoint,
            welcome,
            session_id,
            last_seq,
            expires_at,
            idle_timeout: heartbeat.saturating_mul(DEAD_AFTER_HEARTBEATS),
            provider: self.provider.clone(),
            token_hash: hash(self.credential.secret()),
            pending: None,
            closed: false,
            close_sent: false,
            next_ref: 0,
        })
    }
}

/// The WebSocket handshake of `request` (`ws://`, or `wss://` verified against the
/// system's roots or only `ca_file`), bounded by `limit`; `endpoint` (`host:port`,
/// never the URL) names the gateway in errors. The one way this crate, `agentgate
/// connect`, `doctor` and `mcp-shim` open a socket, so all classify failures alike.
///
/// # Errors
/// As [`Client::connect`], before the welcome.
pub async fn connect_raw(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ca_file: Option<&std::path::Path>,
    limit: Duration,
    endpoint: &str,
) -> Result<Ws, ClientError> {
    let connector = match request.uri().scheme_str() {
        Some("wss") => Some(crate::tls::connector(ca_file)?),
        _ => None,
    };
    let connecting = tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector);
    match tokio::time::timeout(limit, connecting).await {
        Err(_) => Err(ClientError::Timeout(format!("no handshake answer from {endpoint} within {limit:?}"))),
        Ok(Err(e)) => Err(ClientError::from_ws(e, endpoint)),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

/// The welcome, or the close frame that refused the connection.
async fn first_message(ws: &mut Ws, endpoint: &str) -> Result<ServerMessage, ClientError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return ServerMessage::parse(t.as_str()),
            Some(Ok(Message::Close(frame))) => return Err(close_error(frame.as_ref())),
            Some(Ok(Message::Binary(_))) => {
                return Err(ClientError::Protocol("a binary frame instead of the welcome".to_owned()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ClientError::from_ws(e, endpoint)),
            None => {
                return Err(ClientError::Network(format!("{endpoint} ended the connection before the welcome")));
            }
        }
    }
}

/// A close frame as an error (1000 included: it is not expected where this is used).
fn close_error(frame: Option<&CloseFrame>) -> ClientError {
    match frame {
        Some(f) => ClientError::closed(u16::from(f.code), f.reason.as_str()),
        None => ClientError::closed(1005, ""),
    }
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// One authenticated WebSocket to the gateway.
///
/// [`Connection::next`] hands out every server message once, in order; it tracks the
/// `seq` of agent events (so [`Connection::resume_point`] is where to resume) and drops
/// any event at or below it. With a [`TokenProvider`], `auth.expiring` is answered with
/// `auth.refresh` before it is handed out.
pub struct Connection {
    ws: Ws,
    endpoint: String,
    welcome: ServerMessage,
    session_id: String,
    last_seq: u64,
    expires_at: Option<i64>,
    idle_timeout: Duration,
    provider: Option<Arc<dyn TokenProvider>>,
    /// Hash of the live token, to never "refresh" with the same one (the gateway would
    /// warn again at once, and the two would loop).
    token_hash: u64,
    /// A message received but not yet handed out (while a refresh was being sent).
    pending: Option<ServerMessage>,
    /// The socket is finished: nothing more will be read.
    closed: bool,
    /// This side sent its close frame; reading goes on until the gateway's.
    close_sent: bool,
    next_ref: u64,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("session_id", &self.session_id)
            .field("last_seq", &self.last_seq)
            .field("expires_at", &self.expires_at)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The welcome message.
    pub fn welcome(&self) -> &ServerMessage {
        &self.welcome
    }

    /// The session id of the welcome.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The highest event `seq` handed out so far (for a resumed session, at least the
    /// `last_seq` it was resumed from).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Where to resume this session after losing the connection.
    pub fn resume_point(&self) -> Resume {
        Resume { session_id: self.session_id.clone(), last_seq: self.last_seq }
    }

    /// When the live credential expires (`None` for an API key).
    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }

    /// A new correlation id (`c1`, `c2`, ...) for a request.
    pub fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("c{}", self.next_ref)
    }

    /// Send a client message (PROTOCOL.md section 5) as a JSON text frame.
    ///
    /// # Errors
    /// [`ClientError::Network`] when the connection is broken or closed.
    pub async fn send(&mut self, message: &Value) -> Result<(), ClientError> {
        self.send_text(&message.to_string()).await
    }

    /// Send a text frame as is (the gateway closes 4400 on anything that is not a
    /// valid client message).
    ///
    /// # Errors
    /// [`ClientError::Network`] when the connection is broken or closed.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        if self.closed || self.close_sent {
            return Err(ClientError::Network(format!("the connection to {} is closed", self.endpoint)));
        }
        self.ws.send(Message::Text(text.into())).await.map_err(|e| ClientError::from_ws(e, &self.endpoint))
    }

    /// Send `auth.refresh` with `token`; the answer (`auth.refreshed`, or a close
    /// with the token's reason code) comes through [`Connection::next`].
    ///
    /// # Errors
    /// [`ClientError::Network`] when the connection is broken or closed.
    pub async fn refresh(&mut self, token: &str) -> Result<(), ClientError> {
        self.send(&json!({"type": "auth.refresh", "token": token})).await?;
        self.token_hash = hash(token);
        Ok(())
    }

    /// The next server message, or `None` once the gateway closed with 1000.
    ///
    /// Events at or below [`Connection::last_seq`] are skipped, so none is handed out
    /// twice. WebSocket pings are answered. This is cancel-safe: a message is never
    /// lost when the future is dropped.
    ///
    /// # Errors
    /// [`ClientError::Closed`] for any other close frame, [`ClientError::Network`] when
    /// the connection breaks without one, [`ClientError::Timeout`] after three
    /// heartbeats of silence, [`ClientError::Protocol`] for a frame that is not a JSON
    /// message.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        if let Some(m) = self.pending.take() {
            return Ok(Some(m));
        }
        if self.closed {
            return Ok(None);
        }
        loop {
            let limit = if self.close_sent { CLOSE_WAIT } else { self.idle_timeout };
            let frame = match tokio::time::timeout(limit, self.ws.next()).await {
                Ok(Some(Err(_)) | None) | Err(_) if self.close_sent => {
                    // This side asked to close; a peer that then just goes away (or
                    // takes too long to answer) has closed all the same.
                    self.closed = true;
                    return Ok(None);
                }
                Ok(f) => f,
                Err(_) => {
                    self.closed = true;
                    return Err(ClientError::Timeout(format!(
                        "nothing from {} for {:?} (the gateway pings every heartbeat)",
                        self.endpoint, self.idle_timeout
                    )));
                }
            };
            let msg = match frame {
                Some(Ok(Message::Text(t))) => ServerMessage::parse(t.as_str())?,
                Some(Ok(Message::Close(frame))) => {
                    self.closed = true;
                    return match frame {
                        Some(f) if f.code == CloseCode::Normal => Ok(None),
                        other => Err(close_error(other.as_ref())),
                    };
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(ClientError::Protocol("the gateway sent a binary frame".to_owned()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    self.closed = true;
                    return Err(ClientError::from_ws(e, &self.endpoint));
                }
                None => {
                    self.closed = true;
                    return Err(ClientError::Network(format!(
                        "{} ended the connection without a close frame",
                        self.endpoint
                    )));
                }
            };
            if let Some(seq) = msg.seq() {
                if seq <= self.last_seq {
                    tracing::debug!(seq, last_seq = self.last_seq, "duplicate event skipped");
                    continue;
                }
                self.last_seq = seq;
            }
            match msg.kind() {
                "auth.expiring" => {
                    let fresh = self.provider.as_ref().and_then(|p| p.token()).filter(|t| !t.is_empty());
                    if let Some(token) = fresh.filter(|t| hash(t) != self.token_hash) {
                        // Kept aside while the refresh is sent, so a cancelled call
                        // still hands it out next time.
                        self.pending = Some(msg);
                        if let Err(e) = self.refresh(&token).await {
                            tracing::warn!(error = %e, "cannot send auth.refresh");
                        }
                        return Ok(self.pending.take());
                    }
                }
                "auth.refreshed" => self.expires_at = msg.json().get("expires_at").and_then(Value::as_i64),
                _ => {}
            }
            return Ok(Some(msg));
        }
    }

    /// Start a run of `agent` with `input` (an object) and follow it until its terminal
    /// event. See [`Run`].
    ///
    /// # Errors
    /// [`ClientError::Network`] when `run.start` cannot be sent.
    pub async fn run(&mut self, agent: &str, input: Value) -> Result<Run<'_>, ClientError> {
        let r#ref = self.new_ref();
        self.send(&json!({"type": "run.start", "ref": r#ref, "agent": agent, "input": input})).await?;
        Ok(Run::plain(self, r#ref))
    }

    /// Send a close frame with 1000. Reading goes on: [`Connection::next`] hands out the
    /// messages still in flight, then `None` once the gateway answers (or goes away, or
    /// stays silent for a short while), or an error for a close of its own with another
    /// code.
    ///
    /// # Errors
    /// [`ClientError::Network`] when the close frame cannot be sent.
    pub async fn send_close(&mut self) -> Result<(), ClientError> {
        if self.closed || self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        self.ws.close(Some(frame)).await.map_err(|e| ClientError::from_ws(e, &self.endpoint))
    }

    /// Close with 1000 and wait briefly for the gateway's answer. Returns the messages
    /// that arrived meanwhile (replies to requests sent just before), in order.
    ///
    /// # Errors
    /// [`ClientError::Network`] when the close frame cannot be sent;
    /// [`ClientError::Closed`] when the gateway had closed with another code first.
    pub async fn close(mut self) -> Result<Vec<ServerMessage>, ClientError> {
        self.send_close().await?;
        let mut late = Vec::new();
        // Bounded: once the close is sent, each read waits at most CLOSE_WAIT, and the
        // gateway sends only what was already in flight.
        while let Some(m) = self.next().await? {
            late.push(m);
        }
        Ok(late)
    }
}
