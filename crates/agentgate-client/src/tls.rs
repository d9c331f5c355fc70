//! `wss://`: rustls (aws-lc-rs, the provider of the rest of the tree) verifying the
//! gateway's certificate against the system's trust roots (`rustls-native-certs`:
//! the OS store an administrator already manages, e.g. `/etc/ssl/certs`), or only
//! against the PEM certificates of a CA file (`--ca-file`).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_tungstenite::Connector;

use crate::ClientError;

/// The TLS connector for a `wss://` URL: roots from `ca_file`, else the system's.
///
/// # Errors
/// [`ClientError::InvalidInput`] when the CA file cannot be read or holds no
/// certificate; [`ClientError::Tls`] when the system has no trust roots at all.
pub fn connector(ca_file: Option<&Path>) -> Result<Connector, ClientError> {
    let roots = match ca_file {
        Some(path) => {
            let certs = read_ca_file(path).map_err(ClientError::InvalidInput)?;
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ClientError::InvalidInput(format!(
                    "--ca-file {}: none of its certificates can be used as a trust anchor",
                    path.display()
                )));
            }
            Arc::new(roots)
        }
        None => system_roots()?,
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}

/// The PEM certificates of a CA file.
///
/// # Errors
/// Unreadable, not PEM, or without a certificate; the message names the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--ca-file {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--ca-file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA that signed the \
             gateway's certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The system's trust roots, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, ClientError> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    if let Some(r) = ROOTS.get() {
        return Ok(Arc::clone(r));
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(ClientError::Tls(format!(
            "this system has no trust roots to verify the gateway's certificate with ({} error(s) reading the \
             system store); install ca-certificates, or pass --ca-file with the gateway's CA",
            found.errors.len()
        )));
    }
    Ok(Arc::clone(ROOTS.get_or_init(|| Arc::new(roots))))
}

/// The rustls error inside an I/O error of a TLS handshake, if that is what it is.
pub(crate) fn tls_cause(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}
