//! Subcommands, and what they share: loading the configuration with exit 64 on
//! error, and reading a token from a variable, a file or standard input.

mod connect;
mod doctor;
mod mcp_shim;
mod serve;
mod token;

use std::io::Read;
use std::path::Path;

use agentgate_app::{Config, Env};

use crate::cli::{Command, TokenCommand};

/// Usage or config error.
pub(crate) const EXIT_USAGE: u8 = 64;
/// Runtime failure.
pub(crate) const EXIT_FAILURE: u8 = 1;

pub(crate) fn dispatch(command: Command) -> u8 {
    match command {
        Command::Serve(args) => serve::run(args),
        Command::Token(TokenCommand::Mint(args)) => token::mint(args),
        Command::Token(TokenCommand::Inspect(args)) => token::inspect(args),
        Command::Connect(args) => connect::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::McpShim(args) => mcp_shim::run(args),
    }
}

/// The process environment as a map (variables that are not UTF-8 are skipped).
pub(crate) fn process_env() -> Env {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// Load the configuration, printing a config error.
pub(crate) fn load_config(path: Option<&Path>, env: &Env) -> Result<Config, u8> {
    Config::load(path, env).map_err(|e| {
        eprintln!("agentgate: {e}");
        EXIT_USAGE
    })
}

/// Read a token from `--token-env`, `--token-file`, or standard input (in that order
/// of preference), trimmed of surrounding whitespace. The token is never printed.
pub(crate) fn read_token(env: &Env, token_env: Option<&str>, token_file: Option<&Path>) -> Result<String, String> {
    let token = if let Some(var) = token_env {
        env.get(var).cloned().ok_or_else(|| format!("environment variable {var} is not set"))?
    } else if let Some(path) = token_file {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| format!("cannot read standard input: {e}"))?;
        s
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        let place = match (token_env, token_file) {
            (Some(var), _) => format!("environment variable {var}"),
            (None, Some(path)) => format!("file {}", path.display()),
            (None, None) => "standard input".to_owned(),
        };
        return Err(format!("no token: {place} is empty"));
    }
    Ok(token)
}
