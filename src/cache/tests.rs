//! Unit tests of the disk cache on real directories.
use super::dir::CACHEDIR_TAG;
use super::*;

fn key(segment: u64) -> BlockKey {
    BlockKey {
        storage_index: StorageIndex([7; 16]),
        share: ShareNum(1),
        segment: SegmentIndex(segment),
    }
}

fn open(dir: &Path, max_bytes: u64, ttl: Duration) -> Arc<DiskCache> {
    let config = CacheConfig {
        dir: dir.to_owned(),
        max_bytes,
        ttl,
    };
    DiskCache::open(config, Arc::new(Metrics::default())).unwrap()
}

#[test]
fn entries_round_trip_and_evict_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let entry = (HEADER_LEN + 100) as u64;
    let cache = open(dir.path(), 3 * entry, Duration::from_secs(3600));
    for s in 0..3 {
        cache.insert(
            key(s),
            CiphertextRecord::verified(vec![], Bytes::from(vec![s as u8; 100]), vec![]),
        );
    }
    assert_eq!(cache.read(&key(0), 100).as_deref(), Some(&[0u8; 100][..]));
    cache.insert(
        key(3),
        CiphertextRecord::verified(vec![], Bytes::from(vec![3; 100]), vec![]),
    );
    assert_eq!(cache.usage(), (3, 3 * entry));
    assert!(
        cache.read(&key(1), 100).is_none(),
        "1 was least recently used"
    );
    assert!(cache.read(&key(0), 100).is_some() && cache.read(&key(3), 100).is_some());
    // Reopened (the lock is released with the first), the order survives in mtimes.
    drop(cache);
    let cache = open(dir.path(), 2 * entry, Duration::from_secs(3600));
    assert_eq!(cache.usage(), (2, 2 * entry));
}

#[test]
fn a_verified_block_arriving_while_its_bad_entry_is_removed_is_cached_once_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20, Duration::from_secs(3600));
    let record = |byte| CiphertextRecord::verified(vec![], Bytes::from(vec![byte; 100]), vec![]);
    cache.insert(key(0), record(1));
    assert_eq!(cache.usage().0, 1);
    // A read found the entry bad; its removal is under way (in `removing`) when the
    // block, fetched again from the grid, is offered back.
    {
        let mut state = cache.lock();
        let entry = state.lru.pop(&key(0)).unwrap();
        state.bytes -= entry.bytes;
        state.removing.insert(key(0));
    }
    cache.insert(key(0), record(2));
    assert_eq!(
        cache.usage().0,
        0,
        "not written while the old file may still go"
    );
    cache.remove_files(&[key(0)]);
    assert_eq!(
        cache.usage().0,
        1,
        "written as soon as the removal finished"
    );
    assert_eq!(cache.read(&key(0), 100).as_deref(), Some(&[2u8; 100][..]));
}

#[test]
fn a_second_process_is_refused_and_partial_files_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20, Duration::from_secs(3600));
    let config = CacheConfig {
        dir: dir.path().to_owned(),
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(60),
    };
    // flock locks belong to the open file, so a second open in one process conflicts too.
    let again = DiskCache::open(config, Arc::new(Metrics::default()));
    assert!(matches!(again, Err(CacheError::InUse(_))), "{again:?}");
    drop(cache);
    fs::write(dir.path().join("tmp/entry-partial"), b"half").unwrap();
    fs::write(dir.path().join("v1/stray"), b"?").unwrap();
    let _cache = open(dir.path(), 1 << 20, Duration::from_secs(3600));
    assert!(!dir.path().join("tmp/entry-partial").exists());
    assert!(!dir.path().join("v1/stray").exists());
}

#[test]
fn expired_entries_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20, Duration::from_millis(100));
    cache.insert(
        key(0),
        CiphertextRecord::verified(vec![], Bytes::from(vec![1; 10]), vec![]),
    );
    assert_eq!(cache.usage().0, 1);
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        cache
            .shares_cached(StorageIndex([7; 16]), SegmentIndex(0), 3)
            .is_empty()
    );
    assert_eq!(cache.sweep_expired(), 1);
    assert_eq!(cache.usage(), (0, 0));
    // The file's directory goes with its last entry.
    let file_dir = dir
        .path()
        .join("v1")
        .join(StorageIndex([7; 16]).to_base32());
    assert!(!file_dir.exists());
}

#[test]
fn a_mislabelled_or_truncated_entry_is_a_miss_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20, Duration::from_secs(3600));
    cache.insert(
        key(0),
        CiphertextRecord::verified(vec![], Bytes::from(vec![1; 10]), vec![]),
    );
    cache.insert(
        key(1),
        CiphertextRecord::verified(vec![], Bytes::from(vec![2; 10]), vec![]),
    );
    let (p0, p1) = (cache.path_of(&key(0)), cache.path_of(&key(1)));
    fs::copy(&p1, &p0).unwrap();
    assert!(cache.read(&key(0), 10).is_none());
    assert!(!p0.exists());
    let bytes = fs::read(&p1).unwrap();
    fs::write(&p1, &bytes[..bytes.len() - 1]).unwrap();
    assert!(cache.read(&key(1), 10).is_none());
    assert_eq!(cache.usage(), (0, 0));
}

#[test]
fn a_directory_holding_other_files_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("tmp/precious"), b"mine").unwrap();
    let config = CacheConfig {
        dir: dir.path().to_owned(),
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(60),
    };
    let opened = DiskCache::open(config, Arc::new(Metrics::default()));
    assert!(
        matches!(opened, Err(CacheError::NotACache(_))),
        "{opened:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("tmp/precious")).unwrap(),
        b"mine"
    );
    assert!(!dir.path().join("lock").exists());
}

#[test]
fn another_tools_tag_is_refused_and_a_cut_short_tag_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# cargo\n",
    )
    .unwrap();
    let config = |dir: &Path| CacheConfig {
        dir: dir.to_owned(),
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(60),
    };
    let opened = DiskCache::open(config(dir.path()), Arc::new(Metrics::default()));
    assert!(
        matches!(opened, Err(CacheError::NotACache(_))),
        "{opened:?}"
    );
    let ours = tempfile::tempdir().unwrap();
    drop(open(ours.path(), 1 << 20, Duration::from_secs(60)));
    fs::write(
        ours.path().join("CACHEDIR.TAG"),
        &CACHEDIR_TAG.as_bytes()[..20],
    )
    .unwrap();
    drop(open(ours.path(), 1 << 20, Duration::from_secs(60)));
    assert_eq!(
        fs::read(ours.path().join("CACHEDIR.TAG")).unwrap(),
        CACHEDIR_TAG.as_bytes()
    );
}

#[cfg(unix)]
#[test]
fn symbolic_links_in_the_cache_are_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(outside.path().join("sub")).unwrap();
    fs::write(outside.path().join("0-0"), b"not an entry").unwrap();
    fs::write(outside.path().join("sub/keep"), b"keep").unwrap();
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 1 << 20, Duration::from_secs(60)));
    let si = StorageIndex([7; 16]).to_base32();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("v1").join(&si)).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("v1/elsewhere")).unwrap();
    drop(open(dir.path(), 1 << 20, Duration::from_secs(60)));
    assert_eq!(
        fs::read(outside.path().join("0-0")).unwrap(),
        b"not an entry"
    );
    assert_eq!(fs::read(outside.path().join("sub/keep")).unwrap(), b"keep");
    assert!(
        !dir.path().join("v1").join(&si).exists(),
        "the link itself is removed"
    );
    // A link in place of the cache's own directories is refused.
    fs::remove_dir_all(dir.path().join("tmp")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("tmp")).unwrap();
    let config = CacheConfig {
        dir: dir.path().to_owned(),
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(60),
    };
    assert!(DiskCache::open(config, Arc::new(Metrics::default())).is_err());
    assert!(outside.path().join("sub/keep").exists());
}

#[cfg(unix)]
#[test]
fn directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = open(&root, 1 << 20, Duration::from_secs(3600));
    cache.insert(
        key(0),
        CiphertextRecord::verified(vec![], Bytes::from(vec![1; 10]), vec![]),
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("tmp")), 0o700);
    assert_eq!(mode(cache.path_of(&key(0)).parent().unwrap()), 0o700);
    assert_eq!(mode(&cache.path_of(&key(0))), 0o600);
}
