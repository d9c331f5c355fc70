//! [`Run`]: one `run.start` followed until its terminal event, and [`RunOutcome`], how
//! it ended.

use serde_json::Value;

use crate::{ClientError, Connection, ErrorClass, ResumingClient, ServerMessage};

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// `agent_completed`, with its `result`.
    Completed {
        /// `data.result` of the terminal event.
        result: Value,
    },
    /// `agent_failed`.
    Failed {
        /// `data.code` (`demo_failure`, `node_shutdown`, `upstream_*`, ...).
        code: String,
        /// `data.message`.
        message: String,
    },
    /// `run_cancelled`.
    Cancelled,
    /// The `run.start` got an `error` reply (`agent_unknown`, `scope_missing`,
    /// `too_many_runs`, `protocol_error`): nothing started.
    Refused {
        /// The reply's reason code.
        code: String,
        /// The reply's message.
        message: String,
    },
}

impl RunOutcome {
    /// Whether the run completed.
    pub fn is_completed(&self) -> bool {
        matches!(self, Self::Completed { .. })
    }

    /// The class of a run that did not complete (`None` when it did): refusals by
    /// their code (see [`ErrorClass::of_error_reply`]), failures and cancellations
    /// [`ErrorClass::RunFailed`].
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Self::Completed { .. } => None,
            Self::Failed { .. } | Self::Cancelled => Some(ErrorClass::RunFailed),
            Self::Refused { code, .. } => Some(ErrorClass::of_error_reply(code)),
        }
    }

    fn from_terminal(msg: &ServerMessage) -> Self {
        let data = msg.json().get("data");
        let field = |k: &str| data.and_then(|d| d.get(k)).and_then(Value::as_str).unwrap_or_default().to_owned();
        match msg.kind() {
            "agent_completed" => {
                Self::Completed { result: data.and_then(|d| d.get("result")).cloned().unwrap_or(Value::Null) }
            }
            "agent_failed" => Self::Failed { code: field("code"), message: field("message") },
            _ => Self::Cancelled,
        }
    }
}

enum Source<'a> {
    Plain(&'a mut Connection),
    Resuming(&'a mut ResumingClient),
}

/// A run started with [`Connection::run`] or [`ResumingClient::run`], followed until it
/// ends.
///
/// [`Run::next`] hands out every server message meanwhile (replies, notices, other
/// runs' events too) and `None` once this run has ended; [`Run::next_event`] only this
/// run's events; [`Run::outcome`] then says how it ended.
pub struct Run<'a> {
    source: Source<'a>,
    r#ref: String,
    run_id: Option<String>,
    outcome: Option<RunOutcome>,
    /// The next welcome is that of a reconnect made before `run.start` was sent.
    skip_welcome: bool,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("ref", &self.r#ref)
            .field("run_id", &self.run_id)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl<'a> Run<'a> {
    pub(crate) fn plain(conn: &'a mut Connection, r#ref: String) -> Self {
        Self { source: Source::Plain(conn), r#ref, run_id: None, outcome: None, skip_welcome: false }
    }

    pub(crate) fn resuming(client: &'a mut ResumingClient, r#ref: String, skip_welcome: bool) -> Self {
        Self { source: Source::Resuming(client), r#ref, run_id: None, outcome: None, skip_welcome }
    }

    /// The `ref` sent with `run.start`.
    pub fn r#ref(&self) -> &str {
        &self.r#ref
    }

    /// The run id, once `run.accepted` has arrived.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// How the run ended, once it has.
    pub fn outcome(&self) -> Option<&RunOutcome> {
        self.outcome.as_ref()
    }

    /// The next server message while the run goes on; `None` after the message that
    /// ended it (its terminal event, or the `error` reply to `run.start`).
    ///
    /// # Errors
    /// Those of [`Connection::next`] (or [`ResumingClient::next`]); a close with 1000
    /// before the run ended is [`ClientError::Protocol`]; losing the connection before
    /// `run.accepted` arrived is [`ClientError::Network`] (the run may or may not have
    /// started, and its id is unknown).
    pub async fn next(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        if self.outcome.is_some() {
            return Ok(None);
        }
        let msg = match &mut self.source {
            Source::Plain(c) => c.next().await?,
            Source::Resuming(c) => c.next().await?,
        };
        let Some(msg) = msg else {
            return Err(ClientError::Protocol("the gateway closed the connection (1000) before the run ended".into()));
        };
        let ours = msg.r#ref() == Some(self.r#ref.as_str());
        match msg.kind() {
            "welcome" if self.skip_welcome => self.skip_welcome = false,
            "run.accepted" if ours && self.run_id.is_none() => self.run_id = msg.run_id().map(str::to_owned),
            "error" if ours && self.run_id.is_none() => {
                self.outcome = Some(RunOutcome::Refused {
                    code: msg.str("code").unwrap_or_default().to_owned(),
                    message: msg.str("message").unwrap_or_default().to_owned(),
                });
            }
            "welcome" if self.run_id.is_none() => {
                return Err(ClientError::Network(
                    "the connection was lost before run.accepted arrived: the run may or may not have started".into(),
                ));
            }
            "welcome" if msg.json().get("resumed") != Some(&Value::Bool(true)) => {
                return Err(ClientError::Network(format!(
                    "the connection was lost and its session could not be resumed ({}): the rest of run {}'s \
                     events is gone; ask run.get for how it ended",
                    msg.str("resume_error").unwrap_or("not resumed"),
                    self.run_id.as_deref().unwrap_or_default()
                )));
            }
            _ if msg.is_terminal() && self.run_id.is_some() && msg.run_id() == self.run_id.as_deref() => {
                self.outcome = Some(RunOutcome::from_terminal(&msg));
            }
            _ => {}
        }
        Ok(Some(msg))
    }

    /// The next event of this run; `None` after its terminal event or a refusal.
    ///
    /// # Errors
    /// As [`Run::next`].
    pub async fn next_event(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        loop {
            match self.next().await? {
                None => return Ok(None),
                Some(m) if m.is_event() && m.run_id().is_some() && m.run_id() == self.run_id.as_deref() => {
                    return Ok(Some(m));
                }
                Some(_) => {}
            }
        }
    }

    /// Follow the run to its end; returns this run's events and how it ended.
    ///
    /// # Errors
    /// As [`Run::next`].
    pub async fn finish(mut self) -> Result<(Vec<ServerMessage>, RunOutcome), ClientError> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event().await? {
            events.push(e);
        }
        match self.outcome {
            Some(o) => Ok((events, o)),
            None => Err(ClientError::Protocol("the run ended without an outcome".into())),
        }
    }
}
