//! Certificates for HTTPS tests: a test certificate authority and a server certificate it
//! signed for `localhost` and 127.0.0.1, written as the PEM files `serve --tls-cert` reads.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate authority of the test's own and one server certificate it issued.
pub struct TestCertificates {
    /// The authority's certificate (PEM), what clients trust.
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The server certificate (DER), to recognise which one a server presented.
    pub cert_der: Vec<u8>,
    /// Base64 of the SHA-256 of the server key's SubjectPublicKeyInfo, the form Chromium's
    /// `--ignore-certificate-errors-spki-list` takes.
    pub spki_sha256_base64: String,
}

impl TestCertificates {
    /// Makes an authority named `name` and a server certificate, written into `dir` with
    /// file names starting with `name`.
    pub fn new(dir: &Path, name: &str) -> TestCertificates {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("segvault test CA {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();

        let certificates = TestCertificates {
            ca_pem: ca.pem(),
            ca_file: dir.join(format!("{name}-ca.pem")),
            cert_file: dir.join(format!("{name}-cert.pem")),
            key_file: dir.join(format!("{name}-key.pem")),
            cert_der: cert.der().to_vec(),
            spki_sha256_base64: {
                use base64::Engine as _;
                let digest = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &rcgen::PublicKeyData::subject_public_key_info(&key),
                );
                base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
            },
        };
        std::fs::write(&certificates.ca_file, &certificates.ca_pem).unwrap();
        std::fs::write(&certificates.cert_file, cert.pem()).unwrap();
        std::fs::write(&certificates.key_file, key.serialize_pem()).unwrap();
        certificates
    }

    /// `serve` arguments that make the gateway serve HTTPS with this certificate.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert_file.display().to_string(),
            "--tls-key".into(),
            self.key_file.display().to_string(),
        ]
    }

    /// A rustls client configuration trusting only this authority, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(&self.ca_pem) {
            roots.add(cert).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// The certificate a TLS server at `addr` presents to a client trusting `certificates`'
/// authority, or why the handshake failed.
pub fn presented_certificate(
    addr: &str,
    certificates: &TestCertificates,
) -> Result<Vec<u8>, String> {
    let config = std::sync::Arc::new(certificates.client_config(&[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut connection = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    while connection.is_handshaking() {
        connection
            .complete_io(&mut tcp)
            .map_err(|e| e.to_string())?;
    }
    Ok(connection.peer_certificates().unwrap()[0].to_vec())
}
