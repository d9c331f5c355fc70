//! The built-in `demo` agent (PROTOCOL.md section 6): `agent_started`,
//! `agent_thinking`, `tool_executing` and `tool_completed` for `word_count`, one or
//! more `agent_message`, then `agent_completed` (or `agent_failed` `demo_failure`),
//! waiting `delay_ms` between consecutive events.

use std::time::Duration;

use agentgate_protocol::EventType;
use serde_json::{Map, Value, json};

use super::{Outcome, RunSink};
use crate::session::StoreError;

/// Largest accepted `delay_ms`.
pub(crate) const MAX_DELAY_MS: u64 = 5000;

/// Validated demo input.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DemoInput {
    pub(crate) prompt: String,
    pub(crate) delay: Duration,
    pub(crate) fail: bool,
}

impl DemoInput {
    /// Check the input; the message says which field is wrong. Where the contract is
    /// silent the demo is lenient: a missing `prompt` is empty (0 words), and other
    /// fields are ignored.
    pub(crate) fn parse(input: &Map<String, Value>) -> Result<Self, String> {
        let prompt = match input.get("prompt") {
            Some(Value::String(p)) => p.clone(),
            Some(_) => return Err("demo input `prompt` must be a string".into()),
            None => String::new(),
        };
        let delay_ms = match input.get("delay_ms") {
            None => 0,
            Some(v) => match v.as_u64() {
                Some(d) if d <= MAX_DELAY_MS => d,
                _ => return Err(format!("demo input `delay_ms` must be an integer from 0 to {MAX_DELAY_MS}")),
            },
        };
        let fail = match input.get("fail") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("demo input `fail` must be true or false".into()),
        };
        Ok(Self { prompt, delay: Duration::from_millis(delay_ms), fail })
    }
}

/// Run the demo. `agent_started` is emitted by the caller before this starts; every
/// later event, the terminal one included, comes `delay` after the previous one.
///
/// # Errors
/// The session is gone or its backend unreachable: the run cannot be delivered.
pub(crate) async fn run(input: DemoInput, sink: RunSink) -> Result<Outcome, StoreError> {
    sink.emit(EventType::AgentStarted, json!({"agent": "demo"})).await?;
    let words = input.prompt.split_whitespace().count();
    let pause = || tokio::time::sleep(input.delay);
    pause().await;
    let chars = input.prompt.chars().count();
    sink.emit(EventType::AgentThinking, json!({"text": format!("Counting the words of a {chars}-character prompt.")}))
        .await?;
    pause().await;
    let arguments = json!({"text": input.prompt});
    sink.emit(EventType::ToolExecuting, json!({"tool": "word_count", "call_id": "c_1", "arguments": arguments}))
        .await?;
    pause().await;
    sink.emit(EventType::ToolCompleted, json!({"tool": "word_count", "call_id": "c_1", "result": {"words": words}}))
        .await?;
    pause().await;
    sink.emit(EventType::AgentMessage, json!({"text": format!("The prompt has {words} words.")})).await?;
    pause().await;
    Ok(if input.fail {
        Outcome::Failed { code: "demo_failure".into(), message: "the demo agent was asked to fail".into() }
    } else {
        Outcome::Completed(json!({"words": words}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<DemoInput, String> {
        DemoInput::parse(v.as_object().unwrap())
    }

    #[test]
    fn input_bounds_are_checked() {
        assert!(parse(json!({"prompt": "a b"})).is_ok());
        assert_eq!(parse(json!({})).unwrap().prompt, "");
        assert!(parse(json!({"prompt": 1})).is_err());
        assert!(parse(json!({"prompt": "a", "delay_ms": 5001})).is_err());
        assert!(parse(json!({"prompt": "a", "delay_ms": -1})).is_err());
        assert!(parse(json!({"prompt": "a", "delay_ms": 1.5})).is_err());
        assert!(parse(json!({"prompt": "a", "fail": "yes"})).is_err());
        assert_eq!(
            parse(json!({"prompt": "a", "delay_ms": 5000, "fail": true})).unwrap().delay,
            Duration::from_secs(5)
        );
    }
}
