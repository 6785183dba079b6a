//! The behaviour every [`ShareStore`] must have, as one suite each backend's tests call.
//!
//! ```no_run
//! # async fn demo() {
//! let dir = tempfile::tempdir().unwrap();
//! let store = segvault::store::DirectoryStore::open(dir.path()).unwrap();
//! segvault::store::testing::conformance::run(&store).await;
//! # }
//! ```

use std::os::unix::fs::FileExt;

use crate::core::cap::StorageIndex;
use crate::core::codec::Codec as _;
use crate::core::geometry::{Geometry, ShareNum};
use crate::core::layout::{HEADER_LEN, ShareLayout};
use crate::core::share_header::ShareHeader;
use crate::store::{ShareStore, SpooledShare, StoreError};

/// Share-shaped bytes: a valid header naming (`si`, `share`) and a filler pattern, as long as
/// a share of a `size`-byte file is (storage nodes check both).
fn pattern(si: StorageIndex, share: ShareNum, size: u64, seed: u8) -> Vec<u8> {
    let geometry = Geometry::new(size, 4096, 3, 256).expect("valid geometry");
    let len = ShareLayout::new(&geometry).share_len() as usize;
    let mut bytes = ShareHeader {
        share,
        geometry,
        storage_index: si,
    }
    .to_bytes();
    bytes.extend((HEADER_LEN as usize..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}

fn spool(store: &dyn ShareStore, bytes: &[u8]) -> SpooledShare {
    let dir = store.spool_dir().unwrap_or_else(std::env::temp_dir);
    let spool = SpooledShare::create(&dir, bytes.len() as u64).expect("create spool");
    spool.file().write_all_at(bytes, 0).expect("write spool");
    spool
}

fn fresh_storage_index() -> StorageIndex {
    let mut si = [0u8; 16];
    getrandom::fill(&mut si).expect("random storage index");
    StorageIndex(si)
}

/// Runs every check against `store`, panicking with a description on the first failure.
pub async fn run(store: &dyn ShareStore) {
    let si = fresh_storage_index();
    let share = ShareNum(3);

    assert!(
        store.list(si).await.expect("list unknown file").is_empty(),
        "an unknown file has no shares"
    );
    assert!(
        matches!(
            store.read(si, share, vec![0..1]).await,
            Err(StoreError::NotFound)
        ),
        "reading a missing share is NotFound"
    );

    let bytes = pattern(si, share, 250_000, 7);
    let len = bytes.len() as u64;
    assert!(len > 70_000);
    store
        .write(si, share, spool(store, &bytes))
        .await
        .expect("write a share");
    assert_eq!(store.list(si).await.expect("list"), vec![share]);

    let ranges = vec![0..10, len - 10..len, 5..5, 4096..70_000];
    let got = store
        .read(si, share, ranges.clone())
        .await
        .expect("read ranges");
    assert_eq!(got.len(), ranges.len(), "one buffer per range");
    for (r, part) in ranges.iter().zip(&got) {
        assert_eq!(
            &part[..],
            &bytes[r.start as usize..r.end as usize],
            "range {r:?}"
        );
    }

    assert!(
        store
            .read(si, share, Vec::new())
            .await
            .expect("read nothing")
            .is_empty(),
        "no ranges, no buffers"
    );
    assert!(
        matches!(
            store.read(si, share, vec![len - 1..len + 1]).await,
            Err(StoreError::OutOfBounds { .. })
        ),
        "a range past the end is refused"
    );
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = vec![10..5];
    assert!(
        matches!(
            store.read(si, share, reversed).await,
            Err(StoreError::InvalidRequest(_))
        ),
        "a reversed range is refused"
    );

    store
        .write(si, share, spool(store, &bytes))
        .await
        .expect("rewriting identical bytes succeeds");
    assert!(
        matches!(
            store
                .write(si, share, spool(store, &pattern(si, share, 250_000, 8)))
                .await,
            Err(StoreError::Conflict { .. })
        ),
        "rewriting different bytes is refused"
    );
    assert_eq!(
        &store.read(si, share, vec![0..100]).await.expect("read")[0][..],
        &bytes[..100],
        "a refused write changes nothing"
    );

    store
        .write(
            si,
            ShareNum(0),
            spool(store, &pattern(si, ShareNum(0), 10, 1)),
        )
        .await
        .expect("write share 0");
    store
        .write(
            si,
            ShareNum(255),
            spool(store, &pattern(si, ShareNum(255), 1, 2)),
        )
        .await
        .expect("write share 255");
    assert_eq!(
        store.list(si).await.expect("list"),
        vec![ShareNum(0), share, ShareNum(255)],
        "listed in order"
    );
    assert!(
        store
            .list(fresh_storage_index())
            .await
            .expect("list other")
            .is_empty(),
        "files do not mix"
    );

    let many: Vec<_> = (0..200u64).map(|i| i * 300..i * 300 + 17).collect();
    let got = store
        .read(si, share, many.clone())
        .await
        .expect("read 200 ranges at once");
    for (r, part) in many.iter().zip(&got) {
        assert_eq!(
            &part[..],
            &bytes[r.start as usize..r.end as usize],
            "range {r:?}"
        );
    }

    let reads = (0..16u64).map(|i| store.read(si, share, vec![i * 1000..i * 1000 + 500]));
    for (i, result) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        let i = i * 1000;
        assert_eq!(&result.expect("concurrent read")[0][..], &bytes[i..i + 500]);
    }

    // An abandoned upload takes back what it wrote, and only that.
    store
        .abandon(si, ShareNum(255))
        .await
        .expect("take back a share this store wrote");
    assert!(
        matches!(
            store.read(si, ShareNum(255), vec![0..1]).await,
            Err(StoreError::NotFound)
        ),
        "a share taken back is gone at once"
    );
    assert_listing_settles(
        store,
        si,
        &[ShareNum(0), share],
        "the share taken back is gone, the others stay",
    )
    .await;
    store
        .abandon(si, ShareNum(255))
        .await
        .expect("taking back again is done already");
    store
        .abandon(fresh_storage_index(), ShareNum(1))
        .await
        .expect("nothing to take back");
    store
        .abandon(si, ShareNum(0))
        .await
        .expect("take back share 0");
    store
        .abandon(si, share)
        .await
        .expect("take back the last share");
    assert_listing_settles(store, si, &[], "every share taken back").await;
}

/// Listings may lag deletes a little: Garage's `ListObjects` went on showing an object for
/// up to about 100 ms after its `DELETE` had answered, under load, though reading it was
/// `NotFound` at once. Readers cope (a listed share that is gone is a missing share); the
/// listing must still settle, within seconds.
async fn assert_listing_settles(
    store: &dyn ShareStore,
    si: StorageIndex,
    expected: &[ShareNum],
    what: &str,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let listed = store.list(si).await.expect("list");
        if listed == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: listed {listed:?}, expected {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
