//! Invariant 2 in one place: whether share bytes are what the UEB's roots commit to.
//!
//! The chain of trust below the UEB is walked here and nowhere else. A block's leaf hash and
//! its block chain give the share's block-tree root; that root and the share chain give the
//! UEB's share root. After decoding, a segment's ciphertext leaf and a ciphertext chain give
//! the UEB's ciphertext root. Readers keep what they have verified in [`FileTrees`], so a warm
//! read brings (and checks) only the levels it still lacks; a cache entry or an audit, trusting
//! nothing it holds, walks the whole proof with [`verify_whole_proof`].
//!
//! Everything is pure: byte slices and hashes in, a typed [`VerifyError`] out. Leaf hashes
//! are passed in (the engine hashes large blocks off its async threads). Nothing here panics
//! on any input.

use super::geometry::{Geometry, SegmentIndex, ShareNum};
use super::layout::ShareLayout;
use super::planner::{Record, record_hashes};
use super::tree::{self, NodeIndex, PartialTree, TreeError};
use super::ueb::Ueb;
use crate::core::hash::Hash;

/// Why share bytes failed verification. Names where (share and segment), never any key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The share number or segment is not one of the file's.
    #[error("share {share}, segment {segment}: not a block of this file")]
    OutOfRange {
        /// The share.
        share: ShareNum,
        /// The segment.
        segment: SegmentIndex,
    },
    /// The bytes are not a length the layout allows for the segment's record.
    #[error("share {share}, segment {segment}: {len} bytes is not a record the layout allows")]
    RecordLength {
        /// The share.
        share: ShareNum,
        /// The segment.
        segment: SegmentIndex,
        /// Bytes received.
        len: u64,
    },
    /// The share's block-tree root is not yet proven (or the whole proof was asked for) and
    /// the record lacks the share chain that proves it.
    #[error("share {share}, segment {segment}: the record lacks its share chain")]
    MissingShareChain {
        /// The share.
        share: ShareNum,
        /// The segment.
        segment: SegmentIndex,
    },
    /// The block and its block chain do not hash up to the share's block-tree root.
    #[error("share {share}, segment {segment}: the block fails its hash check ({source})")]
    BlockHashMismatch {
        /// The share.
        share: ShareNum,
        /// The segment.
        segment: SegmentIndex,
        /// Where in the block tree.
        source: TreeError,
    },
    /// The block-tree root the record implies does not hash up to the UEB's share root
    /// through its share chain.
    #[error(
        "share {share}, segment {segment}: the record does not hash up to the UEB's share root ({source})"
    )]
    ProofMismatch {
        /// The share.
        share: ShareNum,
        /// The segment.
        segment: SegmentIndex,
        /// Where in the block or share tree.
        source: TreeError,
    },
    /// A record carries another UEB than the file's (a cache entry of another file).
    #[error("share {share}, segment {segment}: the record carries another file's UEB")]
    OtherUeb {
        /// The share.
        share: ShareNum,
        /// The segment.
        segment: SegmentIndex,
    },
    /// The decoded segment does not match its leaf in the ciphertext tree, through any chain
    /// offered: the blocks were verified, so the shares were made inconsistently.
    #[error("segment {segment}: the decoded segment does not match the ciphertext tree ({source})")]
    CiphertextMismatch {
        /// The segment.
        segment: SegmentIndex,
        /// Where in the ciphertext tree (for the last chain tried).
        source: TreeError,
    },
}

impl VerifyError {
    /// The segment the failure is about.
    pub fn segment(&self) -> SegmentIndex {
        match *self {
            VerifyError::OutOfRange { segment, .. }
            | VerifyError::RecordLength { segment, .. }
            | VerifyError::MissingShareChain { segment, .. }
            | VerifyError::BlockHashMismatch { segment, .. }
            | VerifyError::ProofMismatch { segment, .. }
            | VerifyError::OtherUeb { segment, .. }
            | VerifyError::CiphertextMismatch { segment, .. } => segment,
        }
    }

    /// The share the failure is about (`None` for a decoded segment).
    pub fn share(&self) -> Option<ShareNum> {
        match *self {
            VerifyError::OutOfRange { share, .. }
            | VerifyError::RecordLength { share, .. }
            | VerifyError::MissingShareChain { share, .. }
            | VerifyError::BlockHashMismatch { share, .. }
            | VerifyError::ProofMismatch { share, .. }
            | VerifyError::OtherUeb { share, .. } => Some(share),
            VerifyError::CiphertextMismatch { .. } => None,
        }
    }
}

/// A computed root that differs from the trusted one disagrees at the root node.
const ROOT_MISMATCH: TreeError = TreeError::Mismatch {
    node: NodeIndex::ROOT,
};

fn check_in_file(
    geometry: &Geometry,
    share: ShareNum,
    segment: SegmentIndex,
) -> Result<(), VerifyError> {
    if u16::from(share.0) < geometry.n() && geometry.contains(segment) {
        Ok(())
    } else {
        Err(VerifyError::OutOfRange { share, segment })
    }
}

/// Parses `bytes` as share `share`'s record (or record prefix) of `segment`; see
/// [`Record::parse`].
pub fn parse_record<'a>(
    layout: &ShareLayout,
    share: ShareNum,
    segment: SegmentIndex,
    bytes: &'a [u8],
) -> Result<Record<'a>, VerifyError> {
    check_in_file(layout.geometry(), share, segment)?;
    Record::parse(layout, segment, bytes).ok_or(VerifyError::RecordLength {
        share,
        segment,
        len: bytes.len() as u64,
    })
}

/// Checks that `block_root`, share `share`'s block-tree root, hashes up to the UEB's share
/// root through `share_chain` (whole, bottom-up). `segment` only names the record the chain
/// came with.
pub fn verify_block_tree_root(
    ueb: &Ueb,
    share: ShareNum,
    segment: SegmentIndex,
    block_root: Hash,
    share_chain: &[Hash],
) -> Result<(), VerifyError> {
    let g = &ueb.geometry;
    check_in_file(g, share, segment)?;
    let mismatch = |source| VerifyError::ProofMismatch {
        share,
        segment,
        source,
    };
    let root = tree::root_from_chain(&g.share_tree(), u64::from(share.0), block_root, share_chain)
        .map_err(mismatch)?;
    if root == ueb.share_root {
        Ok(())
    } else {
        Err(mismatch(ROOT_MISMATCH))
    }
}

/// Checks a block (`leaf` is its [`block_leaf`](crate::core::hash::block_leaf) hash) and its
/// whole block chain against `block_root`, its share's block-tree root, already proven.
pub fn verify_block_against_root(
    geometry: &Geometry,
    share: ShareNum,
    segment: SegmentIndex,
    block_root: Hash,
    leaf: Hash,
    block_chain: &[Hash],
) -> Result<(), VerifyError> {
    check_in_file(geometry, share, segment)?;
    let mismatch = |source| VerifyError::BlockHashMismatch {
        share,
        segment,
        source,
    };
    let root = tree::root_from_chain(&geometry.segment_tree(), segment.0, leaf, block_chain)
        .map_err(mismatch)?;
    if root == block_root {
        Ok(())
    } else {
        Err(mismatch(ROOT_MISMATCH))
    }
}

/// The whole walk, trusting nothing but the UEB: the block (`leaf` its hash) and the
/// record's block chain give the share's block-tree root, which must hash up to the UEB's
/// share root through the record's share chain. Returns that block-tree root.
pub fn verify_whole_proof(
    ueb: &Ueb,
    share: ShareNum,
    segment: SegmentIndex,
    leaf: Hash,
    record: &Record<'_>,
) -> Result<Hash, VerifyError> {
    let g = &ueb.geometry;
    check_in_file(g, share, segment)?;
    let share_chain = record
        .share_chain
        .as_deref()
        .ok_or(VerifyError::MissingShareChain { share, segment })?;
    let block_root = tree::root_from_chain(&g.segment_tree(), segment.0, leaf, &record.block_chain)
        .map_err(|source| VerifyError::ProofMismatch {
            share,
            segment,
            source,
        })?;
    verify_block_tree_root(ueb, share, segment, block_root, share_chain)?;
    Ok(block_root)
}

/// Checks a decoded segment's ciphertext leaf (the
/// [`ciphertext_leaf`](crate::core::hash::ciphertext_leaf) of its data blocks' leaves)
/// against the UEB's ciphertext root through any one of `chains` (whole, bottom-up).
pub fn verify_ciphertext<C: AsRef<[Hash]>>(
    ueb: &Ueb,
    segment: SegmentIndex,
    leaf: Hash,
    chains: &[C],
) -> Result<(), VerifyError> {
    let shape = ueb.geometry.segment_tree();
    let mut last = ROOT_MISMATCH;
    for chain in chains {
        match tree::root_from_chain(&shape, segment.0, leaf, chain.as_ref()) {
            Ok(root) if root == ueb.ciphertext_root => return Ok(()),
            Ok(_) => last = ROOT_MISMATCH,
            Err(e) => last = e,
        }
    }
    Err(VerifyError::CiphertextMismatch {
        segment,
        source: last,
    })
}

/// A file's hash trees as far as they are verified: the share tree and the ciphertext tree
/// from the UEB's roots, and each share's block tree once its root is proven. Nodes are
/// learned only when they hash up to what is already trusted, so later records of the same
/// share need bring only the levels still missing.
#[derive(Debug, Clone)]
pub struct FileTrees {
    ueb: Ueb,
    share_tree: PartialTree,
    block_trees: Vec<Option<PartialTree>>,
    ciphertext_tree: PartialTree,
}

impl FileTrees {
    /// Trees that trust the roots of a verified UEB and know nothing else.
    pub fn new(ueb: &Ueb) -> FileTrees {
        let g = &ueb.geometry;
        FileTrees {
            ueb: *ueb,
            share_tree: PartialTree::new(g.share_tree(), ueb.share_root),
            block_trees: vec![None; usize::from(g.n())],
            ciphertext_tree: PartialTree::new(g.segment_tree(), ueb.ciphertext_root),
        }
    }

    /// Share `share`'s block tree, once its root is proven.
    pub fn block_tree(&self, share: ShareNum) -> Option<&PartialTree> {
        self.block_trees.get(share.index())?.as_ref()
    }

    /// The ciphertext tree.
    pub fn ciphertext_tree(&self) -> &PartialTree {
        &self.ciphertext_tree
    }

    /// Every tree held (for memory accounting).
    pub fn trees(&self) -> impl Iterator<Item = &PartialTree> {
        [&self.share_tree, &self.ciphertext_tree]
            .into_iter()
            .chain(self.block_trees.iter().flatten())
    }

    /// Verifies share `share`'s block of `segment` (`leaf` is its hash) with the chains of
    /// `record`, learning the nodes used. The first block of a share must come with its share
    /// chain: it is walked up to the UEB's share root ([`verify_whole_proof`]) and proves the
    /// share's block-tree root; later blocks need only the levels below a known node. A
    /// refused record changes nothing. (The record's ciphertext chain is checked after
    /// decoding, by [`verify_segment`](Self::verify_segment).)
    pub fn verify_record(
        &mut self,
        share: ShareNum,
        segment: SegmentIndex,
        leaf: Hash,
        record: &Record<'_>,
    ) -> Result<(), VerifyError> {
        check_in_file(&self.ueb.geometry, share, segment)?;
        let slot = share.index();
        let proven = match &self.block_trees[slot] {
            Some(_) => None,
            None => {
                let root = verify_whole_proof(&self.ueb, share, segment, leaf, record)?;
                let mut block_tree = PartialTree::new(self.ueb.geometry.segment_tree(), root);
                let learned = block_tree.verify_leaf(segment.0, leaf, &record.block_chain);
                debug_assert!(
                    learned.is_ok(),
                    "a chain that gave the root proves its leaf"
                );
                Some(block_tree)
            }
        };
        if let Some(block_tree) = proven {
            // Learn the share-tree nodes too (the whole walk already checked them).
            let share_chain = record.share_chain.as_deref().unwrap_or_default();
            self.share_tree
                .verify_leaf(u64::from(share.0), block_tree.root(), share_chain)
                .map_err(|source| VerifyError::ProofMismatch {
                    share,
                    segment,
                    source,
                })?;
            self.block_trees[slot] = Some(block_tree);
            return Ok(());
        }
        let Some(block_tree) = self.block_trees[slot].as_mut() else {
            return Err(VerifyError::MissingShareChain { share, segment });
        };
        block_tree
            .verify_leaf(segment.0, leaf, &record.block_chain)
            .map_err(|source| VerifyError::BlockHashMismatch {
                share,
                segment,
                source,
            })
    }

    /// Verifies a decoded segment's ciphertext leaf through any one of `chains` (each may
    /// hold only the levels below a known node), learning the nodes of the first that fits.
    pub fn verify_segment<C: AsRef<[Hash]>>(
        &mut self,
        segment: SegmentIndex,
        leaf: Hash,
        chains: &[C],
    ) -> Result<(), VerifyError> {
        let mut last = ROOT_MISMATCH;
        if !self.ueb.geometry.contains(segment) {
            last = TreeError::OutOfRange {
                node: NodeIndex(segment.0),
                count: self.ueb.geometry.num_segments(),
            };
        } else {
            for chain in chains {
                match self
                    .ciphertext_tree
                    .verify_leaf(segment.0, leaf, chain.as_ref())
                {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
        }
        Err(VerifyError::CiphertextMismatch {
            segment,
            source: last,
        })
    }

    /// The hashes that follow share `share`'s block of `segment` in its whole record (see
    /// [`record_hashes`]), when every node of them is verified: what a cache stores so that
    /// an entry proves itself from the UEB alone.
    pub fn record_hashes(
        &self,
        layout: &ShareLayout,
        share: ShareNum,
        segment: SegmentIndex,
    ) -> Option<Vec<u8>> {
        let j = segment.0;
        let block_chain = self.block_tree(share)?.chain(j)?;
        let ciphertext_chain = self.ciphertext_tree.chain(j)?;
        let share_chain = self.share_tree.chain(u64::from(share.0))?;
        record_hashes(layout, &block_chain, &ciphertext_chain, &share_chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hash;
    use crate::core::synthetic::SyntheticFile;
    use proptest::prelude::*;

    /// A small, self-consistent file: every share's blocks (arbitrary bytes, not a real
    /// erasure code: the verifier checks hashes, not the code), trees and UEB.
    struct Fixture {
        layout: ShareLayout,
        ueb: Ueb,
        /// Per share, per segment: the whole record.
        records: Vec<Vec<Vec<u8>>>,
        /// Per segment: the ciphertext leaf.
        segment_leaves: Vec<Hash>,
    }

    impl Fixture {
        fn new(size: u64, segment_size: u64, k: u16, n: u16) -> Fixture {
            let g = Geometry::new(size, segment_size, k, n).unwrap();
            let file = SyntheticFile::new(&g, 0);
            let records = (0..n)
                .map(|i| {
                    (0..g.num_segments())
                        .map(|s| file.record(ShareNum(i as u8), SegmentIndex(s)).unwrap())
                        .collect()
                })
                .collect();
            Fixture {
                layout: file.layout,
                ueb: file.ueb,
                records,
                segment_leaves: file.segment_leaves,
            }
        }

        fn record(&self, share: u8, segment: u64) -> &[u8] {
            &self.records[usize::from(share)][segment as usize]
        }
    }

    fn check(
        trees: &mut FileTrees,
        f: &Fixture,
        share: ShareNum,
        segment: SegmentIndex,
        bytes: &[u8],
    ) -> Result<(), VerifyError> {
        let record = parse_record(&f.layout, share, segment, bytes)?;
        trees.verify_record(share, segment, hash::block_leaf(record.block), &record)
    }

    #[test]
    fn a_correct_record_verifies_cold_and_warm() {
        let f = Fixture::new(10_000, 1000, 3, 5);
        let mut trees = FileTrees::new(&f.ueb);
        for share in 0..5u8 {
            for segment in [3u64, 4, 9, 0] {
                let (s, j) = (ShareNum(share), SegmentIndex(segment));
                check(&mut trees, &f, s, j, f.record(share, segment)).unwrap();
                let record = parse_record(&f.layout, s, j, f.record(share, segment)).unwrap();
                let leaf = hash::block_leaf(record.block);
                assert_eq!(
                    verify_whole_proof(&f.ueb, s, j, leaf, &record),
                    Ok(trees.block_tree(s).unwrap().root())
                );
                // Not cacheable until a decoded segment proves the ciphertext chain.
                if share == 0 {
                    assert_eq!(trees.record_hashes(&f.layout, s, j), None);
                }
                let leaf = f.segment_leaves[segment as usize];
                trees
                    .verify_segment(j, leaf, &[&record.ciphertext_chain])
                    .unwrap();
                assert_eq!(
                    trees.record_hashes(&f.layout, s, j).as_deref(),
                    Some(&f.record(share, segment)[record.block.len()..])
                );
            }
        }
        // A warm record may be a block and only the levels still needed.
        let mut warm = FileTrees::new(&f.ueb);
        check(&mut warm, &f, ShareNum(1), SegmentIndex(2), f.record(1, 2)).unwrap();
        let block = f.ueb.geometry.block_size(SegmentIndex(3)) as usize;
        let prefix = &f.record(1, 3)[..block + 64];
        check(&mut warm, &f, ShareNum(1), SegmentIndex(3), prefix).unwrap();
    }

    #[test]
    fn decoded_segments_verify_against_the_ciphertext_tree() {
        let f = Fixture::new(10_000, 1000, 3, 5);
        let mut trees = FileTrees::new(&f.ueb);
        let s = SegmentIndex(6);
        let record = parse_record(&f.layout, ShareNum(4), s, f.record(4, 6)).unwrap();
        let chains = [record.ciphertext_chain.clone()];
        let leaf = f.segment_leaves[6];
        assert_eq!(verify_ciphertext(&f.ueb, s, leaf, &chains), Ok(()));
        trees.verify_segment(s, leaf, &chains).unwrap();
        let wrong = f.segment_leaves[5];
        assert!(matches!(
            trees.verify_segment(s, wrong, &chains),
            Err(VerifyError::CiphertextMismatch { segment, .. }) if segment == s
        ));
        assert!(matches!(
            verify_ciphertext(&f.ueb, s, wrong, &chains),
            Err(VerifyError::CiphertextMismatch { .. })
        ));
        let none: [Vec<Hash>; 0] = [];
        assert!(verify_ciphertext(&f.ueb, s, leaf, &none).is_err());
    }

    #[test]
    fn records_outside_the_file_or_of_the_wrong_length_are_refused() {
        let f = Fixture::new(10_000, 1000, 3, 5);
        let mut trees = FileTrees::new(&f.ueb);
        let bytes = f.record(0, 0);
        assert!(matches!(
            check(&mut trees, &f, ShareNum(5), SegmentIndex(0), bytes),
            Err(VerifyError::OutOfRange { .. })
        ));
        assert!(matches!(
            check(&mut trees, &f, ShareNum(0), SegmentIndex(10), bytes),
            Err(VerifyError::OutOfRange { .. })
        ));
        assert!(matches!(
            check(&mut trees, &f, ShareNum(0), SegmentIndex(0), &bytes[1..]),
            Err(VerifyError::RecordLength { len, .. }) if len == bytes.len() as u64 - 1
        ));
        // A prefix is no proof for a share whose block-tree root is not yet known.
        let block = f.ueb.geometry.block_size(SegmentIndex(0)) as usize;
        assert_eq!(
            check(
                &mut trees,
                &f,
                ShareNum(0),
                SegmentIndex(0),
                &bytes[..block + 64]
            ),
            Err(VerifyError::MissingShareChain {
                share: ShareNum(0),
                segment: SegmentIndex(0)
            })
        );
        assert_eq!(trees.trees().count(), 2, "a refused record changes nothing");
    }

    #[test]
    fn messages_name_share_and_segment() {
        let e = VerifyError::BlockHashMismatch {
            share: ShareNum(3),
            segment: SegmentIndex(7),
            source: ROOT_MISMATCH,
        };
        assert_eq!(
            e.to_string(),
            "share 3, segment 7: the block fails its hash check (hash mismatch at node 0)"
        );
        assert_eq!(
            (e.share(), e.segment()),
            (Some(ShareNum(3)), SegmentIndex(7))
        );
    }

    /// Flips one bit of share `share`'s record of `segment` at `at` (modulo its length) and
    /// checks the typed verdict: cold (nothing known) and warm (the share's tree known from
    /// another segment).
    fn flipped_record_impl(share: u8, segment: u64, at: usize, bit: u8, warm: bool) {
        let f = Fixture::new(5_000, 500, 2, 4);
        let (s, j) = (ShareNum(share % 4), SegmentIndex(segment % 10));
        let mut bytes = f.record(s.0, j.0).to_vec();
        let at = at % bytes.len();
        bytes[at] ^= 1 << (bit % 8);
        let mut trees = FileTrees::new(&f.ueb);
        if warm {
            let other = SegmentIndex((j.0 + 1) % 10);
            check(&mut trees, &f, s, other, f.record(s.0, other.0)).unwrap();
        }
        let block = f.ueb.geometry.block_size(j) as usize;
        let chains = block + f.layout.depth() as usize * 64;
        // Chain levels the block tree still lacks (all of them when cold).
        let needed = trees
            .block_tree(s)
            .map_or(f.layout.depth() as usize, |t| t.levels_needed(j.0) as usize);
        let outcome = check(&mut trees, &f, s, j, &bytes);
        let record = parse_record(&f.layout, s, j, &bytes).unwrap();
        let whole = verify_whole_proof(&f.ueb, s, j, hash::block_leaf(record.block), &record);
        if at >= block && at < chains && (at - block) % 64 >= 32 {
            // The ciphertext chain is checked after decoding, not with the block.
            assert_eq!(outcome, Ok(()));
            assert!(whole.is_ok());
            let chains = [record.ciphertext_chain];
            assert!(matches!(
                trees.verify_segment(j, f.segment_leaves[j.0 as usize], &chains),
                Err(VerifyError::CiphertextMismatch { segment, .. }) if segment == j
            ));
            return;
        }
        // The whole walk, trusting nothing, refuses any other damage.
        assert!(
            matches!(whole, Err(VerifyError::ProofMismatch { .. })),
            "{whole:?}"
        );
        let ignored = if at < block {
            false
        } else if at < chains {
            (at - block) / 64 >= needed
        } else {
            // A share chain is only read while the share's block-tree root is unknown.
            warm
        };
        if ignored {
            assert_eq!(outcome, Ok(()), "levels already known are not read");
            return;
        }
        let error = outcome.unwrap_err();
        assert_eq!((error.share(), error.segment()), (Some(s), j));
        if warm {
            assert!(
                matches!(error, VerifyError::BlockHashMismatch { .. }),
                "{error}"
            );
        } else {
            assert!(
                matches!(error, VerifyError::ProofMismatch { .. }),
                "{error}"
            );
        }
    }

    proptest! {
        #[test]
        fn flipped_record_proptest(share: u8, segment: u64, at: usize, bit: u8, warm: bool) {
            flipped_record_impl(share, segment, at, bit, warm);
        }
    }

    #[test]
    fn flipped_record_cases() {
        let f = Fixture::new(5_000, 500, 2, 4);
        let block = f.ueb.geometry.block_size(SegmentIndex(0)) as usize;
        // First and last block byte, each kind of chain level, the share chain.
        for at in [
            0,
            block - 1,
            block,
            block + 32,
            block + 64,
            block + 4 * 64,
            usize::MAX,
        ] {
            for warm in [false, true] {
                flipped_record_impl(1, 3, at, 0, warm);
            }
        }
    }

    /// A flipped leaf (a wrong block hash) fails, whatever is known.
    fn flipped_leaf_impl(share: u8, segment: u64, byte: usize, warm: bool) {
        let f = Fixture::new(5_000, 500, 2, 4);
        let (s, j) = (ShareNum(share % 4), SegmentIndex(segment % 10));
        let mut trees = FileTrees::new(&f.ueb);
        if warm {
            check(&mut trees, &f, s, j, f.record(s.0, j.0)).unwrap();
        }
        let record = parse_record(&f.layout, s, j, f.record(s.0, j.0)).unwrap();
        let mut leaf = hash::block_leaf(record.block);
        leaf.0[byte % 32] ^= 1;
        let error = trees.verify_record(s, j, leaf, &record).unwrap_err();
        let expected_kind = if warm {
            matches!(error, VerifyError::BlockHashMismatch { .. })
        } else {
            matches!(error, VerifyError::ProofMismatch { .. })
        };
        assert!(expected_kind, "{error}");
        assert!(matches!(
            verify_whole_proof(&f.ueb, s, j, leaf, &record),
            Err(VerifyError::ProofMismatch { .. })
        ));
        let good = hash::block_leaf(record.block);
        let root = verify_whole_proof(&f.ueb, s, j, good, &record).unwrap();
        let g = &f.ueb.geometry;
        assert_eq!(
            verify_block_against_root(g, s, j, root, good, &record.block_chain),
            Ok(())
        );
        assert!(matches!(
            verify_block_against_root(g, s, j, root, leaf, &record.block_chain),
            Err(VerifyError::BlockHashMismatch { .. })
        ));
    }

    proptest! {
        #[test]
        fn flipped_leaf_proptest(share: u8, segment: u64, byte: usize, warm: bool) {
            flipped_leaf_impl(share, segment, byte, warm);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), share: u8, segment in 0u64..12) {
            let f = Fixture::new(5_000, 500, 2, 4);
            let mut trees = FileTrees::new(&f.ueb);
            let (s, j) = (ShareNum(share), SegmentIndex(segment));
            prop_assert!(check(&mut trees, &f, s, j, &bytes).is_err());
        }
    }
}
