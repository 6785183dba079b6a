//! Unit tests of the directory store on real directories.
use super::*;

#[test]
fn only_canonical_share_names_are_listed() {
    assert_eq!(parse_share_name("0"), Some(ShareNum(0)));
    assert_eq!(parse_share_name("255"), Some(ShareNum(255)));
    for bad in ["", "00", "07", "256", "-1", "1a", "spool-x.part", " 1"] {
        assert_eq!(parse_share_name(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::open(dir.path()).unwrap();
    crate::store::testing::conformance::run(&store).await;
}

fn spool_of(store: &DirectoryStore, bytes: &[u8]) -> SpooledShare {
    let spool = SpooledShare::create(&store.root().join("tmp"), bytes.len() as u64).unwrap();
    spool.file().write_all_at(bytes, 0).unwrap();
    spool
}

#[tokio::test]
async fn only_the_upload_that_wrote_a_share_takes_it_back_even_while_it_lands() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::open(dir.path()).unwrap();
    let (si, share) = (StorageIndex([3; 16]), ShareNum(1));
    let (alice, bob) = (UploadOwner::random(), UploadOwner::random());
    let path = store.share_path(&si, share);

    // Written by Alice: Bob cannot take it back, Alice can.
    let ticket = store.begin_write(si, share, alice);
    store
        .write_with(spool_of(&store, b"alice"), ticket)
        .await
        .unwrap();
    let refused = store.abandon_as(si, share, bob).await;
    assert!(
        matches!(refused, Err(StoreError::Forbidden(_))),
        "{refused:?}"
    );
    store.abandon_as(si, share, alice).await.unwrap();
    assert!(!path.exists() && !path.parent().unwrap().exists());

    // Abandoned while Alice's write is in flight: removed the moment it lands.
    let ticket = store.begin_write(si, share, alice);
    store.abandon_as(si, share, alice).await.unwrap();
    let landed = store.write_with(spool_of(&store, b"alice"), ticket).await;
    assert!(
        matches!(landed, Err(StoreError::Forbidden(_))),
        "{landed:?}"
    );
    assert!(!path.exists());

    // Bob writing the same share meanwhile does not let him take Alice's.
    let ticket = store.begin_write(si, share, alice);
    let bobs = store.begin_write(si, share, bob);
    assert!(matches!(
        store.abandon_as(si, share, bob).await,
        Err(StoreError::Forbidden(_))
    ));
    store
        .write_with(spool_of(&store, b"same"), ticket)
        .await
        .unwrap();
    store
        .write_with(spool_of(&store, b"same"), bobs)
        .await
        .unwrap();
    assert!(store.abandon_as(si, share, bob).await.is_err());
    assert!(path.exists());

    // A share this process never wrote (stored before, or by another process) stays.
    let other = DirectoryStore::open(dir.path()).unwrap();
    assert!(matches!(
        other.abandon(si, share).await,
        Err(StoreError::Forbidden(_))
    ));
    // A take-back that overtook its write removes the share when the write lands.
    let early = StorageIndex([9; 16]);
    store.abandon_as(early, share, alice).await.unwrap();
    let ticket = store.begin_write(early, share, alice);
    let landed = store.write_with(spool_of(&store, b"late"), ticket).await;
    assert!(matches!(landed, Err(StoreError::Forbidden(_))));
    assert!(!store.share_path(&early, share).exists());
    // A write that fails leaves no record behind.
    let ticket = store.begin_write(StorageIndex([8; 16]), share, alice);
    drop(ticket);
    assert!(store.inner.lock_ledger().in_flight.is_empty());

    // Stored again by Bob with the same bytes, Alice's share is no longer hers alone.
    let twice = StorageIndex([7; 16]);
    let ticket = store.begin_write(twice, share, alice);
    store
        .write_with(spool_of(&store, b"twin"), ticket)
        .await
        .unwrap();
    let ticket = store.begin_write(twice, share, bob);
    store
        .write_with(spool_of(&store, b"twin"), ticket)
        .await
        .unwrap();
    assert!(store.abandon_as(twice, share, alice).await.is_err());
    assert!(store.share_path(&twice, share).exists());
}

#[tokio::test]
async fn share_paths_stay_under_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::open(dir.path()).unwrap();
    let path = store.share_path(&StorageIndex([0xff; 16]), ShareNum(255));
    assert!(path.starts_with(dir.path().join("shares")));
    assert_eq!(path.file_name().unwrap(), "255");
}
