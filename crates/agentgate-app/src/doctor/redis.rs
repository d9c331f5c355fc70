//! The Redis probe of `agentgate doctor` (INCIDENTS.md row 8): with
//! `backend.kind = "redis"`, connect to `backend.redis_url` and send `PING`, then name
//! what failed: a missing password (`NOAUTH`), a wrong one, the network (refused,
//! timed out, DNS), or the Redis error itself.
//!
//! The URL is only ever shown with its password masked (`redis://:****@host:port`),
//! and every error text is scrubbed of the password before it becomes a finding.

use std::io::ErrorKind as Io;
use std::time::Duration;

use redis::{AsyncConnectionConfig, ConnectionAddr, ErrorKind, RedisError};
use serde_json::json;

use super::{Finding, Report};
use crate::config::file::ConfigFile;

/// The key of every finding of the probe.
const KEY: &str = "backend.redis_url";

/// Limit for the whole probe: DNS, connect, authentication and `PING`.
pub(super) const TIMEOUT: Duration = Duration::from_secs(3);

/// Where the password belongs, and where it comes from.
const PASSWORD_FIX: &str = "put it in the URL as redis://:PASSWORD@host:port, from a secret: set \
                            AGENTGATE_BACKEND__REDIS_URL in the environment rather than in the file";

/// Probe `backend.redis_url` when `backend.kind = "redis"`; with `offline`, only say
/// that it was not probed.
pub(super) async fn check_redis(raw: &ConfigFile, offline: bool, report: &mut Report) {
    if raw.backend.kind != "redis" {
        return;
    }
    let url = raw.backend.redis_url.as_str();
    let shown = masked_url(url);
    if offline {
        report.push(Finding::info(KEY, format!("Redis at {shown} not probed (--offline)")));
        return;
    }
    report.push(probe(url, &shown, raw.backend.redis_ca_file.as_deref()).await);
}

/// What went wrong, before it is worded.
#[derive(Debug)]
enum Failure {
    /// The URL does not parse (redis-rs's reason).
    Url(String),
    /// The host name does not resolve.
    Dns(String),
    /// No connection: refused, reset, unreachable (the kind, then the error).
    Network(&'static str, String),
    /// No answer within [`TIMEOUT`].
    Timeout,
    /// `NOAUTH`: the server wants a password and none was sent.
    NoAuth,
    /// The password (or user and password) was refused.
    WrongPassword(String),
    /// `backend.redis_ca_file` cannot be used.
    CaFile(String),
    /// The TLS handshake of a `rediss://` URL failed (the certificate does not verify).
    Tls(String),
    /// Anything else Redis or the client said.
    Other(String),
}

/// Connect, `PING`, and turn the outcome into one finding.
async fn probe(url: &str, shown: &str, ca_file: Option<&std::path::Path>) -> Finding {
    let tls = url.to_ascii_lowercase().starts_with("rediss://");
    let opened = match ca_file.filter(|_| tls) {
        // Only these certificates verify the server, instead of the system's roots.
        Some(path) => match crate::config::read_ca_file(path) {
            Ok(_) => match std::fs::read(path) {
                Ok(pem) => redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates { client_tls: None, root_cert: Some(pem) },
                ),
                Err(e) => {
                    return failure(Failure::CaFile(format!("cannot read {}: {e}", path.display())), url, shown, "-");
                }
            },
            Err(e) => return failure(Failure::CaFile(e), url, shown, "-"),
        },
        None => redis::Client::open(url),
    };
    let client = match opened {
        Ok(c) => c,
        Err(e) => return failure(Failure::Url(e.to_string()), url, shown, "-"),
    };
    let info = client.get_connection_info();
    let addr = info.addr().to_string();
    let has_password = info.redis_settings().password().is_some_and(|p| !p.is_empty());
    let outcome = tokio::time::timeout(TIMEOUT, ping(&client)).await.unwrap_or(Err(Failure::Timeout));
    let data = |result: &str| json!({"url": shown, "address": addr, "result": result, "tls": tls});
    let verified = match (tls, ca_file) {
        (false, _) => "",
        (true, Some(_)) => ", over TLS verified with backend.redis_ca_file",
        (true, None) => ", over TLS verified with the system's trust roots",
    };
    match outcome {
        Ok(()) => Finding::info(
            KEY,
            format!(
                "Redis at {shown} is reachable: PING answered PONG{}{verified}",
                if has_password { " (authenticated)" } else { "" }
            ),
        )
        .with_data(data("reachable")),
        Err(f) => failure(f, url, shown, &addr),
    }
}

/// Resolve (for a TCP address), connect and authenticate, then `PING`.
async fn ping(client: &redis::Client) -> Result<(), Failure> {
    if let ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr() {
        // Resolved here first, so that a name that does not resolve is named as such.
        let mut addrs =
            tokio::net::lookup_host((host.as_str(), *port)).await.map_err(|e| Failure::Dns(e.to_string()))?;
        if addrs.next().is_none() {
            return Err(Failure::Dns("no address".to_owned()));
        }
    }
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(TIMEOUT)).set_response_timeout(Some(TIMEOUT));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.map_err(classify)?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.map_err(classify)?;
    if pong == "PONG" { Ok(()) } else { Err(Failure::Other(format!("PING answered {pong:?}, not PONG"))) }
}

/// What kind of failure a client error is.
fn classify(e: RedisError) -> Failure {
    let text = e.to_string();
    if text.contains("invalid peer certificate")
        || text.contains("certificate") && text.contains("TLS")
        || text.contains("InvalidCertificate")
    {
        return Failure::Tls(text);
    }
    if e.code() == Some("NOAUTH") || text.contains("NOAUTH") || text.contains("Authentication required") {
        return Failure::NoAuth;
    }
    if e.kind() == ErrorKind::AuthenticationFailed
        || e.code() == Some("WRONGPASS")
        || text.contains("WRONGPASS")
        || text.contains("invalid password")
    {
        return Failure::WrongPassword(text);
    }
    if e.kind() != ErrorKind::Io && !e.is_connection_dropped() {
        return Failure::Other(text);
    }
    // The client keeps the I/O error behind an `Arc`; its OS error code survives in
    // the text, and names the kind exactly.
    let os_kind = text
        .rsplit_once("(os error ")
        .and_then(|(_, n)| n.trim_end_matches(')').parse::<i32>().ok())
        .map(|n| std::io::Error::from_raw_os_error(n).kind());
    let kind = match os_kind {
        Some(Io::TimedOut | Io::WouldBlock) => return Failure::Timeout,
        _ if e.is_timeout() => return Failure::Timeout,
        Some(Io::ConnectionRefused) => "connection refused",
        _ if e.is_connection_refusal() => "connection refused",
        Some(Io::HostUnreachable | Io::NetworkUnreachable | Io::AddrNotAvailable) => "host unreachable",
        Some(Io::PermissionDenied) => "permission denied",
        Some(Io::NotFound) => "no such socket",
        _ if e.is_connection_dropped() => "connection closed by the server",
        _ => "I/O error",
    };
    Failure::Network(kind, text)
}

/// The finding for a failure: never the password, whatever the error text says.
fn failure(f: Failure, url: &str, shown: &str, addr: &str) -> Finding {
    let clean = |s: &str| scrub(s, url);
    let secs = TIMEOUT.as_secs();
    let network_fix = format!(
        "check that Redis is running and listening at {addr} (redis-cli -h HOST -p PORT ping), the host and \
         port in backend.redis_url, and that no firewall is in the way"
    );
    let (result, message, fix, error) = match f {
        Failure::Url(e) => (
            "invalid_url",
            format!("{shown} is not a usable Redis URL: {}", clean(&e)),
            "write it as redis://[:PASSWORD@]host:port[/db], or rediss://... for TLS".to_owned(),
            clean(&e),
        ),
        Failure::Dns(e) => (
            "dns",
            format!("cannot reach Redis at {addr} ({shown}): DNS lookup failed: {}", clean(&e)),
            "correct the host name in backend.redis_url, or check this machine's DNS (getent hosts HOST)".to_owned(),
            clean(&e),
        ),
        Failure::Network(kind, e) => (
            "network",
            format!("cannot reach Redis at {addr} ({shown}): {kind}: {}", clean(&e)),
            network_fix,
            clean(&e),
        ),
        Failure::Timeout => (
            "timeout",
            format!("cannot reach Redis at {addr} ({shown}): timed out: no answer to PING within {secs} s"),
            network_fix,
            "timed out".to_owned(),
        ),
        Failure::NoAuth => {
            let user_only = if has_user_without_password(url) {
                " (it has a user name but no password: the password goes after a colon)"
            } else {
                ""
            };
            (
                "noauth",
                format!(
                    "Redis at {addr} answered NOAUTH (authentication required): Redis requires a password and \
                     backend.redis_url ({shown}) has none{user_only}"
                ),
                PASSWORD_FIX.to_owned(),
                "NOAUTH".to_owned(),
            )
        }
        Failure::WrongPassword(e) => (
            "wrong_password",
            format!(
                "Redis at {addr} refused to authenticate ({}): the password in backend.redis_url ({shown}) is wrong",
                clean(&e)
            ),
            "put the current password (requirepass, or the ACL user's as redis://USER:PASSWORD@host:port) in the \
             URL as redis://:PASSWORD@host:port, from a secret: set AGENTGATE_BACKEND__REDIS_URL in the \
             environment rather than in the file; if this Redis has no password at all, remove it from the URL"
                .to_owned(),
            clean(&e),
        ),
        Failure::CaFile(e) => (
            "ca_file",
            format!("cannot use backend.redis_ca_file to verify Redis at {shown}: {}", clean(&e)),
            "point backend.redis_ca_file at a readable PEM file holding the CA certificate that signed the Redis \
             server's certificate"
                .to_owned(),
            clean(&e),
        ),
        Failure::Tls(e) => (
            "tls",
            format!("the TLS handshake with Redis at {addr} ({shown}) failed: {}", clean(&e)),
            "set backend.redis_ca_file to the PEM CA certificate that signed the Redis server's certificate (or \
             install that CA in the system's trust store), and check that the host in backend.redis_url is one \
             the certificate names"
                .to_owned(),
            clean(&e),
        ),
        Failure::Other(e) => (
            "redis_error",
            format!("Redis at {addr} ({shown}) did not answer PING with PONG: {}", clean(&e)),
            "check the server with redis-cli -h HOST -p PORT ping, and its log".to_owned(),
            clean(&e),
        ),
    };
    Finding::error(KEY, message, fix)
        .with_data(json!({"url": shown, "address": addr, "result": result, "error": error}))
}

/// Where the user information of `url` ends: the last `@` before the host. Without
/// a scheme, the whole text counts; `None` when there is no `@`.
fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // The last `@` anywhere: a password with an unescaped `/`, `?` or `#` still ends
    // up masked.
    let at = rest.rfind('@')?;
    Some((scheme, &rest[..at], &rest[at + 1..]))
}

/// `url` with its password (or a lone user part, which may be a misplaced password)
/// replaced by `****`: `redis://:****@127.0.0.1:6380`, `redis://user:****@h:6379/0`.
pub(super) fn masked_url(url: &str) -> String {
    match split_userinfo(url) {
        None => url.to_owned(),
        Some((scheme, userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:****@{host}"),
            None => format!("{scheme}****@{host}"),
        },
    }
}

/// Whether `url` has user information without a `:` (so no password is sent).
fn has_user_without_password(url: &str) -> bool {
    split_userinfo(url).is_some_and(|(_, userinfo, _)| !userinfo.is_empty() && !userinfo.contains(':'))
}

/// `text` with the password of `url` (as written, and decoded) replaced by `****`.
fn scrub(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    if let Some((_, userinfo, _)) = split_userinfo(url) {
        let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
        if !secret.is_empty() {
            out = out.replace(secret, "****");
            let decoded = percent_decode(secret);
            if !decoded.is_empty() {
                out = out.replace(&decoded, "****");
            }
        }
    }
    out
}

/// `%XX` escapes decoded (lossily); anything else as is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(masked_url("redis://:s3cret@127.0.0.1:6380"), "redis://:****@127.0.0.1:6380");
        assert_eq!(masked_url("redis://app:s3cret@h:6379/2"), "redis://app:****@h:6379/2");
        assert_eq!(masked_url("redis://s3cret@h:6379"), "redis://****@h:6379");
        assert_eq!(masked_url("redis://:pa/ss@w@h"), "redis://:****@h");
        assert_eq!(masked_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert!(has_user_without_password("redis://pw@h") && !has_user_without_password("redis://:pw@h"));
    }

    #[test]
    fn error_texts_are_scrubbed() {
        assert_eq!(scrub("bad p%40ss and p@ss", "redis://:p%40ss@h"), "bad **** and ****");
        assert_eq!(scrub("nothing here", "redis://h:1"), "nothing here");
    }

    #[test]
    fn client_errors_are_classified() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(classify(refused), Failure::Network("connection refused", _)));
        let wrong = RedisError::from((ErrorKind::AuthenticationFailed, "Password authentication failed"));
        assert!(matches!(classify(wrong), Failure::WrongPassword(_)));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(classify(timeout), Failure::Timeout));
    }
}
