//! The run driver: starting runs within `limits.runs_per_principal` (the registry of
//! the backend counts them across nodes), cancelling (here, or on the node executing
//! the run), answering `run.get`, and guaranteeing exactly one terminal event per run
//! however it ends (the agent's outcome, `run.cancel`, node shutdown, an outage that
//! outgrows the outbox; `node_lost` comes from the Redis backend's reaper through the
//! same append, which keeps the first terminal event only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use agentgate_protocol::{ErrorCode, EventType, id};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::agents::{Outcome, RunSink, demo, http};
pub use crate::backend::RunStatus;
use crate::backend::{Backend, Retention, RunRecord, Signal};
use crate::config::{AgentKind, Config};
use crate::session::{Owner, StoreError};
use agentgate_auth::Principal;

/// Why `run.start` was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct StartError {
    /// `agent_unknown`, `scope_missing`, `too_many_runs`, `protocol_error` or
    /// `service_unavailable`.
    pub code: ErrorCode,
    /// What to do.
    pub message: String,
}

/// The cancel switches of the runs executing on this node.
#[derive(Debug, Default)]
pub struct RunControl {
    cancels: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl RunControl {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.cancels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancel a run executing here; false if it is not (or no longer) running here.
    pub fn cancel(&self, run_id: &str) -> bool {
        self.lock().remove(run_id).is_some_and(|c| c.send(()).is_ok())
    }

    /// Number of runs executing on this node.
    pub fn active(&self) -> usize {
        self.lock().len()
    }
}

/// Runs of this node, over the backend's registry.
#[derive(Debug)]
pub struct Runs {
    control: Arc<RunControl>,
    backend: Backend,
    node: String,
    retention: Retention,
    per_principal_limit: usize,
    shutdown: watch::Receiver<bool>,
    http: reqwest::Client,
    /// Held by every driver; shutdown waits until all are dropped.
    drivers: Mutex<Option<mpsc::Sender<()>>>,
}

impl Runs {
    /// Runs of node `node`, ending running ones `node_shutdown` when `shutdown`
    /// turns true. `drivers` is closed once every run driver has ended.
    pub fn new(
        config: &Config,
        control: Arc<RunControl>,
        backend: Backend,
        node: String,
        shutdown: watch::Receiver<bool>,
        drivers: mpsc::Sender<()>,
    ) -> Self {
        Self {
            control,
            backend,
            node,
            retention: Retention { ttl: config.runs.retention, per_principal: config.runs.retained_per_principal },
            per_principal_limit: config.limits.runs_per_principal,
            shutdown,
            http: http::client(),
            drivers: Mutex::new(Some(drivers)),
        }
    }

    /// Stop handing out driver guards: shutdown waits for the ones given.
    pub fn close_drivers(&self) {
        self.drivers.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Register a run of `agent` for `principal` on its session. Returns the run id;
    /// the caller sends `run.accepted` and then calls the returned starter, so the
    /// reply precedes the first event.
    ///
    /// # Errors
    /// A [`StartError`] with the reply's code.
    pub async fn prepare(
        self: &Arc<Self>,
        config: &Config,
        agent: &str,
        input: &Map<String, Value>,
        principal: &Principal,
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
        let Some(guard) = self.drivers.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Err(StartError {
                code: ErrorCode::ServiceUnavailable,
                message: "the gateway node is shutting down; reconnect and start the run on another node".into(),
            });
        };
        let run_id = id::run_id();
        let record = RunRecord {
            owner: Owner::of(principal),
            node: self.node.clone(),
            session_id: session_id.to_owned(),
            status: RunStatus::Running,
            terminal: None,
        };
        match self.backend.runs.register(&run_id, record, self.per_principal_limit).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(StartError {
                    code: ErrorCode::TooManyRuns,
                    message: format!(
                        "this principal already runs {} runs (limits.runs_per_principal); wait for one to end or cancel one",
                        self.per_principal_limit
                    ),
                });
            }
            Err(e) => {
                return Err(StartError {
                    code: ErrorCode::ServiceUnavailable,
                    message: format!("the shared backend is unreachable ({e}); retry shortly"),
                });
            }
        }
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.control.lock().insert(run_id.clone(), cancel_tx);
        Ok(PreparedRun {
            runs: Arc::clone(self),
            sink: RunSink::new(Arc::clone(&self.backend.sessions), session_id.to_owned(), run_id.clone()),
            work,
            cancel: cancel_rx,
            run_id,
            _guard: guard,
        })
    }

    /// Cancel a running run of `owner`, on whichever node executes it. Returns false
    /// for an unknown, finished or foreign run.
    ///
    /// # Errors
    /// The backend is unreachable.
    pub async fn cancel(&self, run_id: &str, owner: &Owner) -> Result<bool, StoreError> {
        let Some(rec) = self.backend.runs.get(run_id).await? else { return Ok(false) };
        if rec.owner != *owner || rec.status != RunStatus::Running {
            return Ok(false);
        }
        if rec.node == self.node {
            return Ok(self.control.cancel(run_id));
        }
        self.backend.bus.send(&rec.node, Signal::Cancel { run_id: run_id.to_owned() }).await?;
        Ok(true)
    }

    /// State of a run of `owner`, while known.
    ///
    /// # Errors
    /// The backend is unreachable.
    pub async fn get(&self, run_id: &str, owner: &Owner) -> Result<Option<(RunStatus, Option<Value>)>, StoreError> {
        Ok(self.backend.runs.get(run_id).await?.filter(|r| r.owner == *owner).map(|r| (r.status, r.terminal)))
    }

    /// Number of runs executing on this node.
    pub fn active(&self) -> usize {
        self.control.active()
    }

    async fn finish(&self, run_id: &str, status: RunStatus, terminal: Value) {
        self.control.lock().remove(run_id);
        if let Err(e) = self.backend.runs.finish(run_id, status, terminal, self.retention).await {
            tracing::warn!(run_id, error = %e, "could not record how the run ended");
        }
    }

    /// A run whose session is gone (its resume window passed with nobody attached)
    /// can deliver nothing more: it ends as cancelled, with a terminal event that was
    /// never delivered (it has no `seq`).
    async fn abandon(&self, run_id: &str, why: &StoreError) {
        tracing::info!(run_id, error = %why, "run abandoned: its session can no longer receive events");
        let terminal = json!({"type": "run_cancelled", "run_id": run_id, "data": {}});
        self.finish(run_id, RunStatus::Cancelled, terminal).await;
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
    _guard: mpsc::Sender<()>,
}

impl PreparedRun {
    /// Spawn the run.
    pub fn start(self) {
        tokio::spawn(self.drive());
    }

    async fn drive(self) {
        let PreparedRun { runs, sink, work, mut cancel, run_id, _guard } = self;
        let mut shutdown = runs.shutdown.clone();
        let _gauge = crate::metrics::RunGauge::start();
        let client = runs.http.clone();
        let work = async {
            match work {
                Work::Demo(input) => demo::run(input, sink.clone()).await,
                Work::Http(run) => http::run(&client, *run, sink.clone()).await,
            }
        };
        let (ty, data) = tokio::select! {
            outcome = work => match outcome {
                Ok(Outcome::Completed(result)) => (EventType::AgentCompleted, json!({"result": result})),
                Ok(Outcome::Failed { code, message }) => (EventType::AgentFailed, json!({"code": code, "message": message})),
                Ok(Outcome::Terminal { ty, data }) => (ty, data),
                Err(StoreError::Unavailable(e)) => (
                    EventType::AgentFailed,
                    json!({"code": "backend_unavailable", "message": format!("the run's events could not be held while the shared backend was unreachable: {e}")}),
                ),
                Err(StoreError::Duplicate) => (
                    // Another node ended the run (this node's lease had expired).
                    EventType::AgentFailed,
                    json!({"code": "node_lost", "message": "the run was ended by another node"}),
                ),
                Err(e) => {
                    runs.abandon(&run_id, &e).await;
                    return;
                }
            },
            _ = &mut cancel => (EventType::RunCancelled, json!({})),
            () = crate::shutdown::wait(&mut shutdown) => (
                EventType::AgentFailed,
                json!({"code": "node_shutdown", "message": "the gateway node shut down during the run"}),
            ),
        };
        match sink.append(ty, data).await {
            Ok(event) => {
                let terminal: Value = serde_json::from_str(&event.text).unwrap_or(Value::Null);
                // The stored terminal event decides: it may be another node's.
                let stored_ty = terminal.get("type").and_then(Value::as_str).and_then(EventType::parse).unwrap_or(ty);
                runs.finish(&run_id, RunStatus::of_terminal(stored_ty), terminal).await;
            }
            Err(StoreError::Duplicate) => runs.control.lock().remove(&run_id).map_or((), |_| ()),
            Err(e) => runs.abandon(&run_id, &e).await,
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
