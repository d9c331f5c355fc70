//! The credential: `--token-file`, `--token-env VAR` or `AGENTGATE_TOKEN`, after
//! loading `--env-file` (whose values never override a variable already set). Without
//! a token the shim exits 64 at once, naming every place it looked.

use std::path::{Path, PathBuf};

use agentgate_app::Env;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Where the token is read.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// `--token-file`.
    File(PathBuf),
    /// `--token-env VAR`, or `AGENTGATE_TOKEN` (`default`).
    Var { name: String, default: bool },
}

/// The token's source and the env file.
#[derive(Debug, Clone)]
pub(super) struct Sources {
    pub(super) token: Source,
    pub(super) env_file: Option<PathBuf>,
}

/// A token, where it came from, and its fingerprint. `Debug` shows no value.
#[derive(Clone)]
pub(super) struct Token {
    pub(super) value: String,
    pub(super) fp: String,
    /// e.g. "environment variable AGENTGATE_TOKEN".
    pub(super) from: String,
    /// A file that a later request re-reads after a refusal.
    pub(super) file: Option<PathBuf>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(fp {}, from {})", self.fp, self.from)
    }
}

/// What an env file holds, as far as the shim is concerned.
pub(super) enum EnvFile {
    /// Its variables, first declaration first.
    Read(Vec<(String, String)>),
    Missing,
    Unreadable(String),
}

impl EnvFile {
    pub(super) fn load(path: &Path) -> Self {
        let iter = match dotenvy::from_path_iter(path) {
            Ok(i) => i,
            Err(e) if e.not_found() => return Self::Missing,
            Err(dotenvy::Error::Io(e)) => return Self::Unreadable(e.to_string()),
            Err(_) => return Self::Unreadable("cannot be read".to_owned()),
        };
        let mut vars = Vec::new();
        for item in iter {
            match item {
                Ok(kv) => vars.push(kv),
                // The line itself is not shown: it may hold a secret.
                Err(dotenvy::Error::LineParse(_, at)) => {
                    return Self::Unreadable(format!("is not KEY=VALUE lines (parse error at character {at})"));
                }
                Err(e) => return Self::Unreadable(format!("cannot be parsed: {}", kind_of(&e))),
            }
        }
        Self::Read(vars)
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        match self {
            Self::Read(vars) => vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// A dotenvy error without any text of the file.
pub(super) fn kind_of(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::Io(e) => e.to_string(),
        dotenvy::Error::EnvVar(_) => "a variable substitution failed".to_owned(),
        _ => "malformed".to_owned(),
    }
}

pub(super) fn token_of(value: &str, from: String, file: Option<PathBuf>) -> Token {
    let value = value.trim().to_owned();
    Token { fp: agentgate_auth::fingerprint(value.as_bytes()), value, from, file }
}

impl Sources {
    /// The token, or a report naming every place looked and what was found there.
    pub(super) fn resolve(&self, env: &Env) -> Result<Token, String> {
        let env_file = self.env_file.as_deref().map(|p| (p, EnvFile::load(p)));
        // An env file that was asked for must be there, whatever else holds a token.
        if let Some((path, state)) = &env_file {
            match state {
                EnvFile::Missing => {
                    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    return Err(format!(
                        "--env-file {} does not exist; fix the path in the MCP server's command line, or create \
                         it (its folder may not exist yet): umask 077; mkdir -p {}; echo \
                         \"AGENTGATE_TOKEN=$(agentgate token mint --config GATEWAY.toml --sub NAME --scope 'mcp:SERVER')\" \
                         > {} (a token is never taken from the command line itself)",
                        path.display(),
                        dir.display(),
                        path.display()
                    ));
                }
                EnvFile::Unreadable(why) => return Err(format!("--env-file {} {why}", path.display())),
                EnvFile::Read(_) => {}
            }
        }
        let mut looked: Vec<String> = Vec::new();
        match &self.token {
            Source::File(path) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    let token = token_of(&text, format!("token file {}", path.display()), Some(path.clone()));
                    return check_header(token);
                }
                Ok(_) => looked.push(format!("token file {} (--token-file): exists but is empty", path.display())),
                Err(e) => looked.push(format!("token file {} (--token-file): cannot be read: {e}", path.display())),
            },
            Source::Var { name, default } => {
                let how = if *default { "the default; --token-env VAR names another" } else { "named by --token-env" };
                let in_file = env_file.as_ref().map(|(p, s)| (*p, s.get(name)));
                match env.get(name) {
                    Some(v) if !v.trim().is_empty() => {
                        return check_header(token_of(v, format!("environment variable {name}"), None));
                    }
                    Some(_) => looked.push(format!(
                        "environment variable {name} ({how}): set but empty in the shim's environment (check the \
                         \"env\" block of the IDE's MCP config); a value in an env file never overrides a \
                         variable that is set, even to an empty value"
                    )),
                    None => match in_file {
                        Some((path, Some(v))) if !v.trim().is_empty() => {
                            let token =
                                token_of(v, format!("{name} in env file {}", path.display()), Some(path.to_path_buf()));
                            return check_header(token);
                        }
                        _ => looked.push(format!("environment variable {name} ({how}): not set")),
                    },
                }
                match in_file {
                    None => looked.push("env file: none given (--env-file F)".to_owned()),
                    Some((path, None)) => looked
                        .push(format!("env file {} (--env-file): exists, but does not set {name}", path.display())),
                    Some((path, Some(v))) if v.trim().is_empty() => {
                        looked.push(format!("env file {} (--env-file): sets {name} to an empty value", path.display()))
                    }
                    Some((path, Some(_))) => looked.push(format!(
                        "env file {} (--env-file): sets {name}, but the empty variable above takes precedence",
                        path.display()
                    )),
                }
                looked.push("token file: none given (--token-file F)".to_owned());
            }
        }
        if let (Source::File(_), Some((path, _))) = (&self.token, &env_file) {
            looked.push(format!("env file {} (--env-file): loaded, but --token-file names the token", path.display()));
        }
        Err(format!(
            "no token, so not starting (an empty token is never sent). Looked in:\n{}\nA token is never taken from \
             the command line. Mint one with `agentgate token mint --config GATEWAY.toml --sub NAME --scope \"mcp:SERVER\"` (the --config of the gateway, so that it is signed with a key the gateway holds) and put it in \
             one of those places.",
            looked.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n")
        ))
    }
}

/// A token that can travel in an `Authorization` header.
pub(super) fn check_header(token: Token) -> Result<Token, String> {
    if HeaderValue::from_str(&format!("Bearer {}", token.value)).is_err() || token.value.contains(char::is_whitespace) {
        return Err(format!(
            "the token from {} (fingerprint {}) holds whitespace or control characters and cannot be sent in \
             an Authorization header; is it really a token?",
            token.from, token.fp
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::mcp_shim::DEFAULT_TOKEN_ENV;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn var_sources(env_file: Option<PathBuf>) -> Sources {
        Sources { token: Source::Var { name: DEFAULT_TOKEN_ENV.into(), default: true }, env_file }
    }

    #[test]
    fn env_file_values_never_override_set_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(&file, "# comment\nexport AGENTGATE_TOKEN=\"from-file\"\nOTHER='x'\n").unwrap();
        let t = var_sources(Some(file.clone())).resolve(&env(&[])).unwrap();
        assert_eq!(t.value, "from-file");
        assert!(t.from.contains("env file"), "{}", t.from);
        assert_eq!(t.file.as_deref(), Some(file.as_path()));
        let t = var_sources(Some(file.clone())).resolve(&env(&[("AGENTGATE_TOKEN", "from-env")])).unwrap();
        assert_eq!(t.value, "from-env");
        assert!(t.file.is_none());
        let e = var_sources(Some(file.clone())).resolve(&env(&[("AGENTGATE_TOKEN", "")])).unwrap_err();
        assert!(e.contains("set but empty") && e.contains("never overrides"), "{e}");
    }

    #[test]
    fn a_missing_token_names_every_place_looked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agentgate.env");
        std::fs::write(&file, "OTHER=1\n").unwrap();
        let e = var_sources(Some(file.clone())).resolve(&env(&[])).unwrap_err();
        assert!(e.contains("AGENTGATE_TOKEN") && e.contains("not set"), "{e}");
        assert!(e.contains(&file.display().to_string()) && e.contains("does not set AGENTGATE_TOKEN"), "{e}");
        assert!(e.contains("--token-file"), "{e}");
        std::fs::write(&file, "AGENTGATE_TOKEN=\n").unwrap();
        let e = var_sources(Some(file.clone())).resolve(&env(&[])).unwrap_err();
        assert!(e.contains("empty value"), "{e}");
        let e = var_sources(Some(dir.path().join("nope.env"))).resolve(&env(&[])).unwrap_err();
        assert!(e.contains("nope.env") && e.contains("does not exist"), "{e}");
        let e = var_sources(None).resolve(&env(&[])).unwrap_err();
        assert!(e.contains("none given (--env-file"), "{e}");
        let s = Sources { token: Source::File(dir.path().join("token")), env_file: None };
        let e = s.resolve(&env(&[])).unwrap_err();
        assert!(e.contains("token file") && e.contains("cannot be read"), "{e}");
    }

    #[test]
    fn a_parse_error_in_the_env_file_does_not_show_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(&file, "AGENTGATE_TOKEN='sekrit-value\n").unwrap();
        let e = var_sources(Some(file)).resolve(&env(&[])).unwrap_err();
        assert!(!e.contains("sekrit"), "{e}");
    }
}
