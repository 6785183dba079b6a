//! A storage node's TLS identity: an ECDSA P-256 key and a self-signed certificate, made on
//! first start and kept in `DIR/tls-identity.pem` (mode 0600, the key first, then the
//! certificate). The certificate's public-key hash is the pin in the node's URL; rotating
//! the key changes it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

use super::{SpkiPin, provider};

/// The file, in the node's directory.
pub const IDENTITY_FILE: &str = "tls-identity.pem";

/// Why the identity cannot be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a key and a certificate that belong together.
    #[error("{path}: {why} (move it away to make a new identity; the node's URL pin then changes)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Key generation failed.
    #[error("cannot make a key: {0}")]
    Generate(String),
}

/// A node's key and certificate, ready for a TLS server.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The key and its certificate.
    pub certified: Arc<CertifiedKey>,
    /// The certificate's public-key pin, for the node's URL.
    pub pin: SpkiPin,
}

impl NodeIdentity {
    /// Loads `dir`'s identity, making one first if there is none. Returns it and whether it
    /// was made now.
    ///
    /// ```
    /// # use segvault::tls::identity::NodeIdentity;
    /// let dir = tempfile::tempdir()?;
    /// let (made, new) = NodeIdentity::load_or_create(dir.path())?;
    /// let (again, _) = NodeIdentity::load_or_create(dir.path())?;
    /// assert!(new);
    /// assert_eq!(made.pin, again.pin); // kept across restarts
    /// assert_ne!(NodeIdentity::rotate(dir.path())?.pin, made.pin);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_or_create(dir: &Path) -> Result<(NodeIdentity, bool), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        match fs::read(&path) {
            Ok(pem) => Ok((parse(&path, &Zeroizing::new(pem))?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((NodeIdentity::rotate(dir)?, true)),
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    /// Makes a new key and certificate for `dir`, replacing any (atomically: a crash leaves
    /// the old identity or the new one, never a mix).
    pub fn rotate(dir: &Path) -> Result<NodeIdentity, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let pem = generate()?;
        let identity = parse(&path, pem.as_bytes())?;
        write_private(dir, &path, pem.as_bytes())?;
        Ok(identity)
    }
}

fn generate() -> Result<Zeroizing<String>, IdentityError> {
    let generate = |e: rcgen::Error| IdentityError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["segvault-node".to_owned()]).map_err(generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "segvault storage node");
    let certificate = params.self_signed(&key).map_err(generate)?;
    let mut pem = Zeroizing::new(key.serialize_pem());
    pem.push_str(&certificate.pem());
    Ok(pem)
}

fn parse(path: &Path, pem: &[u8]) -> Result<NodeIdentity, IdentityError> {
    let invalid = |why: String| IdentityError::Invalid {
        path: path.to_owned(),
        why,
    };
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| invalid(format!("no key: {e}")))?;
    let certificate =
        CertificateDer::from_pem_slice(pem).map_err(|e| invalid(format!("no certificate: {e}")))?;
    let pin = SpkiPin::of_certificate(&certificate).map_err(|e| invalid(e.to_string()))?;
    let certified = CertifiedKey::from_der(vec![certificate], key, &provider())
        .map_err(|e| invalid(format!("key and certificate do not match: {e}")))?;
    Ok(NodeIdentity {
        certified: Arc::new(certified),
        pin,
    })
}

/// Writes `bytes` to `path` readable by the owner only, through a temporary file renamed
/// into place and synced.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    // tempfile creates with mode 0600.
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_identity_is_made_once_kept_private_reused_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let (first, made) = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert!(made);
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, made) = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(first.pin, again.pin);
        let rotated = NodeIdentity::rotate(dir.path()).unwrap();
        assert_ne!(rotated.pin, first.pin);
        assert_eq!(
            NodeIdentity::load_or_create(dir.path()).unwrap().0.pin,
            rotated.pin
        );
    }

    #[test]
    fn a_damaged_identity_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), "not pem").unwrap();
        let error = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("move it away"), "{error}");
        // A key with another key's certificate.
        let a = generate().unwrap();
        let b = generate().unwrap();
        let key_end = a.find("-----END PRIVATE KEY-----").unwrap() + 26;
        let cert_start = b.find("-----BEGIN CERTIFICATE-----").unwrap();
        let mixed = format!("{}{}", &a[..key_end], &b[cert_start..]);
        fs::write(dir.path().join(IDENTITY_FILE), mixed).unwrap();
        let error = NodeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("do not match"), "{error}");
    }
}
