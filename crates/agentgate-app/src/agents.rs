//! Agent backends. Each run gets a [`RunSink`] to emit its non-terminal events and
//! returns its terminal outcome; the run driver in [`crate::runs`] emits the terminal
//! event, so a run has exactly one however it ends.

pub(crate) mod demo;
pub mod http;

use agentgate_protocol::EventType;
use serde_json::Value;

use crate::session::{NewEvent, SessionStore, StoreError, StoredEvent, now_ms};
use std::sync::Arc;

/// Where a running agent writes its events: its session, through the store.
#[derive(Debug, Clone)]
pub struct RunSink {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) session_id: String,
    pub(crate) run_id: String,
}

impl RunSink {
    /// Emit a non-terminal event.
    ///
    /// # Errors
    /// The session is gone (its resume window passed) or the backend is unreachable.
    pub async fn emit(&self, ty: EventType, data: Value) -> Result<StoredEvent, StoreError> {
        debug_assert!(!ty.is_terminal());
        self.append(ty, data).await
    }

    pub(crate) async fn append(&self, ty: EventType, data: Value) -> Result<StoredEvent, StoreError> {
        let event = NewEvent { ty, run_id: self.run_id.clone(), ts_ms: now_ms(), data };
        self.store.append(&self.session_id, event).await
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
