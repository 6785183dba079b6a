//! Repair: rebuilding a file's missing and corrupt shares from any k good ones, with only its
//! verify cap.
//!
//! One pass over the file checks every share whole, as [`verify`](crate::engine::audit::verify)
//! does: each segment is read from every share, verified, decoded from k verified blocks the
//! ciphertext tree accepts, and re-encoded. The blocks of the shares that have no good copy
//! go into spools (ciphertext only) with their leaf hashes; their block trees are then built
//! and, with the roots of the good shares, must give the UEB's share root before anything is
//! stored. The chains and front are written as `put` writes them, so a rebuilt share is
//! byte for byte the share the uploader made. (A share found bad only partway through the
//! pass is rebuilt by a second one.) Each takes the place of its corrupt copies where their
//! stores allow it (directories), else goes to a server that holds no copy of it (as `put`
//! places shares), the next one if a server refuses it.
//!
//! Memory is a few segments whatever the file size: the shares are built in spools on disk.
//! Stores commit shares atomically and never overwrite a share but a proven-corrupt copy
//! with these same verified bytes, so a repair killed at any point leaves the file as it was,
//! plus whichever verified shares it had stored; two repairers racing on one file store the
//! same bytes. When k or more shares at the storage index carry another UEB than the cap's,
//! the cap may be forged to make us write there: nothing is written.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::{info, warn};

use crate::core::cap::{StorageIndex, VerifyCap};
use crate::core::codec::Codec;
use crate::core::geometry::{Geometry, SegmentIndex, ShareNum};
use crate::core::hash::{self, Hash};
use crate::core::layout::ShareLayout;
use crate::core::text;
use crate::core::tree;
use crate::core::ueb::Ueb;
use crate::engine::ReaderConfig;
use crate::engine::audit::{self, Checked, CopyFound, SegmentSink, Survey, VerifyReport};
use crate::grid::Grid;
use crate::store::{SpooledShare, StoreError};
use crate::upload::encode::ShareFront;
use crate::upload::preflight;
use crate::upload::tree_file::TreeSection;

pub mod queue;

/// How to repair.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RepairOptions {
    /// Distinct servers that must hold good shares for a file that cannot have all n
    /// placed (fewer servers than shares) to count as repaired. `None`: as `put`, the
    /// smaller of n and the number of servers.
    pub happy: Option<u16>,
    /// Check and say what would be rebuilt and where, and write nothing.
    pub dry_run: bool,
    /// Timeouts and the like, as for reading.
    pub config: ReaderConfig,
    /// The caller holds the file's read cap, not only a verify cap. A read cap's storage
    /// index is the hash of its key, so no one without the key can pair it with another
    /// UEB: another whole file found at the storage index is then someone's planted junk,
    /// left where it is, not a reason to stop. With a verify cap alone the two files cannot
    /// be told apart, and nothing is written.
    pub holds_read_cap: bool,
}

impl RepairOptions {
    /// Options with `put`'s happiness, writing.
    pub fn new() -> RepairOptions {
        RepairOptions::default()
    }

    /// Only check and plan (see [`dry_run`](Self::dry_run)).
    pub fn dry_run(mut self, dry_run: bool) -> RepairOptions {
        self.dry_run = dry_run;
        self
    }

    /// Says whether the cap repaired with came from a read cap (see
    /// [`holds_read_cap`](Self::holds_read_cap)).
    pub fn holding_read_cap(mut self, holds: bool) -> RepairOptions {
        self.holds_read_cap = holds;
        self
    }

    /// Distinct servers holding good shares that make the file count as repaired.
    pub fn with_happy(mut self, happy: u16) -> RepairOptions {
        self.happy = Some(happy);
        self
    }
}

/// How a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// All n shares were present and good: nothing to do.
    Healthy,
    /// Shares were rebuilt and now all n are present and good.
    Repaired,
    /// Not all n shares could be placed, but good shares are on at least `happy` distinct
    /// servers (a grid with fewer servers than shares).
    HappinessMet,
    /// Still short of healthy and of happiness after what could be done (servers refused
    /// shares, or a dry run).
    Unhealthy,
    /// Some segment has fewer than k good shares: nothing can be rebuilt, nothing written.
    Unrecoverable,
    /// The cap does not match the file its storage index names: nothing judged.
    AlteredCap,
}

impl Outcome {
    /// Whether the file ended healthy (all n shares good, or happiness met).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Healthy | Outcome::Repaired | Outcome::HappinessMet
        )
    }

    fn word(self) -> &'static str {
        match self {
            Outcome::Healthy => "healthy",
            Outcome::Repaired => "repaired",
            Outcome::HappinessMet => "happy",
            Outcome::Unhealthy => "UNHEALTHY",
            Outcome::Unrecoverable => "UNRECOVERABLE",
            Outcome::AlteredCap => "ALTERED CAP",
        }
    }
}

/// A share and a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShareOnServer {
    /// Share number.
    pub share: u8,
    /// The server's name (a path or URL; never a secret).
    pub server: String,
    /// For a rebuilt share: whether it took the place of the server's corrupt copy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replaced: bool,
}

/// A share that could not be placed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unplaced {
    /// Share number.
    pub share: u8,
    /// Every server tried, with its answer.
    pub why: String,
}

/// What a repair found and did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The file.
    #[serde(serialize_with = "display")]
    pub storage_index: StorageIndex,
    /// How it ended.
    pub outcome: Outcome,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// The file's n.
    pub n: u16,
    /// The file's k.
    pub k: u16,
    /// Share numbers with a good copy before the repair.
    pub good_before: Vec<u8>,
    /// Share numbers no server held.
    pub missing: Vec<u8>,
    /// Copies found bad (replaced where their store allows, see `rebuilt`; each
    /// was reported to its store).
    pub corrupt: Vec<ShareOnServer>,
    /// Shares rebuilt and stored (in a dry run: where they would go).
    pub rebuilt: Vec<ShareOnServer>,
    /// Shares rebuilt that no server took.
    pub unplaced: Vec<Unplaced>,
    /// Servers that could not be asked or did not answer (name, why).
    pub server_errors: Vec<(String, String)>,
    /// Distinct servers holding good shares at the end.
    pub servers_with_good_shares: usize,
    /// The happiness asked for.
    pub happy: usize,
    /// Bytes read from the stores.
    pub bytes_read: u64,
    /// Bytes of shares stored.
    pub bytes_written: u64,
    /// The file's size.
    pub file_size: u64,
    /// Why the repair stopped short, if it did.
    pub error: Option<String>,
    /// The full check, as `verify` prints it.
    #[serde(skip)]
    pub check: Option<VerifyReport>,
}

fn display<T: fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn list(shares: &[u8]) -> String {
    shares
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn placed(shares: &[ShareOnServer]) -> String {
    shares
        .iter()
        .map(|p| {
            let instead = if p.replaced {
                " (replacing its corrupt copy)"
            } else {
                ""
            };
            format!("{} on {}{instead}", p.share, p.server)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl RepairReport {
    /// One line on the file: its storage index (never its cap), what was done, the bytes
    /// moved, and how it ended.
    pub fn summary(&self) -> String {
        self.summary_as(&self.storage_index.to_string())
    }

    /// [`summary`](Self::summary) with the file called `label` (a name from a cap list,
    /// say) instead of by its storage index.
    pub fn summary_as(&self, label: &str) -> String {
        let mut details = Vec::new();
        if !self.missing.is_empty() {
            details.push(format!("missing {}", list(&self.missing)));
        }
        if !self.corrupt.is_empty() {
            details.push(format!("corrupt {}", placed(&self.corrupt)));
        }
        if !self.rebuilt.is_empty() {
            let verb = if self.dry_run {
                "would rebuild"
            } else {
                "rebuilt"
            };
            details.push(format!("{verb} {}", placed(&self.rebuilt)));
        }
        for unplaced in &self.unplaced {
            details.push(format!(
                "share {} not placed: {}",
                unplaced.share, unplaced.why
            ));
        }
        for (server, why) in &self.server_errors {
            details.push(format!("{server}: {why}"));
        }
        if let Some(error) = &self.error {
            details.push(error.clone());
        }
        let end = match self.outcome {
            Outcome::Healthy | Outcome::Repaired => format!("all {} shares good", self.n),
            Outcome::HappinessMet => format!(
                "{} of {} shares, on {} servers (happiness {} met)",
                self.good_after(),
                self.n,
                self.servers_with_good_shares,
                self.happy
            ),
            Outcome::Unhealthy if self.dry_run => format!(
                "{} of {} shares good; nothing written (dry run)",
                self.good_before.len(),
                self.n
            ),
            Outcome::Unhealthy => format!(
                "{} of {} shares good, on {} servers (happiness {} not met)",
                self.good_after(),
                self.n,
                self.servers_with_good_shares,
                self.happy
            ),
            Outcome::Unrecoverable => format!(
                "fewer than k = {} good shares for some segment; nothing written",
                self.k
            ),
            Outcome::AlteredCap => {
                "the cap does not match the file its storage index names (altered or mistyped?); nothing written".into()
            }
        };
        details.push(end);
        details.push(format!(
            "read {}, wrote {}",
            text::human_bytes(self.bytes_read),
            text::human_bytes(self.bytes_written)
        ));
        format!(
            "{:<13} {label}: {}",
            self.outcome.word(),
            details.join("; ")
        )
    }

    fn good_after(&self) -> usize {
        let mut good: BTreeSet<u8> = self.good_before.iter().copied().collect();
        if !self.dry_run {
            good.extend(self.rebuilt.iter().map(|p| p.share));
        }
        good.len()
    }
}

/// Rebuilds what is missing or corrupt of the file `cap` names and stores it.
///
/// ```no_run
/// # async fn demo(grid: segvault::Grid, cap: segvault::VerifyCap) {
/// use segvault::repair::{RepairOptions, repair};
/// let report = repair(&grid, &cap, &RepairOptions::new()).await;
/// println!("{}", report.summary());
/// assert!(report.outcome.is_success());
/// # }
/// ```
pub async fn repair(grid: &Grid, cap: &VerifyCap, options: &RepairOptions) -> RepairReport {
    let g = *cap.geometry();
    let n = usize::from(g.n());
    let happy = options.happy.map_or(grid.len().min(n), usize::from).max(1);
    let mut report = RepairReport {
        storage_index: cap.storage_index(),
        outcome: Outcome::Unhealthy,
        dry_run: options.dry_run,
        n: g.n(),
        k: g.k(),
        good_before: Vec::new(),
        missing: Vec::new(),
        corrupt: Vec::new(),
        rebuilt: Vec::new(),
        unplaced: Vec::new(),
        server_errors: Vec::new(),
        servers_with_good_shares: 0,
        happy,
        bytes_read: 0,
        bytes_written: 0,
        file_size: g.size(),
        error: None,
        check: None,
    };

    // Pass 1: every share checked whole; the shares without a sound copy rebuilt as it goes.
    let survey = Survey::new(grid, cap, &options.config).await;
    let Some(ueb) = survey.ueb().cloned() else {
        let checked = survey.check_segments(None, None).await;
        report.outcome = if checked.report.altered_cap {
            Outcome::AlteredCap
        } else {
            Outcome::Unrecoverable
        };
        absorb(&mut report, grid, &checked, options.dry_run);
        return report;
    };
    let foreign = if options.holds_read_cap {
        Vec::new()
    } else {
        survey.foreign_files()
    };
    for other in &foreign {
        // Another whole file at this storage index: the cap may be forged to make us store
        // shares there, so nothing is written. Copies whose UEB rotted do not check out as a
        // file and are only left where they are.
        if audit::checks_out(grid, other, &options.config).await {
            report.outcome = Outcome::AlteredCap;
            report.error = Some(
                "another whole file lives at this storage index (its UEB is not the cap's)"
                    .to_owned(),
            );
            let checked = survey.check_segments(None, None).await;
            absorb(&mut report, grid, &checked, true);
            return report;
        }
    }
    let unsound: BTreeSet<ShareNum> = all_shares(g.n())
        .difference(&survey.sound_so_far())
        .copied()
        .collect();
    let mut rebuild = None;
    if !options.dry_run && !unsound.is_empty() {
        match Rebuild::create(grid, cap, &unsound).await {
            Ok(r) => rebuild = Some(Arc::new(r)),
            Err(e) => {
                report.error = Some(e);
                let checked = survey.check_segments(None, None).await;
                absorb(&mut report, grid, &checked, options.dry_run);
                return report;
            }
        }
    }
    let sink = rebuild.clone().map(|r| r as Arc<dyn SegmentSink>);
    let mut checked = survey.check_segments(None, sink).await;
    absorb(&mut report, grid, &checked, options.dry_run);
    if !checked.report.unrecoverable.is_empty() {
        report.outcome = Outcome::Unrecoverable;
        return report;
    }
    if let Some(e) = checked.sink_error.take() {
        report.error = Some(format!("building the new shares: {e}"));
        return report;
    }
    let mut good = good_shares(&checked);
    let mut needed: BTreeSet<ShareNum> = all_shares(g.n()).difference(&good).copied().collect();

    if options.dry_run {
        let plan = plan_placement(grid, cap.storage_index(), &checked, &needed);
        report.rebuilt = plan;
        report.outcome = if needed.is_empty() {
            Outcome::Healthy
        } else {
            Outcome::Unhealthy
        };
        return report;
    }
    if needed.is_empty() {
        report.outcome = Outcome::Healthy;
        return report;
    }

    // Shares found bad only partway through pass 1 were not being rebuilt: pass 2 does them.
    let mut built: Vec<(ShareNum, SpooledShare)> = Vec::new();
    let mut roots: BTreeMap<ShareNum, Hash> = proven_roots(&checked);
    if let Some(r) = rebuild.take() {
        match finish(r, cap, &ueb, &needed, &mut roots).await {
            Ok(shares) => built.extend(shares),
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        }
    }
    let late: BTreeSet<ShareNum> = needed
        .iter()
        .filter(|s| !built.iter().any(|(b, _)| b == *s))
        .copied()
        .collect();
    if !late.is_empty() {
        let r = match Rebuild::create(grid, cap, &late).await {
            Ok(r) => Arc::new(r),
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        let survey = Survey::new(grid, cap, &options.config).await;
        let second = survey
            .check_segments(None, Some(r.clone() as Arc<dyn SegmentSink>))
            .await;
        report.bytes_read += second.bytes_read;
        if !second.report.unrecoverable.is_empty() {
            report.outcome = Outcome::Unrecoverable;
            return report;
        }
        if let Some(e) = second.sink_error {
            report.error = Some(format!("building the new shares: {e}"));
            return report;
        }
        roots.extend(proven_roots(&second));
        // A copy that failed only for a moment (a timeout) may be good this time.
        let still_bad: BTreeSet<ShareNum> =
            late.difference(&good_shares(&second)).copied().collect();
        for share in good_shares(&second) {
            needed.remove(&share);
            good.insert(share);
        }
        match finish(r, cap, &ueb, &still_bad, &mut roots).await {
            Ok(shares) => built.extend(shares),
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        }
        checked = second;
    }

    let (stored, unplaced) = place(grid, cap.storage_index(), &checked, built).await;
    for &Stored {
        share,
        server,
        bytes,
        replaced,
    } in &stored
    {
        report.bytes_written += bytes;
        report.rebuilt.push(ShareOnServer {
            share: share.0,
            server: grid.servers()[server].name().to_owned(),
            replaced,
        });

        good.insert(share);
        needed.remove(&share);
    }
    report.unplaced = unplaced;
    let mut servers: HashSet<usize> = checked
        .copies
        .iter()
        .filter(|c| c.good)
        .map(|c| c.server)
        .collect();
    servers.extend(stored.iter().map(|s| s.server));
    report.servers_with_good_shares = servers.len();
    report.outcome = if needed.is_empty() {
        Outcome::Repaired
    } else if servers.len() >= happy {
        Outcome::HappinessMet
    } else {
        Outcome::Unhealthy
    };
    info!(si = %cap.storage_index(), outcome = ?report.outcome, rebuilt = report.rebuilt.len(), "repair done");
    report
}

fn all_shares(n: u16) -> BTreeSet<ShareNum> {
    (0..n).map(|s| ShareNum(s as u8)).collect()
}

/// Share numbers with a wholly good copy.
fn good_shares(checked: &Checked) -> BTreeSet<ShareNum> {
    checked
        .copies
        .iter()
        .filter(|c| c.good)
        .map(|c| c.share)
        .collect()
}

/// The block-tree root of each share number found, proven through its share chain to the
/// UEB's share root (authentic even where the copy's blocks are not).
fn proven_roots(checked: &Checked) -> BTreeMap<ShareNum, Hash> {
    checked
        .copies
        .iter()
        .filter_map(|c| c.root.map(|r| (c.share, r)))
        .collect()
}

/// Takes what a check found into the report, and (unless a dry run) tells each store
/// holding a bad copy of this file's shares (one whose front proved it belongs to the file:
/// another file's share at this storage index is not ours to call corrupt).
fn absorb(report: &mut RepairReport, grid: &Grid, checked: &Checked, dry_run: bool) {
    let good = good_shares(checked);
    report.good_before = good.iter().map(|s| s.0).collect();
    report.missing = checked.report.missing.iter().map(|s| s.0).collect();
    report.server_errors = checked.report.server_errors.clone();
    report.bytes_read += checked.bytes_read;
    report.servers_with_good_shares = checked
        .copies
        .iter()
        .filter(|c| c.good)
        .map(|c| c.server)
        .collect::<HashSet<_>>()
        .len();
    report.corrupt = checked
        .copies
        .iter()
        .filter(|c| !c.good && c.ours)
        .map(|c| ShareOnServer {
            share: c.share.0,
            server: grid.servers()[c.server].name().to_owned(),
            replaced: false,
        })
        .collect();
    if !checked.report.altered_cap && !dry_run {
        for &CopyFound {
            server,
            share,
            good,
            ours,
            ..
        } in &checked.copies
        {
            if !good && ours {
                let store = grid.servers()[server].store().clone();
                let si = checked.report.storage_index;
                tokio::spawn(async move {
                    store
                        .report_corrupt(si, share, "failed a repair's check".into())
                        .await;
                });
            }
        }
    }
    report.check = Some(checked.report.clone());
}

/// Shares being rebuilt: a spool each, whose blocks and block-tree leaves (and, in the first,
/// the ciphertext-tree leaves) are written a segment at a time.
struct Rebuild {
    geometry: Geometry,
    layout: ShareLayout,
    spools: Vec<(ShareNum, SpooledShare)>,
}

impl Rebuild {
    async fn create(
        grid: &Grid,
        cap: &VerifyCap,
        shares: &BTreeSet<ShareNum>,
    ) -> Result<Rebuild, String> {
        let geometry = *cap.geometry();
        let layout = ShareLayout::new(&geometry);
        // Built beside the first directory store's shares, so storing one there is a rename.
        let dir = grid
            .servers()
            .iter()
            .find_map(|s| s.store().spool_dir())
            .unwrap_or_else(std::env::temp_dir);
        let shares: Vec<ShareNum> = shares.iter().copied().collect();
        let len = layout.share_len();
        tokio::task::spawn_blocking(move || {
            let spools = shares
                .into_iter()
                .map(|share| SpooledShare::create(&dir, len).map(|spool| (share, spool)))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| format!("cannot make a spool in {}: {e}", dir.display()))?;
            Ok(Rebuild {
                geometry,
                layout,
                spools,
            })
        })
        .await
        .map_err(|e| format!("spool task failed: {e}"))?
    }

    fn blocks_tree(&self, index: usize) -> TreeSection<'_> {
        TreeSection {
            file: self.spools[index].1.file(),
            base: self.layout.block_tree_range().start,
            shape: self.geometry.segment_tree(),
        }
    }

    fn ciphertext_tree(&self) -> TreeSection<'_> {
        TreeSection {
            file: self.spools[0].1.file(),
            base: self.layout.ciphertext_tree_range().start,
            shape: self.geometry.segment_tree(),
        }
    }
}

impl SegmentSink for Rebuild {
    fn segment(
        &self,
        segment: SegmentIndex,
        blocks: &[Vec<u8>],
        ciphertext_leaf: Hash,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let offset = self.layout.block_range(segment).start;
        for (index, (share, spool)) in self.spools.iter().enumerate() {
            let block = &blocks[share.index()];
            spool.file().write_all_at(block, offset)?;
            self.blocks_tree(index)
                .write_leaves(segment.0, &hash::block_leaf(block).0)?;
        }
        self.ciphertext_tree()
            .write_leaves(segment.0, &ciphertext_leaf.0)
    }
}

/// Builds the rebuilt shares' trees, checks them against the UEB (the ciphertext root, and
/// the share root over these roots and the other shares' proven ones), then writes their
/// chains and fronts. Returns the finished shares that are still `needed`, and adds their
/// roots to `roots` (a later pass needs them for its share tree).
async fn finish(
    rebuild: Arc<Rebuild>,
    cap: &VerifyCap,
    ueb: &Ueb,
    needed: &BTreeSet<ShareNum>,
    roots: &mut BTreeMap<ShareNum, Hash>,
) -> Result<Vec<(ShareNum, SpooledShare)>, String> {
    let (si, ueb, needed, proven_roots) =
        (cap.storage_index(), *ueb, needed.clone(), roots.clone());
    let ueb_bytes = ueb.to_bytes();
    if hash::ueb(&ueb_bytes) != cap.ueb_hash() {
        return Err("the UEB does not encode back to the bytes the cap names".into());
    }
    let (shares, all_roots) = tokio::task::spawn_blocking(move || {
        let rebuild = Arc::try_unwrap(rebuild)
            .map_err(|_| "the rebuilt shares are still being written".to_owned())?;
        let io = |e: std::io::Error| format!("building the new shares' trees: {e}");
        let mut roots: BTreeMap<ShareNum, Hash> = proven_roots;
        for (index, (share, _)) in rebuild.spools.iter().enumerate() {
            let root = rebuild.blocks_tree(index).build().map_err(io)?;
            roots.entry(*share).or_insert(root);
            if roots[share] != root {
                return Err(format!(
                    "rebuilt share {share} does not match the file's good copies of it; nothing stored"
                ));
            }
        }
        let ciphertext = rebuild.ciphertext_tree();
        if ciphertext.build().map_err(io)? != ueb.ciphertext_root {
            return Err(
                "the rebuilt ciphertext tree does not match the file's UEB; nothing stored".into(),
            );
        }
        let n = rebuild.geometry.n();
        let all: Option<Vec<Hash>> = all_shares(n).iter().map(|s| roots.get(s).copied()).collect();
        let Some(all) = all else {
            return Err("a share is neither good nor rebuilt".into());
        };
        let share_tree = tree::build(&all);
        if share_tree[0] != ueb.share_root {
            return Err(
                "the rebuilt shares do not lead to the file's share root; nothing stored".into(),
            );
        }
        let front = ShareFront {
            geometry: &rebuild.geometry,
            layout: &rebuild.layout,
            storage_index: si,
            share_tree: &share_tree,
            ueb_bytes: &ueb_bytes,
        };
        let stop = AtomicBool::new(false);
        for (index, (share, spool)) in rebuild.spools.iter().enumerate() {
            if index != 0 {
                ciphertext
                    .copy_to(spool.file(), rebuild.layout.ciphertext_tree_range().start)
                    .map_err(io)?;
            }
            front
                .write(spool.file(), *share, &rebuild.blocks_tree(index), &ciphertext, &stop)
                .map_err(io)?;
        }
        let shares = rebuild
            .spools
            .into_iter()
            .filter(|(share, _)| needed.contains(share))
            .collect();
        Ok((shares, roots))
    })
    .await
    .map_err(|e| format!("tree task failed: {e}"))??;
    *roots = all_roots;
    Ok(shares)
}

/// Servers in the order new shares of the file should try them: those holding no share of
/// it first (ranked as `put` ranks them), then those holding the fewest.
fn preference(grid: &Grid, si: StorageIndex, checked: &Checked, among: &[usize]) -> Vec<usize> {
    let mut held: BTreeMap<usize, usize> = BTreeMap::new();
    for &CopyFound { server, .. } in &checked.copies {
        *held.entry(server).or_default() += 1;
    }
    let ranked = grid.placement_among(&si, among.len() as u16, among);
    let mut order: Vec<usize> = ranked
        .iter()
        .copied()
        .filter(|s| !held.contains_key(s))
        .collect();
    let mut holders: Vec<usize> = ranked
        .iter()
        .copied()
        .filter(|s| held.contains_key(s))
        .collect();
    holders.sort_by_key(|s| held[s]);
    order.extend(holders);
    order
}

/// Where a dry run's shares would go: as [`place`] chooses, every server taken as
/// answering and accepting (a store that replaces corrupt copies would take its own back).
fn plan_placement(
    grid: &Grid,
    si: StorageIndex,
    checked: &Checked,
    needed: &BTreeSet<ShareNum>,
) -> Vec<ShareOnServer> {
    let all: Vec<usize> = (0..grid.len()).collect();
    let mut seats = Seats {
        order: preference(grid, si, checked, &all),
        taken: HashSet::new(),
        refused: HashSet::new(),
        holders: holders(checked),
    };
    needed
        .iter()
        .filter_map(|&share| {
            let server = seats.next(share, &HashSet::new())?;
            Some(ShareOnServer {
                share: share.0,
                server: grid.servers()[server].name().to_owned(),
                replaced: false,
            })
        })
        .collect()
}

/// The servers holding a copy (good or bad) of each share number.
fn holders(checked: &Checked) -> BTreeMap<ShareNum, HashSet<usize>> {
    let mut holders: BTreeMap<ShareNum, HashSet<usize>> = BTreeMap::new();
    for &CopyFound { server, share, .. } in &checked.copies {
        holders.entry(share).or_default().insert(server);
    }
    holders
}

/// Which servers new shares may go to and which are taken.
struct Seats {
    order: Vec<usize>,
    taken: HashSet<usize>,
    refused: HashSet<usize>,
    /// Servers holding a copy (good or bad) of each share number: they cannot take it.
    holders: BTreeMap<ShareNum, HashSet<usize>>,
}

impl Seats {
    /// The next server for `share`: one not yet used by this repair if any is left, else
    /// one already used (servers take shares in turn, as `put` places n > servers).
    fn next(&mut self, share: ShareNum, tried: &HashSet<usize>) -> Option<usize> {
        let holds = self.holders.get(&share);
        let usable = |s: &usize| {
            !self.refused.contains(s) && !tried.contains(s) && !holds.is_some_and(|h| h.contains(s))
        };
        let pick = self
            .order
            .iter()
            .copied()
            .find(|s| usable(s) && !self.taken.contains(s))
            .or_else(|| self.order.iter().copied().find(|s| usable(s)))?;
        self.taken.insert(pick);
        Some(pick)
    }
}

/// A rebuilt share stored.
struct Stored {
    share: ShareNum,
    server: usize,
    bytes: u64,
    /// In place of the server's corrupt copy.
    replaced: bool,
}

/// Stores each finished share: in place of its corrupt copies where their stores allow,
/// else on a server that holds no copy of it, trying the next when one refuses. Returns the
/// shares stored, and those no server took.
async fn place(
    grid: &Grid,
    si: StorageIndex,
    checked: &Checked,
    built: Vec<(ShareNum, SpooledShare)>,
) -> (Vec<Stored>, Vec<Unplaced>) {
    let mut stored = Vec::new();
    let mut elsewhere = Vec::new();
    for (share, spool) in built {
        // Only copies taken for this file's: one that carries another UEB may be another
        // file's share, and is never touched.
        let corrupt_on: BTreeSet<usize> = checked
            .copies
            .iter()
            .filter(|c| c.share == share && !c.good && c.ours)
            .map(|c| c.server)
            .collect();
        let mut replaced_any = false;
        for server in corrupt_on {
            let copy = match spool.duplicate() {
                Ok(copy) => copy,
                Err(_) => break,
            };
            let store = grid.servers()[server].store();
            match store.replace_corrupt(si, share, copy).await {
                Ok(()) => {
                    replaced_any = true;
                    stored.push(Stored {
                        share,
                        server,
                        bytes: spool.len(),
                        replaced: true,
                    });
                }
                Err(e) => {
                    tracing::debug!(%si, %share, server = grid.servers()[server].name(), error = %e, "corrupt copy not replaced");
                }
            }
        }
        if !replaced_any {
            elsewhere.push((share, spool));
        }
    }
    if elsewhere.is_empty() {
        return (stored, Vec::new());
    }
    let (responsive, _) = preflight(grid).await;
    let seats = Mutex::new(Seats {
        order: preference(grid, si, checked, &responsive),
        taken: HashSet::new(),
        refused: HashSet::new(),
        holders: holders(checked),
    });
    let writes = elsewhere.into_iter().map(|(share, spool)| {
        let seats = &seats;
        async move {
            let mut tried = HashSet::new();
            let mut why = Vec::new();
            loop {
                let next = seats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .next(share, &tried);
                let Some(server) = next else {
                    let why = if why.is_empty() {
                        "no server left that holds no copy of it".to_owned()
                    } else {
                        why.join("; ")
                    };
                    return Err(Unplaced {
                        share: share.0,
                        why,
                    });
                };
                tried.insert(server);
                let name = grid.servers()[server].name();
                let copy = match spool.duplicate() {
                    Ok(copy) => copy,
                    Err(e) => {
                        return Err(Unplaced {
                            share: share.0,
                            why: format!("cannot copy its spool: {e}"),
                        });
                    }
                };
                match grid.servers()[server].store().write(si, share, copy).await {
                    Ok(()) => {
                        return Ok(Stored {
                            share,
                            server,
                            bytes: spool.len(),
                            replaced: false,
                        });
                    }
                    Err(e) => {
                        warn!(%si, %share, server = name, error = %e, "a server refused a repaired share");
                        if !matches!(e, StoreError::Conflict { .. }) {
                            seats
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .refused
                                .insert(server);
                        }
                        why.push(format!("{name}: {e}"));
                    }
                }
            }
        }
    });
    let mut unplaced = Vec::new();
    for outcome in futures::future::join_all(writes).await {
        match outcome {
            Ok(done) => stored.push(done),
            Err(e) => unplaced.push(e),
        }
    }
    (stored, unplaced)
}
