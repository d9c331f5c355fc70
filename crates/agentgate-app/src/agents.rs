//! Agent backends. Each run gets a [`RunSink`] to emit its non-terminal events and
//! returns its terminal outcome; the run driver in [`crate::runs`] emits the terminal
//! event, so a run has exactly one however it ends.

pub(crate) mod demo;
pub mod http;

use agentgate_protocol::EventType;
use serde_json::Value;

use crate::session::{NewEvent, SessionStore, StoreError, StoredEvent, now_ms};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a running agent writes its events: its session, through the store. Each
/// event carries its number within the run, so an append retried after an outage is
/// stored once.
#[derive(Debug, Clone)]
pub struct RunSink {
    store: Arc<dyn SessionStore>,
    session_id: String,
    run_id: String,
    rseq: Arc<AtomicU64>,
}

impl RunSink {
    /// A sink for run `run_id` on session `session_id`.
    pub fn new(store: Arc<dyn SessionStore>, session_id: String, run_id: String) -> Self {
        Self { store, session_id, run_id, rseq: Arc::new(AtomicU64::new(0)) }
    }

    fn event(&self, ty: EventType, data: Value) -> NewEvent {
        let rseq = self.rseq.fetch_add(1, Ordering::Relaxed) + 1;
        NewEvent { ty, run_id: self.run_id.clone(), ts_ms: now_ms(), data, rseq }
    }

    /// Emit a non-terminal event. It is stored in order after the run's earlier
    /// events; while the backend is unreachable it is held in the node's outbox.
    ///
    /// # Errors
    /// The session is gone (its resume window passed), or the backend is unreachable
    /// and the event cannot be held.
    pub async fn emit(&self, ty: EventType, data: Value) -> Result<(), StoreError> {
        debug_assert!(!ty.is_terminal());
        self.store.append_later(&self.session_id, self.event(ty, data))
    }

    /// Append an event and wait until it is stored (the terminal event).
    pub(crate) async fn append(&self, ty: EventType, data: Value) -> Result<StoredEvent, StoreError> {
        self.store.append(&self.session_id, self.event(ty, data)).await
    }
}

/// How an agent's run ended (the driver adds cancellation and shutdown).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `agent_completed` with this result.
    Completed(Value),
    /// `agent_failed` with this code and message.
    Failed {
        /// Failure code.
        code: String,
        /// What happened.
        message: String,
    },
    /// A terminal event sent by an upstream, passed through as it came.
    Terminal {
        /// `agent_completed` or `agent_failed`.
        ty: EventType,
        /// Its data.
        data: Value,
    },
}
