use super::*;

#[test]
fn a_pin_reads_back_what_it_writes_and_refuses_anything_else() {
    let pin = SpkiPin::of_spki(b"any key");
    let text = pin.to_string();
    assert!(text.starts_with("spki-sha256="));
    assert_eq!(text.parse::<SpkiPin>().unwrap(), pin);
    for bad in [
        "",
        "spki-sha256=",
        &text[PIN_PREFIX.len()..],
        &text.to_uppercase(),
        &format!("{text}a"),
        &text[..text.len() - 1],
        &text.replace(PIN_PREFIX, "sha256="),
    ] {
        assert_eq!(bad.parse::<SpkiPin>(), Err(PinError::Malformed), "{bad}");
    }
}

#[cfg(feature = "node")]
mod handshake {
    use super::super::identity::NodeIdentity;
    use super::super::server::{ServerCertificate, ServerProfile, server_config};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS handshake over an in-memory pipe: the client pins `pin`, the server presents
    /// `identity`. Returns what the client saw.
    async fn connect(identity: &NodeIdentity, pin: Option<SpkiPin>) -> Result<Vec<u8>, String> {
        let server = server_config(
            Arc::new(ServerCertificate::fixed(identity.certified.clone())),
            ServerProfile::Node,
        );
        let (client_io, server_io) = tokio::io::duplex(64 << 10);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let serving = tokio::spawn(async move {
            let mut stream = acceptor.accept(server_io).await.ok()?;
            stream.write_all(b"hello").await.ok()?;
            stream.shutdown().await.ok()
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(node_client_config(pin)));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let result = match connector.connect(name, client_io).await {
            Ok(mut stream) => {
                let mut got = Vec::new();
                stream
                    .read_to_end(&mut got)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(got)
            }
            Err(e) => Err(describe_failure(&e).unwrap_or_else(|| e.to_string())),
        };
        let _ = serving.await;
        result
    }

    #[tokio::test]
    async fn the_pinned_key_is_accepted_and_any_other_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(
            connect(&identity, Some(identity.pin)).await.unwrap(),
            b"hello"
        );

        let other = NodeIdentity::rotate(dir.path()).unwrap();
        let refused = connect(&other, Some(identity.pin)).await.unwrap_err();
        assert!(refused.contains(&other.pin.to_string()), "{refused}");
        assert!(refused.contains(&identity.pin.to_string()), "{refused}");
        assert!(refused.contains("replaced"), "{refused}");

        let refused = connect(&identity, None).await.unwrap_err();
        assert!(refused.contains("no key pin"), "{refused}");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_speak_tls_is_named_as_such() {
        let (client_io, mut server_io) = tokio::io::duplex(64 << 10);
        tokio::spawn(async move {
            let mut hello = [0u8; 64];
            let _ = server_io.read(&mut hello).await;
            let _ = server_io
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(node_client_config(Some(SpkiPin([7; 32])))));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let error = connector.connect(name, client_io).await.unwrap_err();
        let described = describe_failure(&error).unwrap();
        assert!(described.contains("does not speak TLS"), "{described}");
    }
}
