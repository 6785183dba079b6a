//! A share store in an S3-compatible bucket (AWS S3, Garage, MinIO, Ceph RGW, R2, B2…),
//! through the `object_store` crate.
//!
//! Objects are named as the directory store names files, under an optional prefix:
//!
//! ```text
//! s3://<bucket>/<prefix>/shares/<first 2 chars of SI>/<SI in base32>/<share number>
//! ```
//!
//! Only ciphertext and hashes ever leave the client. Reads are ranged `GET`s (several ranges
//! of one request become parallel `GET`s, ranges close together coalesced into one) and never
//! need a `HEAD`: the reader knows every offset from the cap. Writes are create-only: a `HEAD`
//! first (a share already there is compared with ours: the same bytes succeed, others are a
//! [`StoreError::Conflict`]), then a `PUT` with `If-None-Match: *` for a share up to
//! [`S3Options::part_size`], or a multipart upload streamed from the spool for a larger one
//! (aborted if it fails or is cancelled, so no parts are left behind). See
//! `docs/storage-protocol.md` §13 for the layout and what a store without conditional writes
//! gives up.

mod config;
#[cfg(target_os = "linux")]
mod connector;
mod errors;
mod write;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use lru::LruCache;
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

pub use config::{S3Options, S3UrlError};
use errors::StoreErrorExt as _;

use super::{ShareStore, SpooledShare, StoreError, parse_share_name, validate_ranges};
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;

/// Ranges of one share closer than this are fetched by one `GET` (the gap is read and
/// dropped): one round trip to S3 costs far more than 64 KiB on the wire.
const COALESCE_GAP: u64 = 64 << 10;

/// Writes remembered for taking back (as a storage node remembers, `docs/storage-protocol.md`
/// §1).
const LEDGER_ENTRIES: usize = 100_000;

/// Shares in an S3 bucket (see the module documentation). Cloning gives another handle to
/// the same store and the same record of what it wrote.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use segvault::store::{S3Options, S3Store};
/// // Credentials, region and endpoint from the AWS environment variables.
/// let store = S3Store::new("s3://my-bucket/segvault", &S3Options::default())?;
/// let grid = segvault::Grid::builder().store(std::sync::Arc::new(store)).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: AmazonS3,
    /// `s3://bucket/prefix`, plus the endpoint when one is set: in every message, never a
    /// secret.
    name: String,
    /// Key prefix, empty or ending in `/`.
    prefix: String,
    options: S3Options,
    /// What this handle wrote, for [`ShareStore::abandon`]: the most recent
    /// [`LEDGER_ENTRIES`] writes (an upload takes its shares back within seconds of writing
    /// them, and a long-running gateway must not remember every share it ever stored).
    ledger: Mutex<LruCache<(StorageIndex, ShareNum), Written>>,
    /// Memory for share bytes on their way up, in KiB: twice `part_size`, shared by every
    /// write through this handle (a gateway's concurrent uploads included), so that writes
    /// to a bucket never hold more than that in memory.
    write_memory: Arc<tokio::sync::Semaphore>,
    /// Multipart uploads of failed or cancelled writes being aborted (each a task of its
    /// own, so that a wait for it that is cancelled leaves it running).
    aborting: Mutex<HashMap<(StorageIndex, ShareNum), write::Aborting>>,
}

/// What this handle knows about a share it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// A write is in flight; `abandoned`: remove it as soon as it lands.
    InFlight { abandoned: bool },
    /// Stored by this handle (it created the object).
    Created,
    /// A write was cut off after its request went out: the object, if there, is this
    /// handle's (its `HEAD` found nothing and its `PUT` was create-only).
    MaybeCreated,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store for `s3://BUCKET[/PREFIX]`. Everything `options` leaves unset comes from the
    /// standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …). Nothing is contacted until the first
    /// request.
    pub fn new(url: &str, options: &S3Options) -> Result<S3Store, S3UrlError> {
        let (client, name, prefix) = config::build(url, options)?;
        Ok(S3Store {
            inner: Arc::new(Inner {
                client,
                name,
                prefix,
                options: options.clone(),
                ledger: Mutex::new(LruCache::new(
                    NonZeroUsize::new(LEDGER_ENTRIES).expect("not zero"),
                )),
                write_memory: Arc::new(tokio::sync::Semaphore::new(
                    2 * options.part_size.div_ceil(1024),
                )),
                aborting: Mutex::default(),
            }),
        })
    }

    /// The object key of a share.
    pub fn key(&self, si: &StorageIndex, share: ShareNum) -> String {
        self.inner.key(si, share).to_string()
    }
}

/// The write-memory budget of a handle (see [`Inner::write_memory`]), in KiB.
fn write_memory_kib(options: &S3Options) -> usize {
    2 * options.part_size.div_ceil(1024)
}

impl Inner {
    fn file_prefix(&self, si: &StorageIndex) -> String {
        let text = si.to_base32();
        format!("{}shares/{}/{text}/", self.prefix, &text[..2])
    }

    fn key(&self, si: &StorageIndex, share: ShareNum) -> ObjectPath {
        ObjectPath::from(format!("{}{}", self.file_prefix(si), share.0))
    }

    fn lock_ledger(
        &self,
    ) -> std::sync::MutexGuard<'_, LruCache<(StorageIndex, ShareNum), Written>> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_aborting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(StorageIndex, ShareNum), write::Aborting>> {
        self.aborting.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn list(&self, si: StorageIndex) -> Result<Vec<ShareNum>, StoreError> {
        use futures::TryStreamExt as _;
        let prefix = ObjectPath::from(self.file_prefix(&si));
        let objects: Vec<_> = self
            .client
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| e.to_store_error(&self.name, "listing shares"))?;
        let mut shares: Vec<ShareNum> = objects
            .iter()
            .filter_map(|meta| parse_share_name(meta.location.filename()?))
            .collect();
        shares.sort_unstable();
        shares.dedup();
        Ok(shares)
    }

    /// One ranged `GET` (never empty), checked to be exactly the range asked for.
    async fn get_range(&self, key: &ObjectPath, range: Range<u64>) -> Result<Bytes, StoreError> {
        let options = GetOptions::new().with_range(Some(GetRange::Bounded(range.clone())));
        let got = match self.client.get_opts(key, options).await {
            Ok(got) => got,
            // Ranged reads skip `HEAD`; only one refused as past the end asks for the length
            // (a store in trouble is not asked twice).
            Err(e) if errors::is_range_error(&e) => {
                let error = e.to_store_error(&self.name, "reading a share");
                return Err(match self.client.head(key).await {
                    Ok(meta) if range.end > meta.size => StoreError::OutOfBounds {
                        start: range.start,
                        end: range.end,
                        len: meta.size,
                    },
                    _ => error,
                });
            }
            Err(e) => return Err(e.to_store_error(&self.name, "reading a share")),
        };
        let size = got.meta.size;
        if got.range != range {
            return Err(if range.end > size {
                StoreError::OutOfBounds {
                    start: range.start,
                    end: range.end,
                    len: size,
                }
            } else {
                StoreError::Protocol(format!(
                    "{}: asked for bytes {range:?}, got {:?}",
                    self.name, got.range
                ))
            });
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| e.to_store_error(&self.name, "reading a share"))?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(StoreError::Protocol(format!(
                "{}: {} bytes for the {}-byte range {range:?}",
                self.name,
                bytes.len(),
                range.end - range.start
            )));
        }
        Ok(bytes)
    }

    async fn read(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
    ) -> Result<Vec<Bytes>, StoreError> {
        validate_ranges(&ranges)?;
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.key(&si, share);
        // Empty ranges need no bytes, but must still lie inside the share: fetched as the
        // byte before them (or after, at offset 0), so that a missing share is NotFound.
        let mut fetch: Vec<Range<u64>> = ranges
            .iter()
            .map(|r| match r.start {
                _ if r.start < r.end => r.clone(),
                0 => 0..1,
                start => start - 1..start,
            })
            .collect();
        fetch.sort_by_key(|r| (r.start, r.end));
        fetch.dedup();
        let parts =
            object_store::coalesce_ranges(&fetch, |r| self.get_range(&key, r), COALESCE_GAP)
                .await?;
        Ok(ranges
            .iter()
            .map(|r| {
                if r.start == r.end {
                    return Bytes::new();
                }
                let i = fetch.partition_point(|f| (f.start, f.end) < (r.start, r.end));
                parts[i].clone()
            })
            .collect())
    }
}

impl ShareStore for S3Store {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn list(&self, si: StorageIndex) -> BoxFuture<'_, Result<Vec<ShareNum>, StoreError>> {
        Box::pin(self.inner.list(si))
    }

    fn read(
        &self,
        si: StorageIndex,
        share: ShareNum,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, StoreError>> {
        Box::pin(self.inner.read(si, share, ranges))
    }

    fn write(
        &self,
        si: StorageIndex,
        share: ShareNum,
        spool: SpooledShare,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(write::write(self.inner.clone(), si, share, spool))
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Listing an empty prefix proves the bucket exists and the credentials may read
            // it, at the cost of one request.
            let probe = ObjectPath::from(format!("{}shares/-/", self.inner.prefix));
            let mut listing = self.inner.client.list(Some(&probe));
            match futures::StreamExt::next(&mut listing).await {
                None | Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.to_store_error(&self.inner.name, "checking the bucket")),
            }
        })
    }

    fn abandon(&self, si: StorageIndex, share: ShareNum) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(write::abandon(self.inner.clone(), si, share))
    }

    fn report_corrupt(
        &self,
        si: StorageIndex,
        share: ShareNum,
        reason: String,
    ) -> BoxFuture<'_, ()> {
        // A bucket has no operator to tell; the reader's log is where it shows.
        tracing::warn!(store = %self.inner.name, %si, %share, %reason, "corrupt share in a bucket");
        Box::pin(std::future::ready(()))
    }
}
