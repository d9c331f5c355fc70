//! HTTP upstream agents (PROTOCOL.md section 11): for each run the gateway POSTs the
//! run to the agent's URL with the agent's own secret (never the user's credential) and
//! reads a stream of NDJSON lines or server-sent events, each
//! `{"type":"<event type>","data":{...}}`. The gateway emits `agent_started` when the
//! 2xx arrives and guarantees exactly one terminal event, whatever the upstream does.

use std::time::Duration;

use agentgate_auth::Principal;
use agentgate_protocol::EventType;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value, json};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use super::{Outcome, RunSink};
use crate::session::StoreError;

/// A configured HTTP agent.
#[derive(Clone)]
pub struct HttpAgent {
    /// Where runs are POSTed.
    pub url: String,
    /// The bearer sent upstream.
    pub secret: String,
    /// Longest wait for the first byte and between events.
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAgent")
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One run's request to an upstream.
#[derive(Debug)]
pub(crate) struct HttpRun {
    pub(crate) agent: HttpAgent,
    pub(crate) name: String,
    pub(crate) input: Map<String, Value>,
    pub(crate) principal: Principal,
    pub(crate) max_line: usize,
}

fn failed(code: &str, message: impl Into<String>) -> Outcome {
    Outcome::Failed { code: code.into(), message: message.into() }
}

/// The HTTP client for upstream agents: bounded connect time, no overall timeout (runs
/// stream for minutes; the per-event timeout bounds silence), no environment proxies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .no_proxy()
        .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// What an SSE line may carry besides its data: `data: ` and a CR before the LF.
const SSE_LINE_OVERHEAD: usize = "data: \r".len();

/// Run against the upstream.
///
/// # Errors
/// The session can no longer take events.
pub(crate) async fn run(client: &reqwest::Client, run: HttpRun, sink: RunSink) -> Result<Outcome, StoreError> {
    let body = json!({
        "run_id": sink.run_id,
        "agent": run.name,
        "input": run.input,
        "session_id": sink.session_id,
        "principal": {
            "subject": run.principal.subject,
            "tenant": run.principal.tenant,
            "scopes": run.principal.scopes,
        },
    });
    let request = client
        .post(&run.agent.url)
        .header("content-type", "application/json")
        .header("accept", "application/x-ndjson, text/event-stream")
        .bearer_auth(&run.agent.secret)
        .body(body.to_string())
        .send();
    let timeout = run.agent.timeout;
    let response = match tokio::time::timeout(timeout, request).await {
        Err(_) => {
            return Ok(failed("upstream_timeout", format!("the upstream sent nothing for {} s", timeout.as_secs())));
        }
        Ok(Err(e)) if e.is_connect() => {
            return Ok(failed("upstream_unreachable", format!("cannot reach the upstream agent: {}", describe(&e))));
        }
        Ok(Err(e)) if e.is_timeout() => {
            return Ok(failed("upstream_timeout", format!("the upstream timed out: {}", describe(&e))));
        }
        Ok(Err(e)) => return Ok(failed("upstream_unreachable", format!("the request failed: {}", describe(&e)))),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if !status.is_success() {
        return Ok(failed("upstream_error", format!("the upstream answered HTTP {status}")));
    }
    sink.emit(EventType::AgentStarted, json!({"agent": run.name})).await?;
    let sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
    let bytes = response.bytes_stream().map_err(std::io::Error::other);
    // For SSE the limit is on an event's data: its `data: ` line (and a CR) may be
    // that much longer; the data itself is checked as it accumulates.
    let line_max = if sse { run.max_line.saturating_add(SSE_LINE_OVERHEAD) } else { run.max_line };
    let mut lines = FramedRead::new(StreamReader::new(bytes), LinesCodec::new_with_max_length(line_max));
    let mut sse_data: Option<String> = None;
    loop {
        let line = match tokio::time::timeout(timeout, lines.next()).await {
            Err(_) => {
                return Ok(failed(
                    "upstream_timeout",
                    format!("the upstream sent nothing for {} s", timeout.as_secs()),
                ));
            }
            Ok(None) => {
                // A last SSE event without its blank line still counts.
                if let Some(data) = sse_data.take()
                    && let Some(end) = handle(&data, &sink).await?
                {
                    return Ok(end);
                }
                return Ok(failed("upstream_incomplete", "the upstream ended the stream without a terminal event"));
            }
            Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                return Ok(failed(
                    "upstream_protocol",
                    format!("the upstream sent a line longer than {line_max} bytes"),
                ));
            }
            Ok(Some(Err(e))) => {
                return Ok(failed("upstream_incomplete", format!("the upstream connection dropped: {e}")));
            }
            Ok(Some(Ok(line))) => line,
        };
        let payload = if sse {
            // Server-sent events: `data:` lines accumulate; a blank line dispatches.
            if line.is_empty() {
                match sse_data.take() {
                    Some(d) => d,
                    None => continue,
                }
            } else {
                if let Some(rest) = line.strip_prefix("data:") {
                    let rest = rest.strip_prefix(' ').unwrap_or(rest);
                    let data = sse_data.get_or_insert_with(String::new);
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(rest);
                    if data.len() > run.max_line {
                        return Ok(failed(
                            "upstream_protocol",
                            format!("the upstream sent an event longer than {} bytes", run.max_line),
                        ));
                    }
                }
                // `event:`, `id:`, `retry:` and `:` comments carry nothing agentgate uses.
                continue;
            }
        } else {
            if line.trim().is_empty() {
                continue;
            }
            line
        };
        if let Some(end) = handle(&payload, &sink).await? {
            return Ok(end);
        }
    }
}

/// Handle one event from the upstream; `Some` ends the run.
async fn handle(payload: &str, sink: &RunSink) -> Result<Option<Outcome>, StoreError> {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(payload) else {
        return Ok(Some(failed("upstream_protocol", "the upstream sent a line that is not a JSON object")));
    };
    let Some(ty) = obj.get("type").and_then(Value::as_str).and_then(EventType::parse) else {
        return Ok(Some(failed("upstream_protocol", "the upstream sent an event of unknown type")));
    };
    if matches!(ty, EventType::AgentStarted | EventType::RunCancelled) {
        return Ok(Some(failed(
            "upstream_protocol",
            format!("the upstream may not send {} (the gateway emits it)", ty.as_str()),
        )));
    }
    let data = match obj.remove("data") {
        None => Value::Object(Map::new()),
        Some(Value::Object(m)) => Value::Object(m),
        Some(_) => {
            return Ok(Some(failed("upstream_protocol", "the upstream sent an event whose data is not an object")));
        }
    };
    if ty.is_terminal() {
        return Ok(Some(Outcome::Terminal { ty, data }));
    }
    sink.emit(ty, data).await?;
    Ok(None)
}

fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
