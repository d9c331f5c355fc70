//! The seam between the gateway and its shared state. Everything several nodes must
//! agree on sits behind one [`Backend`]: sessions ([`SessionStore`]), one-time tickets
//! ([`TicketStore`]), revocations ([`RevocationStore`]), the run registry
//! ([`RunRegistry`]) and a bus for node-to-node signals ([`Bus`]). Policy stays above
//! the seam (ticket expiry and origin binding in `tickets.rs`, the revocation cache in
//! `revocation.rs`, the run driver in `runs.rs`, credential deadlines in
//! `connection.rs`), so each reason code is decided in one place for every backend.
//!
//! Signals from other nodes (and, on one node, from the store itself) arrive through
//! this node's [`Inbox`]: an event for a session attached here, a takeover, a run to
//! cancel.
//!
//! This is the one file that names the implementations: [`memory`] (one process;
//! several in-process nodes may share it, which the contract tests use) and [`redis`]
//! (any number of processes on one Redis).

pub mod memory;
pub mod redis;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use agentgate_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{BackendKind, Config};
use crate::revocation::{RevocationList, Revoke};
use crate::session::{BoxFuture, Owner, SessionStore, StoreError, StoredEvent};

/// A ticket as stored: the principal it carries, the origin it is bound to, and when
/// it stops being valid (Unix milliseconds). Keyed by the SHA-256 of the ticket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTicket {
    /// The principal of the credential that created it.
    pub principal: agentgate_auth::Principal,
    /// The `Origin` of the ticket request, if any.
    pub origin: Option<String>,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: u64,
}

/// One-time tickets: stored by digest, taken at most once.
pub trait TicketStore: Send + Sync + Debug + 'static {
    /// Store a ticket for `ttl`, unless its principal already holds `per_principal`
    /// live tickets ([`StoreError::TicketLimit`]); decided atomically, on any node.
    fn put(
        &self,
        digest: [u8; 32],
        ticket: StoredTicket,
        ttl: Duration,
        per_principal: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Take a ticket: atomically remove it and return it. Of two concurrent takes of
    /// one ticket, on any nodes, exactly one gets it.
    fn take(&self, digest: [u8; 32]) -> BoxFuture<'_, Result<Option<StoredTicket>, StoreError>>;

    /// Drop expired tickets (a no-op where the backend expires keys itself).
    fn sweep(&self) {}
}

/// Revocations, shared by every node. Each node keeps a local cache
/// ([`RevocationList`]) that handshakes and live connections consult; the store fills
/// it with every revocation, made on any node.
pub trait RevocationStore: Send + Sync + Debug + 'static {
    /// Record a revocation (and apply it to this node's cache at once).
    fn add(&self, revoke: Revoke) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still running.
    Running,
    /// Ended `agent_completed`.
    Completed,
    /// Ended `agent_failed`.
    Failed,
    /// Ended `run_cancelled`.
    Cancelled,
}

impl RunStatus {
    /// Wire name for `run.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status a terminal event of type `ty` gives its run.
    pub fn of_terminal(ty: agentgate_protocol::EventType) -> Self {
        use agentgate_protocol::EventType;
        match ty {
            EventType::AgentCompleted => Self::Completed,
            EventType::RunCancelled => Self::Cancelled,
            _ => Self::Failed,
        }
    }
}

/// How long, and how many, finished runs are kept (`runs.retention_s`,
/// `runs.retained_per_principal`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long a finished run is known.
    pub ttl: Duration,
    /// Finished runs kept per principal.
    pub per_principal: usize,
}

/// What the registry knows of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The principal that started it.
    pub owner: Owner,
    /// The node executing it.
    pub node: String,
    /// The session its events go to.
    pub session_id: String,
    /// Its status.
    pub status: RunStatus,
    /// Its terminal event, once ended.
    pub terminal: Option<Value>,
}

/// Runs of every node: registered under the per-principal cap, finished, looked up.
pub trait RunRegistry: Send + Sync + Debug + 'static {
    /// Register a running run unless its owner already has `cap` running runs.
    /// `Ok(false)` at the cap. Atomic across nodes.
    fn register(&self, run_id: &str, record: RunRecord, cap: usize) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Record how a run ended; it is then known for `retention.ttl`, and its
    /// principal keeps at most `retention.per_principal` finished runs (the oldest are
    /// forgotten first).
    fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        terminal: Value,
        retention: Retention,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A run, while known.
    fn get(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StoreError>>;

    /// Forget finished runs past their retention (a no-op where keys expire).
    fn sweep(&self) {}
}

/// A signal for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Close connection `conn_id` attached to `session_id` with `code` (takeover).
    Kick {
        /// The session.
        session_id: String,
        /// The connection on the receiving node.
        conn_id: u64,
        /// Why.
        code: ErrorCode,
    },
    /// Cancel a run executing on the receiving node.
    Cancel {
        /// The run.
        run_id: String,
    },
}

/// Sends signals to nodes.
pub trait Bus: Send + Sync + Debug + 'static {
    /// Send `signal` to `node` (delivered at most once; a dead node gets nothing).
    fn send(&self, node: &str, signal: Signal) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// What a node receives: live events of sessions attached here, and signals.
pub trait Inbox: Send + Sync + Debug + 'static {
    /// An event of a session (attached here, as far as the sender knew).
    fn event(&self, session_id: &str, event: StoredEvent);
    /// A signal from another node (or from this one).
    fn signal(&self, signal: Signal);
    /// The sessions attached on this node now.
    fn attached_sessions(&self) -> Vec<String>;
}

/// A node's inbox: events go to its hub, takeovers close the connection named,
/// cancels reach the run's driver.
#[derive(Debug)]
pub struct LocalInbox {
    hub: Arc<crate::session::Hub>,
    runs: Arc<crate::runs::RunControl>,
}

impl LocalInbox {
    /// The inbox of a node with this hub and these runs.
    pub fn new(hub: Arc<crate::session::Hub>, runs: Arc<crate::runs::RunControl>) -> Self {
        Self { hub, runs }
    }
}

impl Inbox for LocalInbox {
    fn event(&self, session_id: &str, event: StoredEvent) {
        self.hub.deliver(session_id, event);
    }

    fn signal(&self, signal: Signal) {
        match signal {
            Signal::Kick { session_id, conn_id, code } => self.hub.kick_conn(&session_id, conn_id, code),
            Signal::Cancel { run_id } => {
                self.runs.cancel(&run_id);
            }
        }
    }

    fn attached_sessions(&self) -> Vec<String> {
        self.hub.sessions()
    }
}

/// The shared state of a deployment, as seen by one node.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Tickets.
    pub tickets: Arc<dyn TicketStore>,
    /// Revocations.
    pub revocations: Arc<dyn RevocationStore>,
    /// Runs.
    pub runs: Arc<dyn RunRegistry>,
    /// Node-to-node signals.
    pub bus: Arc<dyn Bus>,
    /// Whether the backend can be used now: `Err` names what is wrong.
    pub health: Arc<dyn Health>,
    /// Lets the backend wait for this node's work before it leaves (Redis: the node's
    /// lease is released once its runs have ended).
    pub leave: Arc<dyn Leave>,
}

/// Reachability of the backend.
pub trait Health: Send + Sync + Debug + 'static {
    /// `Ok` while usable; `Err` with the error text while not.
    fn check(&self) -> Result<(), String>;
    /// The readiness check's name (`memory`, `redis`).
    fn name(&self) -> &'static str;
}

/// Leaving a deployment cleanly.
pub trait Leave: Send + Sync + Debug + 'static {
    /// Called once, after this node's runs have ended at shutdown.
    fn leave(&self) -> BoxFuture<'_, ()>;
}

/// Open the backend of `config` for node `node_id`, delivering to `inbox`.
///
/// # Errors
/// The Redis URL is invalid (a Redis that is merely down is not an error: the node
/// starts unready and connects when it can).
pub async fn open(
    config: &Config,
    node_id: &str,
    inbox: Arc<dyn Inbox>,
    cache: Arc<RevocationList>,
) -> Result<Backend, String> {
    match &config.backend.kind {
        BackendKind::Memory => Ok(memory::MemoryBackend::new(config).node(node_id, inbox, cache)),
        BackendKind::Redis => redis::connect(config, node_id, inbox, cache).await,
    }
}
