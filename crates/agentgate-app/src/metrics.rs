//! Prometheus metrics (PROTOCOL.md section 9), recorded through the `metrics` facade
//! and rendered by `metrics-exporter-prometheus`. The recorder is process-wide: one
//! gateway per process in production; tests that run several servers in one process
//! see their sums.

use std::sync::OnceLock;

use agentgate_protocol::ErrorCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Open WebSockets on `/v1/ws` and `/v1/mcp`.
pub const CONNECTIONS_ACTIVE: &str = "agentgate_connections_active";
/// Handshakes by outcome (`accepted`, `rejected`).
pub const HANDSHAKES: &str = "agentgate_handshakes_total";
/// Rejections by reason code.
pub const AUTH_FAILURES: &str = "agentgate_auth_failures_total";
/// Event frames sent, replays included.
pub const EVENTS_SENT: &str = "agentgate_events_sent_total";
/// Runs executing on this node.
pub const RUNS_ACTIVE: &str = "agentgate_runs_active";
/// Sessions resumed.
pub const SESSIONS_RESUMED: &str = "agentgate_sessions_resumed_total";

/// The process's Prometheus handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe();
        // Series that must exist from the start, even at zero.
        metrics::gauge!(CONNECTIONS_ACTIVE).set(0.0);
        metrics::gauge!(RUNS_ACTIVE).set(0.0);
        metrics::counter!(HANDSHAKES, "outcome" => "accepted").absolute(0);
        metrics::counter!(HANDSHAKES, "outcome" => "rejected").absolute(0);
        metrics::counter!(EVENTS_SENT).absolute(0);
        metrics::counter!(SESSIONS_RESUMED).absolute(0);
        handle
    })
}

fn describe() {
    metrics::describe_gauge!(CONNECTIONS_ACTIVE, "Open WebSockets on /v1/ws and /v1/mcp.");
    metrics::describe_counter!(HANDSHAKES, "WebSocket handshakes by outcome.");
    metrics::describe_counter!(AUTH_FAILURES, "Rejections by reason code.");
    metrics::describe_counter!(EVENTS_SENT, "Event frames sent, replays included.");
    metrics::describe_gauge!(RUNS_ACTIVE, "Agent runs executing on this node.");
    metrics::describe_counter!(SESSIONS_RESUMED, "Sessions resumed.");
}

/// Count a rejected handshake (or refused API request) with its code.
pub fn rejected(code: ErrorCode) {
    metrics::counter!(HANDSHAKES, "outcome" => "rejected").increment(1);
    metrics::counter!(AUTH_FAILURES, "code" => code.as_str()).increment(1);
}

/// Count an accepted handshake.
pub fn accepted(resumed: bool) {
    metrics::counter!(HANDSHAKES, "outcome" => "accepted").increment(1);
    if resumed {
        metrics::counter!(SESSIONS_RESUMED).increment(1);
    }
}

/// Count event frames sent.
pub fn events_sent(n: u64) {
    if n > 0 {
        metrics::counter!(EVENTS_SENT).increment(n);
    }
}

/// Counts one open WebSocket while alive.
#[derive(Debug)]
pub struct ConnectionGauge(());

impl ConnectionGauge {
    /// One more open WebSocket.
    pub fn open() -> Self {
        metrics::gauge!(CONNECTIONS_ACTIVE).increment(1.0);
        Self(())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_ACTIVE).decrement(1.0);
    }
}

/// Counts one executing run while alive.
#[derive(Debug)]
pub struct RunGauge(());

impl RunGauge {
    /// One more executing run.
    pub fn start() -> Self {
        metrics::gauge!(RUNS_ACTIVE).increment(1.0);
        Self(())
    }
}

impl Drop for RunGauge {
    fn drop(&mut self) {
        metrics::gauge!(RUNS_ACTIVE).decrement(1.0);
    }
}
