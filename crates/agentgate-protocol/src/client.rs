//! Client frames (PROTOCOL.md section 5), parsed with the exact reason code for each
//! fault: invalid JSON, an unknown `type` or a missing or mistyped field is
//! `protocol_error`; an `auth`/`auth.refresh` without a usable `token` is
//! `token_missing`.

use serde_json::{Map, Value};

use crate::ErrorCode;

/// A well-formed client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// First-message authentication, with optional resume fields.
    Auth {
        /// The credential.
        token: String,
        /// Resume this session.
        session_id: Option<String>,
        /// The last `seq` the client has seen.
        last_seq: Option<u64>,
    },
    /// In-band token refresh.
    AuthRefresh {
        /// The new credential.
        token: String,
    },
    /// Start an agent run.
    RunStart {
        /// Client correlation id.
        r#ref: Option<Value>,
        /// Agent name.
        agent: String,
        /// Agent input (an object; `{}` when absent).
        input: Map<String, Value>,
    },
    /// Cancel a run.
    RunCancel {
        /// Client correlation id.
        r#ref: Option<Value>,
        /// The run.
        run_id: String,
    },
    /// Ask for a run's state.
    RunGet {
        /// Client correlation id.
        r#ref: Option<Value>,
        /// The run.
        run_id: String,
    },
    /// Application-level ping.
    Ping {
        /// Client correlation id.
        r#ref: Option<Value>,
    },
}

/// Why a frame could not be parsed: the reason code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// `protocol_error` or `token_missing`.
    pub code: ErrorCode,
    /// What was wrong, never containing the frame's credential.
    pub message: String,
}

impl FrameError {
    fn protocol(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::ProtocolError, message: message.into() }
    }
}

impl ClientMessage {
    /// Parse one text frame.
    ///
    /// # Errors
    /// A [`FrameError`] with `protocol_error` or `token_missing`.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| FrameError::protocol(format!("frame is not valid JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(FrameError::protocol("frame must be a JSON object"));
        };
        let ty = match obj.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err(FrameError::protocol("field `type` must be a string")),
            None => return Err(FrameError::protocol("frame has no `type` field")),
        };
        let r#ref = obj.remove("ref");
        match ty.as_str() {
            "auth" => {
                let token = token_field(&obj, "auth")?;
                let session_id = match obj.get("session_id") {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(FrameError::protocol("`session_id` must be a string")),
                };
                let last_seq = match obj.get("last_seq") {
                    None => None,
                    Some(v) => Some(
                        v.as_u64().ok_or_else(|| FrameError::protocol("`last_seq` must be a non-negative integer"))?,
                    ),
                };
                Ok(Self::Auth { token, session_id, last_seq })
            }
            "auth.refresh" => Ok(Self::AuthRefresh { token: token_field(&obj, "auth.refresh")? }),
            "run.start" => {
                let agent = string_field(&obj, "run.start", "agent")?;
                let input = match obj.remove("input") {
                    None => Map::new(),
                    Some(Value::Object(m)) => m,
                    Some(_) => {
                        return Err(FrameError::protocol("`input` of run.start must be an object"));
                    }
                };
                Ok(Self::RunStart { r#ref, agent, input })
            }
            "run.cancel" => Ok(Self::RunCancel { r#ref, run_id: string_field(&obj, "run.cancel", "run_id")? }),
            "run.get" => Ok(Self::RunGet { r#ref, run_id: string_field(&obj, "run.get", "run_id")? }),
            "ping" => Ok(Self::Ping { r#ref }),
            other => Err(FrameError::protocol(format!(
                "unknown message type {:?}; expected one of auth.refresh, run.start, run.cancel, run.get, ping",
                truncate(other, 64)
            ))),
        }
    }
}

fn token_field(obj: &Map<String, Value>, ty: &str) -> Result<String, FrameError> {
    match obj.get("token") {
        Some(Value::String(t)) if !t.is_empty() => Ok(t.clone()),
        Some(Value::String(_)) => Err(FrameError {
            code: ErrorCode::TokenMissing,
            message: format!("`token` of {ty} is empty; send the access token itself"),
        }),
        Some(_) => {
            Err(FrameError { code: ErrorCode::TokenMissing, message: format!("`token` of {ty} must be a string") })
        }
        None => {
            Err(FrameError { code: ErrorCode::TokenMissing, message: format!("{ty} message has no `token` field") })
        }
    }
}

fn string_field(obj: &Map<String, Value>, ty: &str, field: &str) -> Result<String, FrameError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(FrameError::protocol(format!("`{field}` of {ty} must be a string"))),
        None => Err(FrameError::protocol(format!("{ty} needs a `{field}` field"))),
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

    fn code(text: &str) -> ErrorCode {
        ClientMessage::parse(text).unwrap_err().code
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        assert_eq!(code("not json"), ErrorCode::ProtocolError);
        assert_eq!(code("[1]"), ErrorCode::ProtocolError);
        assert_eq!(code(r#"{"type":"nope"}"#), ErrorCode::ProtocolError);
        assert_eq!(code(r#"{"type":"run.start"}"#), ErrorCode::ProtocolError);
        assert_eq!(code(r#"{"type":"run.start","agent":1}"#), ErrorCode::ProtocolError);
        assert_eq!(code(r#"{"type":"run.start","agent":"demo","input":[]}"#), ErrorCode::ProtocolError);
        assert_eq!(code(r#"{"type":"run.get"}"#), ErrorCode::ProtocolError);
    }

    #[test]
    fn auth_without_usable_token_is_token_missing() {
        assert_eq!(code(r#"{"type":"auth"}"#), ErrorCode::TokenMissing);
        assert_eq!(code(r#"{"type":"auth","token":""}"#), ErrorCode::TokenMissing);
        assert_eq!(code(r#"{"type":"auth.refresh","token":5}"#), ErrorCode::TokenMissing);
    }

    #[test]
    fn run_start_defaults_input_and_keeps_ref() {
        let m = ClientMessage::parse(r#"{"type":"run.start","ref":"c1","agent":"demo"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::RunStart {
                r#ref: Some(Value::String("c1".into())),
                agent: "demo".into(),
                input: Map::new()
            }
        );
    }
}
