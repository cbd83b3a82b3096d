//! `wss://` targets: the rustls client configuration every connection of
//! the run shares, trusting the PEM certificates of `--ca` or, with
//! `--insecure`, any certificate (loopback benchmarks of a self-signed
//! gateway). Set once per process, before the first connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

/// How `wss://` servers are trusted (forwarded to worker processes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOptions {
    /// PEM file of the certificates to trust.
    pub ca: Option<PathBuf>,
    /// Trust any certificate.
    pub insecure: bool,
}

static CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// The configuration `wss://` connections use, once [`install`]ed.
pub fn client() -> Option<Arc<ClientConfig>> {
    CLIENT.get().cloned()
}

/// Builds the client configuration from `options` (nothing to do without
/// `--ca` or `--insecure`).
pub fn install(options: &TlsOptions) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let config = match (&options.ca, options.insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        (Some(ca), false) => builder
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth(),
        (None, false) => return Ok(()),
    };
    let _ = CLIENT.set(Arc::new(config));
    Ok(())
}

fn roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("--ca {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("--ca {}", ca.display()))?)
            .with_context(|| format!("--ca {}: not a usable certificate", ca.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "--ca {}: no certificate in it",
        ca.display()
    );
    Ok(roots)
}

/// Accepts any certificate, still checking the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
