//! TLS without a certificate authority, for traffic between clients and storage nodes, and
//! HTTPS for the gateway.
//!
//! A storage node makes its own key and self-signed certificate ([`identity`]); its URL
//! carries the SHA-256 of the certificate's public key (`…#spki-sha256=<base32>`, a
//! [`SpkiPin`]), and a client accepts exactly that key: no CA roots, no host-name check, no
//! expiry (the pin is the identity, as in Tahoe-LAFS's NURLs). Everything here uses one
//! crypto provider (aws-lc-rs, the one object_store's HTTP client uses too) and TLS 1.3 for
//! node traffic.

#[cfg(feature = "node")]
pub mod identity;
#[cfg(feature = "server")]
pub mod server;

use std::fmt;
use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::core::cap::{base32_decode, base32_encode};

/// The crypto provider of every TLS connection segvault makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    PROVIDER.clone()
}

/// The SHA-256 of a certificate's DER-encoded SubjectPublicKeyInfo: what a storage-node URL
/// pins. Written `spki-sha256=` and 52 lowercase base32 characters (the caps' alphabet: no
/// character a shell, TOML or a URL fragment treats specially).
///
/// ```
/// use segvault::tls::SpkiPin;
/// let pin: SpkiPin = "spki-sha256=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap();
/// assert_eq!(pin.to_string().len(), "spki-sha256=".len() + 52);
/// assert!("spki-sha256=short".parse::<SpkiPin>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin(pub [u8; 32]);

/// The text before a pin's base32 digest.
pub const PIN_PREFIX: &str = "spki-sha256=";

/// Why a text or certificate gives no pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// Not `spki-sha256=` and 52 base32 characters.
    #[error("a key pin is spki-sha256= and 52 characters a-z, 2-7 (as storage-server prints it)")]
    Malformed,
    /// The certificate could not be parsed.
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
}

impl SpkiPin {
    /// The pin of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> SpkiPin {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
        let mut pin = [0u8; 32];
        pin.copy_from_slice(digest.as_ref());
        SpkiPin(pin)
    }

    /// The pin of a DER-encoded X.509 certificate's public key.
    pub fn of_certificate(certificate: &CertificateDer<'_>) -> Result<SpkiPin, PinError> {
        let parsed = ParsedCertificate::try_from(certificate)
            .map_err(|e| PinError::Certificate(e.to_string()))?;
        Ok(SpkiPin::of_spki(parsed.subject_public_key_info().as_ref()))
    }

    /// Equality in time independent of where the pins differ.
    fn same_as(&self, other: &SpkiPin) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::str::FromStr for SpkiPin {
    type Err = PinError;

    fn from_str(text: &str) -> Result<SpkiPin, PinError> {
        let digest = text.strip_prefix(PIN_PREFIX).ok_or(PinError::Malformed)?;
        base32_decode::<32>(digest.as_bytes())
            .map(SpkiPin)
            .ok_or(PinError::Malformed)
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PIN_PREFIX}{}", base32_encode(&self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

/// A node presented another key than its URL pins.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the node presented the key {presented}, but its URL pins {expected}: its key was replaced (storage-server --rotate-key prints the new URL) or something between us answers in its place"
)]
pub struct PinMismatch {
    /// The pin in the URL.
    pub expected: SpkiPin,
    /// The pin of the key the peer presented.
    pub presented: SpkiPin,
}

/// Accepts exactly one public key, and checks that the peer holds its private half (the
/// handshake signature); nothing else about the certificate matters.
#[derive(Debug)]
pub struct PinnedKey {
    /// `None` accepts no key at all (a client for plain-HTTP URLs only).
    pin: Option<SpkiPin>,
    provider: Arc<CryptoProvider>,
}

impl PinnedKey {
    /// A verifier accepting the key `pin` names.
    pub fn new(pin: Option<SpkiPin>) -> PinnedKey {
        PinnedKey {
            pin,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = SpkiPin::of_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match self.pin {
            Some(expected) if expected.same_as(&presented) => Ok(ServerCertVerified::assertion()),
            Some(expected) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch {
                    expected,
                    presented,
                })),
            ))),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for one storage node: TLS 1.3, ALPN `http/1.1`, the pinned key,
/// and session resumption (connections after the first skip the full handshake).
///
/// ```
/// # use segvault::tls::{node_client_config, SpkiPin};
/// let pin: SpkiPin = "spki-sha256=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".parse()?;
/// let config = node_client_config(Some(pin));
/// assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
/// # Ok::<(), segvault::tls::PinError>(())
/// ```
pub fn node_client_config(pin: Option<SpkiPin>) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| unreachable!("aws-lc-rs supports TLS 1.3: {e}"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedKey::new(pin)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// What went wrong in a TLS handshake, in words an operator can act on, if `error` (or one
/// of its causes) is a TLS failure.
pub fn describe_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe_tls_error(tls));
        }
        // An io::Error's `source()` skips the error it wraps (tokio-rustls wraps rustls's
        // error in one, and connectors wrap that in another): step into it instead.
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn describe_tls_error(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(mismatch) => mismatch.to_string(),
                None => format!("its certificate was refused: {other}"),
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            "it answered in TLS, but its URL has no key pin".to_owned()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "it does not speak TLS ({error}): a plain-HTTP node has an http:// URL, allowed only on this machine's loopback address"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("it refused the TLS handshake ({alert:?})")
        }
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests;
