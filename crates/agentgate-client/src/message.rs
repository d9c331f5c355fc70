//! [`ServerMessage`]: one text frame from the gateway, kept both as the exact text the
//! server sent and as parsed JSON.

use std::fmt;

use agentgate_protocol::EventType;
use serde_json::Value;

use crate::ClientError;
use crate::error::excerpt;

/// A message from the gateway: the welcome, an agent event (with `seq`), a reply
/// (`run.accepted`, `error`, `run.state`, `pong`) or a notice (`auth.expiring`,
/// `auth.refreshed`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerMessage {
    text: String,
    value: Value,
}

impl ServerMessage {
    /// Parse one text frame; it must be a JSON object with a string `type`.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] for anything else.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ClientError::Protocol(format!("a frame is not JSON ({e}): {}", excerpt(text))))?;
        if !value.get("type").is_some_and(Value::is_string) {
            return Err(ClientError::Protocol(format!("a frame has no string `type`: {}", excerpt(text))));
        }
        Ok(Self { text: text.to_owned(), value })
    }

    /// The `type` field (`welcome`, `agent_started`, `run.accepted`, ...).
    pub fn kind(&self) -> &str {
        self.value.get("type").and_then(Value::as_str).unwrap_or_default()
    }

    /// The `seq` of an agent event; `None` for other messages.
    pub fn seq(&self) -> Option<u64> {
        self.value.get("seq").and_then(Value::as_u64)
    }

    /// Whether this is an agent event (it has a `seq`).
    pub fn is_event(&self) -> bool {
        self.seq().is_some()
    }

    /// The event type, for an agent event of a known type.
    pub fn event_type(&self) -> Option<EventType> {
        if self.is_event() { EventType::parse(self.kind()) } else { None }
    }

    /// Whether this is the terminal event of a run (`agent_completed`, `agent_failed`,
    /// `run_cancelled`).
    pub fn is_terminal(&self) -> bool {
        self.event_type().is_some_and(EventType::is_terminal)
    }

    /// The `run_id` field, if any.
    pub fn run_id(&self) -> Option<&str> {
        self.str("run_id")
    }

    /// The `ref` field as a string, if it is one.
    pub fn r#ref(&self) -> Option<&str> {
        self.str("ref")
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }

    /// The parsed JSON.
    pub fn json(&self) -> &Value {
        &self.value
    }

    /// The exact text the server sent.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed JSON, by value.
    pub fn into_json(self) -> Value {
        self.value
    }
}

/// The exact text the server sent.
impl fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_replies_are_told_apart() {
        let e =
            ServerMessage::parse(r#"{"type":"agent_completed","seq":6,"run_id":"r_1","ts_ms":1,"data":{}}"#).unwrap();
        assert!(e.is_event() && e.is_terminal());
        assert_eq!((e.seq(), e.run_id()), (Some(6), Some("r_1")));
        let r = ServerMessage::parse(r#"{"type":"run.accepted","ref":"c1","run_id":"r_1"}"#).unwrap();
        assert!(!r.is_event() && !r.is_terminal());
        assert_eq!(r.r#ref(), Some("c1"));
    }

    #[test]
    fn frames_without_a_type_are_protocol_errors() {
        assert!(matches!(ServerMessage::parse("[1]"), Err(ClientError::Protocol(_))));
        assert!(matches!(ServerMessage::parse("nope"), Err(ClientError::Protocol(_))));
    }
}
