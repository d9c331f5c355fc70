//! The TOML mirror of the configuration: every key of CONFIG.md with its default.
//! Unknown keys are refused by `deny_unknown_fields`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConfigFile {
    pub(crate) server: ServerFile,
    pub(crate) auth: AuthFile,
    pub(crate) sessions: SessionsFile,
    pub(crate) runs: RunsFile,
    pub(crate) limits: LimitsFile,
    pub(crate) backend: BackendFile,
    pub(crate) agents: Vec<AgentFile>,
    pub(crate) mcp: McpFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerFile {
    pub(crate) listen: String,
    pub(crate) addr_file: Option<PathBuf>,
    pub(crate) profile: String,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) failure_mode: String,
    pub(crate) max_message_bytes: u64,
    pub(crate) shutdown_grace_s: u64,
    pub(crate) metrics_listen: Option<String>,
    pub(crate) write_timeout_s: u64,
    /// agentgate extension: interval of server pings, announced in the welcome.
    pub(crate) heartbeat_ms: u64,
    /// agentgate extension: time a client has to send its HTTP request head.
    pub(crate) handshake_timeout_ms: u64,
    pub(crate) tls_cert_file: Option<PathBuf>,
    pub(crate) tls_key_file: Option<PathBuf>,
    pub(crate) trusted_proxies: Vec<String>,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8079".into(),
            addr_file: None,
            profile: "development".into(),
            allowed_origins: Vec::new(),
            failure_mode: "auto".into(),
            max_message_bytes: 1_048_576,
            shutdown_grace_s: 10,
            metrics_listen: None,
            write_timeout_s: 10,
            heartbeat_ms: 25_000,
            handshake_timeout_ms: 10_000,
            tls_cert_file: None,
            tls_key_file: None,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuthFile {
    pub(crate) query_token: bool,
    pub(crate) first_message: bool,
    pub(crate) first_message_timeout_ms: u64,
    pub(crate) leeway_s: u64,
    pub(crate) expiry_warning_s: u64,
    pub(crate) anonymous_roles: Vec<String>,
    pub(crate) ticket_ttl_s: u64,
    pub(crate) jwt: Vec<JwtFile>,
    pub(crate) api_keys: Vec<ApiKeyFile>,
}

impl Default for AuthFile {
    fn default() -> Self {
        Self {
            query_token: true,
            first_message: false,
            first_message_timeout_ms: 10_000,
            leeway_s: 30,
            expiry_warning_s: 60,
            anonymous_roles: vec!["anon".into()],
            ticket_ttl_s: 30,
            jwt: Vec::new(),
            api_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtFile {
    pub(crate) name: String,
    pub(crate) algorithms: Vec<String>,
    pub(crate) secret_env: Option<String>,
    pub(crate) secret_file: Option<PathBuf>,
    pub(crate) secret: Option<String>,
    pub(crate) public_key_file: Option<PathBuf>,
    pub(crate) jwks_file: Option<PathBuf>,
    pub(crate) jwks_url: Option<String>,
    pub(crate) private_key_file: Option<PathBuf>,
    /// agentgate extension: the `kid` of a static key (secret or PEM).
    pub(crate) kid: Option<String>,
    pub(crate) issuer: Option<String>,
    #[serde(default)]
    pub(crate) audience: Vec<String>,
    #[serde(default = "default_tenant_claim")]
    pub(crate) tenant_claim: String,
    #[serde(default = "default_scope_claim")]
    pub(crate) scope_claim: String,
    #[serde(default = "default_min_refetch")]
    pub(crate) jwks_min_refetch_s: u64,
    #[serde(default = "default_refresh")]
    pub(crate) jwks_refresh_s: u64,
}

fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_scope_claim() -> String {
    "scope".into()
}
fn default_min_refetch() -> u64 {
    10
}
fn default_refresh() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyFile {
    pub(crate) name: String,
    pub(crate) sha256: String,
    pub(crate) subject: String,
    pub(crate) tenant: Option<String>,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SessionsFile {
    pub(crate) resume_window_s: u64,
    pub(crate) buffer_events: u64,
    pub(crate) buffer_bytes: u64,
    pub(crate) memory_limit_bytes: u64,
}

impl Default for SessionsFile {
    fn default() -> Self {
        Self { resume_window_s: 300, buffer_events: 1024, buffer_bytes: 1_048_576, memory_limit_bytes: 1_073_741_824 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RunsFile {
    pub(crate) retention_s: u64,
    pub(crate) retained_per_principal: u64,
    pub(crate) orphan_timeout_s: u64,
}

impl Default for RunsFile {
    fn default() -> Self {
        Self { retention_s: 3600, retained_per_principal: 256, orphan_timeout_s: 15 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsFile {
    pub(crate) handshakes_per_ip_per_s: u64,
    pub(crate) connections_per_ip: u64,
    pub(crate) connections_per_principal: u64,
    pub(crate) messages_per_s: u64,
    pub(crate) runs_per_principal: u64,
    pub(crate) sessions_per_principal: u64,
    pub(crate) tickets_per_principal: u64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            handshakes_per_ip_per_s: 50,
            connections_per_ip: 1024,
            connections_per_principal: 64,
            messages_per_s: 50,
            runs_per_principal: 16,
            sessions_per_principal: 64,
            tickets_per_principal: 16,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackendFile {
    pub(crate) kind: String,
    pub(crate) redis_url: String,
    pub(crate) redis_prefix: String,
    pub(crate) outage_buffer_events: u64,
    pub(crate) redis_ca_file: Option<PathBuf>,
}

impl Default for BackendFile {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "agentgate:".into(),
            outage_buffer_events: 10_000,
            redis_ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentFile {
    pub(crate) name: String,
    pub(crate) kind: String,
    #[serde(default = "default_agent_scope")]
    pub(crate) scope: String,
    pub(crate) url: Option<String>,
    pub(crate) secret_env: Option<String>,
    pub(crate) timeout_s: Option<u64>,
}

fn default_agent_scope() -> String {
    "agents:run".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct McpFile {
    pub(crate) servers: Vec<McpServerFile>,
    /// agentgate extension: most MCP server processes at once on this node.
    pub(crate) max_processes: u64,
    /// agentgate extension: most MCP server processes at once per principal.
    pub(crate) max_processes_per_principal: u64,
}

impl Default for McpFile {
    fn default() -> Self {
        Self { servers: Vec::new(), max_processes: 256, max_processes_per_principal: 16 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct McpServerFile {
    pub(crate) name: String,
    pub(crate) command: Vec<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: Option<PathBuf>,
}
