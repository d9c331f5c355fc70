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

impl Welcome<'_> {
    /// The welcome as JSON text: exactly what `serde_json::to_string` makes of it (a
    /// test holds the two equal), written directly, since every handshake writes one
    /// and serde's per-field machinery cost a handshake 4% of its instructions
    /// (docs/performance.md).
    pub fn to_json(&self) -> String {
        let mut n = itoa::Buffer::new();
        let mut out = String::with_capacity(256);
        out.push_str("{\"type\":");
        push_json_str(&mut out, self.ty);
        out.push_str(",\"protocol\":");
        push_json_str(&mut out, self.protocol);
        out.push_str(",\"session_id\":");
        push_json_str(&mut out, self.session_id);
        out.push_str(if self.resumed { ",\"resumed\":true" } else { ",\"resumed\":false" });
        if let Some(e) = self.resume_error {
            out.push_str(",\"resume_error\":");
            push_json_str(&mut out, e);
        }
        if let Some(seq) = self.first_seq {
            out.push_str(",\"first_seq\":");
            out.push_str(n.format(seq));
        }
        out.push_str(",\"principal\":{\"subject\":");
        push_json_str(&mut out, self.principal.subject);
        out.push_str(",\"tenant\":");
        match self.principal.tenant {
            Some(t) => push_json_str(&mut out, t),
            None => out.push_str("null"),
        }
        out.push_str(",\"scopes\":[");
        for (i, scope) in self.principal.scopes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, scope);
        }
        out.push_str("],\"via\":");
        push_json_str(&mut out, self.principal.via);
        match self.expires_at {
            Some(at) => {
                out.push_str("},\"expires_at\":");
                out.push_str(n.format(at));
            }
            None => out.push_str("},\"expires_at\":null"),
        }
        out.push_str(",\"heartbeat_ms\":");
        out.push_str(n.format(self.heartbeat_ms));
        out.push('}');
        out
    }
}

/// Append `s` as a JSON string, escaped as `serde_json` escapes it.
fn push_json_str(out: &mut String, s: &str) {
    // Without an early exit, so that it is vectorized; the text of a welcome rarely
    // needs escaping.
    let plain = s.bytes().fold(true, |ok, b| ok & (b >= 0x20 && b != b'"' && b != b'\\'));
    if plain {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a `str` cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
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

    #[test]
    fn the_welcome_is_written_exactly_as_serde_json_writes_it() {
        let scopes = ["agents:run".to_owned(), "a\"b".to_owned()];
        let texts = ["alice", "", "quote\"back\\slash", "tab\tnl\ncr\r\u{1}\u{1f}\u{7f}", "é漢🙂", "</script>"];
        for (i, text) in texts.iter().enumerate() {
            for resumed in [false, true] {
                let welcome = Welcome {
                    ty: "welcome",
                    protocol: crate::PROTOCOL_V1,
                    session_id: "s_0123456789abcdefghijkl",
                    resumed,
                    resume_error: resumed.then_some("history_truncated"),
                    first_seq: resumed.then_some(u64::MAX),
                    principal: PrincipalInfo {
                        subject: text,
                        tenant: (i % 2 == 1).then_some(*text),
                        scopes: &scopes[..i % 3],
                        via: text,
                    },
                    expires_at: [None, Some(-1), Some(i64::MAX), Some(1_800_000_000)][i % 4],
                    heartbeat_ms: [0, 25_000, u64::MAX][i % 3],
                };
                assert_eq!(welcome.to_json(), serde_json::to_string(&welcome).unwrap(), "{text:?} {resumed}");
            }
        }
    }
}
