//! The listener's certificate and key, loaded and swapped in place when
//! their files change.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

/// `[tls]`: serve HTTPS with this certificate chain and key (PEM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The listener's certificate, swapped in place when its files change (a
/// renewal written over the same paths, or other paths named on reload):
/// handshakes from then on get the new one, open connections keep theirs.
#[derive(Debug)]
pub struct Certificates {
    current: arc_swap::ArcSwap<CertifiedKey>,
    /// The files in use, and their size and modification time when last
    /// looked at (so a broken renewal is reported once, not every second).
    seen: std::sync::Mutex<(TlsConfig, Option<Stamp>)>,
}

pub(super) type Stamp = [(u64, std::time::SystemTime); 2];

pub(super) fn stamp(tls: &TlsConfig) -> Option<Stamp> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.len(), m.modified().ok()?))
    };
    Some([one(&tls.cert)?, one(&tls.key)?])
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Why the certificate and key do not load: each names the file (or both,
/// when they do not belong together), with the PEM reader's or rustls's
/// error as the source.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: no such file", .0.display())]
    NoSuchFile(PathBuf),
    /// The certificate file does not read as PEM certificates.
    #[error("{}", path.display())]
    Certificates {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", .0.display())]
    NoCertificate(PathBuf),
    /// The key file does not read as a PEM private key.
    #[error("{}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key is not one rustls signs with, or not the certificate's.
    #[error("{} / {}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The server configuration's protocol versions (no file to blame).
    #[error(transparent)]
    Protocols(rustls::Error),
}

impl Certificates {
    /// Loads the files again if `tls` names others or they changed since
    /// last looked at. `Ok(true)`: a new certificate is in use. An error
    /// names the file; the certificate in use stays.
    pub fn refresh(&self, tls: &TlsConfig) -> Result<bool, TlsError> {
        let now = stamp(tls);
        {
            let mut seen = self.seen.lock().expect("certificates lock");
            if seen.0 == *tls && seen.1 == now {
                return Ok(false);
            }
            *seen = (tls.clone(), now);
        }
        self.current.store(Arc::new(load_certified(tls)?));
        Ok(true)
    }
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and its key from their PEM files, checked to
/// belong together; errors name the file.
pub(super) fn load_certified(tls: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let bad_certs = |source| TlsError::Certificates {
        path: tls.cert.clone(),
        source,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(bad_certs)?
        .collect::<Result<_, _>>()
        .map_err(bad_certs)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(tls.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|source| TlsError::Key {
        path: tls.key.clone(),
        source,
    })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|source| TlsError::Mismatch {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        source,
    })
}

/// The TLS acceptor of the MCP listener, and its certificates (for
/// [`Certificates::refresh`]).
pub fn tls_acceptor(tls: &TlsConfig) -> Result<(TlsAcceptor, Arc<Certificates>), TlsError> {
    let certificates = Arc::new(Certificates {
        current: arc_swap::ArcSwap::from_pointee(load_certified(tls)?),
        seen: std::sync::Mutex::new((tls.clone(), stamp(tls))),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certificates))
}

/// Checks that the files exist and load (config validation).
pub fn check_tls(tls: &TlsConfig) -> Result<(), TlsError> {
    for p in [&tls.cert, &tls.key] {
        if !Path::new(p).is_file() {
            return Err(TlsError::NoSuchFile(p.clone()));
        }
    }
    load_certified(tls).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_do_not_load_are_named() {
        let dir = std::env::temp_dir().join(format!("dome-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        let text = |e: TlsError| crate::error_chain(&e);
        assert_eq!(
            text(check_tls(&tls).unwrap_err()),
            format!("{}: no such file", tls.cert.display())
        );
        std::fs::write(&tls.cert, "").unwrap();
        std::fs::write(&tls.key, "").unwrap();
        assert_eq!(
            text(check_tls(&tls).unwrap_err()),
            format!("{}: no certificate in the file", tls.cert.display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
