//! The run registry and driver: starting runs within `limits.runs_per_principal`,
//! cancelling, answering `run.get`, and guaranteeing exactly one terminal event per
//! run however it ends (the agent's outcome, `run.cancel`, or node shutdown).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentgate_protocol::{ErrorCode, EventType, id};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

use crate::agents::{Outcome, RunSink, demo, http};
use crate::config::{AgentKind, Config};
use crate::session::{Owner, SessionStore};
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
    terminal: Option<Value>,
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

/// All runs of this node.
#[derive(Debug)]
pub struct Runs {
    entries: Mutex<HashMap<String, RunEntry>>,
    retention: Duration,
    per_principal_limit: usize,
    shutdown: watch::Receiver<bool>,
    http: reqwest::Client,
}

impl Runs {
    /// A registry that keeps finished runs for `retention` and ends running ones
    /// `node_shutdown` when `shutdown` turns true.
    pub fn new(retention: Duration, per_principal_limit: usize, shutdown: watch::Receiver<bool>) -> Self {
        Self { entries: Mutex::new(HashMap::new()), retention, per_principal_limit, shutdown, http: http::client() }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, RunEntry>> {
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
            let mut map = self.map();
            let now = Instant::now();
            map.retain(|_, e| e.finished_at.is_none_or(|t| now.duration_since(t) < self.retention));
            let owner = Owner::of(principal);
            let active = map.values().filter(|e| e.owner == owner && e.status == RunStatus::Running).count();
            if active >= self.per_principal_limit {
                return Err(StartError {
                    code: ErrorCode::TooManyRuns,
                    message: format!(
                        "{active} runs are already running for this principal (limit {}); wait for one to end or cancel one",
                        self.per_principal_limit
                    ),
                });
            }
            map.insert(
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
        let mut map = self.map();
        match map.get_mut(run_id) {
            Some(e) if e.owner == *owner && e.status == RunStatus::Running => {
                e.cancel.take().map(|c| c.send(()).is_ok()).unwrap_or(false)
            }
            _ => false,
        }
    }

    /// State of a run of `owner`, while known.
    pub fn get(&self, run_id: &str, owner: &Owner) -> Option<(RunStatus, Option<Value>)> {
        let map = self.map();
        let e = map.get(run_id)?;
        if e.owner != *owner || e.finished_at.is_some_and(|t| t.elapsed() >= self.retention) {
            return None;
        }
        Some((e.status, e.terminal.clone()))
    }

    /// Forget finished runs past their retention.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.map().retain(|_, e| e.finished_at.is_none_or(|t| now.duration_since(t) < self.retention));
    }

    /// Number of running runs.
    pub fn active(&self) -> usize {
        self.map().values().filter(|e| e.status == RunStatus::Running).count()
    }

    /// A run whose session is gone (its resume window passed with nobody attached)
    /// can deliver nothing more: it ends as cancelled, with a terminal event that was
    /// never delivered (it has no `seq`).
    fn abandon(&self, run_id: &str, why: &crate::session::StoreError) {
        tracing::info!(run_id, error = %why, "run abandoned: its session can no longer receive events");
        let terminal = json!({"type": "run_cancelled", "run_id": run_id, "data": {}});
        self.finish(run_id, RunStatus::Cancelled, terminal);
    }

    fn finish(&self, run_id: &str, status: RunStatus, terminal: Value) {
        if let Some(e) = self.map().get_mut(run_id) {
            e.status = status;
            e.terminal = Some(terminal);
            e.cancel = None;
            e.finished_at = Some(Instant::now());
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
                let terminal = serde_json::from_str(&event.text).unwrap_or(Value::Null);
                runs.finish(&run_id, status, terminal);
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
