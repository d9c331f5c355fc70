//! The run registry and driver: starting runs within `limits.runs_per_principal`,
//! cancelling, answering `run.get`, and guaranteeing exactly one terminal event per
//! run however it ends (the agent's outcome, `run.cancel`, or node shutdown).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentgate_protocol::{ErrorCode, EventType, id};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

use crate::agents::{Outcome, RunSink, demo, http};
use crate::config::{AgentKind, Config};
use crate::session::{Event, Owner, SessionStore, StoredEvent};
use agentgate_auth::Principal;

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

#[derive(Debug)]
struct RunEntry {
    owner: Owner,
    status: RunStatus,
    /// The terminal event frame, shared with the session buffer (not a parsed copy):
    /// the retained runs of a principal cost little beyond what the buffer holds.
    terminal: Option<StoredEvent>,
    cancel: Option<oneshot::Sender<()>>,
    finished_at: Option<Instant>,
}

/// Why `run.start` was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct StartError {
    /// `agent_unknown`, `scope_missing`, `too_many_runs` or `protocol_error`.
    pub code: ErrorCode,
    /// What to do.
    pub message: String,
}

/// One principal's runs: how many are running, and its finished runs oldest first.
#[derive(Debug, Default)]
struct OwnerRuns {
    running: usize,
    finished: VecDeque<(Instant, String)>,
}

/// The run table with its per-principal index: starting, finishing and forgetting a
/// run touch only its principal's entry, never the whole table.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<String, RunEntry>,
    by_owner: HashMap<Owner, OwnerRuns>,
}

impl Table {
    /// Forget `owner`'s finished runs past `retention` (they are at the front).
    fn prune(&mut self, owner: &Owner, retention: Duration, now: Instant) {
        let Some(runs) = self.by_owner.get_mut(owner) else { return };
        while runs.finished.front().is_some_and(|(t, _)| now.duration_since(*t) >= retention) {
            if let Some((_, id)) = runs.finished.pop_front() {
                self.entries.remove(&id);
            }
        }
        if runs.running == 0 && runs.finished.is_empty() {
            self.by_owner.remove(owner);
        }
    }
}

/// All runs of this node.
#[derive(Debug)]
pub struct Runs {
    entries: Mutex<Table>,
    retention: Duration,
    retained_per_principal: usize,
    per_principal_limit: usize,
    shutdown: watch::Receiver<bool>,
    http: reqwest::Client,
}

impl Runs {
    /// A registry that keeps finished runs for `retention` (at most
    /// `retained_per_principal` per principal), allows `per_principal_limit` running
    /// runs per principal, and ends running ones `node_shutdown` when `shutdown` turns
    /// true.
    pub fn new(
        retention: Duration,
        retained_per_principal: usize,
        per_principal_limit: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            entries: Mutex::new(Table::default()),
            retention,
            retained_per_principal: retained_per_principal.max(1),
            per_principal_limit,
            shutdown,
            http: http::client(),
        }
    }

    fn map(&self) -> MutexGuard<'_, Table> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a run of `agent` for `principal` on its session. Returns the run id;
    /// the caller sends `run.accepted` and then calls the returned starter, so the
    /// reply precedes the first event.
    ///
    /// # Errors
    /// A [`StartError`] with the reply's code.
    pub fn prepare(
        self: &Arc<Self>,
        config: &Config,
        agent: &str,
        input: &Map<String, Value>,
        principal: &Principal,
        store: &Arc<dyn SessionStore>,
        session_id: &str,
    ) -> Result<PreparedRun, StartError> {
        let Some(agent_cfg) = config.agent(agent) else {
            let known: Vec<&str> = config.agents.iter().map(|a| a.name.as_str()).collect();
            return Err(StartError {
                code: ErrorCode::AgentUnknown,
                message: format!("no agent named {:?}; this gateway runs {known:?}", truncate(agent, 64)),
            });
        };
        if !principal.has_scope(&agent_cfg.scope) {
            return Err(StartError {
                code: ErrorCode::ScopeMissing,
                message: format!("running agent {:?} needs scope {:?}", agent_cfg.name, agent_cfg.scope),
            });
        }
        let work = match &agent_cfg.kind {
            AgentKind::Demo => Work::Demo(DemoInputOrErr::parse(input)?),
            AgentKind::Http(agent) => Work::Http(Box::new(http::HttpRun {
                agent: agent.clone(),
                name: agent_cfg.name.clone(),
                input: input.clone(),
                principal: principal.clone(),
                max_line: config.server.max_message_bytes,
            })),
        };
        let run_id = id::run_id();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        {
            // The bound `limits.runs_per_principal` is decided here, from the
            // principal's own index.
            let mut table = self.map();
            let owner = Owner::of(principal);
            table.prune(&owner, self.retention, Instant::now());
            let active = table.by_owner.get(&owner).map_or(0, |r| r.running);
            if active >= self.per_principal_limit {
                return Err(StartError {
                    code: ErrorCode::TooManyRuns,
                    message: format!(
                        "{active} runs are already running for this principal (limit {}); wait for one to end or cancel one",
                        self.per_principal_limit
                    ),
                });
            }
            table.by_owner.entry(owner.clone()).or_default().running += 1;
            table.entries.insert(
                run_id.clone(),
                RunEntry {
                    owner,
                    status: RunStatus::Running,
                    terminal: None,
                    cancel: Some(cancel_tx),
                    finished_at: None,
                },
            );
        }
        Ok(PreparedRun {
            runs: Arc::clone(self),
            sink: RunSink { store: Arc::clone(store), session_id: session_id.to_owned(), run_id: run_id.clone() },
            work,
            cancel: cancel_rx,
            run_id,
        })
    }

    /// Cancel a running run of `owner`. Returns false for an unknown, finished or
    /// foreign run.
    pub fn cancel(&self, run_id: &str, owner: &Owner) -> bool {
        let mut table = self.map();
        match table.entries.get_mut(run_id) {
            Some(e) if e.owner == *owner && e.status == RunStatus::Running => {
                e.cancel.take().map(|c| c.send(()).is_ok()).unwrap_or(false)
            }
            _ => false,
        }
    }

    /// State of a run of `owner`, while known.
    pub fn get(&self, run_id: &str, owner: &Owner) -> Option<(RunStatus, Option<Value>)> {
        let table = self.map();
        let e = table.entries.get(run_id)?;
        if e.owner != *owner || e.finished_at.is_some_and(|t| t.elapsed() >= self.retention) {
            return None;
        }
        let terminal = e.terminal.as_ref().map(|t| serde_json::from_str(&t.text).unwrap_or(Value::Null));
        Some((e.status, terminal))
    }

    /// Forget finished runs past their retention.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut table = self.map();
        let owners: Vec<Owner> = table.by_owner.keys().cloned().collect();
        for owner in owners {
            table.prune(&owner, self.retention, now);
        }
    }

    /// Number of running runs.
    pub fn active(&self) -> usize {
        self.map().by_owner.values().map(|r| r.running).sum()
    }

    /// Runs known (running, or finished and retained).
    pub fn len(&self) -> usize {
        self.map().entries.len()
    }

    /// Whether no run is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A run whose session is gone (its resume window passed with nobody attached)
    /// can deliver nothing more: it ends as cancelled, with a terminal event that was
    /// never delivered (it has no `seq`).
    fn abandon(&self, run_id: &str, why: &crate::session::StoreError) {
        tracing::info!(run_id, error = %why, "run abandoned: its session can no longer receive events");
        let terminal = json!({"type": "run_cancelled", "run_id": run_id, "data": {}});
        self.finish(run_id, RunStatus::Cancelled, Arc::new(Event { seq: 0, text: terminal.to_string().into() }));
    }

    /// Record a run's end. The bound `runs.retained_per_principal` is decided here:
    /// past it, the principal's oldest finished run is forgotten.
    fn finish(&self, run_id: &str, status: RunStatus, terminal: StoredEvent) {
        let now = Instant::now();
        let mut table = self.map();
        let Some(e) = table.entries.get_mut(run_id) else { return };
        let was_running = e.status == RunStatus::Running;
        e.status = status;
        e.terminal = Some(terminal);
        e.cancel = None;
        e.finished_at = Some(now);
        if !was_running {
            return;
        }
        let owner = e.owner.clone();
        let Some(runs) = table.by_owner.get_mut(&owner) else { return };
        runs.running = runs.running.saturating_sub(1);
        runs.finished.push_back((now, run_id.to_owned()));
        let mut forgotten = Vec::new();
        while runs.finished.len() > self.retained_per_principal {
            if let Some((_, id)) = runs.finished.pop_front() {
                forgotten.push(id);
            }
        }
        for id in forgotten {
            table.entries.remove(&id);
        }
    }
}

struct DemoInputOrErr;

impl DemoInputOrErr {
    fn parse(input: &Map<String, Value>) -> Result<demo::DemoInput, StartError> {
        demo::DemoInput::parse(input).map_err(|message| StartError { code: ErrorCode::ProtocolError, message })
    }
}

/// What a run executes.
#[derive(Debug)]
enum Work {
    Demo(demo::DemoInput),
    Http(Box<http::HttpRun>),
}

/// A run that passed every check and is registered, not yet started.
#[derive(Debug)]
pub struct PreparedRun {
    runs: Arc<Runs>,
    sink: RunSink,
    work: Work,
    cancel: oneshot::Receiver<()>,
    /// The run id.
    pub run_id: String,
}

impl PreparedRun {
    /// Spawn the run.
    pub fn start(self) {
        tokio::spawn(self.drive());
    }

    async fn drive(self) {
        let PreparedRun { runs, sink, work, mut cancel, run_id } = self;
        let mut shutdown = runs.shutdown.clone();
        let _gauge = crate::metrics::RunGauge::start();
        let client = runs.http.clone();
        let work = async {
            match work {
                Work::Demo(input) => demo::run(input, sink.clone()).await,
                Work::Http(run) => http::run(&client, *run, sink.clone()).await,
            }
        };
        let (ty, status, data) = tokio::select! {
            outcome = work => match outcome {
                Ok(Outcome::Completed(result)) => (EventType::AgentCompleted, RunStatus::Completed, json!({"result": result})),
                Ok(Outcome::Failed { code, message }) => (EventType::AgentFailed, RunStatus::Failed, json!({"code": code, "message": message})),
                Ok(Outcome::Terminal { ty, data }) => {
                    let status = if ty == EventType::AgentCompleted { RunStatus::Completed } else { RunStatus::Failed };
                    (ty, status, data)
                }
                Err(e) => {
                    runs.abandon(&run_id, &e);
                    return;
                }
            },
            _ = &mut cancel => (EventType::RunCancelled, RunStatus::Cancelled, json!({})),
            () = crate::shutdown::wait(&mut shutdown) => (
                EventType::AgentFailed,
                RunStatus::Failed,
                json!({"code": "node_shutdown", "message": "the gateway node shut down during the run"}),
            ),
        };
        match sink.append(ty, data).await {
            Ok(event) => {
                runs.finish(&run_id, status, event);
            }
            Err(e) => runs.abandon(&run_id, &e),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(issuer: &str) -> Owner {
        Owner { issuer: issuer.into(), subject: "alice".into(), tenant: None }
    }

    fn terminal() -> StoredEvent {
        Arc::new(Event { seq: 1, text: "{}".into() })
    }

    fn add(runs: &Runs, id: &str, owner: &Owner) {
        let mut table = runs.map();
        table.by_owner.entry(owner.clone()).or_default().running += 1;
        let entry = RunEntry {
            owner: owner.clone(),
            status: RunStatus::Running,
            terminal: None,
            cancel: None,
            finished_at: None,
        };
        table.entries.insert(id.into(), entry);
    }

    #[test]
    fn a_principal_keeps_at_most_its_cap_of_finished_runs_oldest_forgotten_first() {
        let (_tx, rx) = watch::channel(false);
        let runs = Runs::new(Duration::from_secs(3600), 3, 16, rx);
        let (a, b) = (owner("one"), owner("two"));
        add(&runs, "r_b", &b);
        runs.finish("r_b", RunStatus::Completed, terminal());
        for i in 0..5 {
            add(&runs, &format!("r_{i}"), &a);
            runs.finish(&format!("r_{i}"), RunStatus::Completed, terminal());
        }
        for i in 0..2 {
            assert!(runs.get(&format!("r_{i}"), &a).is_none(), "r_{i} forgotten");
        }
        for i in 2..5 {
            assert_eq!(runs.get(&format!("r_{i}"), &a).map(|x| x.0), Some(RunStatus::Completed));
        }
        // Another issuer's alice is another principal: her run is kept and not hers to read.
        assert!(runs.get("r_b", &b).is_some());
        assert!(runs.get("r_b", &a).is_none());
        assert_eq!(runs.len(), 4);
        assert_eq!(runs.active(), 0);
    }

    #[test]
    fn finished_runs_are_forgotten_after_retention() {
        let (_tx, rx) = watch::channel(false);
        let runs = Runs::new(Duration::from_millis(1), 256, 16, rx);
        let a = owner("one");
        add(&runs, "r_x", &a);
        assert_eq!(runs.active(), 1);
        runs.finish("r_x", RunStatus::Failed, terminal());
        std::thread::sleep(Duration::from_millis(5));
        runs.sweep();
        assert!(runs.is_empty());
        assert!(runs.map().by_owner.is_empty());
    }
}
