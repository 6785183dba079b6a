//! Tests of the HTTP store against a real storage node on 127.0.0.1.
use super::*;
use crate::node::{NodeConfig, StorageNode};
use crate::store::DirectoryStore;

async fn node(config: NodeConfig) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let node = StorageNode::new(store, config);
    tokio::spawn(async move { node.serve(listener, std::future::pending()).await });
    (url, dir)
}

#[tokio::test]
async fn passes_the_conformance_suite() {
    let (url, _dir) = node(NodeConfig::default()).await;
    let store = HttpStore::new(&url, HttpOptions::default()).unwrap();
    store.check().await.unwrap();
    crate::store::testing::conformance::run(&store).await;
    // With a path prefix ending in a slash, and the same node.
    let store = HttpStore::new(&format!("{url}/"), HttpOptions::default()).unwrap();
    assert_eq!(store.name(), url);
}

#[test]
fn overlapping_ranges_are_asked_for_once() {
    assert_eq!(
        coalesce(&[10..20, 0..5, 15..30, 5..6, 40..40, 50..60]),
        vec![0..6, 10..30, 40..40, 50..60]
    );
    assert_eq!(coalesce(&[3..3]), vec![3..3]);
    assert!(coalesce(&[]).is_empty());
}

#[tokio::test]
async fn batched_reads_with_repeated_hash_nodes_get_each_range() {
    let (url, _dir) = node(NodeConfig::default()).await;
    let store = HttpStore::new(&url, HttpOptions::default()).unwrap();
    let plaintext: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let grid = crate::Grid::new(vec![Arc::new(store.clone()) as Arc<dyn ShareStore>]);
    let options = crate::PutOptions {
        k: 1,
        n: 1,
        ..crate::PutOptions::default()
    };
    let cap = crate::upload::put(&grid, crate::PutSource::Bytes(plaintext), &options)
        .await
        .unwrap();
    let si = cap.storage_index();
    let len = crate::core::layout::ShareLayout::new(cap.geometry()).share_len();
    // Each range many times over: more than the node serves in one request, unless
    // asked for once.
    let ranges: Vec<Range<u64>> = (0..200).map(|i| (i * 7) % 100..len - (i % 3)).collect();
    let direct = crate::store::DirectoryStore::open(_dir.path()).unwrap();
    let expected = direct.read(si, ShareNum(0), ranges.clone()).await.unwrap();
    let parts = store.read(si, ShareNum(0), ranges).await.unwrap();
    assert_eq!(parts, expected);
}

#[test]
fn urls_are_checked() {
    let options = HttpOptions::default;
    for bad in [
        "127.0.0.1:7001",
        "https://node:7001",
        "ftp://node",
        "http://user:secret@node:7001",
        "http://user:secret@node:bad-port",
        "https://user:secret@node",
        "user:secret@node",
        "http://node:7001/?x=1",
        "http://node:7001/#x",
        "http://",
        "not a url",
    ] {
        let error = HttpStore::new(bad, options()).unwrap_err().to_string();
        assert!(!error.contains("secret"), "{error}");
    }
    let store = HttpStore::new("http://127.0.0.1:7001/segvault/", options()).unwrap();
    assert_eq!(store.name(), "http://127.0.0.1:7001/segvault");
    let pin = "spki-sha256=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let store = HttpStore::new(&format!("https://node:7001/segvault/#{pin}"), options()).unwrap();
    assert_eq!(store.name(), "https://node:7001/segvault");
}

#[test]
fn plain_http_is_refused_off_loopback_and_a_token_never_goes_in_cleartext() {
    for loopback in [
        "http://127.0.0.1:7001",
        "http://127.8.0.1:7001",
        "http://[::1]:7001",
        "http://localhost:7001",
    ] {
        assert!(NodeUrl::parse(loopback, true).is_ok(), "{loopback}");
    }
    for remote in [
        "http://10.0.0.5:7001",
        "http://node:7001",
        "http://[2001:db8::1]:7001",
    ] {
        let with_token = NodeUrl::parse(remote, true).unwrap_err().to_string();
        assert!(
            with_token.contains("refusing to send the access token in cleartext"),
            "{with_token}"
        );
        let without = NodeUrl::parse(remote, false).unwrap_err().to_string();
        assert!(
            without.contains("only for nodes on this machine"),
            "{without}"
        );
    }
    let no_pin = NodeUrl::parse("https://10.0.0.5:7001", true)
        .unwrap_err()
        .to_string();
    assert!(no_pin.contains("needs its key pin"), "{no_pin}");
    let bad_pin = NodeUrl::parse("https://10.0.0.5:7001#spki-sha256=zz", true).unwrap_err();
    assert!(matches!(bad_pin, UrlError::BadPin(..)), "{bad_pin}");
}

#[tokio::test]
async fn a_refused_token_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "abcdefghijklmnopqrstuvwxyz234567").unwrap();
    let token = Token::from_file(&token_file).unwrap();
    let (url, _node_dir) = node(NodeConfig {
        token: Some(token.clone()),
        ..NodeConfig::default()
    })
    .await;
    let without = HttpStore::new(&url, HttpOptions::default()).unwrap();
    let error = without.check().await.unwrap_err().to_string();
    assert!(
        error.contains("401") && error.contains("--token-file"),
        "{error}"
    );
    let with = HttpStore::new(
        &url,
        HttpOptions {
            token: Some(token),
            ..HttpOptions::default()
        },
    )
    .unwrap();
    with.check().await.unwrap();
    crate::store::testing::conformance::run(&with).await;
}
