//! The JSON-RPC messages, as far as the shim looks at them: requests (ids kept as their
//! exact text), cancellations, `initialize`, answers; and the errors the shim answers
//! with itself.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::time::Instant;

/// The JSON-RPC error code of every answer the shim makes itself ("server error").
pub(super) const SHIM_ERROR: i64 = -32000;

/// The parts of a JSON-RPC message the shim looks at; the rest passes untouched.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(borrow, default)]
    pub(super) id: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) method: Option<String>,
    #[serde(borrow, default)]
    pub(super) result: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) params: Option<Value>,
}

/// A request the client sent: its id (exact text, and a key to match answers) and
/// method.
#[derive(Debug, Clone)]
pub(super) struct Req {
    pub(super) key: String,
    pub(super) raw_id: String,
    pub(super) method: String,
}

/// One standard-input line, classified.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) line: String,
    /// The requests in it (one, or several in a batch).
    pub(super) requests: Vec<Req>,
    /// The request ids a `notifications/cancelled` in it cancels.
    pub(super) cancels: Vec<String>,
    pub(super) is_initialize: bool,
    pub(super) is_initialized: bool,
    /// When it was held for want of a connection.
    pub(super) held_at: Option<Instant>,
}

/// The key of an id: its JSON value re-serialized, so `"7"` and `7` stay apart.
pub(super) fn id_key(raw: &RawValue) -> String {
    serde_json::from_str::<Value>(raw.get()).map_or_else(|_| raw.get().to_owned(), |v| v.to_string())
}

pub(super) fn envelopes(line: &str) -> Vec<Envelope<'_>> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<Envelope<'_>>>(line).unwrap_or_default()
    } else {
        serde_json::from_str::<Envelope<'_>>(line).map(|e| vec![e]).unwrap_or_default()
    }
}

impl Outgoing {
    pub(super) fn classify(line: String) -> Self {
        let mut out = Self {
            requests: Vec::new(),
            cancels: Vec::new(),
            is_initialize: false,
            is_initialized: false,
            held_at: None,
            line: String::new(),
        };
        for env in envelopes(&line) {
            let (Some(method), id) = (env.method, env.id) else { continue };
            if let Some(id) = id {
                out.is_initialize |= method == "initialize";
                out.requests.push(Req { key: id_key(id), raw_id: id.get().to_owned(), method });
            } else if method == "notifications/cancelled" {
                if let Some(rid) = env.params.as_ref().and_then(|p| p.get("requestId")) {
                    out.cancels.push(rid.to_string());
                }
            } else if method == "notifications/initialized" {
                out.is_initialized = true;
            }
        }
        out.line = line;
        out
    }
}

/// An answer from the server: the key of its id, and whether it is a success.
pub(super) fn answer_of(text: &str) -> Option<(String, bool)> {
    let env = serde_json::from_str::<Envelope<'_>>(text).ok()?;
    if env.method.is_some() {
        return None;
    }
    Some((id_key(env.id?), env.result.is_some()))
}

/// A JSON-RPC error answer to `raw_id` (its exact text).
pub(super) fn error_answer(raw_id: &str, message: &str, data: &Value) -> String {
    let error = json!({"code": SHIM_ERROR, "message": message, "data": {"agentgate": data}});
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{raw_id},\"error\":{error}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_cancellations_and_answers_are_recognized_with_ids_kept_exact() {
        let m = Outgoing::classify(r#"{"jsonrpc":"2.0","id":"7","method":"initialize","params":{}}"#.into());
        assert!(m.is_initialize);
        assert_eq!(m.requests[0].raw_id, r#""7""#);
        let m = Outgoing::classify(r#"{"jsonrpc":"2.0","id": 1e2 ,"method":"tools/list"}"#.into());
        assert_eq!(m.requests[0].raw_id, "1e2");
        let m = Outgoing::classify(
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}"#.into(),
        );
        assert!(m.requests.is_empty());
        assert_eq!(m.cancels, vec!["7".to_owned()]);
        let m = Outgoing::classify(r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]"#.into());
        assert_eq!(m.requests.len(), 1);
        let m = Outgoing::classify("not json".into());
        assert!(m.requests.is_empty());
        // A client's answer to a server's request is not a request.
        let m = Outgoing::classify(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#.into());
        assert!(m.requests.is_empty());
        assert_eq!(answer_of(r#"{"jsonrpc":"2.0","id":"7","result":{}}"#), Some((r#""7""#.to_owned(), true)));
        assert_eq!(answer_of(r#"{"jsonrpc":"2.0","id":7,"error":{}}"#), Some(("7".to_owned(), false)));
        assert_eq!(answer_of(r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage"}"#), None);
        let e = error_answer(r#""a\u0062""#, "m", &json!({}));
        assert!(e.starts_with(r#"{"jsonrpc":"2.0","id":"a\u0062","error":{"#), "{e}");
        let v: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["error"]["code"], SHIM_ERROR);
    }
}
