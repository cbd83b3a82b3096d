//! TLS in the binary: the certificate and key files the configuration
//! names, read here (the runtime only parses them), described for the logs
//! and `surge doctor` (subject, serial, validity), and read again on
//! SIGHUP. A reload that fails keeps the certificate being served.

use std::path::Path;

use anyhow::anyhow;
use rustls::sign::CertifiedKey;
use surge_core::config::Config;
use surge_runtime::Gateway;
use surge_runtime::tls::{TlsConfig, certified_key};

/// What the logs and the doctor say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The leaf's subject, e.g. `CN=surge.example`.
    pub subject: String,
    /// The leaf's serial number in hex, e.g. `01:ab:…`.
    pub serial: String,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// `not_after` as a UTC date, e.g. `2027-03-01`.
    pub expires: String,
}

impl CertInfo {
    /// Whole days until expiry at `now` (Unix seconds); negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// A certificate and key read from their files, checked to belong together.
pub struct Loaded {
    pub key: CertifiedKey,
    pub info: CertInfo,
}

/// Reads and parses the two PEM files; an error names the setting and the
/// file at fault.
pub fn read(cert: &Path, key: &Path) -> Result<Loaded, String> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| format!("cannot read SURGE_TLS_CERT={}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| format!("cannot read SURGE_TLS_KEY={}: {e}", key.display()))?;
    let certified = certified_key(&cert_pem, &key_pem).map_err(|e| {
        if e.in_key_file() {
            format!("SURGE_TLS_KEY={} {e}", key.display())
        } else {
            format!("SURGE_TLS_CERT={} {e}", cert.display())
        }
    })?;
    let info = describe(certified.cert[0].as_ref())
        .map_err(|e| format!("SURGE_TLS_CERT={}: {e}", cert.display()))?;
    Ok(Loaded {
        key: certified,
        info,
    })
}

/// Subject, serial and validity of a DER certificate.
pub fn describe(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("is not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        expires: validity.not_after.to_datetime().date().to_string(),
    })
}

/// The files of a configuration that has TLS on.
fn paths(config: &Config) -> Option<(&Path, &Path)> {
    Some((config.tls_cert.as_deref()?, config.tls_key.as_deref()?))
}

/// The public listener's TLS, when configured; a file that cannot be read
/// or parsed, or a key that does not match, stops the start.
pub fn load(config: &Config) -> anyhow::Result<Option<(TlsConfig, CertInfo)>> {
    let Some((cert, key)) = paths(config) else {
        return Ok(None);
    };
    let loaded = read(cert, key).map_err(|e| anyhow!(e))?;
    log_served("TLS certificate loaded", &loaded.info);
    Ok(Some((TlsConfig::new(loaded.key), loaded.info)))
}

fn log_served(what: &str, info: &CertInfo) {
    tracing::info!(
        subject = %info.subject,
        serial = %info.serial,
        expires = %info.expires,
        "{what}"
    );
}

/// Reads the files again and, if they are good, serves the new
/// certificate from the next handshake on; otherwise keeps the old one.
/// Either way the outcome is logged and counted.
pub fn reload(config: &Config, tls: &TlsConfig, gateway: &Gateway) -> Result<CertInfo, String> {
    let Some((cert, key)) = paths(config) else {
        return Err("TLS is not configured".to_owned());
    };
    let metrics = gateway.metrics();
    match read(cert, key) {
        Ok(loaded) => {
            tls.certs().replace(loaded.key);
            metrics.reloaded("tls_cert", true);
            metrics.tls_certificate_expiry.set(loaded.info.not_after);
            log_served("TLS certificate reloaded", &loaded.info);
            Ok(loaded.info)
        }
        Err(e) => {
            metrics.reloaded("tls_cert", false);
            tracing::error!(error = %e, "TLS certificate reload failed; still serving the previous certificate");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_and_the_file_at_fault() {
        let dir = std::env::temp_dir().join(format!("surge-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let other = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["unit.test".to_owned()]).expect("p");
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x2a]));
        let cert = params.self_signed(&key).expect("cert");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let cert_path = write("cert.pem", &cert.pem());
        let key_path = write("key.pem", &key.serialize_pem());
        let other_path = write("other.pem", &other.serialize_pem());
        let missing = dir.join("missing.pem");

        let loaded = read(&cert_path, &key_path).expect("a good pair");
        assert_eq!(loaded.info.serial, "2a");
        assert!(loaded.info.not_after > loaded.info.not_before);

        let err = |c: &Path, k: &Path| read(c, k).err().expect("refused");
        let e = err(&missing, &key_path);
        assert!(e.starts_with("cannot read SURGE_TLS_CERT="), "{e}");
        assert!(e.contains("missing.pem"), "{e}");
        let e = err(&cert_path, &missing);
        assert!(e.starts_with("cannot read SURGE_TLS_KEY="), "{e}");
        let e = err(&key_path, &key_path);
        assert!(e.starts_with("SURGE_TLS_CERT="), "{e}");
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = err(&cert_path, &other_path);
        assert!(e.starts_with("SURGE_TLS_KEY="), "{e}");
        assert!(e.contains("other.pem"), "{e}");
        assert!(e.contains("does not match"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn days_left_round_down_and_go_negative_after_expiry() {
        let info = CertInfo {
            subject: String::new(),
            serial: String::new(),
            not_before: 0,
            not_after: 10 * 86_400,
            expires: String::new(),
        };
        assert_eq!(info.days_left(0), 10);
        assert_eq!(info.days_left(86_400 + 1), 8);
        assert_eq!(info.days_left(10 * 86_400 + 1), -1);
    }
}
