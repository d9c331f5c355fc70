//! TLS termination on `server.listen` (`server.tls_cert_file` + `server.tls_key_file`).
//!
//! The certificate chain and key are read and checked when the configuration loads (a
//! fault is a config error naming the key). The server then holds the pair behind a
//! [`Tls`] whose certificate resolver hands every new handshake the current pair; on
//! SIGHUP [`Tls::reload`] reads both files again and swaps the pair in only when it
//! is complete and consistent, so a failed reload keeps the old pair (and says why)
//! and live connections are never touched. rustls with the aws-lc-rs provider: the
//! same crypto the JWT code and the JWKS client already use.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// The config key of the certificate chain.
pub const CERT_KEY: &str = "server.tls_cert_file";
/// The config key of the private key.
pub const KEY_KEY: &str = "server.tls_key_file";

/// `server.tls_cert_file` and `server.tls_key_file`, checked at load time.
#[derive(Clone)]
pub struct TlsConfig {
    /// The PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
    loaded: Arc<CertifiedKey>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("TlsConfig")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("certificate", &fingerprint(&self.loaded))
            .finish()
    }
}

/// A fault in one of the two files: the config key it concerns, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// [`CERT_KEY`] or [`KEY_KEY`].
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl TlsConfig {
    /// Read and check both files.
    ///
    /// # Errors
    /// A file that cannot be read, holds no certificate or key, a key type rustls
    /// cannot sign with, or a key that does not match the certificate.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let loaded = load_pair(cert_file, key_file)?;
        Ok(Self { cert_file: cert_file.to_path_buf(), key_file: key_file.to_path_buf(), loaded })
    }
}

/// The crypto provider of the server and of every client in this tree.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_pair(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |message: String| TlsError { key: CERT_KEY, message };
    let key_err = |message: String| TlsError { key: KEY_KEY, message };
    let cert_pem =
        std::fs::read(cert_file).map_err(|e| cert_err(format!("cannot read {}: {e}", cert_file.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("{} is not valid PEM: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(cert_err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the certificate chain, leaf first",
            cert_file.display()
        )));
    }
    let key_pem = std::fs::read(key_file).map_err(|e| key_err(format!("cannot read {}: {e}", key_file.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        key_err(format!(
            "{} holds no usable PEM private key ({e}); give a PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 RSA \
             (BEGIN RSA PRIVATE KEY) or SEC1 EC (BEGIN EC PRIVATE KEY) key",
            key_file.display()
        ))
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("{}: the key cannot be used for TLS: {e}", key_file.display())))?;
    let pair = CertifiedKey::new(certs, signer);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(pair)),
        Err(e) => Err(key_err(format!(
            "the key in {} does not match the certificate in {} ({e}); give the key the certificate was issued for",
            key_file.display(),
            cert_file.display()
        ))),
    }
}

/// First 8 hex digits of the SHA-256 of the leaf certificate's DER.
fn fingerprint(pair: &CertifiedKey) -> String {
    pair.cert.first().map(|c| hex::encode(&Sha256::digest(c.as_ref())[..4])).unwrap_or_default()
}

/// Hands every new handshake the current pair.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner())))
    }
}

/// The live TLS state of the listener.
pub struct Tls {
    config: TlsConfig,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Tls {
    /// The acceptor for `config`'s pair.
    ///
    /// # Errors
    /// The provider refuses the default protocol versions (it does not).
    pub fn new(config: &TlsConfig) -> Result<Arc<Self>, rustls::Error> {
        let resolver = Arc::new(Resolver(RwLock::new(Arc::clone(&config.loaded))));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        // HTTP/1.1 only (WebSocket upgrades); no h2.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(server));
        Ok(Arc::new(Self { config: config.clone(), resolver, acceptor }))
    }

    /// The acceptor (cheap to clone).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The leaf certificate's fingerprint now served.
    pub fn current_fingerprint(&self) -> String {
        fingerprint(&self.resolver.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Read both files again; on success new handshakes get the new pair (returns its
    /// fingerprint), on failure the old pair stays.
    ///
    /// # Errors
    /// What is wrong with the files; nothing changed.
    pub fn reload(&self) -> Result<String, TlsError> {
        let pair = load_pair(&self.config.cert_file, &self.config.key_file)?;
        let fp = fingerprint(&pair);
        *self.resolver.0.write().unwrap_or_else(|p| p.into_inner()) = pair;
        Ok(fp)
    }
}

/// Listen for SIGHUP: reload the TLS pair, or log that there is nothing to reload.
/// The handler is installed before this returns, so from then on SIGHUP never ends
/// the process.
///
/// # Errors
/// The signal handler cannot be installed.
pub fn spawn_sighup(tls: Option<Arc<Tls>>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match &tls {
                    None => tracing::info!(
                        "SIGHUP received and ignored: there is nothing to reload without TLS \
                         (server.tls_cert_file and server.tls_key_file are not set)"
                    ),
                    Some(tls) => match tls.reload() {
                        Ok(fp) => tracing::info!(
                            certificate_fp = %fp,
                            "SIGHUP: TLS certificate and key reloaded; new handshakes use them, live connections are untouched"
                        ),
                        Err(e) => tracing::warn!(
                            error = %e,
                            certificate_fp = %tls.current_fingerprint(),
                            "SIGHUP: TLS reload failed; still serving the previous certificate and key"
                        ),
                    },
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = tls;
        Ok(tokio::spawn(async {}))
    }
}
