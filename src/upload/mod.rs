//! Uploading: plaintext in, shares out, a read cap back.
//!
//! Pass 1 streams the input a segment at a time: encrypt, pad, Reed–Solomon encode, hash
//! every block, and write each block and its leaf hash straight into its share's spool file.
//! Pass 2 builds every tree inside the spools, writes each record's hash chain next to its
//! block, and the header, UEB and share chain at the front. Memory stays at a few segments
//! (plus a few hundred kilobytes per tree level being built) whatever the file size. The
//! finished spools are then handed to their stores, which move them into place atomically.
//!
//! Input of unknown length (a pipe) is first spooled to an unnamed temporary file *already
//! encrypted*, because the share layout depends on the size; plaintext never touches disk.

pub(crate) mod encode;
mod options;
pub(crate) mod tree_file;

#[cfg(any(test, feature = "testing"))]
pub use options::Tamper;
pub use options::{Progress, PutError, PutOptions, PutSource};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::cap::{ReadCap, StorageIndex};
use crate::core::geometry::ShareNum;
use crate::grid::Grid;
use encode::encode;

/// Encodes `source` onto `grid` and returns its read cap.
///
/// ```no_run
/// # async fn demo(grid: segvault::Grid) -> Result<(), segvault::PutError> {
/// use segvault::{PutOptions, PutSource};
/// let options = PutOptions::new(2, 4);
/// let cap = segvault::upload::put(&grid, PutSource::Path("movie.mp4".into()), &options).await?;
/// println!("{}", cap.to_secret_string().as_str());
/// # Ok(()) }
/// ```
pub async fn put(
    grid: &Grid,
    source: PutSource,
    options: &PutOptions,
) -> Result<ReadCap, PutError> {
    options.validate()?;
    if grid.is_empty() {
        return Err(PutError::NoServers);
    }
    if let Some(happy) = options.happy
        && usize::from(happy) > grid.len()
    {
        return Err(PutError::HappyServers {
            happy,
            servers: grid.len(),
        });
    }
    let cancel = options
        .cancel
        .as_ref()
        .map_or_else(CancellationToken::new, CancellationToken::child_token);
    // The upload runs as a task of its own: if this future is dropped (a client that went
    // away), the guard cancels it, and the task still removes what it had stored.
    let on_drop = cancel.clone().drop_guard();
    let task = tokio::spawn(upload(grid.clone(), source, options.clone(), cancel));
    let outcome = task
        .await
        .map_err(|e| PutError::Internal(format!("upload task failed: {e}")))?;
    on_drop.disarm();
    outcome
}

/// How long a cancelled upload waits for its encoder to stop (one reading a pipe that
/// sends nothing never does; it holds no named spool yet).
const ENCODER_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long taking back one stored share may take.
const TAKE_BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What became of one share's write: `None` when it was cut off by cancellation (it may
/// still have landed).
type Placed = (usize, usize, Option<Result<(), crate::store::StoreError>>);

async fn upload(
    grid: Grid,
    source: PutSource,
    options: PutOptions,
    cancel: CancellationToken,
) -> Result<ReadCap, PutError> {
    // Bridged here, on the runtime: the encoder's thread has none.
    let source = source.for_encoder();
    // Ask every server first: shares go only to those that answer, and an upload that could
    // not be happy fails before any encoding.
    let (responsive, unreachable) = tokio::select! {
        checked = preflight(&grid) => checked,
        () = cancel.cancelled() => return Err(PutError::Cancelled { left_behind: String::new() }),
    };
    let happy = options
        .happy
        .map_or(grid.len().min(usize::from(options.n)), usize::from);
    let reachable_happy = responsive.len().min(usize::from(options.n));
    if reachable_happy < happy || responsive.is_empty() {
        return Err(PutError::TooFewServers {
            reachable: responsive.len(),
            servers: grid.len(),
            happy,
            failures: unreachable,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    // A thread of its own, not the runtime's blocking pool: the encoder may wait long on its
    // input (a slow uploader, a pipe), and the pool's threads are what every store's file I/O
    // needs; twenty slow uploads must not stop reads.
    let (done, mut encoding) = tokio::sync::oneshot::channel();
    {
        let (grid, options, stop) = (grid.clone(), options.clone(), stop.clone());
        std::thread::Builder::new()
            .name("segvault-encode".into())
            .spawn(move || {
                let _ = done.send(encode(&grid, &responsive, source, &options, &stop));
            })
            .map_err(|e| PutError::Internal(format!("cannot start the encoder: {e}")))?;
    }
    let encoded = tokio::select! {
        encoded = &mut encoding => encoded
            .map_err(|_| PutError::Internal("the encoder thread died".into()))??,
        () = cancel.cancelled() => {
            stop.store(true, Ordering::SeqCst);
            let _ = tokio::time::timeout(ENCODER_STOP_WAIT, encoding).await;
            return Err(PutError::Cancelled {
                left_behind: String::new(),
            });
        }
    };
    let si = encoded.cap.storage_index();
    let started = std::time::Instant::now();
    let writes = encoded.spools.into_iter().enumerate().map(|(i, spool)| {
        let server = encoded.placement[i];
        let store = grid.servers()[server].store().clone();
        let cancel = cancel.clone();
        async move {
            let write = store.write(si, ShareNum(i as u8), spool);
            // A directory write is short and cannot stop halfway; a network upload is cut
            // off (the node discards it) and taken back below in case it had landed.
            let outcome = if store.is_remote() {
                tokio::select! {
                    written = write => Some(written),
                    () = cancel.cancelled() => None,
                }
            } else {
                Some(write.await)
            };
            (i, server, outcome)
        }
    });
    let results: Vec<Placed> = futures::future::join_all(writes).await;
    debug!(%si, commit_ms = started.elapsed().as_millis(), "shares handed to their stores");
    if cancel.is_cancelled() {
        let left_behind = take_back(&grid, si, &results).await;
        return Err(PutError::Cancelled { left_behind });
    }

    let mut failed_servers = std::collections::HashSet::new();
    let mut failures = String::new();
    for (share, server, result) in &results {
        if let Some(Err(e)) = result {
            failed_servers.insert(*server);
            failures.push_str(&format!(
                "  share {share} on {}: {e}\n",
                grid.servers()[*server].name()
            ));
        }
    }
    let used: std::collections::HashSet<usize> = encoded.placement.iter().copied().collect();
    let stored = used.len() - failed_servers.len();
    // However few servers must be happy, fewer than k stored shares is no file at all.
    let shares_stored = results
        .iter()
        .filter(|(_, _, r)| matches!(r, Some(Ok(()))))
        .count();
    let k = usize::from(options.k);
    if stored < happy || shares_stored < k {
        // Its cap is never handed out: the shares that were stored are only clutter.
        let left_behind = take_back(&grid, si, &results).await;
        if !left_behind.is_empty() {
            failures.push_str("  and these shares, stored, could not be taken back:\n");
            failures.push_str(&left_behind);
        }
        if shares_stored < k {
            failures.insert_str(
                0,
                &format!("  only {shares_stored} shares were stored and reading needs {k}\n"),
            );
        }
        failures.insert_str(0, &unreachable);
        return Err(PutError::NotHappy {
            stored,
            happy,
            failures,
        });
    }
    info!(%si, size = encoded.cap.geometry().size(), shares = results.len() - failures.lines().count(), "uploaded");
    Ok(encoded.cap)
}

/// Removes the shares of an upload whose cap will never be handed out: every share that was
/// stored, or whose write was cut off and may have landed.
/// Removes the shares of an upload whose cap will never be handed out: every share whose
/// write was attempted (even one that failed: it may have landed before the answer was
/// lost; taking back what is not there costs a request). Returns a line for each share that
/// was or may have been stored and could not be taken back.
async fn take_back(grid: &Grid, si: StorageIndex, results: &[Placed]) -> String {
    let removals = results.iter().map(|(share, server, outcome)| async move {
        let server = &grid.servers()[*server];
        let share = ShareNum(*share as u8);
        let removed =
            tokio::time::timeout(TAKE_BACK_TIMEOUT, server.store().abandon(si, share)).await;
        let why = match removed {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {TAKE_BACK_TIMEOUT:?}"),
        };
        if matches!(outcome, Some(Err(_))) {
            // Its write failed: most likely nothing is there to take back.
            debug!(%si, %share, server = server.name(), %why, "not taken back");
            return None;
        }
        warn!(%si, %share, server = server.name(), %why, "cannot take back a share of an abandoned upload");
        Some(format!("  share {share} on {}: {why}\n", server.name()))
    });
    futures::future::join_all(removals)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// How long an uploader waits for a server to say it is there and accepts us.
const PREFLIGHT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks every server at once: the indexes of those that answered, and a line for each
/// that did not.
pub(crate) async fn preflight(grid: &Grid) -> (Vec<usize>, String) {
    let checks = grid.servers().iter().map(|server| async move {
        match tokio::time::timeout(PREFLIGHT_TIMEOUT, server.store().check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PREFLIGHT_TIMEOUT:?}")),
        }
    });
    let mut responsive = Vec::new();
    let mut unreachable = String::new();
    for (index, outcome) in futures::future::join_all(checks)
        .await
        .into_iter()
        .enumerate()
    {
        match outcome {
            Ok(()) => responsive.push(index),
            Err(why) => {
                warn!(server = grid.servers()[index].name(), %why, "server unavailable for upload");
                unreachable.push_str(&format!("  {}: {why}\n", grid.servers()[index].name()));
            }
        }
    }
    (responsive, unreachable)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::encode::open_input;
    use super::*;
    use crate::core::cipher::{FileKey, Keystream};

    /// Input of unknown length is spooled to disk before encoding; the spool must hold only
    /// ciphertext (the CLI scan cannot see it: it has no name).
    #[test]
    fn the_stdin_spool_holds_only_ciphertext() {
        let dir = tempfile::tempdir().unwrap();
        let grid = Grid::embedded_with(dir.path(), 1, crate::store::Durability::Fsync).unwrap();
        let plaintext: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let key = FileKey::from_bytes([5; 32]);
        let keystream = Keystream::new(&key);
        let source = PutSource::Reader(Box::new(io::Cursor::new(plaintext.clone())));
        let (mut spool, size, encrypted) =
            open_input(&grid, source, &keystream, None, &AtomicBool::new(false)).unwrap();
        assert!(encrypted);
        assert_eq!(size, plaintext.len() as u64);
        let mut stored = Vec::new();
        spool.read_to_end(&mut stored).unwrap();
        let mut expected = plaintext.clone();
        keystream.apply(0, &mut expected);
        assert_eq!(stored, expected, "the spool is the ciphertext");
        let windows: std::collections::HashSet<&[u8]> = plaintext.chunks_exact(32).collect();
        assert!(
            stored.windows(32).all(|w| !windows.contains(w)),
            "no plaintext in the spool"
        );
    }
}
