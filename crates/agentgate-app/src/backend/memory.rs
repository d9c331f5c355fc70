//! The memory backend: one process. Several in-process nodes may share one
//! [`MemoryBackend`] (each with its own inbox and revocation cache), which is how the
//! backend contract tests exercise two-node cases without Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    Backend, Bus, Health, Inbox, Leave, RevocationStore, RunRecord, RunRegistry, RunStatus, Signal, StoredTicket,
    TicketStore,
};
use crate::config::Config;
use crate::revocation::{RevocationList, Revoke};
use crate::session::memory::Nodes;
use crate::session::{BoxFuture, MemoryStore, Owner, StoreError, now_ms};

/// State shared by the in-process nodes of one deployment.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    nodes: Arc<Nodes>,
    sessions: Arc<MemoryStore>,
    tickets: Arc<MemoryTickets>,
    revocations: Arc<MemoryRevocations>,
    runs: Arc<MemoryRuns>,
}

impl MemoryBackend {
    /// Empty state sized by `config`.
    pub fn new(config: &Config) -> Self {
        Self::with_sizes(config.sessions.buffer_events, config.sessions.resume_window)
    }

    /// Empty state keeping `buffer_events` events per session and detached sessions
    /// for `resume_window`.
    pub fn with_sizes(buffer_events: usize, resume_window: Duration) -> Self {
        let nodes: Arc<Nodes> = Arc::default();
        Self {
            sessions: Arc::new(MemoryStore::new(buffer_events, resume_window, Arc::clone(&nodes))),
            nodes,
            tickets: Arc::default(),
            revocations: Arc::default(),
            runs: Arc::default(),
        }
    }

    /// The backend as node `node_id` sees it.
    pub fn node(&self, node_id: &str, inbox: Arc<dyn Inbox>, cache: Arc<RevocationList>) -> Backend {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(node_id.to_owned(), inbox);
        self.revocations.caches.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(&cache));
        Backend {
            sessions: self.sessions.clone(),
            tickets: self.tickets.clone(),
            revocations: Arc::new(NodeRevocations { shared: Arc::clone(&self.revocations) }),
            runs: self.runs.clone(),
            bus: Arc::new(MemoryBus { nodes: Arc::clone(&self.nodes) }),
            health: Arc::new(AlwaysUp),
            leave: Arc::new(MemoryLeave { nodes: Arc::clone(&self.nodes), node: node_id.to_owned() }),
        }
    }
}

/// Tickets by digest.
#[derive(Debug, Default)]
pub struct MemoryTickets {
    map: Mutex<HashMap<[u8; 32], StoredTicket>>,
}

impl TicketStore for MemoryTickets {
    fn put(&self, digest: [u8; 32], ticket: StoredTicket, _ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= crate::tickets::MAX_TICKETS {
            let now = now_ms();
            map.retain(|_, t| t.expires_at_ms > now);
        }
        let result = if map.len() >= crate::tickets::MAX_TICKETS {
            Err(StoreError::Unavailable("too many live tickets".into()))
        } else {
            map.insert(digest, ticket);
            Ok(())
        };
        Box::pin(async move { result })
    }

    fn take(&self, digest: [u8; 32]) -> BoxFuture<'_, Result<Option<StoredTicket>, StoreError>> {
        let t = self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest);
        Box::pin(async move { Ok(t) })
    }

    fn sweep(&self) {
        let now = now_ms();
        self.map.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, t| t.expires_at_ms > now);
    }
}

/// The revocation caches of the in-process nodes.
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    caches: Mutex<Vec<Arc<RevocationList>>>,
}

#[derive(Debug)]
struct NodeRevocations {
    shared: Arc<MemoryRevocations>,
}

impl RevocationStore for NodeRevocations {
    fn add(&self, revoke: Revoke) -> BoxFuture<'_, Result<(), StoreError>> {
        let caches = self.shared.caches.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut result = Ok(());
        for cache in caches {
            if !cache.revoke(revoke.clone()) {
                result = Err(StoreError::Unavailable("the revocation list is full".into()));
            }
        }
        Box::pin(async move { result })
    }
}

#[derive(Debug)]
struct Run {
    record: RunRecord,
    forget_at: Option<Instant>,
}

/// Runs, with a count of running runs per owner (so registering never scans).
#[derive(Debug, Default)]
pub struct MemoryRuns {
    inner: Mutex<RunsInner>,
}

#[derive(Debug, Default)]
struct RunsInner {
    runs: HashMap<String, Run>,
    running: HashMap<Owner, usize>,
}

impl MemoryRuns {
    fn lock(&self) -> MutexGuard<'_, RunsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RunRegistry for MemoryRuns {
    fn register(&self, run_id: &str, record: RunRecord, cap: usize) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut inner = self.lock();
        let n = inner.running.entry(record.owner.clone()).or_insert(0);
        let ok = *n < cap;
        if ok {
            *n += 1;
            inner.runs.insert(run_id.to_owned(), Run { record, forget_at: None });
        }
        Box::pin(async move { Ok(ok) })
    }

    fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        terminal: Value,
        retention: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.lock();
        let mut ended_owner = None;
        if let Some(run) = inner.runs.get_mut(run_id)
            && run.record.status == RunStatus::Running
        {
            run.record.status = status;
            run.record.terminal = Some(terminal);
            run.forget_at = Some(Instant::now() + retention);
            ended_owner = Some(run.record.owner.clone());
        }
        if let Some(owner) = ended_owner
            && let Some(n) = inner.running.get_mut(&owner)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.running.remove(&owner);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn get(&self, run_id: &str) -> BoxFuture<'_, Result<Option<RunRecord>, StoreError>> {
        let now = Instant::now();
        let r = self.lock().runs.get(run_id).filter(|r| r.forget_at.is_none_or(|t| t > now)).map(|r| r.record.clone());
        Box::pin(async move { Ok(r) })
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.lock().runs.retain(|_, r| r.forget_at.is_none_or(|t| t > now));
    }
}

#[derive(Debug)]
struct MemoryBus {
    nodes: Arc<Nodes>,
}

impl Bus for MemoryBus {
    fn send(&self, node: &str, signal: Signal) -> BoxFuture<'_, Result<(), StoreError>> {
        let inbox = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get(node).cloned();
        if let Some(inbox) = inbox {
            inbox.signal(signal);
        }
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug)]
struct AlwaysUp;

impl Health for AlwaysUp {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[derive(Debug)]
struct MemoryLeave {
    nodes: Arc<Nodes>,
    node: String,
}

impl Leave for MemoryLeave {
    fn leave(&self) -> BoxFuture<'_, ()> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.node);
        Box::pin(async {})
    }
}
