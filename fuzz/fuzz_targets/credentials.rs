//! Credential extraction from arbitrary headers and query pairs: a verdict, never a
//! panic, and at most one credential.
#![no_main]

use agentgate_app::credentials::{Endpoint, Found, extract};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Lines of `name: value` become headers; lines of `?k=v` become query pairs.
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    let mut query = Vec::new();
    for line in text.lines().take(64) {
        if let Some(q) = line.strip_prefix('?') {
            let (k, v) = q.split_once('=').unwrap_or((q, ""));
            query.push((k.to_owned(), v.to_owned()));
        } else if let Some((k, v)) = line.split_once(':') {
            let name = match k.trim().to_ascii_lowercase().as_str() {
                "a" => "authorization".to_owned(),
                "p" => "sec-websocket-protocol".to_owned(),
                other => other.to_owned(),
            };
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(v.trim())) {
                headers.append(n, v);
            }
        }
    }
    for endpoint in [Endpoint::Agent, Endpoint::Mcp] {
        for query_enabled in [true, false] {
            if let Ok(Found::One(c)) = extract(&headers, &query, endpoint, query_enabled) {
                assert!(!c.value.is_empty());
            }
        }
    }
});
