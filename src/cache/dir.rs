//! The cache directory on disk: private directories and files, the cache-directory tag that
//! claims a directory as the cache's own, and the start-up scan that indexes entries and
//! removes whatever else is there (never following a link).

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use tracing::warn;

use super::{CacheError, io_error};
use crate::core::cache_entry::{self, BlockKey, HEADER_LEN};
use crate::core::cap::StorageIndex;

#[cfg(unix)]
pub(super) fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {
            // An existing directory is tightened, not trusted as it is.
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
pub(super) fn create_private_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

pub(super) fn private_file_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// The Cache Directory Tagging Specification's tag (backup tools skip tagged directories),
/// which also marks the directory as the cache's own.
pub(super) const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
    # This file is a cache directory tag created by segvault (ciphertext blocks only).\n\
    # For information about cache directory tags, see https://bford.info/cachedir/\n";

/// Makes sure `dir` is the cache's: tagged by segvault already, or empty (then tagged). A
/// directory with anything else in it is refused before a file in it is touched. A tag cut
/// short by a crash, or a cache from before tags (its `lock` holds nothing else but the
/// cache's own names), is re-tagged.
pub(super) fn claim(dir: &Path) -> Result<(), CacheError> {
    const OWN_NAMES: [&str; 4] = ["CACHEDIR.TAG", "lock", "tmp", "v1"];
    let tag = dir.join("CACHEDIR.TAG");
    let existing = match fs::read(&tag) {
        Ok(bytes) if bytes == CACHEDIR_TAG.as_bytes() => return Ok(()),
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(&tag)(e)),
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        names.push(entry.map_err(io_error(dir))?.file_name());
    }
    let only_own = names
        .iter()
        .all(|n| OWN_NAMES.iter().any(|own| n.as_os_str() == *own));
    let ours = match &existing {
        // Another tool's tag (Cargo's target/, a backup cache…) is not ours.
        Some(bytes) => only_own && CACHEDIR_TAG.as_bytes().starts_with(bytes),
        None => names.is_empty() || (only_own && names.iter().any(|n| n == "lock")),
    };
    if !ours {
        return Err(CacheError::NotACache(dir.to_owned()));
    }
    let mut file = private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tag)
        .map_err(io_error(&tag))?;
    file.write_all(CACHEDIR_TAG.as_bytes())
        .map_err(io_error(&tag))
}

/// Removes a file or link the cache did not write; a directory it did not make is left alone
/// (and warned about) rather than removed with whatever it holds.
pub(super) fn remove_stray(path: &Path, is_dir: bool) {
    if is_dir {
        warn!(path = %path.display(), "unexpected directory in the cache; left alone");
    } else {
        warn!(path = %path.display(), "unexpected file in the cache; removed");
        let _ = fs::remove_file(path);
    }
}

/// The entries under `entries_dir` as (key, bytes, age since last use), least recently used
/// first. Anything else there — stray files, bad names, expired entries — is removed.
pub(super) fn scan(
    entries_dir: &Path,
    ttl: Duration,
) -> Result<Vec<(BlockKey, u64, Duration)>, CacheError> {
    let mut found = Vec::new();
    let now = SystemTime::now();
    for dir in fs::read_dir(entries_dir).map_err(io_error(entries_dir))? {
        let dir = dir.map_err(io_error(entries_dir))?;
        let path = dir.path();
        // file_type() does not follow symbolic links: a link is removed, never entered.
        let is_dir = dir.file_type().is_ok_and(|t| t.is_dir());
        let Some(si) = dir
            .file_name()
            .to_str()
            .and_then(StorageIndex::from_base32)
            .filter(|_| is_dir)
        else {
            remove_stray(&path, is_dir);
            continue;
        };
        let mut kept = 0;
        for file in fs::read_dir(&path).map_err(io_error(&path))? {
            let file = file.map_err(io_error(&path))?;
            let file_path = file.path();
            let named = file
                .file_name()
                .to_str()
                .and_then(cache_entry::parse_file_name);
            // DirEntry::metadata does not follow symbolic links either.
            let meta = file.metadata().ok();
            let is_dir = meta.as_ref().is_some_and(fs::Metadata::is_dir);
            let (Some((share, segment)), Some(meta)) = (named, meta.filter(fs::Metadata::is_file))
            else {
                remove_stray(&file_path, is_dir);
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age >= ttl || meta.len() < HEADER_LEN as u64 {
                let _ = fs::remove_file(&file_path);
                continue;
            }
            kept += 1;
            let key = BlockKey {
                storage_index: si,
                share,
                segment,
            };
            found.push((key, meta.len(), age));
        }
        if kept == 0 {
            let _ = fs::remove_dir(&path);
        }
    }
    // Oldest first, so the most recently used end up at the LRU's front.
    found.sort_by_key(|entry| std::cmp::Reverse(entry.2));
    Ok(found)
}
