//! TLS set-up shared by both binaries: one crypto provider (ring) for every
//! rustls user in the process — redis-rs (`rediss://`), sqlx
//! (`sslmode=require|verify-full`), reqwest and the api's own listener —
//! installed before any of them builds a configuration (rustls refuses to
//! guess when more than one provider is linked).

/// Installs ring as the process's rustls provider; later calls do nothing.
pub fn install_crypto_provider() {
    // An error means a provider is installed already: nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
