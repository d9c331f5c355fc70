//! The transport keys: TLS termination (`server.tls_cert_file`, `server.tls_key_file`),
//! `server.trusted_proxies`, and the Redis URL's scheme and CA file
//! (`backend.redis_url`, `backend.redis_ca_file`).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::ConfigError;
use super::file::{BackendFile, ServerFile};
use crate::client_ip::TrustedProxies;
use crate::tls::{CERT_KEY, KEY_KEY, TlsConfig};

/// Both TLS files, or neither.
pub(super) fn tls(s: &ServerFile) -> Result<Option<TlsConfig>, ConfigError> {
    match (&s.tls_cert_file, &s.tls_key_file) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(
            KEY_KEY,
            "server.tls_cert_file is set but server.tls_key_file is not: give both (the PEM certificate chain and \
             its PEM private key), or neither to serve plain ws://",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            CERT_KEY,
            "server.tls_key_file is set but server.tls_cert_file is not: give both (the PEM certificate chain and \
             its PEM private key), or neither to serve plain ws://",
        )),
        (Some(cert), Some(key)) => TlsConfig::load(cert, key).map(Some).map_err(|e| ConfigError::new(e.key, e.message)),
    }
}

/// `server.trusted_proxies`, each entry a CIDR block or a bare address.
pub(super) fn trusted_proxies(s: &ServerFile) -> Result<TrustedProxies, ConfigError> {
    TrustedProxies::parse(&s.trusted_proxies)
        .map_err(|(i, message)| ConfigError::new(format!("server.trusted_proxies[{i}]"), message))
}

/// `backend.redis_url` is `redis://` or `rediss://`; `backend.redis_ca_file`, when
/// given, holds PEM certificates and goes with `rediss://`.
pub(super) fn redis(b: &BackendFile) -> Result<(), ConfigError> {
    let lower = b.redis_url.to_ascii_lowercase();
    let tls = lower.starts_with("rediss://");
    if !tls && !lower.starts_with("redis://") {
        return Err(ConfigError::new(
            "backend.redis_url",
            "not a Redis URL: write redis://[USER:PASSWORD@]host:port[/db], or rediss://... for TLS",
        ));
    }
    let Some(path) = &b.redis_ca_file else { return Ok(()) };
    if !tls {
        return Err(ConfigError::new(
            "backend.redis_ca_file",
            "a CA file verifies a TLS connection: use a rediss:// URL in backend.redis_url, or remove redis_ca_file",
        ));
    }
    read_ca_file(path).map(|_| ()).map_err(|m| ConfigError::new("backend.redis_ca_file", m))
}

/// The PEM certificates of a CA file (at least one).
///
/// # Errors
/// Unreadable, not PEM, or no certificate in it.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}
