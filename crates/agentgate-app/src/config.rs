//! Configuration: defaults, then the TOML file, then `AGENTGATE_<SECTION>__<KEY>`
//! environment overrides; then validation into a typed [`Config`]. Any fault is a
//! [`ConfigError`] naming the key, and the binary exits 64.
//!
//! The environment is passed in as a map ([`Env`]), so tests never touch the process
//! environment.

mod dev_key;
pub(crate) mod file;
mod transport;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentgate_auth::{ApiKey, Authenticator, Issuer, KeyKind, Policy, SigningKey, VerifyKey, parse_alg, parse_jwks};

pub use dev_key::{DEV_ISSUER, agentgate_home, dev_key_path, load_or_create_dev_key};
pub use transport::read_ca_file;

use crate::jwks::JwksSource;
use file::{ConfigFile, JwtFile};

/// The process environment, as a map.
pub type Env = BTreeMap<String, String>;

/// A configuration fault, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config error at `{key}`: {message}")]
pub struct ConfigError {
    /// The key path (`server.listen`, `auth.jwt[0].secret_env`, an environment
    /// variable name, or the file).
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// `server.profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Detailed messages, inline secrets and `*` origins allowed, dev key allowed.
    Development,
    /// Refuses inline secrets, `*` origins and dev keys.
    Production,
}

/// `server.failure_mode` (PROTOCOL.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Close frames for requests with `Origin`, HTTP otherwise.
    Auto,
    /// Always HTTP responses.
    Http,
    /// Always upgrade and close.
    Close,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port` to bind.
    pub listen: String,
    /// Where to write the bound address.
    pub addr_file: Option<PathBuf>,
    /// The profile.
    pub profile: Profile,
    /// Allowed `Origin` values (exact match).
    pub allowed_origins: Vec<String>,
    /// `"*"` was listed.
    pub allow_any_origin: bool,
    /// How pre-upgrade rejections are delivered.
    pub failure_mode: FailureMode,
    /// Largest accepted frame.
    pub max_message_bytes: usize,
    /// Time allowed for closes on shutdown.
    pub shutdown_grace: Duration,
    /// Separate metrics listener.
    pub metrics_listen: Option<String>,
    /// A frame that cannot be written for this long closes the connection
    /// `slow_consumer` (`server.write_timeout_s`).
    pub write_timeout: Duration,
    /// Interval of server pings (extension key `server.heartbeat_ms`).
    pub heartbeat: Duration,
    /// Time to send the HTTP request head (extension key `server.handshake_timeout_ms`).
    pub handshake_timeout: Duration,
    /// TLS termination on `listen` (`server.tls_cert_file`, `server.tls_key_file`).
    pub tls: Option<crate::tls::TlsConfig>,
    /// Peers whose `X-Forwarded-For` names the client (`server.trusted_proxies`).
    pub trusted_proxies: crate::client_ip::TrustedProxies,
}

/// `[auth]` settings other than the credential sources.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Accept `?access_token=`.
    pub query_token: bool,
    /// Accept first-message auth.
    pub first_message: bool,
    /// Deadline for the first message.
    pub first_message_timeout: Duration,
    /// Clock skew allowance.
    pub leeway_s: i64,
    /// When `auth.expiring` is sent.
    pub expiry_warning_s: i64,
    /// Ticket lifetime.
    pub ticket_ttl_s: u64,
}

/// `[sessions]`.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// How long a detached session lives.
    pub resume_window: Duration,
    /// Events kept per session.
    pub buffer_events: usize,
    /// Bytes of event frame JSON kept per session (always at least the newest event).
    pub buffer_bytes: usize,
    /// Memory backend: buffered event bytes of the whole node; past it the oldest
    /// detached sessions are dropped.
    pub memory_limit_bytes: usize,
}

/// `[runs]`.
#[derive(Debug, Clone)]
pub struct RunsConfig {
    /// How long a finished run is known.
    pub retention: Duration,
    /// Finished runs kept per principal (the oldest are forgotten first).
    pub retained_per_principal: usize,
    /// Dead-node run cleanup bound.
    pub orphan_timeout: Duration,
}

/// `backend.kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// One node, state in memory.
    Memory,
    /// Any number of nodes sharing one Redis.
    Redis,
}

/// `[backend]`.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Which backend.
    pub kind: BackendKind,
    /// `redis://` or `rediss://` URL (may hold a password: never log it; see
    /// [`BackendConfig::redis_url_redacted`]).
    pub redis_url: String,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
    /// Events held per node while the backend is unreachable.
    pub outage_buffer_events: usize,
    /// PEM certificates that verify a `rediss://` server instead of the system's roots.
    pub redis_ca_file: Option<PathBuf>,
}

impl BackendConfig {
    /// The Redis URL with any password replaced by `***`, for logs and messages.
    pub fn redis_url_redacted(&self) -> String {
        redact_url(&self.redis_url)
    }
}

/// `scheme://user:password@host` -> `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let user = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Handshakes per IP per second (burst twice this).
    pub handshakes_per_ip_per_s: u32,
    /// Concurrent connections per IP.
    pub connections_per_ip: usize,
    /// Concurrent connections per principal.
    pub connections_per_principal: usize,
    /// Client messages per second per connection (burst twice this).
    pub messages_per_s: u32,
    /// Concurrent runs per principal.
    pub runs_per_principal: usize,
    /// Sessions (attached or detached) per principal.
    pub sessions_per_principal: usize,
    /// Live tickets per principal.
    pub tickets_per_principal: usize,
}

/// One `[[agents]]` entry.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Name used in `run.start`.
    pub name: String,
    /// What runs it.
    pub kind: AgentKind,
    /// Scope a principal needs to run it.
    pub scope: String,
}

/// Agent implementations.
#[derive(Debug, Clone)]
pub enum AgentKind {
    /// The built-in demo agent.
    Demo,
    /// An HTTP upstream (PROTOCOL.md section 11).
    Http(crate::agents::http::HttpAgent),
}

/// One `[[mcp.servers]]` entry.
#[derive(Debug, Clone)]
pub struct McpServerConfig {
    /// Name in `/v1/mcp/{name}`.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The only variables passed to the process, besides `PATH` and `HOME`.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
}

/// `[mcp]`.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// Hosted servers.
    pub servers: Vec<McpServerConfig>,
    /// Most processes at once on this node.
    pub max_processes: usize,
    /// Most processes at once per principal.
    pub max_processes_per_principal: usize,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// The credential verifier built from `[[auth.jwt]]` and `[[auth.api_keys]]`.
    pub authenticator: Arc<Authenticator>,
    /// `[sessions]`.
    pub sessions: SessionsConfig,
    /// `[runs]`.
    pub runs: RunsConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[[agents]]`, always including `demo`.
    pub agents: Vec<AgentConfig>,
    /// The development key file, when the `local` development issuer is in use.
    pub dev_key: Option<PathBuf>,
    /// Issuers whose keys come from a `jwks_url`.
    pub jwks: Vec<Arc<JwksSource>>,
    /// `[mcp]`.
    pub mcp: McpConfig,
    /// `[backend]`.
    pub backend: BackendConfig,
}

impl Config {
    /// Load `path` (or the development defaults when `None`), apply environment
    /// overrides from `env`, and validate.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key at fault.
    pub fn load(path: Option<&Path>, env: &Env) -> Result<Self, ConfigError> {
        Self::from_file(load_file(path, env)?, env)
    }

    fn from_file(f: ConfigFile, env: &Env) -> Result<Self, ConfigError> {
        let profile = match f.server.profile.as_str() {
            "development" => Profile::Development,
            "production" => Profile::Production,
            other => {
                return Err(ConfigError::new(
                    "server.profile",
                    format!("{other:?} is not a profile; use \"development\" or \"production\""),
                ));
            }
        };
        let failure_mode = match f.server.failure_mode.as_str() {
            "auto" => FailureMode::Auto,
            "http" => FailureMode::Http,
            "close" => FailureMode::Close,
            other => {
                return Err(ConfigError::new(
                    "server.failure_mode",
                    format!("{other:?} is not a failure mode; use \"auto\", \"http\" or \"close\""),
                ));
            }
        };
        let allow_any_origin = f.server.allowed_origins.iter().any(|o| o == "*");
        if allow_any_origin && profile == Profile::Production {
            return Err(ConfigError::new(
                "server.allowed_origins",
                "\"*\" is refused in the production profile; list the exact origins of your pages",
            ));
        }
        for (i, o) in f.server.allowed_origins.iter().enumerate() {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(ConfigError::new(
                    format!("server.allowed_origins[{i}]"),
                    format!("{o:?} is not an origin; write scheme://host[:port], e.g. \"https://app.example.com\""),
                ));
            }
        }
        if f.server.listen.trim().is_empty() {
            return Err(ConfigError::new("server.listen", "empty address; write host:port"));
        }
        positive(f.server.max_message_bytes, "server.max_message_bytes")?;
        positive(f.server.heartbeat_ms, "server.heartbeat_ms")?;
        positive(f.server.handshake_timeout_ms, "server.handshake_timeout_ms")?;
        positive(f.sessions.buffer_events, "sessions.buffer_events")?;
        positive(f.server.write_timeout_s, "server.write_timeout_s")?;
        positive(f.sessions.buffer_bytes, "sessions.buffer_bytes")?;
        positive(f.sessions.memory_limit_bytes, "sessions.memory_limit_bytes")?;
        positive(f.runs.retained_per_principal, "runs.retained_per_principal")?;
        positive(f.limits.sessions_per_principal, "limits.sessions_per_principal")?;
        positive(f.limits.tickets_per_principal, "limits.tickets_per_principal")?;
        positive(f.limits.messages_per_s, "limits.messages_per_s")?;
        positive(f.limits.runs_per_principal, "limits.runs_per_principal")?;
        positive(f.limits.handshakes_per_ip_per_s, "limits.handshakes_per_ip_per_s")?;
        positive(f.limits.connections_per_ip, "limits.connections_per_ip")?;
        positive(f.limits.connections_per_principal, "limits.connections_per_principal")?;
        positive(f.auth.first_message_timeout_ms, "auth.first_message_timeout_ms")?;
        positive(f.auth.ticket_ttl_s, "auth.ticket_ttl_s")?;
        let backend_kind = match f.backend.kind.as_str() {
            "memory" => BackendKind::Memory,
            "redis" => {
                if !(f.backend.redis_url.starts_with("redis://") || f.backend.redis_url.starts_with("rediss://")) {
                    return Err(ConfigError::new(
                        "backend.redis_url",
                        format!(
                            "{:?} is not a Redis URL; use redis://[user:password@]host:port[/db] or rediss:// for TLS",
                            redact_url(&f.backend.redis_url)
                        ),
                    ));
                }
                BackendKind::Redis
            }
            other => {
                return Err(ConfigError::new(
                    "backend.kind",
                    format!("{other:?} is not a backend; use \"memory\" or \"redis\""),
                ));
            }
        };
        positive(f.backend.outage_buffer_events, "backend.outage_buffer_events")?;
        positive(f.runs.orphan_timeout_s, "runs.orphan_timeout_s")?;
        if f.backend.redis_prefix.is_empty() {
            return Err(ConfigError::new("backend.redis_prefix", "must not be empty"));
        }
        let mut mcp_servers: Vec<McpServerConfig> = Vec::new();
        for (i, m) in f.mcp.servers.iter().enumerate() {
            let key = format!("mcp.servers[{i}]");
            if m.name.is_empty() || m.command.is_empty() || m.command[0].is_empty() {
                return Err(ConfigError::new(key, "`name` and `command` must not be empty"));
            }
            if !m.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    "use letters, digits, `-`, `_` and `.` only (it is a URL path segment)",
                ));
            }
            if mcp_servers.iter().any(|s| s.name == m.name) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("MCP server {:?} is listed twice", m.name),
                ));
            }
            mcp_servers.push(McpServerConfig {
                name: m.name.clone(),
                command: m.command.clone(),
                env: m.env.clone(),
                cwd: m.cwd.clone(),
            });
        }
        positive(f.mcp.max_processes, "mcp.max_processes")?;
        positive(f.mcp.max_processes_per_principal, "mcp.max_processes_per_principal")?;

        let mut agents = vec![AgentConfig { name: "demo".into(), kind: AgentKind::Demo, scope: "agents:run".into() }];
        for (i, a) in f.agents.iter().enumerate() {
            let key = format!("agents[{i}]");
            if a.name.is_empty() {
                return Err(ConfigError::new(format!("{key}.name"), "must not be empty"));
            }
            let kind = match a.kind.as_str() {
                "demo" => {
                    if a.url.is_some() || a.secret_env.is_some() || a.timeout_s.is_some() {
                        return Err(ConfigError::new(
                            key.clone(),
                            "`url`, `secret_env` and `timeout_s` apply only to agents of kind \"http\"",
                        ));
                    }
                    AgentKind::Demo
                }
                "http" => {
                    let url = a.url.clone().ok_or_else(|| {
                        ConfigError::new(format!("{key}.url"), "an http agent needs the `url` runs are POSTed to")
                    })?;
                    let lower = url.to_ascii_lowercase();
                    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                        return Err(ConfigError::new(format!("{key}.url"), format!("{url:?} is not an http(s) URL")));
                    }
                    let var = a.secret_env.clone().ok_or_else(|| {
                        ConfigError::new(
                            format!("{key}.secret_env"),
                            "an http agent needs `secret_env`, the variable holding the bearer sent upstream",
                        )
                    })?;
                    let secret = match env.get(&var) {
                        Some(v) if !v.is_empty() => v.clone(),
                        Some(_) => {
                            return Err(ConfigError::new(
                                format!("{key}.secret_env"),
                                format!("environment variable {var} is empty"),
                            ));
                        }
                        None => {
                            return Err(ConfigError::new(
                                format!("{key}.secret_env"),
                                format!("environment variable {var} is not set"),
                            ));
                        }
                    };
                    let timeout_s = a.timeout_s.unwrap_or(30);
                    positive(timeout_s, &format!("{key}.timeout_s"))?;
                    AgentKind::Http(crate::agents::http::HttpAgent {
                        url,
                        secret,
                        timeout: Duration::from_secs(timeout_s),
                    })
                }
                other => {
                    return Err(ConfigError::new(
                        format!("{key}.kind"),
                        format!("{other:?} is not an agent kind; use \"demo\" or \"http\""),
                    ));
                }
            };
            let entry = AgentConfig { name: a.name.clone(), kind, scope: a.scope.clone() };
            if let Some(existing) = agents.iter_mut().find(|x| x.name == a.name) {
                if existing.name != "demo" {
                    return Err(ConfigError::new(format!("{key}.name"), format!("agent {:?} is listed twice", a.name)));
                }
                *existing = entry;
            } else {
                agents.push(entry);
            }
        }

        let mut issuers = Vec::new();
        let mut jwks = Vec::new();
        let mut dev_key = None;
        for (i, j) in f.auth.jwt.iter().enumerate() {
            let issuer = Arc::new(build_issuer(j, i, profile, env)?);
            if let Some(url) = &j.jwks_url {
                jwks.push(Arc::new(JwksSource::new(
                    Arc::clone(&issuer),
                    url.clone(),
                    Duration::from_secs(j.jwks_min_refetch_s),
                    Duration::from_secs(j.jwks_refresh_s),
                )));
            }
            issuers.push(issuer);
        }
        let mut names = std::collections::HashSet::new();
        for (i, j) in f.auth.jwt.iter().enumerate() {
            if !names.insert(j.name.as_str()) {
                return Err(ConfigError::new(
                    format!("auth.jwt[{i}].name"),
                    format!("issuer {:?} is listed twice", j.name),
                ));
            }
        }
        if issuers.is_empty() && profile == Profile::Development {
            let path = dev_key_path(env).map_err(|m| ConfigError::new("AGENTGATE_HOME", m))?;
            let secret = load_or_create_dev_key(&path).map_err(|m| ConfigError::new("AGENTGATE_HOME", m))?;
            let key =
                VerifyKey::from_secret(&secret, None).map_err(|e| ConfigError::new("AGENTGATE_HOME", e.to_string()))?;
            let mut issuer = Issuer::new(DEV_ISSUER, vec![agentgate_auth::Algorithm::HS256], vec![key]);
            issuer.signing = Some(SigningKey::Hmac(secret));
            issuers.push(Arc::new(issuer));
            dev_key = Some(path);
        }

        let mut api_keys = Vec::new();
        for (i, k) in f.auth.api_keys.iter().enumerate() {
            let key = format!("auth.api_keys[{i}]");
            let digest =
                hex::decode(k.sha256.trim()).ok().and_then(|d| <[u8; 32]>::try_from(d).ok()).ok_or_else(|| {
                    ConfigError::new(
                        format!("{key}.sha256"),
                        "not a SHA-256 hex digest (64 hex digits); compute it with `printf %s \"$KEY\" | sha256sum`",
                    )
                })?;
            if k.name.is_empty() || k.subject.is_empty() {
                return Err(ConfigError::new(key, "`name` and `subject` must not be empty"));
            }
            api_keys.push(ApiKey {
                name: k.name.clone(),
                digest,
                subject: k.subject.clone(),
                tenant: k.tenant.clone(),
                scopes: k.scopes.clone(),
            });
        }

        let tls = transport::tls(&f.server)?;
        let trusted_proxies = transport::trusted_proxies(&f.server)?;
        transport::redis(&f.backend)?;
        let policy = Policy {
            leeway_s: i64::try_from(f.auth.leeway_s).unwrap_or(i64::MAX),
            anonymous_roles: f.auth.anonymous_roles.clone(),
        };
        Ok(Self {
            server: ServerConfig {
                listen: f.server.listen,
                addr_file: f.server.addr_file,
                profile,
                allowed_origins: f.server.allowed_origins,
                allow_any_origin,
                failure_mode,
                max_message_bytes: usize::try_from(f.server.max_message_bytes).unwrap_or(usize::MAX),
                shutdown_grace: Duration::from_secs(f.server.shutdown_grace_s),
                metrics_listen: f.server.metrics_listen,
                write_timeout: Duration::from_secs(f.server.write_timeout_s),
                heartbeat: Duration::from_millis(f.server.heartbeat_ms),
                handshake_timeout: Duration::from_millis(f.server.handshake_timeout_ms),
                tls,
                trusted_proxies,
            },
            auth: AuthConfig {
                query_token: f.auth.query_token,
                first_message: f.auth.first_message,
                first_message_timeout: Duration::from_millis(f.auth.first_message_timeout_ms),
                leeway_s: policy.leeway_s,
                expiry_warning_s: i64::try_from(f.auth.expiry_warning_s).unwrap_or(i64::MAX),
                ticket_ttl_s: f.auth.ticket_ttl_s,
            },
            authenticator: Arc::new(Authenticator::new(issuers, api_keys, policy)),
            sessions: SessionsConfig {
                resume_window: Duration::from_secs(f.sessions.resume_window_s),
                buffer_events: usize::try_from(f.sessions.buffer_events).unwrap_or(usize::MAX),
                buffer_bytes: usize::try_from(f.sessions.buffer_bytes).unwrap_or(usize::MAX),
                memory_limit_bytes: usize::try_from(f.sessions.memory_limit_bytes).unwrap_or(usize::MAX),
            },
            runs: RunsConfig {
                retention: Duration::from_secs(f.runs.retention_s),
                retained_per_principal: usize::try_from(f.runs.retained_per_principal).unwrap_or(usize::MAX),
                orphan_timeout: Duration::from_secs(f.runs.orphan_timeout_s),
            },
            limits: LimitsConfig {
                handshakes_per_ip_per_s: clamp_u32(f.limits.handshakes_per_ip_per_s),
                connections_per_ip: usize::try_from(f.limits.connections_per_ip).unwrap_or(usize::MAX),
                connections_per_principal: usize::try_from(f.limits.connections_per_principal).unwrap_or(usize::MAX),
                messages_per_s: clamp_u32(f.limits.messages_per_s),
                runs_per_principal: usize::try_from(f.limits.runs_per_principal).unwrap_or(usize::MAX),
                sessions_per_principal: usize::try_from(f.limits.sessions_per_principal).unwrap_or(usize::MAX),
                tickets_per_principal: usize::try_from(f.limits.tickets_per_principal).unwrap_or(usize::MAX),
            },
            backend: BackendConfig {
                kind: backend_kind,
                redis_url: f.backend.redis_url,
                redis_prefix: f.backend.redis_prefix,
                outage_buffer_events: usize::try_from(f.backend.outage_buffer_events).unwrap_or(usize::MAX),
                redis_ca_file: f.backend.redis_ca_file,
            },
            agents,
            dev_key,
            jwks,
            mcp: McpConfig {
                servers: mcp_servers,
                max_processes: usize::try_from(f.mcp.max_processes).unwrap_or(usize::MAX),
                max_processes_per_principal: usize::try_from(f.mcp.max_processes_per_principal).unwrap_or(usize::MAX),
            },
        })
    }

    /// The agent called `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// Whether `origin` may connect.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.server.allow_any_origin || self.server.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// The file with the `AGENTGATE_<SECTION>__<KEY>` overrides applied, deserialised but
/// not yet validated: what `doctor` inspects before [`Config::load`] would stop at the
/// first fault.
///
/// # Errors
/// The file cannot be read or parsed, an override names no key, or a value has the
/// wrong type.
pub(crate) fn load_file(path: Option<&Path>, env: &Env) -> Result<ConfigFile, ConfigError> {
    let mut table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError::new(p.display().to_string(), format!("cannot read the config file: {e}")))?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError::new(p.display().to_string(), format!("not valid TOML: {e}")))?
        }
        None => toml::Table::new(),
    };
    let overridden = apply_env_overrides(&mut table, env)?;
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let from_env = overridden
            .iter()
            .find(|(path, _)| {
                key == *path || key.starts_with(&format!("{path}.")) || key.starts_with(&format!("{path}["))
            })
            .map(|(_, var)| format!(" (set by environment variable {var})"))
            .unwrap_or_default();
        ConfigError::new(key, format!("{}{from_env}", e.inner()))
    })
}

fn positive(v: u64, key: &str) -> Result<(), ConfigError> {
    if v == 0 { Err(ConfigError::new(key, "must be greater than 0")) } else { Ok(()) }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Apply `AGENTGATE_<SECTION>__<KEY>` variables to the table. Values are parsed as
/// TOML values; one that is not valid TOML is taken as a string. Returns the key paths
/// that were set, with the variable that set each.
fn apply_env_overrides(table: &mut toml::Table, env: &Env) -> Result<Vec<(String, String)>, ConfigError> {
    const SECTIONS: &[&str] = &["server", "auth", "sessions", "runs", "limits", "backend", "mcp"];
    let mut set = Vec::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("AGENTGATE_") else { continue };
        let Some((section, key)) = rest.split_once("__") else { continue };
        let section = section.to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        if !SECTIONS.contains(&section.as_str()) || key.is_empty() || key.contains("__") {
            return Err(ConfigError::new(
                var.clone(),
                format!(
                    "this variable names no config key ({section}.{key}); override variables are \
                     AGENTGATE_<SECTION>__<KEY> with a section of {SECTIONS:?}"
                ),
            ));
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(sec) = entry else {
            return Err(ConfigError::new(var.clone(), format!("`{section}` in the file is not a table")));
        };
        sec.insert(key.clone(), parsed);
        set.push((format!("{section}.{key}"), var.clone()));
    }
    Ok(set)
}

fn build_issuer(j: &JwtFile, i: usize, profile: Profile, env: &Env) -> Result<Issuer, ConfigError> {
    let key = |field: &str| format!("auth.jwt[{i}].{field}");
    if j.name.is_empty() {
        return Err(ConfigError::new(key("name"), "must not be empty"));
    }
    if j.algorithms.is_empty() {
        return Err(ConfigError::new(key("algorithms"), "list at least one algorithm, e.g. [\"HS256\"]"));
    }
    let mut algorithms = Vec::new();
    for a in &j.algorithms {
        let alg = parse_alg(a).map_err(|_| {
            ConfigError::new(
                key("algorithms"),
                format!(
                    "{a:?} is not supported; use HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA"
                ),
            )
        })?;
        algorithms.push(alg);
    }
    if j.jwks_min_refetch_s == 0 || j.jwks_refresh_s == 0 {
        return Err(ConfigError::new(
            key("jwks_refresh_s"),
            "jwks_refresh_s and jwks_min_refetch_s must be greater than 0",
        ));
    }
    let sources = [
        j.secret_env.is_some(),
        j.secret_file.is_some(),
        j.secret.is_some(),
        j.public_key_file.is_some(),
        j.jwks_file.is_some(),
        j.jwks_url.is_some(),
    ];
    let count = sources.iter().filter(|s| **s).count();
    if count != 1 {
        return Err(ConfigError::new(
            format!("auth.jwt[{i}]"),
            format!(
                "issuer {:?} needs exactly one key source (secret_env, secret_file, secret, public_key_file, \
                 jwks_file or jwks_url); it has {count}",
                j.name
            ),
        ));
    }
    let mut signing = None;
    let keys = if let Some(var) = &j.secret_env {
        let secret = match env.get(var) {
            Some(v) if !v.is_empty() => v.as_bytes().to_vec(),
            Some(_) => return Err(ConfigError::new(key("secret_env"), format!("environment variable {var} is empty"))),
            None => return Err(ConfigError::new(key("secret_env"), format!("environment variable {var} is not set"))),
        };
        signing = Some(SigningKey::Hmac(secret.clone()));
        vec![hmac_key(&secret, j, &key("secret_env"))?]
    } else if let Some(path) = &j.secret_file {
        let secret = read_secret_file(path).map_err(|m| ConfigError::new(key("secret_file"), m))?;
        signing = Some(SigningKey::Hmac(secret.clone()));
        vec![hmac_key(&secret, j, &key("secret_file"))?]
    } else if let Some(secret) = &j.secret {
        if profile == Profile::Production {
            return Err(ConfigError::new(
                key("secret"),
                "inline secrets are refused in the production profile; use secret_env or secret_file",
            ));
        }
        if secret.is_empty() {
            return Err(ConfigError::new(key("secret"), "is empty"));
        }
        signing = Some(SigningKey::Hmac(secret.as_bytes().to_vec()));
        vec![hmac_key(secret.as_bytes(), j, &key("secret"))?]
    } else if let Some(path) = &j.public_key_file {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::new(key("public_key_file"), format!("cannot read {}: {e}", path.display())))?;
        vec![
            VerifyKey::from_pem(&bytes, j.kid.clone())
                .map_err(|e| ConfigError::new(key("public_key_file"), e.to_string()))?,
        ]
    } else if let Some(path) = &j.jwks_file {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::new(key("jwks_file"), format!("cannot read {}: {e}", path.display())))?;
        let (keys, _skipped) = parse_jwks(&bytes).map_err(|e| ConfigError::new(key("jwks_file"), e.to_string()))?;
        if keys.is_empty() {
            return Err(ConfigError::new(key("jwks_file"), "the JWKS holds no usable signing key"));
        }
        keys
    } else {
        let url = j.jwks_url.as_deref().unwrap_or_default();
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(ConfigError::new(key("jwks_url"), format!("{url:?} is not an http(s) URL")));
        }
        if profile == Profile::Production && !lower.starts_with("https://") && !is_loopback_url(&lower) {
            return Err(ConfigError::new(
                key("jwks_url"),
                "the production profile fetches keys over https only (plain http is allowed for loopback addresses)",
            ));
        }
        // Fetched at start-up and refreshed by the server (`crate::jwks`).
        Vec::new()
    };
    if j.kid.is_some() && (j.jwks_file.is_some() || j.jwks_url.is_some()) {
        return Err(ConfigError::new(key("kid"), "a JWKS names its own key ids; remove `kid`"));
    }
    for alg in &algorithms {
        if j.jwks_url.is_none() && !keys.iter().any(|k| k.kind.admits(*alg)) {
            let kinds: Vec<&str> = keys.iter().map(|k| k.kind.as_str()).collect();
            return Err(ConfigError::new(
                key("algorithms"),
                format!("{alg:?} cannot be verified with this issuer's keys ({kinds:?})"),
            ));
        }
    }
    if let Some(path) = &j.private_key_file {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::new(key("private_key_file"), format!("cannot read {}: {e}", path.display())))?;
        if !keys.is_empty() && keys.iter().all(|k| k.kind == KeyKind::Hmac) {
            return Err(ConfigError::new(
                key("private_key_file"),
                "an HMAC issuer signs with its secret; remove private_key_file",
            ));
        }
        signing = Some(SigningKey::PrivatePem(bytes));
    }
    let mut issuer = Issuer::new(j.name.clone(), algorithms, keys);
    issuer.issuer = j.issuer.clone();
    issuer.audience = j.audience.clone();
    issuer.tenant_claim = j.tenant_claim.clone();
    issuer.scope_claim = j.scope_claim.clone();
    issuer.signing = signing;
    Ok(issuer)
}

fn is_loopback_url(lower: &str) -> bool {
    let rest = lower.split_once("://").map(|(_, r)| r).unwrap_or("");
    rest.starts_with("127.") || rest.starts_with("localhost") || rest.starts_with("[::1]")
}

fn hmac_key(secret: &[u8], j: &JwtFile, key: &str) -> Result<VerifyKey, ConfigError> {
    VerifyKey::from_secret(secret, j.kid.clone()).map_err(|e| ConfigError::new(key, e.to_string()))
}

/// Read a secret file: its bytes, less one trailing newline.
///
/// # Errors
/// Unreadable or empty.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod fifth_revision_tests {
    use super::*;

    fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = format!("[[auth.jwt]]\nname = \"local\"\nalgorithms = [\"HS256\"]\nsecret_env = \"S\"\n{toml}");
        std::fs::write(&path, text).unwrap();
        let mut env = Env::new();
        env.insert("AGENTGATE_HOME".into(), dir.path().display().to_string());
        env.insert("S".into(), "a-test-secret-0123456789abcdef0123456789".into());
        for (k, v) in vars {
            env.insert((*k).into(), (*v).into());
        }
        Config::load(Some(&path), &env)
    }

    #[test]
    fn the_bound_keys_have_their_contract_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.write_timeout, Duration::from_secs(10));
        assert_eq!(c.sessions.buffer_bytes, 1_048_576);
        assert_eq!(c.sessions.memory_limit_bytes, 1_073_741_824);
        assert_eq!(c.runs.retained_per_principal, 256);
        assert_eq!(c.limits.sessions_per_principal, 64);
        assert_eq!(c.limits.tickets_per_principal, 16);
    }

    #[test]
    fn the_bound_keys_load_from_file_and_environment() {
        let c = load(
            "[sessions]\nbuffer_bytes = 65536\nmemory_limit_bytes = 4194304\n[runs]\nretained_per_principal = 5\n\
             [limits]\nsessions_per_principal = 8\ntickets_per_principal = 4\n",
            &[("AGENTGATE_SERVER__WRITE_TIMEOUT_S", "3")],
        )
        .unwrap();
        assert_eq!(c.server.write_timeout, Duration::from_secs(3));
        assert_eq!((c.sessions.buffer_bytes, c.sessions.memory_limit_bytes), (65536, 4_194_304));
        assert_eq!(c.runs.retained_per_principal, 5);
        assert_eq!((c.limits.sessions_per_principal, c.limits.tickets_per_principal), (8, 4));
    }

    #[test]
    fn a_zero_bound_is_a_config_error_naming_the_key() {
        for (section, key) in [
            ("server", "write_timeout_s"),
            ("sessions", "buffer_bytes"),
            ("sessions", "memory_limit_bytes"),
            ("runs", "retained_per_principal"),
            ("limits", "sessions_per_principal"),
            ("limits", "tickets_per_principal"),
        ] {
            let var = format!("AGENTGATE_{}__{}", section.to_uppercase(), key.to_uppercase());
            let e = load("", &[(&var, "0")]).unwrap_err();
            assert_eq!(e.key, format!("{section}.{key}"), "{e:?}");
            let e = load("", &[(&var, "-1")]).unwrap_err();
            assert!(e.key.contains(key), "{e:?}");
        }
    }
}
