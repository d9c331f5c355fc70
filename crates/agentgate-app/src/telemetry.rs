//! Logging: one line per rejection with code, request id, remote address and token
//! fingerprint. Tokens, tickets and secrets never reach a log line: only their
//! fingerprints do.

use std::net::SocketAddr;

use crate::error::Rejection;

/// Log a rejection once.
pub fn log_rejection(r: &Rejection, remote: SocketAddr) {
    crate::metrics::rejected(r.code);
    tracing::info!(
        reason = r.code.as_str(),
        request_id = %r.request_id,
        remote = %remote,
        token_fp = r.token_fp.as_deref().unwrap_or("-"),
        detail = %r.message,
        "handshake rejected"
    );
}

/// Install the global subscriber: human-readable or JSON lines on stderr, filtered by
/// `RUST_LOG` (default `info`).
pub fn init(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
