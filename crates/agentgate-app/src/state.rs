//! The state one node shares between all its connections: the configuration, the
//! verifier with its revocation cache, the backend (sessions, tickets, revocations,
//! runs, node signals), admission limits, the local hub and the run driver, and the
//! shutdown flag. Built once by [`crate::server`]; every request handler reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentgate_auth::Authenticator;
use tokio::sync::{mpsc, watch};

use crate::backend::{Backend, Inbox, LocalInbox};
use crate::config::Config;
use crate::limits::Limits;
use crate::revocation::RevocationList;
use crate::runs::{RunControl, Runs};
use crate::session::Hub;
use crate::tickets::Tickets;

/// State shared by every connection of a node.
#[derive(Debug)]
pub struct AppState {
    /// The configuration.
    pub config: Config,
    /// The credential verifier, consulting this node's revocation cache.
    pub auth: Arc<Authenticator>,
    /// This node's cache of every revocation (filled by the backend).
    pub revocations: Arc<RevocationList>,
    /// The shared state of the deployment.
    pub backend: Backend,
    /// One-time tickets (policy over `backend.tickets`).
    pub tickets: Tickets,
    /// Admission limits.
    pub limits: Limits,
    /// HTTP client for JWKS fetches.
    pub http: reqwest::Client,
    /// MCP server processes running on this node.
    pub mcp_processes: Arc<crate::limits::Counter<()>>,
    /// MCP server processes per principal.
    pub mcp_per_principal: Arc<crate::limits::Counter<crate::session::Owner>>,
    /// Local delivery to this node's connections.
    pub hub: Arc<Hub>,
    /// This node's id (random per process), naming session holders.
    pub node_id: Arc<str>,
    /// Runs.
    pub runs: Arc<Runs>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) tracker: Mutex<Option<mpsc::Sender<()>>>,
    conn_ids: AtomicU64,
}

/// Held by a live connection; shutdown waits until every one is dropped.
#[derive(Debug)]
pub struct Tracked(#[allow(dead_code)] mpsc::Sender<()>);

/// What `serve` waits for at shutdown.
pub(crate) struct Waits {
    pub(crate) connections: mpsc::Receiver<()>,
    pub(crate) runs: mpsc::Receiver<()>,
}

impl AppState {
    pub(crate) async fn new(config: Config) -> std::io::Result<(Arc<Self>, Waits)> {
        let node_id = agentgate_protocol::id::new_id("n_");
        Self::with_backend(config, node_id, None).await
    }

    /// Build the state of node `node_id`, on `backend` if given (tests share one
    /// memory backend between in-process nodes), else on the configured one.
    pub(crate) async fn with_backend(
        config: Config,
        node_id: String,
        memory: Option<crate::backend::memory::MemoryBackend>,
    ) -> std::io::Result<(Arc<Self>, Waits)> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (tracker, tracked_rx) = mpsc::channel(1);
        let (drivers, drivers_rx) = mpsc::channel(1);
        // A connection's queue holds at most this many bytes of frames (docs/security.md).
        let queue_bytes = config.sessions.buffer_bytes.max(config.server.max_message_bytes.saturating_mul(2));
        let hub = Arc::new(Hub::with_queue_bytes(queue_bytes));
        let control = Arc::new(RunControl::default());
        let revocations = Arc::new(RevocationList::default());
        let inbox: Arc<dyn Inbox> = Arc::new(LocalInbox::new(Arc::clone(&hub), Arc::clone(&control)));
        let backend = match memory {
            Some(m) => m.node(&node_id, inbox, Arc::clone(&revocations)),
            None => crate::backend::open(&config, &node_id, inbox, Arc::clone(&revocations))
                .await
                .map_err(std::io::Error::other)?,
        };
        let runs = Arc::new(Runs::new(&config, control, backend.clone(), node_id.clone(), shutdown_rx, drivers));
        let base = &config.authenticator;
        let auth = Arc::new(
            Authenticator::new(base.issuers().to_vec(), base.api_keys().to_vec(), base.policy().clone())
                .with_revocations(Arc::clone(&revocations) as Arc<dyn agentgate_auth::Revocations>),
        );
        crate::metrics::handle();
        let tickets = Tickets::new(
            Arc::clone(&backend.tickets),
            Duration::from_secs(config.auth.ticket_ttl_s),
            config.limits.tickets_per_principal,
        );
        let limits = Limits::new(&config.limits);
        let mcp_processes = crate::limits::Counter::new(config.mcp.max_processes);
        let mcp_per_principal = crate::limits::Counter::new(config.mcp.max_processes_per_principal);
        let state = Arc::new(Self {
            config,
            auth,
            revocations,
            backend,
            tickets,
            limits,
            http: crate::jwks::client(),
            mcp_processes,
            mcp_per_principal,
            hub,
            node_id: node_id.into(),
            runs,
            shutdown,
            tracker: Mutex::new(Some(tracker)),
            conn_ids: AtomicU64::new(1),
        });
        Ok((state, Waits { connections: tracked_rx, runs: drivers_rx }))
    }

    /// A receiver of the shutdown flag.
    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Register a live connection; `None` once shutdown has begun.
    pub fn track_connection(&self) -> Option<Tracked> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| Tracked(t.clone()))
    }

    /// Verify a credential; a `key_unknown` first makes the JWKS issuers refetch
    /// (at most once per `jwks_min_refetch_s` each) and then checks again.
    ///
    /// # Errors
    /// The reason code of PROTOCOL.md 2.1.
    pub async fn verify(&self, token: &str) -> Result<agentgate_auth::Principal, agentgate_auth::AuthError> {
        let now = crate::telemetry::unix_now();
        match self.auth.verify(token, now) {
            Err(e) if e.code() == agentgate_protocol::ErrorCode::KeyUnknown && !self.config.jwks.is_empty() => {
                let mut changed = false;
                // Boxed: a fetch's state is large, and every handshake's future would
                // reserve room for it.
                for source in &self.config.jwks {
                    changed |= Box::pin(source.refetch_for_unknown_kid(&self.http)).await;
                }
                if changed { self.auth.verify(token, crate::telemetry::unix_now()) } else { Err(e) }
            }
            other => other,
        }
    }

    /// A fresh connection id, for logs.
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}
