//! Which recent upload wrote which share (in memory only): an upload abandoned before its
//! cap was handed out may take back the shares it wrote itself, and only those.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;

/// How long a store remembers which upload wrote a share, so the upload can take it back
/// if it is abandoned (longer than any upload's placement takes).
pub(super) const LEDGER_TTL: Duration = Duration::from_secs(3600);
/// Most shares remembered at once (the oldest are forgotten first).
pub(super) const LEDGER_MAX: usize = 100_000;
/// Who wrote a share: an upload abandoned before its cap was handed out may remove the
/// shares it wrote itself, and only those (see [`ShareStore::abandon`](crate::store::ShareStore::abandon)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UploadOwner([u8; 32]);

impl fmt::Debug for UploadOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UploadOwner(<redacted>)")
    }
}

impl UploadOwner {
    /// A new owner no one else can claim to be.
    pub fn random() -> UploadOwner {
        let mut bytes = [0u8; 32];
        if getrandom::fill(&mut bytes).is_err() {
            // No randomness: still distinct per owner in this process and across processes.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let mut hasher = blake3::Hasher::new_derive_key("segvault 2026 upload owner fallback");
            hasher.update(&u64::from(std::process::id()).to_le_bytes());
            hasher.update(
                &COUNTER
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_le_bytes(),
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            hasher.update(&now.to_le_bytes());
            bytes = *hasher.finalize().as_bytes();
        }
        UploadOwner(bytes)
    }

    /// The owner proven by a secret an uploader presents (a storage node keeps only this
    /// hash of it).
    pub fn from_secret(secret: &[u8]) -> UploadOwner {
        UploadOwner(blake3::derive_key("segvault 2026 upload owner", secret))
    }
}

/// A write in progress, in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InFlight {
    /// Being written by this owner (see [`WriteTicket`]).
    Writing(UploadOwner),
    /// Abandoned by its owner while being written: removed as soon as it lands.
    Abandoned(UploadOwner),
}

pub(super) type ShareKey = (StorageIndex, ShareNum);

/// Take-backs remembered for writes that had not begun (a PUT still on its way).
pub(super) const EARLY_MAX: usize = 10_000;
/// How long such a take-back waits for its write.
pub(super) const EARLY_TTL: Duration = Duration::from_secs(600);

/// Which recent upload wrote which share, in memory only.
#[derive(Debug)]
pub(super) struct Ledger {
    /// Writes in progress: as many as uploads being received.
    pub(super) in_flight: std::collections::HashMap<ShareKey, InFlight>,
    /// Shares created, and by whom: the most recent [`LEDGER_MAX`], for [`LEDGER_TTL`].
    pub(super) created: LruCache<ShareKey, (UploadOwner, Instant)>,
    /// Take-backs of shares not (yet) written, kept apart so they cannot push out the
    /// records of created shares.
    pub(super) early: LruCache<ShareKey, (UploadOwner, Instant)>,
}

impl Default for Ledger {
    fn default() -> Ledger {
        let capacity = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Ledger {
            in_flight: std::collections::HashMap::new(),
            created: LruCache::new(capacity(LEDGER_MAX)),
            early: LruCache::new(capacity(EARLY_MAX)),
        }
    }
}

impl Ledger {
    /// Who created `key`, if that was recent enough to be remembered.
    pub(super) fn creator(&mut self, key: &ShareKey) -> Option<UploadOwner> {
        match self.created.peek(key) {
            Some((owner, at)) if at.elapsed() < LEDGER_TTL => Some(*owner),
            Some(_) => {
                self.created.pop(key);
                None
            }
            None => None,
        }
    }

    /// Takes an early take-back of `key` by `owner`, if there is a fresh one.
    pub(super) fn take_early(&mut self, key: &ShareKey, owner: UploadOwner) -> bool {
        match self.early.peek(key) {
            Some((by, at)) if *by == owner && at.elapsed() < EARLY_TTL => {
                self.early.pop(key);
                true
            }
            _ => false,
        }
    }
}
