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
//!    MCP program is looked up on `PATH`, and with `backend.kind = "redis"` Redis is
//!    sent `PING` at `backend.redis_url` (straight from the file, so even while this
//!    build refuses the Redis backend), its password masked wherever the URL is shown.
//!
//! No finding ever holds a secret or token: secrets are named by their fingerprint.
//! The one real connection of `doctor --url` is made by the binary, which owns the
//! client library, and appended to the same report.

mod checks;
mod redis;

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::file::ConfigFile;
use crate::config::{Profile, dev_key_path};
use crate::{Config, ConfigError, Env};

pub use checks::{MIN_HMAC_SECRET_BYTES, is_placeholder};

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
    /// Skip environment checks that reach outside this machine's files: JWKS fetches,
    /// MCP program lookups and the Redis probe.
    pub offline: bool,
}

/// Check the configuration at `path` (the development defaults when `None`) with
/// environment `env`.
pub async fn run(path: Option<&Path>, env: &Env, options: Options) -> Report {
    let mut report = Report::default();
    let dev_key_existed = dev_key_path(env).map(|p| p.exists()).unwrap_or(false);
    let raw = load_raw(path, env);
    if let Some(raw) = &raw {
        checks::check_sources(raw, env, &mut report);
        redis::check_redis(raw, options.offline, &mut report).await;
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
    checks::check_exposure(&config, &mut report);
    checks::check_origins_and_transport(&config, &mut report);
    checks::check_secrets(&config, raw.as_ref(), &mut report);
    checks::check_dev_key(&config, dev_key_existed, &mut report);
    if !options.offline {
        checks::fetch_jwks(&config, raw.as_ref(), &mut report).await;
    }
    checks::list_keys(&config, raw.as_ref(), options, &mut report);
    checks::list_agents(&config, env, options, &mut report);
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
fn load_raw(path: Option<&Path>, env: &Env) -> Option<ConfigFile> {
    crate::config::load_file(path, env).ok()
}

/// A configuration that does not load, with the fix for the common cases.
fn config_error(e: &ConfigError) -> Finding {
    let fix = if e.message.contains("unknown field") {
        format!("remove `{}` or correct its spelling; every key is listed in docs/configuration.md", e.key)
    } else if e.message.contains("is not set") && e.key.starts_with("auth.jwt") {
        "export it, or point secret_file at a file holding the secret".to_owned()
    } else if e.key == "backend.kind" {
        "use backend.kind = \"memory\" (one node) or \"redis\" (several nodes on one Redis)".to_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

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
