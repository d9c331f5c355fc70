//! The development key: random 256 bits, created once with mode 0600 under
//! `$AGENTGATE_HOME` and reused, so `agentgate token mint` and `agentgate serve` with no
//! configuration agree without anyone handling a secret.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

use super::{Env, read_secret_file};

/// Name of the development issuer.
pub const DEV_ISSUER: &str = "local";

/// `$AGENTGATE_HOME`, else the platform data directory plus `agentgate`.
///
/// # Errors
/// Neither `AGENTGATE_HOME` nor a home directory is known.
pub fn agentgate_home(env: &Env) -> Result<PathBuf, String> {
    if let Some(h) = env.get("AGENTGATE_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if cfg!(target_os = "macos")
        && let Some(home) = env.get("HOME")
    {
        return Ok(Path::new(home).join("Library/Application Support/agentgate"));
    }
    if let Some(x) = env.get("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(Path::new(x).join("agentgate"));
    }
    if let Some(home) = env.get("HOME").filter(|h| !h.is_empty()) {
        return Ok(Path::new(home).join(".local/share/agentgate"));
    }
    Err("cannot tell where to keep the development key: set AGENTGATE_HOME".into())
}

/// Path of the development key file.
///
/// # Errors
/// See [`agentgate_home`].
pub fn dev_key_path(env: &Env) -> Result<PathBuf, String> {
    Ok(agentgate_home(env)?.join("dev-hs256.key"))
}

/// Read the key, creating it first if it does not exist. Creation is atomic: the key
/// is written to a private temporary file and hard-linked into place, so concurrent
/// first starts agree on one key.
///
/// # Errors
/// The directory or file cannot be created or read.
pub fn load_or_create_dev_key(path: &Path) -> Result<Vec<u8>, String> {
    if path.exists() {
        return read_secret_file(path);
    }
    let dir = path.parent().ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let tmp = dir.join(format!(".dev-hs256.key.{}.tmp", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        writeln!(f, "{}", hex::encode(bytes)).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.sync_all().map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
    }
    read_secret_file(path)
}
