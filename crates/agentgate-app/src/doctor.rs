//! `agentgate doctor`: load, validate, then environment checks (STYLE.md section 4).
//!
//! [`run`] turns a configuration into a [`Report`] of [`Finding`]s, each with a
//! severity, the key path it concerns, what is wrong and the fix:
//!
//! 1. Key sources, straight from the file (after environment overrides), so that every
//!    missing or empty secret variable or file is named at once rather than the first
//!    one only; secret files readable by group or others.
//! 2. [`Config::load`]: a configuration that does not load is one error naming the
//!    key, and the checks stop there.
//! 3. What the loaded configuration means: short and placeholder HMAC secrets, the
//!    production profile's network exposure, and every key by `kid` and fingerprint
//!    (so two environments can be compared without revealing a secret), API keys,
//!    agents and MCP servers.
//! 4. Environment checks, skipped with `offline`: every `jwks_url` is fetched, every
//!    MCP program is looked up on `PATH`.
//!
//! No finding ever holds a secret or token: secrets are named by their fingerprint.
//! The one real connection of `doctor --url` is made by the binary, which owns the
//! client library, and appended to the same report.

use std::fmt;
use std::path::{Path, PathBuf};

use agentgate_auth::{SigningKey, fingerprint};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::file::{ConfigFile, JwtFile};
use crate::config::{AgentKind, DEV_ISSUER, Profile, dev_key_path};
use crate::{Config, ConfigError, Env};

/// Shortest HMAC secret accepted without a finding: HS256 keys should carry at least
/// as many random bytes as the hash output (RFC 7518 section 3.2).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Secrets (compared case-insensitively, whole) that are well-known placeholders.
const PLACEHOLDER_SECRETS: &[&str] =
    &["secret", "changeme", "change-me", "password", "test", "test-token-12345", "example", "default", "dev"];

/// Parts that mark a secret as a placeholder wherever they appear in it.
const PLACEHOLDER_PARTS: &[&str] = &["changeme", "placeholder", "your-secret"];

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The gateway will not start, or will refuse what it should accept: exit 1.
    Error,
    /// It works, but is risky or likely not what was meant.
    Warning,
    /// A fact worth seeing (key fingerprints, a successful check).
    Info,
}

impl Severity {
    /// `error`, `warning` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// The key path it concerns (`auth.jwt[0].secret_env`, `server.listen`), or the
    /// flag or variable (`--url`, `AGENTGATE_TOKEN`).
    pub key: String,
    /// What is the case, or what is wrong.
    pub message: String,
    /// How to fix it (errors and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Machine-readable details (fingerprints, kids, status codes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl Finding {
    /// An error with its fix.
    pub fn error(key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(Severity::Error, key, message, Some(fix.into()))
    }

    /// A warning with its fix.
    pub fn warning(key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(Severity::Warning, key, message, Some(fix.into()))
    }

    /// A fact.
    pub fn info(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Info, key, message, None)
    }

    fn new(severity: Severity, key: impl Into<String>, message: impl Into<String>, fix: Option<String>) -> Self {
        Self { severity, key: key.into(), message: message.into(), fix, data: None }
    }

    /// Attach machine-readable details.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// One line: `error  auth.jwt[0].secret_env: ... is not set. Fix: export it, ...`
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<6} {}: {}", self.severity.as_str(), self.key, sentence(&self.message))?;
        if let Some(fix) = &self.fix {
            write!(f, " Fix: {}", sentence(fix))?;
        }
        Ok(())
    }
}

/// `s` ending with a full stop, on one line.
fn sentence(s: &str) -> String {
    let mut s: String = s.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    s
}

/// Everything doctor found, and the configuration when it loaded.
#[derive(Debug, Default)]
pub struct Report {
    /// In the order checked.
    pub findings: Vec<Finding>,
    /// The loaded configuration, when it loaded.
    pub config: Option<Config>,
}

impl Report {
    /// Add a finding.
    pub fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    /// How many findings have `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == severity).count()
    }

    /// Whether any finding is an error (then doctor exits 1).
    pub fn has_errors(&self) -> bool {
        self.count(Severity::Error) > 0
    }

    /// The findings, errors first, then warnings, then facts (each group in the order
    /// checked).
    pub fn sorted(&self) -> Vec<&Finding> {
        let mut v: Vec<&Finding> = self.findings.iter().collect();
        v.sort_by_key(|f| f.severity);
        v
    }

    /// `1 error, 2 warnings, 7 info`.
    pub fn summary(&self) -> String {
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "{}, {}, {}",
            plural(self.count(Severity::Error), "error", "errors"),
            plural(self.count(Severity::Warning), "warning", "warnings"),
            plural(self.count(Severity::Info), "info", "info")
        )
    }

    /// The report as JSON: `{"ok", "summary": {"errors","warnings","info"},
    /// "findings": [...]}`, findings sorted as [`Report::sorted`].
    pub fn to_json(&self) -> Value {
        json!({
            "ok": !self.has_errors(),
            "summary": {
                "errors": self.count(Severity::Error),
                "warnings": self.count(Severity::Warning),
                "info": self.count(Severity::Info),
            },
            "findings": self.sorted(),
        })
    }
}

/// What [`run`] checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Skip environment checks that reach outside this machine's files: JWKS fetches
    /// and MCP program lookups.
    pub offline: bool,
}

/// Check the configuration at `path` (the development defaults when `None`) with
/// environment `env`.
pub async fn run(path: Option<&Path>, env: &Env, options: Options) -> Report {
    let mut report = Report::default();
    let dev_key_existed = dev_key_path(env).map(|p| p.exists()).unwrap_or(false);
    let raw = load_raw(path, env);
    if let Some(raw) = &raw {
        check_sources(raw, env, &mut report);
    }
    let config = match Config::load(path, env) {
        Ok(c) => c,
        Err(e) => {
            // A source finding already names this key with a fix; do not repeat it.
            if !report.findings.iter().any(|f| f.severity == Severity::Error && f.key == e.key) {
                report.push(config_error(&e));
            }
            return report;
        }
    };
    let source = match path {
        Some(p) => format!("{} loads", p.display()),
        None => "no --config: the development defaults load".to_owned(),
    };
    report.push(Finding::info("config", format!("{source} (profile {})", profile_name(config.server.profile))));
    check_exposure(&config, &mut report);
    check_secrets(&config, raw.as_ref(), &mut report);
    check_dev_key(&config, dev_key_existed, &mut report);
    if !options.offline {
        fetch_jwks(&config, raw.as_ref(), &mut report).await;
    }
    list_keys(&config, raw.as_ref(), options, &mut report);
    list_agents(&config, env, options, &mut report);
    report.config = Some(config);
    report
}

fn profile_name(p: Profile) -> &'static str {
    match p {
        Profile::Development => "development",
        Profile::Production => "production",
    }
}

/// The file with the `AGENTGATE_<SECTION>__<KEY>` overrides applied, as
/// [`Config::load`] sees it; `None` when it does not parse (then `Config::load`
/// reports why).
// The override rules repeat those of `config::apply_env_overrides`, which is private
// to that module; sharing one function would keep them from drifting.
fn load_raw(path: Option<&Path>, env: &Env) -> Option<ConfigFile> {
    let mut table = match path {
        Some(p) => toml::from_str::<toml::Table>(&std::fs::read_to_string(p).ok()?).ok()?,
        None => toml::Table::new(),
    };
    for (var, value) in env {
        let Some((section, key)) = var.strip_prefix("AGENTGATE_").and_then(|r| r.split_once("__")) else {
            continue;
        };
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = table.entry(section.to_ascii_lowercase()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        entry.as_table_mut()?.insert(key.to_ascii_lowercase(), parsed);
    }
    toml::Value::Table(table).try_into().ok()
}

/// A configuration that does not load, with the fix for the common cases.
fn config_error(e: &ConfigError) -> Finding {
    let fix = if e.message.contains("unknown field") {
        format!("remove `{}` or correct its spelling; every key is listed in CONFIG.md", e.key)
    } else if e.message.contains("is not set") && e.key.ends_with("secret_env") {
        "export it, or point secret_file at a file holding the secret".to_owned()
    } else if e.key == "backend.kind" {
        "use backend.kind = \"memory\" (a single node) until this build has the Redis backend".to_owned()
    } else if e.key.starts_with("AGENTGATE_") {
        format!("unset {} or rename it to AGENTGATE_<SECTION>__<KEY> of an existing key", e.key)
    } else {
        format!(
            "correct `{}` in the config file (or the AGENTGATE_* variable that sets it), then run agentgate doctor again",
            e.key
        )
    };
    Finding::error(e.key.clone(), format!("the configuration does not load: {}", e.message), fix)
}

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
fn check_sources(raw: &ConfigFile, env: &Env, report: &mut Report) {
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
fn check_exposure(config: &Config, report: &mut Report) {
    let s = &config.server;
    let loopback = is_loopback_listen(&s.listen);
    match (s.profile, loopback) {
        (Profile::Production, false) => report.push(Finding::warning(
            "server.listen",
            format!(
                "listening on {} beyond loopback: agentgate does not terminate TLS, so tokens would cross the \
                 network in clear text unless a TLS-terminating proxy is the only way in",
                s.listen
            ),
            "put a TLS-terminating proxy (a load balancer, nginx, Caddy) in front and keep this port private, \
             or listen on 127.0.0.1 behind a proxy on the same host",
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
fn check_secrets(config: &Config, raw: Option<&ConfigFile>, report: &mut Report) {
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
fn check_dev_key(config: &Config, existed: bool, report: &mut Report) {
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
async fn fetch_jwks(config: &Config, raw: Option<&ConfigFile>, report: &mut Report) {
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
fn list_keys(config: &Config, raw: Option<&ConfigFile>, options: Options, report: &mut Report) {
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
fn list_agents(config: &Config, env: &Env, options: Options, report: &mut Report) {
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

    #[test]
    fn a_finding_is_one_line_with_its_fix() {
        let f = Finding::error(
            "auth.jwt[0].secret_env",
            "environment variable X is not set",
            "export it, or point secret_file at a file holding the secret",
        );
        assert_eq!(
            f.to_string(),
            "error  auth.jwt[0].secret_env: environment variable X is not set. Fix: export it, or point \
             secret_file at a file holding the secret."
        );
        assert_eq!(Finding::info("k", "a\nb").to_string(), "info   k: a b.");
    }

    #[test]
    fn summary_counts_each_severity() {
        let mut r = Report::default();
        r.push(Finding::error("a", "m", "f"));
        r.push(Finding::info("b", "m"));
        r.push(Finding::warning("c", "m", "f"));
        r.push(Finding::info("d", "m"));
        assert_eq!(r.summary(), "1 error, 1 warning, 2 info");
        assert!(r.has_errors());
        let order: Vec<&str> = r.sorted().iter().map(|f| f.key.as_str()).collect();
        assert_eq!(order, ["a", "c", "b", "d"]);
        assert_eq!(r.to_json()["summary"]["errors"], 1);
    }

    #[test]
    fn raw_sources_see_environment_overrides() {
        let env: Env =
            [("AGENTGATE_AUTH__JWT".to_owned(), r#"[{name="a", algorithms=["HS256"], secret_env="S"}]"#.to_owned())]
                .into_iter()
                .collect();
        let raw = load_raw(None, &env).expect("parses");
        assert_eq!(raw.auth.jwt[0].secret_env.as_deref(), Some("S"));
    }
}
