//! Agent backends. Each run gets a [`RunSink`] to emit its non-terminal events and
//! returns its terminal outcome; the run driver in [`crate::runs`] emits the terminal
//! event, so a run has exactly one however it ends.

pub(crate) mod demo;

use agentgate_protocol::EventType;
use serde_json::Value;

use crate::session::Session;
use std::sync::Arc;

/// Where a running agent writes its events.
#[derive(Debug, Clone)]
pub struct RunSink {
    pub(crate) session: Arc<Session>,
    pub(crate) run_id: String,
}

impl RunSink {
    /// Emit a non-terminal event.
    pub fn emit(&self, ty: EventType, data: Value) {
        debug_assert!(!ty.is_terminal());
        self.session.emit(ty, &self.run_id, data);
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
}
