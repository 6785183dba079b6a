//! Checking every share of a file, with only a verify cap: each share's header and UEB, its
//! share chain, both tree sections, every block and every stored hash chain; then, segment by
//! segment, that the shares agree (decoding gives the ciphertext the ciphertext tree names,
//! and every block is what re-encoding that ciphertext gives).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use futures::StreamExt;

use super::ReaderConfig;
use super::error::Problem;
use super::node::open::check_header_region;
use super::node::shares::discover;
use crate::core::cap::{StorageIndex, VerifyCap};
use crate::core::codec::Codec as _;
use crate::core::erasure::Codec;
use crate::core::geometry::{Geometry, SegmentIndex, ShareNum};
use crate::core::hash::{self, HASH_LEN, Hash};
use crate::core::layout::ShareLayout;
use crate::core::planner::{Record, next_subset};
use crate::core::tree::{self, NodeIndex, TreeShape};
use crate::core::ueb::Ueb;
use crate::core::verifier;
use crate::grid::Grid;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::{MAX_READ_BYTES, StoreError};

/// Problems reported per share before the rest are only counted.
const MAX_PROBLEMS_LISTED: usize = 8;
/// Segments checked concurrently.
const SEGMENTS_IN_FLIGHT: usize = 4;
/// Shares whose tree sections are checked at once (each may hold up to 64 MiB of section).
const TREE_CHECKS_IN_FLIGHT: usize = 2;
/// Combinations of k shares decoded for one segment before calling it unrecoverable.
const MAX_DECODES: usize = 64;

/// The verdict on one share.
#[derive(Debug, Clone)]
pub struct ShareCheck {
    /// Server holding it.
    pub server: String,
    /// Share number.
    pub share: ShareNum,
    /// Problems found (empty: the share is good).
    pub problems: Vec<String>,
    /// Problems beyond those listed.
    pub more_problems: usize,
}

impl ShareCheck {
    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS_LISTED {
            self.problems.push(text);
        } else {
            self.more_problems += 1;
        }
    }

    /// Whether nothing was wrong with the share.
    pub fn is_good(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Everything `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The file.
    pub storage_index: StorageIndex,
    /// Every share found, with its problems.
    pub shares: Vec<ShareCheck>,
    /// Share numbers no server holds.
    pub missing: Vec<ShareNum>,
    /// Servers that could not be asked (name, error).
    pub server_errors: Vec<(String, String)>,
    /// Segments that fewer than k good shares cover.
    pub unrecoverable: Vec<SegmentIndex>,
    /// Segments checked.
    pub segments: u64,
    /// The cap does not match the file its storage index names (altered or mistyped):
    /// the shares were not judged against it.
    pub altered_cap: bool,
}

impl VerifyReport {
    /// No problem of any kind.
    pub fn is_healthy(&self) -> bool {
        !self.altered_cap
            && self.missing.is_empty()
            && self.server_errors.is_empty()
            && self.unrecoverable.is_empty()
            && self.shares.iter().all(ShareCheck::is_good)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.altered_cap {
            return write!(f, "{}", altered_cap_message(self.storage_index));
        }
        writeln!(
            f,
            "file {}: {} segments checked",
            self.storage_index, self.segments
        )?;
        for (server, error) in &self.server_errors {
            writeln!(f, "  {server}: {error}")?;
        }
        for check in &self.shares {
            if check.is_good() {
                writeln!(f, "  share {} on {}: ok", check.share, check.server)?;
            } else {
                writeln!(f, "  share {} on {}: BAD", check.share, check.server)?;
                for p in &check.problems {
                    writeln!(f, "      {p}")?;
                }
                if check.more_problems > 0 {
                    writeln!(f, "      … and {} more problems", check.more_problems)?;
                }
            }
        }
        if !self.missing.is_empty() {
            let list: Vec<String> = self.missing.iter().map(ToString::to_string).collect();
            writeln!(f, "  missing shares: {}", list.join(", "))?;
        }
        if !self.unrecoverable.is_empty() {
            writeln!(
                f,
                "  UNRECOVERABLE: {} segments have fewer than k good shares (first: {})",
                self.unrecoverable.len(),
                self.unrecoverable[0]
            )?;
        }
        let good = self.shares.iter().filter(|c| c.is_good()).count();
        write!(
            f,
            "{}: {good} good shares",
            if self.is_healthy() {
                "healthy"
            } else {
                "NOT HEALTHY"
            }
        )
    }
}

/// What `get` says of the same cap: [`ReadError::AlteredCap`](super::ReadError::AlteredCap).
fn altered_cap_message(storage_index: StorageIndex) -> String {
    super::ReadError::AlteredCap { storage_index }.to_string()
}

/// Store reads that give up after `timeout` (a stalled server must not hang a check), with
/// the bytes they brought counted.
struct ShareReader<'a> {
    grid: &'a Grid,
    cap: &'a VerifyCap,
    timeout: Duration,
    bytes: AtomicU64,
}

impl ShareReader<'_> {
    async fn read(
        &self,
        server: usize,
        share: ShareNum,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> Result<Vec<bytes::Bytes>, StoreError> {
        let store = self.grid.servers()[server].store();
        let parts = tokio::time::timeout(
            self.timeout,
            store.read(self.cap.storage_index(), share, ranges),
        )
        .await
        .unwrap_or(Err(StoreError::Timeout(self.timeout)))?;
        let len: usize = parts.iter().map(bytes::Bytes::len).sum();
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(parts)
    }
}

struct Candidate {
    server: usize,
    check: ShareCheck,
    /// Root of this share's block tree, once proven against the UEB.
    root: Option<Hash>,
    /// Why its header region was refused, if it was.
    header_problem: Option<Problem>,
    /// Whether its header region could be read (refused or not).
    header_read: bool,
    /// The UEB it carries when that is not the cap's (another file's, or a rotted copy).
    other_ueb: Option<Vec<u8>>,
}

/// Checks every share of the file `cap` names. `progress` is told the number of segments done.
pub async fn verify(
    grid: &Grid,
    cap: &VerifyCap,
    config: &ReaderConfig,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> VerifyReport {
    Survey::new(grid, cap, config)
        .await
        .check_segments(progress, None)
        .await
        .report
}

/// What a repairer is handed for each segment whose shares decode to what the ciphertext
/// tree names: the blocks every share should hold (`blocks[i]` is share `i`'s, data then
/// parity) and the segment's ciphertext leaf. Called from the blocking pool, segments in
/// any order.
pub(crate) trait SegmentSink: Send + Sync {
    /// Takes one segment.
    fn segment(
        &self,
        segment: SegmentIndex,
        blocks: &[Vec<u8>],
        ciphertext_leaf: Hash,
    ) -> std::io::Result<()>;
}

/// The first part of a check: every share found, its front (header, UEB, block-tree root
/// proven through the share chain) and its tree sections checked. [`check_segments`]
/// (Self::check_segments) does the rest.
pub(crate) struct Survey<'a> {
    reader: ShareReader<'a>,
    layout: ShareLayout,
    report: VerifyReport,
    candidates: Vec<Candidate>,
    ueb: Option<Ueb>,
}

/// One copy of a share on one server, as a whole check judged it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyFound {
    /// Index of the server in the grid.
    pub(crate) server: usize,
    pub(crate) share: ShareNum,
    /// Wholly good: every byte verified.
    pub(crate) good: bool,
    /// Its block-tree root, proven through its share chain to the UEB.
    pub(crate) root: Option<Hash>,
    /// Whether it can be taken for this file's: it carries the cap's UEB, or its front is
    /// garbage (no UEB at all). A copy carrying another UEB (another file's share), or one
    /// whose front could not be read, is never called corrupt nor replaced.
    pub(crate) ours: bool,
}

/// Everything a whole check found.
pub(crate) struct Checked {
    /// What `verify` prints.
    pub(crate) report: VerifyReport,
    /// Every copy found.
    pub(crate) copies: Vec<CopyFound>,
    /// Bytes read from the stores.
    pub(crate) bytes_read: u64,
    /// Why the sink failed, if it did (its segments are then not all written).
    pub(crate) sink_error: Option<String>,
}

impl<'a> Survey<'a> {
    /// Finds every share and checks what can be checked without reading the blocks.
    pub(crate) async fn new(
        grid: &'a Grid,
        cap: &'a VerifyCap,
        config: &ReaderConfig,
    ) -> Survey<'a> {
        let si = cap.storage_index();
        let g = *cap.geometry();
        let layout = ShareLayout::new(&g);
        let reader = ShareReader {
            grid,
            cap,
            timeout: config.request_timeout,
            bytes: AtomicU64::new(0),
        };
        let mut report = VerifyReport {
            storage_index: si,
            shares: Vec::new(),
            missing: Vec::new(),
            server_errors: Vec::new(),
            unrecoverable: Vec::new(),
            segments: g.num_segments(),
            altered_cap: false,
        };
        let mut candidates = Vec::new();
        for (server, listing) in discover(grid, si, g.n(), config.request_timeout)
            .await
            .into_iter()
            .enumerate()
        {
            match listing {
                Ok(shares) => candidates.extend(shares.into_iter().map(|share| Candidate {
                    server,
                    check: ShareCheck {
                        server: grid.servers()[server].name().to_owned(),
                        share,
                        problems: Vec::new(),
                        more_problems: 0,
                    },
                    root: None,
                    header_problem: None,
                    header_read: false,
                    other_ueb: None,
                })),
                Err(e) => report
                    .server_errors
                    .push((grid.servers()[server].name().to_owned(), e)),
            }
        }
        report.missing = (0..g.n())
            .map(|s| ShareNum(s as u8))
            .filter(|s| !candidates.iter().any(|c| c.check.share == *s))
            .collect();

        let ueb_found = futures::future::join_all(
            candidates
                .iter_mut()
                .map(|c| check_front(&reader, &layout, c)),
        )
        .await;
        let ueb = ueb_found.into_iter().flatten().next();
        match &ueb {
            Some(ueb) => {
                futures::stream::iter(candidates.iter_mut())
                    .for_each_concurrent(TREE_CHECKS_IN_FLIGHT, |c| {
                        check_trees(&reader, &layout, ueb, c)
                    })
                    .await;
            }
            None => {
                // No share holds the UEB the cap names. If the shares hold the UEB the cap's
                // hash names but other parameters, or k of them agree on another UEB, the
                // cap is wrong (altered or mistyped), not every share.
                let mut other_uebs: HashMap<Hash, HashSet<ShareNum>> = HashMap::new();
                for c in &candidates {
                    if let Some(Problem::OtherUeb(hash)) = &c.header_problem {
                        other_uebs.entry(*hash).or_default().insert(c.check.share);
                    }
                }
                report.altered_cap = candidates
                    .iter()
                    .any(|c| matches!(c.header_problem, Some(Problem::AlteredCap)))
                    || other_uebs.values().any(|s| s.len() >= usize::from(g.k()));
                report.unrecoverable = (0..g.num_segments()).map(SegmentIndex).collect();
            }
        }
        Survey {
            reader,
            layout,
            report,
            candidates,
            ueb,
        }
    }

    /// Share numbers with a copy whose front and tree sections are good so far.
    pub(crate) fn sound_so_far(&self) -> std::collections::BTreeSet<ShareNum> {
        self.candidates
            .iter()
            .filter(|c| c.root.is_some() && c.check.is_good())
            .map(|c| c.check.share)
            .collect()
    }

    /// Caps of the other files that may live at this storage index: UEBs other than the
    /// cap's, each carried by at least its own k distinct share numbers. Whether such a file
    /// is real (the cap forged) or a few copies whose UEB rotted takes [`checks_out`].
    pub(crate) fn foreign_files(&self) -> Vec<VerifyCap> {
        foreign_files(self.reader.cap.storage_index(), &self.candidates)
    }

    /// The file's UEB, if any share held the one the cap names.
    pub(crate) fn ueb(&self) -> Option<&Ueb> {
        self.ueb.as_ref()
    }

    /// Checks every segment of every share (the blocks, their chains, and that the shares
    /// agree), handing each decoded segment to `sink`.
    pub(crate) async fn check_segments(
        self,
        progress: Option<&(dyn Fn(u64) + Sync)>,
        sink: Option<std::sync::Arc<dyn SegmentSink>>,
    ) -> Checked {
        let Survey {
            reader,
            layout,
            mut report,
            mut candidates,
            ueb,
        } = self;
        let g = *reader.cap.geometry();
        let mut sink_error = None;
        if let Some(ueb) = &ueb {
            let codec = Codec::new(g.k(), g.n()).ok();
            let proven: Vec<(usize, ShareNum, Option<Hash>)> = candidates
                .iter()
                .map(|c| (c.server, c.check.share, c.root))
                .collect();
            let checker = SegmentChecker {
                reader: &reader,
                layout: &layout,
                ueb,
                codec: codec.as_ref(),
                candidates: &proven,
                sink: sink.as_ref(),
            };
            let mut segments = futures::stream::iter(0..g.num_segments())
                .map(|s| {
                    let checker = &checker;
                    async move { (s, check_segment(checker, SegmentIndex(s)).await) }
                })
                .buffered(SEGMENTS_IN_FLIGHT);
            let mut done = 0;
            while let Some((s, outcome)) = segments.next().await {
                for (index, problem) in outcome.problems {
                    candidates[index].check.problem(problem);
                }
                if !outcome.recoverable {
                    report.unrecoverable.push(SegmentIndex(s));
                }
                if let Some(e) = outcome.sink_error {
                    sink_error.get_or_insert(e);
                }
                done += 1;
                if let Some(progress) = progress {
                    progress(done);
                }
            }
        }
        let copies = candidates
            .iter()
            .map(|c| CopyFound {
                server: c.server,
                share: c.check.share,
                good: c.check.is_good(),
                root: c.root,
                ours: c.root.is_some()
                    || (c.header_read
                        && !matches!(
                            c.header_problem,
                            Some(Problem::OtherUeb(_) | Problem::AlteredCap)
                        )),
            })
            .collect();
        report.shares = candidates.into_iter().map(|c| c.check).collect();
        Checked {
            report,
            copies,
            bytes_read: reader.bytes.load(Ordering::Relaxed),
            sink_error,
        }
    }
}

/// Whether the file `cap` names is whole here: its UEB found and every segment recoverable
/// from shares that prove themselves. Tells another file at a storage index from copies whose
/// UEB merely rotted (those never prove a share chain, or never decode to its ciphertext).
pub(crate) async fn checks_out(grid: &Grid, cap: &VerifyCap, config: &ReaderConfig) -> bool {
    let survey = Survey::new(grid, cap, config).await;
    if survey.ueb().is_none() || survey.sound_so_far().len() < usize::from(cap.geometry().k()) {
        return false;
    }
    let checked = survey.check_segments(None, None).await;
    checked.report.unrecoverable.is_empty()
}

/// The files other than the cap's whose UEB at least their own k share numbers carry.
fn foreign_files(storage_index: StorageIndex, candidates: &[Candidate]) -> Vec<VerifyCap> {
    let mut other_uebs: HashMap<Hash, (Geometry, HashSet<ShareNum>)> = HashMap::new();
    for c in candidates {
        let (Some(Problem::OtherUeb(hash)), Some(bytes)) = (&c.header_problem, &c.other_ueb) else {
            continue;
        };
        let Ok(ueb) = Ueb::from_bytes(bytes) else {
            continue;
        };
        other_uebs
            .entry(*hash)
            .or_insert_with(|| (ueb.geometry, HashSet::new()))
            .1
            .insert(c.check.share);
    }
    other_uebs
        .into_iter()
        .filter(|(_, (geometry, shares))| shares.len() >= usize::from(geometry.k()))
        .map(|(hash, (geometry, _))| VerifyCap::new(storage_index, hash, geometry))
        .collect()
}

/// Header and UEB (against the cap), then this share's block-tree root, proven through the
/// share chain of its first record. Returns the UEB if the header region is good.
async fn check_front(
    reader: &ShareReader<'_>,
    layout: &ShareLayout,
    c: &mut Candidate,
) -> Option<Ueb> {
    let cap = reader.cap;
    let g = cap.geometry();
    let share = c.check.share;
    let region = match reader
        .read(c.server, share, vec![layout.header_region()])
        .await
    {
        Ok(parts) => parts.into_iter().next().unwrap_or_default(),
        Err(e) => {
            c.check.problem(format!("cannot read header: {e}"));
            return None;
        }
    };
    c.header_read = true;
    let ueb_bytes = match check_header_region(cap, layout, share, &region) {
        Ok(found) => found,
        Err(e) => {
            c.check.problem(e.to_string());
            if matches!(e, Problem::OtherUeb(_)) {
                c.other_ueb = region
                    .get(layout.ueb_range().start as usize..layout.ueb_range().end as usize)
                    .map(<[u8]>::to_vec);
            }
            c.header_problem = Some(e);
            return None;
        }
    };
    let ueb = Ueb::from_bytes(&ueb_bytes).ok()?;
    if g.num_segments() == 0 {
        // Every block tree of an empty file is the single empty leaf.
        let expected = tree::build(&vec![hash::empty_leaf(); usize::from(g.n())])[0];
        if expected == ueb.share_root {
            c.root = Some(hash::empty_leaf());
        } else {
            c.check
                .problem("the UEB's share root is not an empty file's".into());
        }
        return Some(ueb);
    }
    let first = SegmentIndex(0);
    let root_at = layout.block_tree_range().start;
    let reads = vec![
        layout.record_range(first),
        root_at..root_at + HASH_LEN as u64,
    ];
    let (record, stored_root) = match reader.read(c.server, share, reads).await {
        Ok(parts) if parts.len() == 2 => (parts[0].clone(), Hash::from_slice(&parts[1])),
        Ok(_) => return Some(ueb),
        Err(e) => {
            c.check
                .problem(format!("cannot read the first record: {e}"));
            return Some(ueb);
        }
    };
    let Some(Record {
        block,
        block_chain,
        share_chain: Some(share_chain),
        ..
    }) = Record::parse(layout, first, &record)
    else {
        c.check.problem("first record has the wrong length".into());
        return Some(ueb);
    };
    let proves = |root: Hash| {
        verifier::verify_block_tree_root(&ueb, share, first, root, &share_chain).is_ok()
    };
    match stored_root {
        Some(root) if proves(root) => c.root = Some(root),
        _ => {
            c.check
                .problem("stored block-tree root does not lead to the UEB".into());
            // Fall back to the root the first record implies, so the blocks still get checked.
            let record = Record {
                block,
                block_chain,
                ciphertext_chain: Vec::new(),
                share_chain: Some(share_chain),
            };
            let leaf = hash::block_leaf(block);
            c.root = verifier::verify_whole_proof(&ueb, share, first, leaf, &record).ok();
        }
    }
    Some(ueb)
}

/// Both tree sections: every interior node is the hash of its children and the roots are
/// the proven ones. Sections too large to hold in memory at once are skipped.
async fn check_trees(reader: &ShareReader<'_>, layout: &ShareLayout, ueb: &Ueb, c: &mut Candidate) {
    let shape = reader.cap.geometry().segment_tree();
    let sections = [
        ("block tree", layout.block_tree_range(), c.root),
        (
            "ciphertext tree",
            layout.ciphertext_tree_range(),
            Some(ueb.ciphertext_root),
        ),
    ];
    for (name, range, root) in sections {
        if range.end - range.start > MAX_READ_BYTES {
            continue;
        }
        let bytes = match reader.read(c.server, c.check.share, vec![range]).await {
            Ok(parts) => parts.into_iter().next().unwrap_or_default(),
            Err(e) => {
                c.check
                    .problem(format!("cannot read the {name} section: {e}"));
                continue;
            }
        };
        // Hashing a section of up to MAX_READ_BYTES is CPU work: off the async workers.
        let checked = tokio::task::spawn_blocking(move || section_problem(&bytes, &shape, root));
        match checked.await {
            Ok(None) => {}
            Ok(Some(problem)) => c.check.problem(format!("{name} section: {problem}")),
            Err(e) => c
                .check
                .problem(format!("{name} section: check failed: {e}")),
        }
    }
}

fn section_problem(bytes: &[u8], shape: &TreeShape, root: Option<Hash>) -> Option<String> {
    if bytes.len() as u64 != shape.node_count() * HASH_LEN as u64 {
        return Some("wrong length".into());
    }
    // Read in place, without a second copy of the section as hashes.
    let node = |i: usize| Hash::from_slice(&bytes[i * HASH_LEN..][..HASH_LEN]);
    if let Some(root) = root
        && node(0) != Some(root)
    {
        return Some("root does not match".into());
    }
    (0..shape.width() as usize - 1)
        .find(|&i| {
            let (Some(parent), Some(left), Some(right)) =
                (node(i), node(2 * i + 1), node(2 * i + 2))
            else {
                return true;
            };
            parent != hash::node(&left, &right)
        })
        .map(|i| format!("node {} does not match its children", NodeIndex(i as u64)))
}

struct SegmentOutcome {
    problems: Vec<(usize, String)>,
    recoverable: bool,
    sink_error: Option<String>,
}

/// What every segment check needs.
struct SegmentChecker<'a> {
    reader: &'a ShareReader<'a>,
    layout: &'a ShareLayout,
    ueb: &'a Ueb,
    codec: Option<&'a Codec>,
    /// Per candidate: server, share, proven block-tree root.
    candidates: &'a [(usize, ShareNum, Option<Hash>)],
    sink: Option<&'a std::sync::Arc<dyn SegmentSink>>,
}

async fn check_segment(checker: &SegmentChecker<'_>, s: SegmentIndex) -> SegmentOutcome {
    let SegmentChecker {
        reader,
        layout,
        ueb,
        codec,
        candidates,
        sink,
    } = *checker;
    let range = layout.record_range(s);
    let reads = candidates.iter().map(|&(server, share, root)| {
        let range = range.clone();
        async move {
            match root {
                Some(_) => Some(
                    reader
                        .read(server, share, vec![range])
                        .await
                        .map(|parts| parts.into_iter().next().unwrap_or_default())
                        .map_err(|e| e.to_string()),
                ),
                None => None,
            }
        }
    });
    let results = futures::future::join_all(reads).await;
    // Verifying, decoding, re-encoding and the sink's writes are CPU and disk work: off the
    // async workers, which may be serving reads (`serve --repair-on-read`).
    let judge = SegmentJudge {
        segment: s,
        geometry: *reader.cap.geometry(),
        layout: *layout,
        ueb: *ueb,
        codec: codec.cloned(),
        candidates: candidates.to_vec(),
        sink: sink.cloned(),
    };
    match tokio::task::spawn_blocking(move || judge.judge(results)).await {
        Ok(outcome) => outcome,
        Err(e) => SegmentOutcome {
            problems: Vec::new(),
            recoverable: false,
            sink_error: Some(format!("segment {s}: check failed: {e}")),
        },
    }
}

/// The blocking half of a segment check: everything after the reads.
struct SegmentJudge {
    segment: SegmentIndex,
    geometry: Geometry,
    layout: ShareLayout,
    ueb: Ueb,
    codec: Option<Codec>,
    candidates: Vec<(usize, ShareNum, Option<Hash>)>,
    sink: Option<std::sync::Arc<dyn SegmentSink>>,
}

impl SegmentJudge {
    fn judge(self, results: Vec<Option<Result<bytes::Bytes, String>>>) -> SegmentOutcome {
        let SegmentJudge {
            segment: s,
            geometry,
            layout,
            ueb,
            codec,
            candidates,
            sink,
        } = self;
        let (g, layout, ueb, codec, sink) =
            (&geometry, &layout, &ueb, codec.as_ref(), sink.as_ref());
        let mut problems = Vec::new();
        // Every verified copy, and the first copy of each share number (for decoding).
        let mut verified: Vec<(usize, ShareNum, bytes::Bytes, Vec<Hash>)> = Vec::new();
        let mut good: BTreeMap<ShareNum, usize> = BTreeMap::new();
        for (index, result) in results.into_iter().enumerate() {
            let (_, share, root) = candidates[index];
            let (Some(result), Some(root)) = (result, root) else {
                continue;
            };
            let bytes = match result {
                Ok(bytes) => bytes,
                Err(e) => {
                    problems.push((index, format!("segment {s}: cannot read: {e}")));
                    continue;
                }
            };
            let record = match verifier::parse_record(layout, share, s, &bytes) {
                Ok(record) => record,
                Err(e) => {
                    problems.push((index, e.to_string()));
                    continue;
                }
            };
            let leaf = hash::block_leaf(record.block);
            let share_chain = record.share_chain.as_deref().unwrap_or_default();
            if verifier::verify_block_tree_root(ueb, share, s, root, share_chain).is_err() {
                problems.push((index, format!("segment {s}: stored share chain is corrupt")));
            }
            match verifier::verify_block_against_root(g, share, s, root, leaf, &record.block_chain)
            {
                Ok(()) => {
                    let block = bytes.slice(..record.block.len());
                    good.entry(share).or_insert(verified.len());
                    verified.push((index, share, block, record.ciphertext_chain));
                }
                Err(e) => problems.push((index, e.to_string())),
            }
        }
        let k = usize::from(g.k());
        if good.len() < k {
            return SegmentOutcome {
                problems,
                recoverable: false,
                sink_error: None,
            };
        }
        let Some(codec) = codec else {
            return SegmentOutcome {
                problems,
                recoverable: true,
                sink_error: None,
            };
        };
        // Find k shares whose decode the ciphertext tree accepts (trying sets the way a reader
        // does), then hold every copy of every share to that decode.
        let shares: Vec<ShareNum> = good.keys().copied().collect();
        let chains: Vec<&[Hash]> = verified.iter().map(|(_, _, _, c)| c.as_slice()).collect();
        let accepts = |leaf: Hash| verifier::verify_ciphertext(ueb, s, leaf, &chains).is_ok();
        let mut tried = HashSet::new();
        let mut found = None;
        while let Some(subset) =
            next_subset(&shares, k, &tried).filter(|_| tried.len() < MAX_DECODES)
        {
            let inputs: Vec<(usize, &[u8])> = subset
                .iter()
                .map(|sh| (sh.index(), &verified[good[sh]].2[..]))
                .collect();
            tried.insert(subset);
            if let Ok(data) = codec.decode(&inputs) {
                let leaves: Vec<Hash> = data.iter().map(|b| hash::block_leaf(b)).collect();
                let leaf = hash::ciphertext_leaf(&leaves);
                if accepts(leaf) {
                    found = Some((data, leaf));
                    break;
                }
            }
        }
        let Some((data, ciphertext_leaf)) = found else {
            for &v in good.values() {
                problems.push((verified[v].0, format!("segment {s}: no {k} shares decode to what the ciphertext tree names (inconsistent upload)")));
            }
            return SegmentOutcome {
                problems,
                recoverable: false,
                sink_error: None,
            };
        };
        for (index, _, _, chain) in &verified {
            if verifier::verify_ciphertext(ueb, s, ciphertext_leaf, &[chain]).is_err() {
                problems.push((
                    *index,
                    format!("segment {s}: stored ciphertext-tree chain is corrupt"),
                ));
            }
        }
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut parity = vec![vec![0u8; refs[0].len()]; usize::from(g.n() - g.k())];
        let mut parity_refs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
        if codec.encode(&refs, &mut parity_refs).is_err() {
            return SegmentOutcome {
                problems,
                recoverable: true,
                sink_error: sink.map(|_| format!("segment {s}: cannot re-encode")),
            };
        }
        for (index, share, block, _) in &verified {
            let expected: &[u8] = if share.index() < k {
                &data[share.index()]
            } else {
                &parity[share.index() - k]
            };
            if &block[..] != expected {
                problems.push((
                    *index,
                    format!("segment {s}: block disagrees with the other shares"),
                ));
            }
        }
        let mut sink_error = None;
        if let Some(sink) = sink {
            let mut blocks = data;
            blocks.extend(parity);
            sink_error = sink
                .segment(s, &blocks, ciphertext_leaf)
                .err()
                .map(|e| format!("segment {s}: {e}"));
        }
        SegmentOutcome {
            problems,
            recoverable: true,
            sink_error,
        }
    }
}
