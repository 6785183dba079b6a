//! TLS for the servers: a certificate that can be replaced while connections are served
//! (the gateway's PEM files, reloaded on SIGHUP) and the server configurations.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::provider;

/// Why a certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct CertificateFileError {
    path: PathBuf,
    why: String,
}

/// The certificate a server presents; [`ServerCertificate::reload`] replaces it for new
/// connections while those already open go on with the old one.
pub struct ServerCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("files", &self.files)
            .finish()
    }
}

impl ServerCertificate {
    /// A certificate that never changes.
    pub fn fixed(certified: Arc<CertifiedKey>) -> ServerCertificate {
        ServerCertificate {
            current: RwLock::new(certified),
            files: None,
        }
    }

    /// The certificate chain in `cert` and the private key in `key` (PEM; the key may also
    /// be in `cert`'s file), checked to belong together.
    ///
    /// ```no_run
    /// # use segvault::tls::server::ServerCertificate;
    /// let certificate = ServerCertificate::from_pem_files("cert.pem".as_ref(), "key.pem".as_ref())?;
    /// certificate.reload()?; // after the files were replaced
    /// # Ok::<(), segvault::tls::server::CertificateFileError>(())
    /// ```
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
    ) -> Result<ServerCertificate, CertificateFileError> {
        let certified = load_pem_files(cert, key)?;
        Ok(ServerCertificate {
            current: RwLock::new(Arc::new(certified)),
            files: Some((cert.to_owned(), key.to_owned())),
        })
    }

    /// Reads the files again. On any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), CertificateFileError> {
        let Some((cert, key)) = &self.files else {
            return Ok(());
        };
        let certified = load_pem_files(cert, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load_pem_files(cert: &Path, key: &Path) -> Result<CertifiedKey, CertificateFileError> {
    let error = |path: &Path, why: String| CertificateFileError {
        path: path.to_owned(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| error(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(error(cert, "no CERTIFICATE in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| error(key, format!("no private key: {e}")))?;
    CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| error(key, format!("not the key of the certificate: {e}")))
}

/// What a TLS server offers: the protocols by ALPN, and the TLS versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerProfile {
    /// A storage node: TLS 1.3 and HTTP/1.1 (its clients are segvault's own).
    Node,
    /// The gateway: TLS 1.2 and 1.3 (browsers and players of every age), `h2` then
    /// `http/1.1`.
    Gateway,
}

/// A server configuration presenting `certificate`.
pub fn server_config(
    certificate: Arc<ServerCertificate>,
    profile: ServerProfile,
) -> Arc<ServerConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = match profile {
        ServerProfile::Node => &[&rustls::version::TLS13],
        ServerProfile::Gateway => rustls::DEFAULT_VERSIONS,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap_or_else(|e| unreachable!("aws-lc-rs supports TLS 1.2 and 1.3: {e}"))
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = match profile {
        ServerProfile::Node => vec![b"http/1.1".to_vec()],
        ServerProfile::Gateway => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    // Resumption by session tickets: a returning client skips the key exchange, and the
    // server keeps no per-session state.
    if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Arc::new(config)
}
