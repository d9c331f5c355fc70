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
/// Time from a `/v1/ws` request's arrival to the upgrade decision (origin, credential
/// verification, admission), by outcome.
pub const HANDSHAKE_DURATION: &str = "agentgate_handshake_duration_seconds";
/// Time from an event's creation (`ts_ms`) to its frame being written to a live
/// connection (replays on resume are not counted).
pub const EVENT_DELIVERY: &str = "agentgate_event_delivery_seconds";

/// TLS handshakes on `server.listen` that failed, by reason (`error`, `timeout`).
pub const TLS_HANDSHAKE_FAILURES: &str = "agentgate_tls_handshake_failures_total";

/// Buckets of [`HANDSHAKE_DURATION`] (seconds): a local HMAC check takes well under a
/// millisecond; a JWKS refetch can take a network round trip.
const HANDSHAKE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Buckets of [`EVENT_DELIVERY`] (seconds; `ts_ms` has millisecond resolution).
const DELIVERY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process's Prometheus handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::Matcher;
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HANDSHAKE_DURATION.into()), HANDSHAKE_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(EVENT_DELIVERY.into()), DELIVERY_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
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

/// Handles of the series recorded on every handshake and event, registered once: the
/// `metrics` macros look a series up by name and labels on each call, which cost
/// about 2% of a handshake.
struct Hot {
    connections_active: metrics::Gauge,
    accepted: metrics::Counter,
    resumed: metrics::Counter,
    events_sent: metrics::Counter,
    decided_accepted: metrics::Histogram,
    decided_rejected: metrics::Histogram,
    delivery: metrics::Histogram,
}

fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| {
        handle();
        Hot {
            connections_active: metrics::gauge!(CONNECTIONS_ACTIVE),
            accepted: metrics::counter!(HANDSHAKES, "outcome" => "accepted"),
            resumed: metrics::counter!(SESSIONS_RESUMED),
            events_sent: metrics::counter!(EVENTS_SENT),
            decided_accepted: metrics::histogram!(HANDSHAKE_DURATION, "outcome" => "accepted"),
            decided_rejected: metrics::histogram!(HANDSHAKE_DURATION, "outcome" => "rejected"),
            delivery: metrics::histogram!(EVENT_DELIVERY),
        }
    })
}

fn describe() {
    metrics::describe_gauge!(CONNECTIONS_ACTIVE, "Open WebSockets on /v1/ws and /v1/mcp.");
    metrics::describe_counter!(HANDSHAKES, "WebSocket handshakes by outcome.");
    metrics::describe_counter!(AUTH_FAILURES, "Rejections by reason code.");
    metrics::describe_counter!(EVENTS_SENT, "Event frames sent, replays included.");
    metrics::describe_gauge!(RUNS_ACTIVE, "Agent runs executing on this node.");
    metrics::describe_counter!(SESSIONS_RESUMED, "Sessions resumed.");
    metrics::describe_counter!(TLS_HANDSHAKE_FAILURES, "TLS handshakes on server.listen that failed, by reason.");
    metrics::describe_histogram!(
        HANDSHAKE_DURATION,
        metrics::Unit::Seconds,
        "Time from a /v1/ws request to the upgrade decision, by outcome."
    );
    metrics::describe_histogram!(
        EVENT_DELIVERY,
        metrics::Unit::Seconds,
        "Time from an event's creation to its frame being written to a live connection."
    );
}

/// Count a failed TLS handshake (`error`: the client or the certificate; `timeout`:
/// not done within `server.handshake_timeout_ms`).
pub fn tls_handshake_failed(reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

/// Record how long the pre-upgrade decisions of a `/v1/ws` request took.
pub fn handshake_decided(took: std::time::Duration, accepted: bool) {
    let h = hot();
    let series = if accepted { &h.decided_accepted } else { &h.decided_rejected };
    series.record(took.as_secs_f64());
}

/// Record the delivery latency of an event frame just written (its `ts_ms` against now).
pub fn event_delivered(frame: &str) {
    if let Some(ts_ms) = ts_ms_of(frame) {
        let now = crate::session::now_ms();
        hot().delivery.record(now.saturating_sub(ts_ms) as f64 / 1000.0);
    }
}

/// The `ts_ms` of an event frame's JSON text, found before its `data` (the frame's
/// field order), without parsing the data.
fn ts_ms_of(frame: &str) -> Option<u64> {
    let at = frame.find("\"ts_ms\":")? + "\"ts_ms\":".len();
    let digits: &str = frame[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Count a rejected handshake (or refused API request) with its code.
pub fn rejected(code: ErrorCode) {
    metrics::counter!(HANDSHAKES, "outcome" => "rejected").increment(1);
    metrics::counter!(AUTH_FAILURES, "code" => code.as_str()).increment(1);
}

/// Count an accepted handshake.
pub fn accepted(resumed: bool) {
    let h = hot();
    h.accepted.increment(1);
    if resumed {
        h.resumed.increment(1);
    }
}

/// Count event frames sent.
pub fn events_sent(n: u64) {
    if n > 0 {
        hot().events_sent.increment(n);
    }
}

/// Counts one open WebSocket while alive.
#[derive(Debug)]
pub struct ConnectionGauge(());

#[cfg(test)]
mod tests {
    #[test]
    fn ts_ms_is_read_from_the_frame_text() {
        let f = r#"{"type":"agent_message","seq":3,"run_id":"r_x","ts_ms":1765000000123,"data":{"ts_ms":1}}"#;
        assert_eq!(super::ts_ms_of(f), Some(1_765_000_000_123));
        assert_eq!(super::ts_ms_of("{}"), None);
    }
}

impl ConnectionGauge {
    /// One more open WebSocket.
    pub fn open() -> Self {
        hot().connections_active.increment(1.0);
        Self(())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        hot().connections_active.decrement(1.0);
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
