//! The checks of `agentgate doctor`, each adding [`Finding`]s to a [`Report`]: key
//! sources straight from the file, exposure, secret strength, the development key,
//! JWKS fetches, and the listing of keys, API keys, agents and MCP servers.

use std::path::{Path, PathBuf};

use agentgate_auth::{SigningKey, fingerprint};
use serde_json::json;

use super::{Finding, Options, Report, Severity};
use crate::config::file::{ConfigFile, JwtFile};
use crate::config::{AgentKind, DEV_ISSUER, Profile};
use crate::{Config, Env};

/// Shortest HMAC secret accepted without a finding: HS256 keys should carry at least
/// as many random bytes as the hash output (RFC 7518 section 3.2).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Secrets (compared case-insensitively, whole) that are well-known placeholders.
const PLACEHOLDER_SECRETS: &[&str] =
    &["secret", "changeme", "change-me", "password", "test", "test-token-12345", "example", "default", "dev"];

/// Parts that mark a secret as a placeholder wherever they appear in it.
const PLACEHOLDER_PARTS: &[&str] = &["changeme", "placeholder", "your-secret"];

/// The field of issuer `j` that holds its key, as a key path.
fn source_key(i: usize, j: Option<&JwtFile>) -> String {
    let field = match j {
        Some(j) if j.secret_env.is_some() => "secret_env",
        Some(j) if j.secret_file.is_some() => "secret_file",
        Some(j) if j.secret.is_some() => "secret",
        Some(j) if j.public_key_file.is_some() => "public_key_file",
        Some(j) if j.jwks_file.is_some() => "jwks_file",
        Some(j) if j.jwks_url.is_some() => "jwks_url",
        _ => return format!("auth.jwt[{i}]"),
    };
    format!("auth.jwt[{i}].{field}")
}

/// Secret variables and files, checked one by one before the whole configuration is
/// loaded (which stops at the first fault).
pub(super) fn check_sources(raw: &ConfigFile, env: &Env, report: &mut Report) {
    for (i, a) in raw.agents.iter().enumerate() {
        if let Some(var) = &a.secret_env
            && a.kind == "http"
        {
            check_secret_env(var, &format!("agents[{i}].secret_env"), env, report);
        }
    }
    for (i, j) in raw.auth.jwt.iter().enumerate() {
        let key = |field: &str| format!("auth.jwt[{i}].{field}");
        if let Some(var) = &j.secret_env {
            check_secret_env(var, &key("secret_env"), env, report);
        }
        if let Some(path) = &j.secret_file {
            check_secret_file(path, &key("secret_file"), report);
        }
        if let Some(path) = &j.private_key_file {
            check_private_file(path, &key("private_key_file"), report);
        }
        if j.secret.is_some() {
            report.push(Finding::warning(
                key("secret"),
                format!(
                    "issuer {:?} has its secret inline in the config file, where it gets copied, shared and committed",
                    j.name
                ),
                "move it to an environment variable (secret_env) or a file of mode 600 (secret_file); \
                 the production profile refuses inline secrets",
            ));
        }
    }
}

fn check_secret_env(var: &str, key: &str, env: &Env, report: &mut Report) {
    let elsewhere = if key.starts_with("auth.") { ", or point secret_file at a file holding the secret" } else { "" };
    match env.get(var) {
        None => report.push(Finding::error(
            key,
            format!("environment variable {var} is not set"),
            format!("export it{elsewhere}"),
        )),
        Some(v) if v.is_empty() => report.push(Finding::error(
            key,
            format!("environment variable {var} is set but empty (as an env file that lacks the value leaves it)"),
            format!("give {var} the secret's value where it is set{elsewhere}"),
        )),
        Some(v) if v.trim() != v => report.push(Finding::warning(
            key,
            format!(
                "the value of {var} (fingerprint {}) has leading or trailing whitespace, which is part of the \
                 secret: tokens signed with the trimmed value fail with signature_invalid",
                fingerprint(v.as_bytes())
            ),
            format!("remove the whitespace where {var} is set"),
        )),
        Some(_) => {}
    }
}

fn check_secret_file(path: &Path, key: &str, report: &mut Report) {
    let create = format!(
        "create it holding the secret (umask 077; openssl rand -hex 32 > {}), or correct the path",
        path.display()
    );
    match crate::config::read_secret_file(path) {
        Ok(_) => check_mode(path, key, report),
        Err(e) => report.push(Finding::error(key, e, create)),
    }
}

fn check_private_file(path: &Path, key: &str, report: &mut Report) {
    match std::fs::metadata(path) {
        Ok(_) => check_mode(path, key, report),
        Err(e) => report.push(Finding::error(
            key,
            format!("cannot read {}: {e}", path.display()),
            "correct the path, or remove private_key_file if this issuer does not mint tokens",
        )),
    }
}

/// A secret file that group or others can read.
fn check_mode(path: &Path, key: &str, report: &mut Report) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                report.push(
                    Finding::warning(
                        key,
                        format!("{} is readable by group or others (mode {mode:04o})", path.display()),
                        format!("chmod 600 {}", path.display()),
                    )
                    .with_data(json!({"path": path, "mode": format!("{mode:04o}")})),
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, key, report);
}

/// Whether `listen` (`host:port`) stays on this machine. A host name other than
/// `localhost` may resolve anywhere, so it counts as beyond loopback.
fn is_loopback_listen(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h).trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Who can reach the gateway, and what it then exposes.
pub(super) fn check_exposure(config: &Config, report: &mut Report) {
    let s = &config.server;
    let loopback = is_loopback_listen(&s.listen);
    match (s.profile, loopback) {
        (Profile::Production, false) if s.tls.is_some() => report.push(Finding::info(
            "server.listen",
            format!("listening on {} beyond loopback, with TLS (wss:// and https:// only)", s.listen),
        )),
        (Profile::Production, false) => report.push(Finding::warning(
            "server.listen",
            format!(
                "listening on {} beyond loopback without TLS: tokens would cross the network in clear text unless \
                 a TLS-terminating proxy is the only way in",
                s.listen
            ),
            "set server.tls_cert_file and server.tls_key_file, or put a TLS-terminating proxy (a load balancer, \
             nginx, Caddy) in front and keep this port private (list it in server.trusted_proxies)",
        )),
        (Profile::Development, false) => report.push(Finding::warning(
            "server.profile",
            format!(
                "the development profile (inline secrets, \"*\" origins, the development key, detailed \
                 rejection messages) is listening beyond loopback on {}",
                s.listen
            ),
            "set server.profile = \"production\" for anything other machines can reach, or listen on 127.0.0.1",
        )),
        (_, true) => report.push(Finding::info("server.listen", format!("listening on {} (loopback only)", s.listen))),
    }
    if s.profile == Profile::Production {
        for (i, o) in s.allowed_origins.iter().enumerate() {
            if o.to_ascii_lowercase().starts_with("http://") {
                report.push(Finding::warning(
                    format!("server.allowed_origins[{i}]"),
                    format!("{o:?} is a plain-http origin in production: such a page can be altered in transit"),
                    "serve the page over https and list its https:// origin",
                ));
            }
        }
    }
    let auth = &config.authenticator;
    if auth.issuers().is_empty() && auth.api_keys().is_empty() {
        report.push(Finding::error(
            "auth",
            "no JWT issuer and no API key is configured: every handshake will be refused",
            "add an [[auth.jwt]] issuer (secret_env, secret_file, public_key_file, jwks_file or jwks_url) \
             or [[auth.api_keys]]",
        ));
    }
}

/// Which browser pages may connect (`server.allowed_origins`), TLS, and proxies.
pub(super) fn check_origins_and_transport(config: &Config, report: &mut Report) {
    let s = &config.server;
    if s.allow_any_origin {
        report.push(Finding::warning(
            "server.allowed_origins",
            "\"*\" lets a page from any site connect with a user's credentials (allowed in development only)",
            "list the exact origins of your pages, e.g. allowed_origins = [\"https://app.example.com\"]",
        ));
    } else if s.allowed_origins.is_empty() {
        report.push(Finding::info(
            "server.allowed_origins",
            "empty (the default): clients that send no Origin (CLIs, servers, agentgate connect) pass, and every \
             browser page is refused origin_not_allowed; to allow a page, list its origin, e.g. \
             AGENTGATE_SERVER__ALLOWED_ORIGINS='[\"http://localhost:3000\"]' (a page opened from a file sends \
             Origin: null, which cannot be allowed: serve it over http)",
        ));
    } else {
        report.push(Finding::info(
            "server.allowed_origins",
            format!(
                "browser pages from {} may connect; others are refused origin_not_allowed",
                s.allowed_origins.join(", ")
            ),
        ));
    }
    if let Some(tls) = &s.tls {
        report.push(Finding::info(
            "server.tls_cert_file",
            format!(
                "TLS on server.listen with {} and {} (both read again on SIGHUP)",
                tls.cert_file.display(),
                tls.key_file.display()
            ),
        ));
        check_mode(&tls.key_file, "server.tls_key_file", report);
    }
    if !s.trusted_proxies.is_empty() {
        report.push(Finding::info(
            "server.trusted_proxies",
            "X-Forwarded-For from these peers names the client address (per-IP limits and logs use it)",
        ));
    }
}

/// The key path naming issuer `i` of the loaded configuration.
fn issuer_key(config: &Config, raw: Option<&ConfigFile>, i: usize) -> String {
    let configured = raw.map_or(0, |r| r.auth.jwt.len());
    if config.dev_key.is_some() && i >= configured {
        return "development key".to_owned();
    }
    source_key(i, raw.and_then(|r| r.auth.jwt.get(i)))
}

/// Whether a secret is a well-known placeholder.
pub fn is_placeholder(secret: &[u8]) -> bool {
    let lower = String::from_utf8_lossy(secret).trim().to_ascii_lowercase();
    PLACEHOLDER_SECRETS.contains(&lower.as_str()) || PLACEHOLDER_PARTS.iter().any(|p| lower.contains(p))
}

/// Short and placeholder HMAC secrets: errors in production, warnings in development.
pub(super) fn check_secrets(config: &Config, raw: Option<&ConfigFile>, report: &mut Report) {
    let production = config.server.profile == Profile::Production;
    let (severity, note) =
        if production { (Severity::Error, "") } else { (Severity::Warning, " (an error in the production profile)") };
    for (i, issuer) in config.authenticator.issuers().iter().enumerate() {
        let Some(SigningKey::Hmac(secret)) = &issuer.signing else { continue };
        let key = issuer_key(config, raw, i);
        let fp = fingerprint(secret);
        let data = json!({"issuer": issuer.name, "fingerprint": fp, "bytes": secret.len()});
        let short = secret.len() < MIN_HMAC_SECRET_BYTES;
        let length = format!("{} bytes; HMAC keys need at least {MIN_HMAC_SECRET_BYTES} random bytes", secret.len());
        let problem = match (is_placeholder(secret), short) {
            (true, true) => format!("looks like a placeholder that anyone can guess, and is {length}"),
            (true, false) => "looks like a placeholder that anyone can guess".to_owned(),
            (false, true) => format!("is {length}"),
            (false, false) => continue,
        };
        report.push(
            Finding::new(
                severity,
                key,
                format!("the HMAC secret of issuer {:?} (fingerprint {fp}) {problem}{note}", issuer.name),
                Some("replace it with a random secret: openssl rand -hex 32 (then mint new tokens)".to_owned()),
            )
            .with_data(data),
        );
    }
}

/// The development key, when the development issuer is in use.
pub(super) fn check_dev_key(config: &Config, existed: bool, report: &mut Report) {
    let Some(path) = &config.dev_key else { return };
    let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    let created = if existed { "" } else { " (created by this run)" };
    report.push(
        Finding::info(
            "development key",
            format!(
                "no [[auth.jwt]] issuer: the development issuer {DEV_ISSUER:?} verifies HS256 tokens with the key \
                 in {}{created}; agentgate token mint signs with the same file (its value is never printed)",
                shown.display()
            ),
        )
        .with_data(json!({"path": shown})),
    );
    check_mode(path, "development key", report);
}

/// Fetch every `jwks_url` once.
pub(super) async fn fetch_jwks(config: &Config, raw: Option<&ConfigFile>, report: &mut Report) {
    if config.jwks.is_empty() {
        return;
    }
    let client = crate::jwks::client();
    for source in &config.jwks {
        let i = config.authenticator.issuers().iter().position(|x| x.name == source.issuer.name).unwrap_or(0);
        let key = issuer_key(config, raw, i);
        match source.fetch(&client).await {
            Ok(n) => {
                let kids: Vec<String> =
                    source.issuer.keys().iter().map(|k| k.kid.clone().unwrap_or_else(|| "-".into())).collect();
                report.push(
                    Finding::info(
                        key,
                        format!(
                            "fetched the JWKS of issuer {:?} from {}: {n} usable key{} (kids {})",
                            source.issuer.name,
                            source.url,
                            if n == 1 { "" } else { "s" },
                            kids.join(", ")
                        ),
                    )
                    .with_data(json!({"issuer": source.issuer.name, "url": source.url, "keys": n, "kids": kids})),
                );
            }
            Err(e) => report.push(
                Finding::error(
                    key,
                    format!("cannot use the JWKS of issuer {:?} at {}: {e}", source.issuer.name, source.url),
                    "check the URL (curl -sS URL), DNS, firewalls and proxies, and that it serves {\"keys\":[...]}; \
                     until it loads, the gateway is not ready and this issuer's tokens are rejected key_unknown",
                )
                .with_data(json!({"issuer": source.issuer.name, "url": source.url, "error": e})),
            ),
        }
    }
}

/// Every key by issuer, `kid` and fingerprint, and every API key by name.
pub(super) fn list_keys(config: &Config, raw: Option<&ConfigFile>, options: Options, report: &mut Report) {
    let auth = &config.authenticator;
    for (i, issuer) in auth.issuers().iter().enumerate() {
        let key = issuer_key(config, raw, i);
        let keys = issuer.keys();
        if keys.is_empty() {
            if let Some(source) = config.jwks.iter().find(|s| s.issuer.name == issuer.name)
                && options.offline
            {
                report.push(Finding::info(
                    key,
                    format!("issuer {:?} takes its keys from {} (not fetched: --offline)", issuer.name, source.url),
                ));
            }
            continue;
        }
        let signs = if issuer.can_sign() {
            format!("; agentgate token mint --issuer {} signs with it", issuer.name)
        } else {
            String::new()
        };
        for k in keys.iter() {
            let algorithms: Vec<String> =
                issuer.algorithms.iter().filter(|a| k.admits(**a)).map(|a| format!("{a:?}")).collect();
            let kid = k.kid.as_deref().unwrap_or("-");
            report.push(
                Finding::info(
                    key.clone(),
                    format!(
                        "issuer {:?} key kid={kid} {} fingerprint={} algorithms={}{signs}",
                        issuer.name,
                        k.kind.as_str(),
                        k.fingerprint,
                        algorithms.join(",")
                    ),
                )
                .with_data(json!({
                    "issuer": issuer.name,
                    "kid": k.kid,
                    "kind": k.kind.as_str(),
                    "fingerprint": k.fingerprint,
                    "algorithms": algorithms,
                })),
            );
        }
    }
    for (i, k) in auth.api_keys().iter().enumerate() {
        let sha = hex::encode(&k.digest[..4]);
        report.push(
            Finding::info(
                format!("auth.api_keys[{i}]"),
                format!(
                    "API key {:?} for subject {:?} (scopes [{}]): sha256 {sha}...",
                    k.name,
                    k.subject,
                    k.scopes.join(" ")
                ),
            )
            .with_data(json!({"name": k.name, "subject": k.subject, "sha256_prefix": sha})),
        );
    }
}

/// Agents, and MCP servers with their programs looked up on `PATH`.
pub(super) fn list_agents(config: &Config, env: &Env, options: Options, report: &mut Report) {
    let agents: Vec<String> = config
        .agents
        .iter()
        .map(|a| match &a.kind {
            AgentKind::Demo => format!("{} (demo, scope {})", a.name, a.scope),
            AgentKind::Http(h) => format!(
                "{} (http upstream {}, bearer fingerprint {}, scope {})",
                a.name,
                shown_url(&h.url),
                fingerprint(h.secret.as_bytes()),
                a.scope
            ),
        })
        .collect();
    report.push(Finding::info("agents", agents.join(", ")));
    for (i, m) in config.mcp.servers.iter().enumerate() {
        let key = format!("mcp.servers[{i}]");
        let program = &m.command[0];
        let vars: Vec<&str> = m.env.keys().map(String::as_str).collect();
        // Arguments and variable values are not shown: either may hold a credential.
        let mut what = format!(
            "MCP server {:?} runs `{program}` with {} argument{} (variables: {})",
            m.name,
            m.command.len() - 1,
            if m.command.len() == 2 { "" } else { "s" },
            if vars.is_empty() { "PATH and HOME only".to_owned() } else { vars.join(", ") }
        );
        if options.offline {
            what.push_str("; not looked up (--offline)");
        } else {
            let path_var = m.env.get("PATH").or_else(|| env.get("PATH")).map(String::as_str).unwrap_or("");
            match find_program(program, path_var, m.cwd.as_deref()) {
                Some(found) => what.push_str(&format!("; found at {}", found.display())),
                None => report.push(Finding::warning(
                    format!("{key}.command"),
                    format!("the program `{program}` of MCP server {:?} is not found on PATH", m.name),
                    "install it, or give its absolute path as the first element of command",
                )),
            }
        }
        report.push(Finding::info(key, what));
    }
}

/// A URL without credentials: no user info, query or fragment.
fn shown_url(url: &str) -> String {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}/{path}")
        }
        None => base.to_owned(),
    }
}

/// Where `program` is: a path (relative to `cwd` when given) if it has a `/`, else
/// the first executable file of that name on `path_var`.
fn find_program(program: &str, path_var: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        let p = match cwd {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        };
        return is_executable(&p).then_some(p);
    }
    std::env::split_paths(path_var).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    meta.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised_case_insensitively() {
        for s in ["secret", "CHANGEME", "change-me", "Password", "test", "test-token-12345", "dev", " default "] {
            assert!(is_placeholder(s.as_bytes()), "{s}");
        }
        for s in ["my-changeme-value", "a PLACEHOLDER b", "your-secret-here"] {
            assert!(is_placeholder(s.as_bytes()), "{s}");
        }
        for s in ["Zq7wX9zK2mP4vL8nR3tY6uB1cD5fG0hJ", "testing-is-not-test", "developer"] {
            assert!(!is_placeholder(s.as_bytes()), "{s}");
        }
    }

    #[test]
    fn loopback_listen_addresses() {
        for l in ["127.0.0.1:8079", "[::1]:80", "localhost:8079", "127.0.0.2:0"] {
            assert!(is_loopback_listen(l), "{l}");
        }
        for l in ["0.0.0.0:8079", "[::]:8079", "10.0.0.5:80", "gateway.internal:8079"] {
            assert!(!is_loopback_listen(l), "{l}");
        }
    }

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(shown_url("https://u:pw@agents.internal:9000/run?key=x#f"), "https://agents.internal:9000/run");
        assert_eq!(shown_url("redis://:pw@127.0.0.1:6379"), "redis://127.0.0.1:6379/");
    }
}
