//! The listener's certificate: parsed from PEM, held in a [`CertStore`]
//! that every handshake asks, and replaced whole on reload. The server
//! reads the files (and names them in errors); this module only parses.

use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::sync::lock;

/// Why PEM text could not become the listener's certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("is not a readable PEM certificate chain: {0}")]
    Certificate(String),
    #[error("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("holds a private key that cannot sign: {0}")]
    Key(String),
    #[error("holds a private key that does not match the certificate's public key")]
    Mismatch,
}

impl PemError {
    /// Whether the key file (rather than the certificate file) is at fault.
    pub fn in_key_file(&self) -> bool {
        matches!(
            self,
            PemError::NoKey | PemError::Key(_) | PemError::Mismatch
        )
    }
}

/// The cryptography every TLS part of surge uses: ring (pure Rust and
/// assembly, no cmake), with rustls' default cipher suites.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain (leaf first) and its private key, from PEM text,
/// checked to belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, PemError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(PemError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => PemError::NoKey,
        other => PemError::Key(other.to_string()),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => PemError::Mismatch,
        other => PemError::Key(other.to_string()),
    })
}

/// The certificate new handshakes get; replaced whole on reload, while
/// connections already open keep what they negotiated.
#[derive(Debug)]
pub struct CertStore {
    current: Mutex<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Self {
        CertStore {
            current: Mutex::new(Arc::new(key)),
        }
    }

    /// From the next handshake on, `key` is served.
    pub fn replace(&self, key: CertifiedKey) {
        *lock(&self.current) = Arc::new(key);
    }

    /// The certificate being served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&lock(&self.current))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What the gateway needs for TLS: rustls' configuration (TLS 1.2 and
/// 1.3, no client certificates) around a replaceable certificate.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    certs: Arc<CertStore>,
}

impl TlsConfig {
    pub fn new(key: CertifiedKey) -> Self {
        let certs = Arc::new(CertStore::new(key));
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        TlsConfig {
            server: Arc::new(server),
            certs,
        }
    }

    /// Where a reload puts the new certificate.
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// rustls' configuration, shared by every handshake.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn pem_problems_are_told_apart_and_blame_the_right_file() {
        let (cert, key) = pair("a.test");
        let (_, other_key) = pair("b.test");
        assert!(certified_key(cert.as_bytes(), key.as_bytes()).is_ok());
        let cases = [
            (key.as_str(), key.as_str(), PemError::NoCertificate),
            (cert.as_str(), cert.as_str(), PemError::NoKey),
            (cert.as_str(), other_key.as_str(), PemError::Mismatch),
        ];
        for (c, k, expected) in cases {
            let got = certified_key(c.as_bytes(), k.as_bytes()).expect_err("refused");
            assert_eq!(got, expected);
            assert_eq!(got.in_key_file(), expected != PemError::NoCertificate);
        }
        let broken = cert.replace("MII", "@@@");
        assert!(matches!(
            certified_key(broken.as_bytes(), key.as_bytes()),
            Err(PemError::Certificate(_))
        ));
    }

    #[test]
    fn a_replaced_certificate_is_served_from_then_on() {
        let (cert, key) = pair("a.test");
        let (cert2, key2) = pair("b.test");
        let first = certified_key(cert.as_bytes(), key.as_bytes()).expect("first");
        let second = certified_key(cert2.as_bytes(), key2.as_bytes()).expect("second");
        let second_leaf = second.cert[0].clone();
        let store = CertStore::new(first);
        assert_ne!(store.current().cert[0], second_leaf);
        store.replace(second);
        assert_eq!(store.current().cert[0], second_leaf);
    }
}
