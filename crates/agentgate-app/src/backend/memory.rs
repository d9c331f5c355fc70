//! The memory backend: one process. Several in-process nodes may share one
//! [`MemoryBackend`] (each with its own inbox and revocation cache), which is how the
//! backend contract tests exercise two-node cases without Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    Backend, Bus, Health, Inbox, Leave, Retention, RevocationStore, RunRecord, RunRegistry, RunStatus, Signal,
    StoredTicket, TicketStore,
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
        let bounds = crate::session::Bounds {
            buffer_bytes: config.sessions.buffer_bytes,
            sessions_per_principal: config.limits.sessions_per_principal,
            memory_limit_bytes: config.sessions.memory_limit_bytes,
        };
        Self::with_bounds(config.sessions.buffer_events, config.sessions.resume_window, bounds)
    }

    /// Empty state keeping `buffer_events` events per session and detached sessions
    /// for `resume_window`, with no other bound.
    pub fn with_sizes(buffer_events: usize, resume_window: Duration) -> Self {
        Self::with_bounds(buffer_events, resume_window, crate::session::Bounds::default())
    }

    /// Empty state with these bounds.
    pub fn with_bounds(buffer_events: usize, resume_window: Duration, bounds: crate::session::Bounds) -> Self {
        let nodes: Arc<Nodes> = Arc::default();
        Self {
            sessions: Arc::new(MemoryStore::new(buffer_events, resume_window, Arc::clone(&nodes)).with_bounds(bounds)),
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

/// Tickets by digest, with each principal's live tickets (oldest first), so issuing
/// never scans the whole store.
#[derive(Debug, Default)]
pub struct MemoryTickets {
    inner: Mutex<TicketsInner>,
}

#[derive(Debug, Default)]
struct TicketsInner {
    map: HashMap<[u8; 32], StoredTicket>,
    by_owner: HashMap<Owner, VecDeque<([u8; 32], u64)>>,
}

impl TicketsInner {
    /// Forget `owner`'s expired or used tickets at the front of its queue.
    fn prune(&mut self, owner: &Owner, now: u64) {
        let Some(queue) = self.by_owner.get_mut(owner) else { return };
        while let Some((d, expires)) = queue.front().copied() {
            if expires > now && self.map.contains_key(&d) {
                break;
            }
            queue.pop_front();
            if expires <= now {
                self.map.remove(&d);
            }
        }
        if queue.is_empty() {
            self.by_owner.remove(owner);
        }
    }
}

impl TicketStore for MemoryTickets {
    /// The bound `limits.tickets_per_principal` is decided here (memory backend).
    fn put(
        &self,
        digest: [u8; 32],
        ticket: StoredTicket,
        _ttl: Duration,
        per_principal: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let now = now_ms();
        let owner = Owner::of(&ticket.principal);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.prune(&owner, now);
        let live =
            inner.by_owner.get(&owner).map_or(0, |q| q.iter().filter(|(d, _)| inner.map.contains_key(d)).count());
        let result = if live >= per_principal {
            Err(StoreError::TicketLimit(per_principal))
        } else {
            if inner.map.len() >= crate::tickets::MAX_TICKETS {
                inner.map.retain(|_, t| t.expires_at_ms > now);
            }
            if inner.map.len() >= crate::tickets::MAX_TICKETS {
                Err(StoreError::Unavailable("this node holds its most live tickets".into()))
            } else {
                inner.by_owner.entry(owner).or_default().push_back((digest, ticket.expires_at_ms));
                inner.map.insert(digest, ticket);
                Ok(())
            }
        };
        Box::pin(async move { result })
    }

    fn take(&self, digest: [u8; 32]) -> BoxFuture<'_, Result<Option<StoredTicket>, StoreError>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = inner.map.remove(&digest);
        if let Some(t) = &t {
            let owner = Owner::of(&t.principal);
            inner.prune(&owner, now_ms());
        }
        Box::pin(async move { Ok(t) })
    }

    fn sweep(&self) {
        let now = now_ms();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.retain(|_, t| t.expires_at_ms > now);
        let owners: Vec<Owner> = inner.by_owner.keys().cloned().collect();
        for owner in owners {
            inner.prune(&owner, now);
        }
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

/// Runs, with each principal's running count and finished runs (oldest first), so
/// registering, finishing and forgetting never scan the table.
#[derive(Debug, Default)]
pub struct MemoryRuns {
    inner: Mutex<RunsInner>,
}

#[derive(Debug, Default)]
struct OwnerRuns {
    running: usize,
    finished: VecDeque<String>,
}

#[derive(Debug, Default)]
struct RunsInner {
    runs: HashMap<String, Run>,
    by_owner: HashMap<Owner, OwnerRuns>,
}

impl RunsInner {
    /// Forget `owner`'s finished runs past their retention (they are at the front).
    fn prune(&mut self, owner: &Owner, now: Instant) {
        let Some(o) = self.by_owner.get_mut(owner) else { return };
        while let Some(id) = o.finished.front() {
            let expired = self.runs.get(id).is_none_or(|r| r.forget_at.is_some_and(|t| t <= now));
            if !expired {
                break;
            }
            if let Some(id) = o.finished.pop_front() {
                self.runs.remove(&id);
            }
        }
        if o.running == 0 && o.finished.is_empty() {
            self.by_owner.remove(owner);
        }
    }
}

impl MemoryRuns {
    fn lock(&self) -> MutexGuard<'_, RunsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RunRegistry for MemoryRuns {
    /// The bound `limits.runs_per_principal` is decided here (memory backend).
    fn register(&self, run_id: &str, record: RunRecord, cap: usize) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut inner = self.lock();
        inner.prune(&record.owner, Instant::now());
        let o = inner.by_owner.entry(record.owner.clone()).or_default();
        let ok = o.running < cap;
        if ok {
            o.running += 1;
            inner.runs.insert(run_id.to_owned(), Run { record, forget_at: None });
        }
        Box::pin(async move { Ok(ok) })
    }

    /// The bound `runs.retained_per_principal` is decided here (memory backend): past
    /// it, the principal's oldest finished run is forgotten.
    fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        terminal: Value,
        retention: Retention,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.lock();
        let mut ended_owner = None;
        if let Some(run) = inner.runs.get_mut(run_id)
            && run.record.status == RunStatus::Running
        {
            run.record.status = status;
            run.record.terminal = Some(terminal);
            run.forget_at = Some(Instant::now() + retention.ttl);
            ended_owner = Some(run.record.owner.clone());
        }
        if let Some(owner) = ended_owner {
            let mut forgotten = Vec::new();
            if let Some(o) = inner.by_owner.get_mut(&owner) {
                o.running = o.running.saturating_sub(1);
                o.finished.push_back(run_id.to_owned());
                while o.finished.len() > retention.per_principal.max(1) {
                    if let Some(id) = o.finished.pop_front() {
                        forgotten.push(id);
                    }
                }
            }
            for id in forgotten {
                inner.runs.remove(&id);
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
        let mut inner = self.lock();
        let owners: Vec<Owner> = inner.by_owner.keys().cloned().collect();
        for owner in owners {
            inner.prune(&owner, now);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner(issuer: &str) -> Owner {
        Owner { issuer: issuer.into(), subject: "alice".into(), tenant: None }
    }

    fn record(owner: &Owner) -> RunRecord {
        RunRecord {
            owner: owner.clone(),
            node: "n".into(),
            session_id: "s".into(),
            status: RunStatus::Running,
            terminal: None,
        }
    }

    #[tokio::test]
    async fn a_principal_keeps_at_most_its_cap_of_finished_runs_oldest_forgotten_first() {
        let runs = MemoryRuns::default();
        let keep = Retention { ttl: Duration::from_secs(3600), per_principal: 3 };
        let (a, b) = (owner("one"), owner("two"));
        assert!(runs.register("r_b", record(&b), 16).await.unwrap());
        runs.finish("r_b", RunStatus::Completed, json!({}), keep).await.unwrap();
        for i in 0..5 {
            assert!(runs.register(&format!("r_{i}"), record(&a), 16).await.unwrap());
            runs.finish(&format!("r_{i}"), RunStatus::Completed, json!({}), keep).await.unwrap();
        }
        for i in 0..2 {
            assert!(runs.get(&format!("r_{i}")).await.unwrap().is_none(), "r_{i} forgotten");
        }
        for i in 2..5 {
            assert_eq!(runs.get(&format!("r_{i}")).await.unwrap().map(|r| r.status), Some(RunStatus::Completed));
        }
        assert!(runs.get("r_b").await.unwrap().is_some(), "another issuer's alice keeps her run");
    }

    #[tokio::test]
    async fn the_running_cap_is_per_principal_and_finished_runs_expire() {
        let runs = MemoryRuns::default();
        let a = owner("one");
        assert!(runs.register("r_1", record(&a), 1).await.unwrap());
        assert!(!runs.register("r_2", record(&a), 1).await.unwrap());
        assert!(runs.register("r_3", record(&owner("two")), 1).await.unwrap());
        let brief = Retention { ttl: Duration::from_millis(1), per_principal: 256 };
        runs.finish("r_1", RunStatus::Failed, json!({}), brief).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        runs.sweep();
        assert!(runs.get("r_1").await.unwrap().is_none());
        assert!(runs.register("r_4", record(&a), 1).await.unwrap());
    }
}
