//! The command line (CONFIG.md "Command line").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// An authenticated WebSocket gateway for AI agent event streams.
#[derive(Debug, Parser)]
#[command(name = "agentgate", version, about)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway (development defaults without --config).
    Serve(ServeArgs),
    /// Mint and inspect tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Connect to /v1/ws, print every server message as a JSON line; optionally run an agent.
    Connect(ConnectArgs),
    /// Check a configuration (and optionally one real connection); print each finding with its fix.
    Doctor(DoctorArgs),
    /// A stdio MCP server (for an IDE) that relays to the gateway's /v1/mcp/{server}.
    McpShim(McpShimArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Config file (TOML).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a token signed with a configured issuer's key.
    Mint(MintArgs),
    /// Show a token's header and claims, and the verdict the gateway would reach.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub(crate) struct MintArgs {
    /// Config file (TOML); without it, the development issuer.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Subject (`sub`).
    #[arg(long)]
    pub(crate) sub: String,
    /// Tenant (written to the issuer's tenant_claim).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Space-separated scopes.
    #[arg(long, default_value = "agents:run")]
    pub(crate) scope: String,
    /// Lifetime in seconds (may be negative, to mint an expired token for tests).
    #[arg(long, default_value_t = 900, allow_hyphen_values = true)]
    pub(crate) ttl: i64,
    /// Issuer name (default: the first issuer that can sign).
    #[arg(long)]
    pub(crate) issuer: Option<String>,
    /// Token id (`jti`); random by default.
    #[arg(long)]
    pub(crate) jti: Option<String>,
    /// Extra claim `k=v` (v parsed as JSON when valid JSON, else a string). Repeatable.
    #[arg(long = "claim", value_name = "K=V")]
    pub(crate) claims: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// Config file (TOML); without it, the development defaults.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Read the token from this environment variable.
    #[arg(long, conflicts_with = "token_file")]
    pub(crate) token_env: Option<String>,
    /// Read the token from this file.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The gateway's WebSocket URL, e.g. ws://127.0.0.1:8079/v1/ws.
    pub(crate) url: String,
    /// Read the token from this environment variable (default: AGENTGATE_TOKEN).
    #[arg(long, conflicts_with = "token_file")]
    pub(crate) token_env: Option<String>,
    /// Read the token from this file (re-read to answer auth.expiring).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Start a run of this agent and exit after its terminal event.
    #[arg(long, value_name = "AGENT")]
    pub(crate) run: Option<String>,
    /// The run's input, a JSON object (default {}).
    #[arg(long, value_name = "JSON", requires = "run")]
    pub(crate) input: Option<String>,
    /// For wss:// URLs: verify the gateway's certificate against only the PEM certificates of this file
    /// (default: the system's trust roots).
    #[arg(long, value_name = "F")]
    pub(crate) ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Config file (TOML); without it, the development defaults.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Skip the environment checks that reach out: JWKS fetches and MCP program lookups.
    #[arg(long)]
    pub(crate) offline: bool,
    /// Also make one real connection to this WebSocket URL, e.g. ws://127.0.0.1:8079/v1/ws.
    #[arg(long, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Read the token for --url from this environment variable (default: AGENTGATE_TOKEN).
    #[arg(long, requires = "url", conflicts_with = "token_file")]
    pub(crate) token_env: Option<String>,
    /// Read the token for --url from this file.
    #[arg(long, requires = "url")]
    pub(crate) token_file: Option<PathBuf>,
    /// For wss:// URLs: verify the gateway's certificate against only the PEM certificates of this file
    /// (default: the system's trust roots).
    #[arg(long, value_name = "F", requires = "url")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct McpShimArgs {
    /// The MCP server's WebSocket URL, e.g. ws://127.0.0.1:8079/v1/mcp/everything.
    #[arg(long)]
    pub(crate) url: String,
    /// Read the token from this environment variable (default: AGENTGATE_TOKEN).
    #[arg(long, conflicts_with = "token_file")]
    pub(crate) token_env: Option<String>,
    /// Read the token from this file (re-read after the gateway refuses a token).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Load KEY=VALUE lines from this file first; they never override variables already set.
    #[arg(long)]
    pub(crate) env_file: Option<PathBuf>,
    /// For wss:// URLs: verify the gateway's certificate against only the PEM certificates of this file
    /// (default: the system's trust roots).
    #[arg(long, value_name = "F")]
    pub(crate) ca_file: Option<PathBuf>,
}
