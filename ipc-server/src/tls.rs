//! TLS termination with rustls (ring provider): a PEM certificate chain and a PEM private key.

use crate::config::ConfigError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds the acceptor, naming the file in every error.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect())
        .map_err(|e| {
            ConfigError::Tls(format!(
                "cannot read certificates from {}: {e}",
                cert_path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ConfigError::Tls(format!(
            "no certificate found in {}",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        ConfigError::Tls(format!(
            "cannot read a private key from {}: {e}",
            key_path.display()
        ))
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        ConfigError::Tls(format!(
            "certificate {} and key {} do not form a usable pair: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
