//! JWKS URLs: keys fetched from an identity provider, cached, refreshed every
//! `jwks_refresh_s`, and refetched on an unknown `kid` at most every
//! `jwks_min_refetch_s` (one fetch at a time per issuer). A failed fetch keeps the last
//! good keys. Keys are only ever taken from the configured URL: `jku`, `x5u` and `jwk`
//! token headers are ignored.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentgate_auth::{Issuer, parse_jwks};

/// Time allowed for one JWKS fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest accepted JWKS document.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One issuer whose keys come from a URL.
#[derive(Debug)]
pub struct JwksSource {
    /// The issuer whose keys are replaced.
    pub issuer: Arc<Issuer>,
    /// Where the JWKS is.
    pub url: String,
    /// Least time between two fetches triggered by unknown `kid`s.
    pub min_refetch: Duration,
    /// Time between periodic refreshes.
    pub refresh: Duration,
    state: Mutex<FetchState>,
    single_flight: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    fetches: u64,
}

impl JwksSource {
    /// A source for `issuer` at `url`.
    pub fn new(issuer: Arc<Issuer>, url: String, min_refetch: Duration, refresh: Duration) -> Self {
        Self { issuer, url, min_refetch, refresh, state: Mutex::default(), single_flight: tokio::sync::Mutex::new(()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last fetch error, if the last fetch failed.
    pub fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    /// How many fetches were attempted.
    pub fn fetches(&self) -> u64 {
        self.state().fetches
    }

    /// Fetch now and replace the keys on success.
    ///
    /// # Errors
    /// A description of what failed (the old keys stay).
    pub async fn fetch(&self, client: &reqwest::Client) -> Result<usize, String> {
        let _one = self.single_flight.lock().await;
        self.fetch_locked(client).await
    }

    async fn fetch_locked(&self, client: &reqwest::Client) -> Result<usize, String> {
        {
            let mut st = self.state();
            st.last_attempt = Some(Instant::now());
            st.fetches += 1;
        }
        let result = download(client, &self.url).await.and_then(|bytes| {
            let (keys, skipped) = parse_jwks(&bytes).map_err(|e| e.to_string())?;
            for s in &skipped {
                tracing::warn!(issuer = %self.issuer.name, "JWKS entry skipped: {s}");
            }
            if keys.is_empty() {
                return Err("the JWKS holds no usable signing key".into());
            }
            Ok(keys)
        });
        match result {
            Ok(keys) => {
                let n = keys.len();
                let kids: Vec<String> = keys.iter().map(|k| k.kid.clone().unwrap_or_else(|| "-".into())).collect();
                self.issuer.set_keys(keys);
                self.state().last_error = None;
                tracing::info!(issuer = %self.issuer.name, keys = n, kids = ?kids, "JWKS fetched");
                Ok(n)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer.name, url = %self.url, error = %e, "JWKS fetch failed; keeping the last good keys");
                self.state().last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Refetch because a token named an unknown `kid`, unless the last fetch is more
    /// recent than `min_refetch`. Concurrent callers share one fetch. Returns whether
    /// the keys may have changed.
    pub async fn refetch_for_unknown_kid(&self, client: &reqwest::Client) -> bool {
        if self.recent() {
            return false;
        }
        let _one = self.single_flight.lock().await;
        if self.recent() {
            // Another caller fetched while this one waited.
            return true;
        }
        self.fetch_locked(client).await.is_ok()
    }

    fn recent(&self) -> bool {
        self.state().last_attempt.is_some_and(|t| t.elapsed() < self.min_refetch)
    }

    /// Whether a periodic refresh is due.
    pub fn refresh_due(&self) -> bool {
        self.state().last_attempt.is_none_or(|t| t.elapsed() >= self.refresh)
    }
}

/// The HTTP client for JWKS fetches: bounded time, no redirects to other schemes, no
/// proxies from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .no_proxy()
        .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

async fn download(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    use futures_util::StreamExt;
    let resp = client.get(url).header("accept", "application/json").send().await.map_err(|e| describe(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if resp.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
        return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| describe(&e))?;
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// Fetch every JWKS of `config` once (for the command-line tools, which do not run the
/// server's refresh loop). Failures are reported, not fatal: the verdict then says
/// `key_unknown`.
pub async fn fetch_all(config: &crate::Config) -> Vec<(String, Result<usize, String>)> {
    let client = client();
    let mut out = Vec::new();
    for source in &config.jwks {
        out.push((source.issuer.name.clone(), source.fetch(&client).await));
    }
    out
}
