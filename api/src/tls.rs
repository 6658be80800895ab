//! The api serving HTTPS itself when given `TLS_CERT_FILE` and
//! `TLS_KEY_FILE` (PEM): rustls with the ring provider, HTTP/1.1 (ALPN),
//! TLS 1.2 and 1.3. The handshake must finish within the header-read
//! timeout, so a client that stalls in it cannot hold a connection.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS side of the listener.
#[derive(Clone)]
pub struct Https(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Https")
    }
}

/// The acceptor for `cert` (a chain, leaf first) and `key`.
///
/// # Errors
///
/// A file that cannot be read or holds no certificate or key, or a key
/// that does not match the certificate.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<Https> {
    cache_shared::tls::install_crypto_provider();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading TLS_CERT_FILE {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("TLS_CERT_FILE {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading TLS_KEY_FILE {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("TLS_CERT_FILE and TLS_KEY_FILE do not make a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Https(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}
