//! Messages the server sends (PROTOCOL.md sections 4-6).
//!
//! Absent optional fields are omitted; the fields the contract shows as `null`
//! (`tenant`, `expires_at`, `terminal`) are always present.

use serde::Serialize;
use serde_json::Value;

use crate::ErrorCode;

/// The principal as shown in the welcome (borrowed: the welcome is serialized once,
/// from the connection's own principal).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrincipalInfo<'a> {
    /// The `sub` claim, or the API key's subject.
    pub subject: &'a str,
    /// The tenant, or `null`.
    pub tenant: Option<&'a str>,
    /// Granted scopes.
    pub scopes: &'a [String],
    /// `jwt:<issuer>`, `api_key:<name>` or `ticket:<via>`.
    pub via: &'a str,
}

/// The server's first message after authentication.
#[derive(Debug, Clone, Serialize)]
pub struct Welcome<'a> {
    /// Always `welcome`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Always `agentgate.v1`.
    pub protocol: &'static str,
    /// The session.
    pub session_id: &'a str,
    /// Whether an existing session was resumed.
    pub resumed: bool,
    /// `history_truncated` or `session_not_found` when a resume did not fully succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_error: Option<&'static str>,
    /// With `history_truncated`: the first seq that will be replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    /// Who is connected.
    pub principal: PrincipalInfo<'a>,
    /// The credential's `exp`, `null` for API keys.
    pub expires_at: Option<i64>,
    /// Interval of the server's WebSocket pings.
    pub heartbeat_ms: u64,
}

/// Types of agent events (PROTOCOL.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The agent started.
    AgentStarted,
    /// The agent thinks aloud.
    AgentThinking,
    /// A tool call begins.
    ToolExecuting,
    /// A tool call ended.
    ToolCompleted,
    /// A message from the agent.
    AgentMessage,
    /// Terminal: success.
    AgentCompleted,
    /// Terminal: failure.
    AgentFailed,
    /// Terminal: cancelled.
    RunCancelled,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentStarted => "agent_started",
            Self::AgentThinking => "agent_thinking",
            Self::ToolExecuting => "tool_executing",
            Self::ToolCompleted => "tool_completed",
            Self::AgentMessage => "agent_message",
            Self::AgentCompleted => "agent_completed",
            Self::AgentFailed => "agent_failed",
            Self::RunCancelled => "run_cancelled",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::AgentStarted,
            Self::AgentThinking,
            Self::ToolExecuting,
            Self::ToolCompleted,
            Self::AgentMessage,
            Self::AgentCompleted,
            Self::AgentFailed,
            Self::RunCancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    /// Whether this event ends its run.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::AgentCompleted | Self::AgentFailed | Self::RunCancelled)
    }
}

/// One agent event as delivered to a session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventFrame {
    /// Event type.
    #[serde(rename = "type")]
    pub ty: EventType,
    /// Per-session sequence number, from 1, contiguous.
    pub seq: u64,
    /// The run that produced it.
    pub run_id: String,
    /// Server time of the event, Unix milliseconds.
    pub ts_ms: u64,
    /// Type-specific payload.
    pub data: Value,
}

/// The replies to client messages and the server's own notices.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum Reply {
    /// `run.start` accepted.
    #[serde(rename = "run.accepted")]
    RunAccepted {
        /// Echoed correlation id.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<Value>,
        /// The new run.
        run_id: String,
    },
    /// A request failed; the connection stays.
    #[serde(rename = "error")]
    Error {
        /// Echoed correlation id.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<Value>,
        /// Reason code.
        #[serde(serialize_with = "code_str")]
        code: ErrorCode,
        /// What happened and what to do.
        message: String,
    },
    /// Answer to `run.get`.
    #[serde(rename = "run.state")]
    RunState {
        /// Echoed correlation id.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<Value>,
        /// The run.
        run_id: String,
        /// `running`, `completed`, `failed` or `cancelled`.
        status: &'static str,
        /// The terminal event, or `null` while running.
        terminal: Option<Value>,
    },
    /// Answer to `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// Echoed correlation id.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<Value>,
    },
    /// The live credential expires soon; send `auth.refresh`.
    #[serde(rename = "auth.expiring")]
    AuthExpiring {
        /// When it expires.
        expires_at: i64,
    },
    /// `auth.refresh` accepted.
    #[serde(rename = "auth.refreshed")]
    AuthRefreshed {
        /// The new credential's expiry (`null` for an API key).
        expires_at: Option<i64>,
    },
}

fn code_str<S: serde::Serializer>(code: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(code.as_str())
}

impl Reply {
    /// The JSON text of this reply.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_omit_absent_ref_and_keep_null_terminal() {
        let r = Reply::Pong { r#ref: None }.to_json();
        assert_eq!(r, r#"{"type":"pong"}"#);
        let r =
            Reply::RunState { r#ref: Some(Value::from("c3")), run_id: "r_x".into(), status: "running", terminal: None }
                .to_json();
        assert_eq!(r, r#"{"type":"run.state","ref":"c3","run_id":"r_x","status":"running","terminal":null}"#);
        let r = Reply::Error { r#ref: None, code: ErrorCode::RunNotFound, message: "m".into() }.to_json();
        assert_eq!(r, r#"{"type":"error","code":"run_not_found","message":"m"}"#);
    }
}
