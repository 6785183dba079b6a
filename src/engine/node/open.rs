//! Opening a file: find its shares and prove its UEB against the cap.
//!
//! Shares are found by asking every server at once; a file opens as soon as k distinct shares
//! are known and later answers join the share map as they come (Tahoe-LAFS #928). Headers are
//! read k at a time from the shares [`choice`](crate::core::choice) ranks best; a header read
//! that runs late for its server is hedged with one more, and the first to prove the UEB
//! opens the file. A file with blocks in the disk cache opens from the UEB they carry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{Instrument, debug};

use super::shares::{ShareMap, Shares, build_report, pick_slots, timed_read};
use super::{FileNode, NodeParts};
use crate::cache::DiskCache;
use crate::core::cap::VerifyCap;
use crate::core::choice;
use crate::core::codec::Codec as _;
use crate::core::erasure::Codec;
use crate::core::geometry::ShareNum;
use crate::core::hash::{self, Hash};
use crate::core::layout::{HEADER_LEN, ShareLayout};
use crate::core::share_header::ShareHeader;
use crate::core::ueb::{UEB_LEN, Ueb};
use crate::engine::error::{Problem, ReadError};
use crate::engine::{Damage, ReaderConfig};
use crate::grid::Grid;
use crate::metrics::Metrics;

type HeaderRead = tokio::task::JoinHandle<(usize, Result<Vec<u8>, Problem>)>;

impl FileNode {
    /// Finds the file's shares and verifies its UEB against the cap.
    pub(crate) async fn open(
        grid: Grid,
        config: Arc<ReaderConfig>,
        cap: VerifyCap,
        metrics: Arc<Metrics>,
        cache: Option<Arc<DiskCache>>,
    ) -> Result<Arc<FileNode>, ReadError> {
        let geometry = *cap.geometry();
        let parts = NodeParts {
            layout: ShareLayout::new(&geometry),
            codec: Codec::new(geometry.k(), geometry.n())
                .map_err(|e| ReadError::Internal(e.to_string()))?,
            shares: Arc::new(Shares::telling(
                config
                    .on_damage
                    .clone()
                    .map(|hook| Box::new(move || hook.tell(&cap, Damage::Missing)) as _),
            )),
            grid,
            config,
            cap,
            metrics,
            cache,
        };
        let span = tracing::info_span!("open", si = %cap.storage_index());
        open(parts).instrument(span).await
    }
}

/// See [`FileNode::open`].
async fn open(parts: NodeParts) -> Result<Arc<FileNode>, ReadError> {
    let (cap, layout) = (parts.cap, parts.layout);
    let (grid, config) = (parts.grid.clone(), parts.config.clone());
    let (shares, metrics) = (parts.shares.clone(), parts.metrics.clone());
    let si = cap.storage_index();
    let geometry = *cap.geometry();
    let k = usize::from(geometry.k());
    shares.start_listing(&grid, si, geometry.n(), config.request_timeout);

    // A file with blocks in the disk cache opens from the UEB they carry, checked against
    // the cap like one from a share: cached reads then need no server at all, and the
    // listing goes on in the background for the segments the cache lacks.
    if let Some(cache) = &parts.cache {
        let reader = cache.clone();
        let cached = tokio::task::spawn_blocking(move || reader.file_prefix(si, UEB_LEN))
            .await
            .ok()
            .flatten();
        if let Some(bytes) = cached
            && hash::ueb(&bytes) == cap.ueb_hash()
            && let Ok(ueb) = Ueb::from_bytes(&bytes)
        {
            if ueb.geometry != geometry {
                return Err(ReadError::AlteredCap { storage_index: si });
            }
            debug!("opened from the disk cache");
            return Ok(FileNode::new(parts, ueb));
        }
    }

    // The UEB is the same in every share; take it from the first that proves it. Headers
    // are read k at a time, in parallel: one proves the UEB, and the others open the
    // very share files the first segment will be read from. A header read that runs late
    // is hedged like a block request.
    let mut tried: HashSet<usize> = HashSet::new();
    // Shares that hold another UEB than the cap names, by that UEB's hash: when k shares
    // agree on one and none matches the cap, the cap is what is wrong.
    let mut other_uebs: HashMap<Hash, HashSet<ShareNum>> = HashMap::new();
    let mut running: FuturesUnordered<HeaderRead> = FuturesUnordered::new();
    // Header reads in flight and not yet late: slot → when it is late.
    let mut deadlines: HashMap<usize, Instant> = HashMap::new();
    let mut want = k.max(1);
    // Reading starts once k shares are known, but primaries save decoding: the ones not
    // yet heard of get a short grace (on a local grid every server has answered by then).
    shares.wait_until(|map| map.distinct_shares() >= k).await;
    let primaries_known = |map: &ShareMap| {
        (0..geometry.k()).all(|p| map.slots.iter().any(|s| u16::from(s.share.0) == p))
    };
    let _ = tokio::time::timeout(config.primary_grace, shares.wait_until(primaries_known)).await;
    let ueb_bytes = loop {
        if running.is_empty() {
            shares
                .wait_until(|map| map.distinct_shares() >= k && map.slots.len() > tried.len())
                .await;
        }
        // Armed before looking, so shares merged while we pick are not missed.
        let mut more_shares = std::pin::pin!(shares.changed.notified());
        more_shares.as_mut().enable();
        let (picks, report) = {
            let map = shares.lock();
            let picks = pick_slots(
                &grid,
                &config,
                &map,
                geometry.k(),
                want.saturating_sub(running.len()),
                &tried,
                &HashSet::new(),
            );
            let exhausted = picks.is_empty() && running.is_empty() && map.listing.is_empty();
            let too_few = map.listing.is_empty() && map.distinct_shares() < k;
            let report = (exhausted || too_few).then(|| {
                (
                    map.distinct_shares(),
                    map.any_listing_failed(),
                    build_report(&grid, &map, &HashMap::new()),
                )
            });
            (picks, report)
        };
        if let Some((distinct, unreachable, report)) = report {
            if other_uebs.values().any(|shares| shares.len() >= k) {
                return Err(ReadError::AlteredCap { storage_index: si });
            }
            // "Not found" only when every server said so: with some unreachable, the file
            // may be there, and the read may work later.
            return Err(if distinct == 0 && !unreachable {
                ReadError::NoShares {
                    storage_index: si,
                    report,
                }
            } else {
                ReadError::NotEnoughShares {
                    storage_index: si,
                    segment: None,
                    needed: geometry.k(),
                    usable: if distinct < k { distinct } else { 0 },
                    report,
                }
            });
        }
        for slot in picks {
            tried.insert(slot);
            let (server_index, share) = {
                let map = shares.lock();
                (map.slots[slot].server, map.slots[slot].share)
            };
            let server = grid.servers()[server_index].clone();
            let delay = choice::hedge_delay(&server.health().latency(), &config.share_choice);
            deadlines.insert(slot, Instant::now() + delay);
            let (region, config) = (layout.header_region(), config.clone());
            let (cap, layout, metrics) = (cap, layout, metrics.clone());
            running.push(tokio::spawn(async move {
                let read = timed_read(&server, si, share, vec![region], &config, true, &metrics);
                let mut read = std::pin::pin!(read);
                // Late or not, the read goes on (it may still open the file); a late one
                // marks its server slow, even when another read already opened the file.
                let read = tokio::select! {
                    read = &mut read => read,
                    () = tokio::time::sleep(delay) => {
                        server.health().ran_late(config.slow_ttl);
                        read.await
                    }
                };
                let checked = read.and_then(|parts| {
                    check_header_region(
                        &cap,
                        &layout,
                        share,
                        parts.first().map_or(&[][..], |p| &p[..]),
                    )
                });
                (slot, checked)
            }));
        }
        if running.is_empty() {
            // Every known share was tried; wait for more answers.
            continue;
        }
        let next_late = deadlines.values().min().copied();
        let late = async {
            match next_late {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(joined) = running.next() => {
                let (slot, outcome) = joined
                    .map_err(|e| ReadError::Internal(format!("header read failed: {e}")))?;
                deadlines.remove(&slot);
                match outcome {
                    Ok(ueb_bytes) => break ueb_bytes,
                    Err(Problem::AlteredCap) => {
                        return Err(ReadError::AlteredCap { storage_index: si });
                    }
                    Err(problem) => {
                        metrics.share_rejected(problem.rejection());
                        let mut map = shares.lock();
                        if let Problem::OtherUeb(hash) = problem {
                            other_uebs.entry(hash).or_default().insert(map.slots[slot].share);
                        }
                        map.reject_at_open(slot, &problem);
                        drop(map);
                        tell_if_corrupt(&config, &cap, &problem);
                    }
                }
            }
            () = late => {
                // Each late read is replaced by one more (its task marks its server).
                let now = Instant::now();
                deadlines.retain(|_, &mut at| {
                    let late = at <= now;
                    if late {
                        want += 1;
                        metrics.hedged();
                    }
                    !late
                });
            }
            // New shares may serve a hedge that found no candidate before.
            () = &mut more_shares => {}
        }
    };
    // The other reads started together and are usually done within microseconds: wait
    // for them up to their hedge deadline, so their failures are recorded and no request
    // outlives the open. Any still running go on in their tasks, warming share files.
    let deadline = deadlines
        .values()
        .min()
        .copied()
        .unwrap_or_else(Instant::now);
    let drain = async {
        while let Some(joined) = running.next().await {
            if let Ok((slot, Err(problem))) = joined {
                metrics.share_rejected(problem.rejection());
                shares.lock().reject_at_open(slot, &problem);
                tell_if_corrupt(&config, &cap, &problem);
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, drain).await;
    let ueb = Ueb::from_bytes(&ueb_bytes).map_err(|e| ReadError::Internal(e.to_string()))?;
    Ok(FileNode::new(parts, ueb))
}

/// Checks a header region (header and UEB) against the cap. Returns the UEB bytes.
pub(crate) fn check_header_region(
    cap: &VerifyCap,
    layout: &ShareLayout,
    share: ShareNum,
    region: &[u8],
) -> Result<Vec<u8>, Problem> {
    let corrupt = |why: String| Problem::CorruptShare(why);
    let header_bytes = region
        .get(..HEADER_LEN as usize)
        .ok_or_else(|| corrupt("header truncated".into()))?;
    let header =
        ShareHeader::from_bytes(header_bytes).map_err(|e| corrupt(format!("bad header: {e}")))?;
    // The UEB first: if it is the one the cap names but the cap's numbers disagree with it,
    // the cap is at fault, not this share.
    let ueb_range = layout.ueb_range();
    let ueb_bytes = region
        .get(ueb_range.start as usize..ueb_range.end as usize)
        .ok_or_else(|| corrupt("UEB truncated".into()))?;
    let ueb_hash = hash::ueb(ueb_bytes);
    if ueb_hash != cap.ueb_hash() {
        if header.storage_index == cap.storage_index() && header.share == share {
            return Err(Problem::OtherUeb(ueb_hash));
        }
        return Err(corrupt("UEB does not match the cap's hash".into()));
    }
    let ueb = Ueb::from_bytes(ueb_bytes).map_err(|e| corrupt(format!("bad UEB: {e}")))?;
    if ueb.geometry != *cap.geometry() {
        return Err(Problem::AlteredCap);
    }
    if header.share != share {
        return Err(corrupt(format!("header says it is share {}", header.share)));
    }
    if header.storage_index != cap.storage_index() {
        return Err(corrupt("header names another file".into()));
    }
    if header.geometry != *cap.geometry() {
        return Err(corrupt("header parameters differ from the cap's".into()));
    }
    Ok(ueb_bytes.to_vec())
}

/// Tells [`ReaderConfig::on_damage`] of a share found corrupt while opening.
fn tell_if_corrupt(config: &ReaderConfig, cap: &VerifyCap, problem: &Problem) {
    // A share carrying another UEB may be another file's (or the cap forged): not damage
    // to this file until a share proves the cap's UEB.
    if let Some(hook) = &config.on_damage
        && problem.is_corruption()
        && !matches!(problem, Problem::OtherUeb(_) | Problem::AlteredCap)
    {
        hook.tell(cap, Damage::Corrupt);
    }
}
