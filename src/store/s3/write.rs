//! Create-only writes (one conditional `PUT`, or a multipart upload aborted on any failure or
//! cancellation) and taking back what this handle wrote.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt as _, StreamExt as _};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use tokio::sync::OwnedSemaphorePermit;

use super::errors::StoreErrorExt as _;
use super::{Inner, Written};
use crate::core::cap::StorageIndex;
use crate::core::geometry::ShareNum;
use crate::store::{SpooledShare, StoreError};

/// Parts of one multipart upload in flight at once: enough to fill a long link (the store's
/// write memory may allow fewer).
const PARTS_IN_FLIGHT: usize = 3;

/// `bytes` of the store's write memory (all of it, if more is asked), held until dropped.
async fn reserve(inner: &Inner, bytes: u64) -> Result<OwnedSemaphorePermit, object_store::Error> {
    let total = super::write_memory_kib(&inner.options);
    let kib = usize::try_from(bytes.div_ceil(1024))
        .unwrap_or(usize::MAX)
        .min(total);
    inner
        .write_memory
        .clone()
        .acquire_many_owned(u32::try_from(kib).unwrap_or(u32::MAX))
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        })
}

/// Marks a share's write in flight in the ledger until it ends; dropped before it ended
/// (the upload was cancelled), the share may or may not have landed.
struct LedgerEntry {
    inner: Arc<Inner>,
    key: (StorageIndex, ShareNum),
    ended: bool,
}

impl LedgerEntry {
    fn begin(inner: &Arc<Inner>, si: StorageIndex, share: ShareNum) -> LedgerEntry {
        inner
            .lock_ledger()
            .put((si, share), Written::InFlight { abandoned: false });
        LedgerEntry {
            inner: inner.clone(),
            key: (si, share),
            ended: false,
        }
    }

    /// Whether an abandon arrived while the write was in flight.
    fn abandoned(&self) -> bool {
        matches!(
            self.inner.lock_ledger().peek(&self.key),
            Some(Written::InFlight { abandoned: true })
        )
    }

    /// Records how the write ended (`None`: nothing of this handle's is there).
    fn end(mut self, written: Option<Written>) {
        let mut ledger = self.inner.lock_ledger();
        match written {
            Some(written) => ledger.put(self.key, written),
            None => ledger.pop(&self.key),
        };
        self.ended = true;
    }
}

impl Drop for LedgerEntry {
    fn drop(&mut self) {
        if !self.ended {
            self.inner
                .lock_ledger()
                .put(self.key, Written::MaybeCreated);
        }
    }
}

pub(super) async fn write(
    inner: Arc<Inner>,
    si: StorageIndex,
    share: ShareNum,
    spool: SpooledShare,
) -> Result<(), StoreError> {
    let key = inner.key(&si, share);
    // Whatever the store does with `If-None-Match`, a share already there is never
    // overwritten by a sequential writer: look first (a `HEAD` is cheap next to a share).
    match inner.client.head(&key).await {
        Ok(meta) => return same_bytes(&inner, &key, meta.size, &spool, si, share).await,
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.to_store_error(&inner.name, "checking for the share")),
    }
    let entry = LedgerEntry::begin(&inner, si, share);
    let put = if spool.len() <= inner.options.part_size as u64 {
        put_whole(&inner, &key, &spool).await
    } else {
        put_parts(&inner, (si, share), &spool).await
    };
    match put {
        Ok(()) if entry.abandoned() => {
            entry.end(None);
            remove(&inner, &key).await
        }
        Ok(()) => {
            entry.end(Some(Written::Created));
            Ok(())
        }
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {
            // Another writer got there first: not ours to take back.
            entry.end(None);
            let size = inner
                .client
                .head(&key)
                .await
                .map_err(|e| e.to_store_error(&inner.name, "checking for the share"))?
                .size;
            same_bytes(&inner, &key, size, &spool, si, share).await
        }
        Err(e) => {
            // The request may have landed before its answer was lost.
            entry.end(Some(Written::MaybeCreated));
            Err(e.to_store_error(&inner.name, "storing a share"))
        }
    }
}

async fn read_at(file: &File, offset: u64, len: usize) -> Result<Bytes, StoreError> {
    let file = file
        .try_clone()
        .map_err(|e| StoreError::io("reading a spool", e))?;
    tokio::task::spawn_blocking(move || {
        let mut buffer = vec![0; len];
        file.read_exact_at(&mut buffer, offset)
            .map(|()| Bytes::from(buffer))
            .map_err(|e| StoreError::io("reading a spool", e))
    })
    .await
    .map_err(|e| StoreError::Io {
        context: "reading a spool",
        message: e.to_string(),
    })?
}

async fn put_whole(
    inner: &Inner,
    key: &ObjectPath,
    spool: &SpooledShare,
) -> Result<(), object_store::Error> {
    let _memory = reserve(inner, spool.len()).await?;
    let bytes = read_at(spool.file(), 0, spool.len() as usize)
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        })?;
    let mode = if inner.options.conditional_put {
        PutMode::Create
    } else {
        PutMode::Overwrite
    };
    inner
        .client
        .put_opts(key, PutPayload::from(bytes), mode.into())
        .await
        .map(drop)
}

/// How long a failed or cancelled multipart upload waits for its parts in flight before it
/// aborts anyway. A part request the server has begun can land after an abort and leave an
/// orphaned part (S3 says so, and s3s-fs does it), so the abort waits for them first; a part
/// stuck longer than this is stopped, and the abort is sent twice.
const PARTS_SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

type PartTasks = tokio::task::JoinSet<Result<(), object_store::Error>>;

/// A multipart upload that is aborted unless it completed: on an error here, and from a
/// spawned task when the write is cancelled (dropped). Either way the abort goes only once
/// no part of it is in flight.
struct Multipart {
    upload: Option<Box<dyn MultipartUpload>>,
    parts: PartTasks,
    inner: Arc<Inner>,
    share: (StorageIndex, ShareNum),
}

/// An abort running in a task of its own; any number may wait for it.
pub(super) type Aborting = Shared<BoxFuture<'static, ()>>;

impl Multipart {
    /// Starts aborting the upload (once its parts settle) in a task of its own, registered
    /// for `abandon` to wait on; `None` if it completed or no runtime is left to run it.
    fn start_abort(&mut self) -> Option<Aborting> {
        let upload = self.upload.take()?;
        let parts = std::mem::take(&mut self.parts);
        let name = self.inner.name.clone();
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let task = runtime.spawn(async move {
            if let Err(e) = abort(upload, parts).await {
                tracing::warn!(store = %name, error = %super::errors::describe(&e), "cannot abort a multipart upload; its parts stay until the bucket's lifecycle rule removes them");
            }
        });
        let aborting = task.map(drop).boxed().shared();
        let mut pending = self.inner.lock_aborting();
        // Aborts nobody waited for (a library caller that never abandoned) go once done.
        pending.retain(|_, abort| abort.clone().now_or_never().is_none());
        pending.insert(self.share, aborting.clone());
        Some(aborting)
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        // Cancelled: `abandon` waits for the abort, so an interrupted upload's clean-up
        // covers it.
        self.start_abort();
    }
}

/// Waits (up to [`PARTS_SETTLE`]) for the parts in flight to land or fail, then aborts the
/// upload; parts stopped by the deadline may still land, so the abort then goes again.
async fn abort(
    mut upload: Box<dyn MultipartUpload>,
    mut parts: PartTasks,
) -> Result<(), object_store::Error> {
    let settled = tokio::time::timeout(PARTS_SETTLE, async {
        while parts.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    parts.shutdown().await;
    let aborted = upload.abort().await;
    if !settled {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // The upload is gone after the first abort; this one only sweeps late parts.
        let _ = upload.abort().await;
    }
    aborted
}

async fn put_parts(
    inner: &Arc<Inner>,
    share: (StorageIndex, ShareNum),
    spool: &SpooledShare,
) -> Result<(), object_store::Error> {
    let upload = inner
        .client
        .put_multipart(&inner.key(&share.0, share.1))
        .await?;
    let mut multipart = Multipart {
        upload: Some(upload),
        parts: PartTasks::new(),
        inner: inner.clone(),
        share,
    };
    let mut result = send_parts(inner, &mut multipart, spool).await;
    if result.is_ok() {
        // Still held by `multipart`: cancelled while completing, the upload is aborted (an
        // abort after a completion that landed changes nothing).
        let upload = multipart.upload.as_mut().expect("held until complete");
        result = upload.complete().await.map(drop);
    }
    if let Err(e) = result {
        // Waited for here, and by `abandon`; a wait cancelled leaves the abort running.
        if let Some(aborting) = multipart.start_abort() {
            aborting.await;
        }
        return Err(e);
    }
    multipart.upload = None; // completed: nothing to abort
    Ok(())
}

async fn send_parts(
    inner: &Inner,
    multipart: &mut Multipart,
    spool: &SpooledShare,
) -> Result<(), object_store::Error> {
    let upload = multipart.upload.as_mut().expect("held until complete");
    let in_flight = &mut multipart.parts;
    let part_size = inner.options.part_size as u64;
    // Parts run as tasks of their own, each holding its memory until sent: waiting for
    // memory here never waits on a part nobody polls. On failure or cancellation the set
    // goes to `abort`, which lets them settle first.
    let mut offset = 0;
    while offset < spool.len() {
        while in_flight.len() >= PARTS_IN_FLIGHT {
            part_sent(in_flight.join_next().await)?;
        }
        let len = part_size.min(spool.len() - offset);
        let memory = reserve(inner, len).await?;
        let part = read_at(spool.file(), offset, len as usize)
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        let sending = upload.put_part(PutPayload::from(part));
        in_flight.spawn(async move {
            let _memory = memory;
            sending.await
        });
        offset += len;
    }
    while let Some(sent) = in_flight.join_next().await {
        part_sent(Some(sent))?;
    }
    Ok(())
}

fn part_sent(
    joined: Option<Result<Result<(), object_store::Error>, tokio::task::JoinError>>,
) -> Result<(), object_store::Error> {
    match joined {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(object_store::Error::JoinError { source: e }),
    }
}

/// A share is already stored under the key: succeeds if it holds exactly the spool's bytes
/// (compared as they stream in, never all in memory), else [`StoreError::Conflict`].
async fn same_bytes(
    inner: &Inner,
    key: &ObjectPath,
    size: u64,
    spool: &SpooledShare,
    si: StorageIndex,
    share: ShareNum,
) -> Result<(), StoreError> {
    let conflict = StoreError::Conflict {
        storage_index: si,
        share,
    };
    if size != spool.len() {
        return Err(conflict);
    }
    let read_error = |e: object_store::Error| e.to_store_error(&inner.name, "comparing a share");
    let mut stream = inner
        .client
        .get(key)
        .await
        .map_err(read_error)?
        .into_stream();
    let mut offset = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(read_error)?;
        if offset + chunk.len() as u64 > size {
            return Err(conflict);
        }
        let ours = read_at(spool.file(), offset, chunk.len()).await?;
        if ours != chunk {
            return Err(conflict);
        }
        offset += chunk.len() as u64;
    }
    if offset != size {
        return Err(conflict);
    }
    Ok(())
}

async fn remove(inner: &Inner, key: &ObjectPath) -> Result<(), StoreError> {
    match inner.client.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.to_store_error(&inner.name, "taking back a share")),
    }
}

pub(super) async fn abandon(
    inner: Arc<Inner>,
    si: StorageIndex,
    share: ShareNum,
) -> Result<(), StoreError> {
    let key = inner.key(&si, share);
    let aborting = inner.lock_aborting().remove(&(si, share));
    if let Some(aborting) = aborting {
        aborting.await;
    }
    let known = {
        let mut ledger = inner.lock_ledger();
        match ledger.get_mut(&(si, share)) {
            Some(Written::InFlight { abandoned }) => {
                *abandoned = true;
                return Ok(());
            }
            Some(written) => Some(*written),
            None => None,
        }
    };
    if known.is_some() {
        remove(&inner, &key).await?;
        inner.lock_ledger().pop(&(si, share));
        return Ok(());
    }
    match inner.client.head(&key).await {
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        Ok(_) => Err(StoreError::Forbidden(format!(
            "{}: share {share} of {si} was not written by this upload",
            inner.name
        ))),
        Err(e) => Err(e.to_store_error(&inner.name, "taking back a share")),
    }
}
