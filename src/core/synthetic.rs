//! A synthetic file for tests and fuzz harnesses of the verifier: arbitrary (not
//! erasure-coded) blocks under true hash trees, which is all the verifier looks at.

use crate::core::geometry::{Geometry, SegmentIndex, ShareNum};
use crate::core::hash::{self, Hash};
use crate::core::layout::ShareLayout;
use crate::core::planner::record_hashes;
use crate::core::tree;
use crate::core::ueb::Ueb;

/// A small file whose shares hold arbitrary (not erasure-coded) blocks with true hash
/// trees: enough for the verifier, which checks hashes, not the code.
#[derive(Debug)]
pub struct SyntheticFile {
    /// The file's UEB.
    pub ueb: Ueb,
    /// Its share layout.
    pub layout: ShareLayout,
    blocks: Vec<Vec<Vec<u8>>>,
    block_trees: Vec<Vec<Hash>>,
    share_nodes: Vec<Hash>,
    ciphertext_nodes: Vec<Hash>,
    /// Per segment, the ciphertext-tree leaf.
    pub segment_leaves: Vec<Hash>,
}

impl SyntheticFile {
    /// A file of geometry `g` whose block bytes are derived from `seed`.
    pub fn new(g: &Geometry, seed: u8) -> SyntheticFile {
        let layout = ShareLayout::new(g);
        let segments = g.num_segments();
        let blocks: Vec<Vec<Vec<u8>>> = (0..g.n())
            .map(|i| {
                (0..segments)
                    .map(|s| {
                        let len = g.block_size(SegmentIndex(s)) as usize;
                        (0..len)
                            .map(|b| (b as u64 ^ s ^ u64::from(i) ^ u64::from(seed)) as u8)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let block_trees: Vec<Vec<Hash>> = blocks
            .iter()
            .map(|share| {
                tree::build(
                    &share
                        .iter()
                        .map(|b| hash::block_leaf(b))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let share_nodes = tree::build(&block_trees.iter().map(|t| t[0]).collect::<Vec<_>>());
        let segment_leaves: Vec<Hash> = (0..segments as usize)
            .map(|s| {
                let leaves: Vec<Hash> = (0..usize::from(g.k()))
                    .map(|m| hash::block_leaf(&blocks[m][s]))
                    .collect();
                hash::ciphertext_leaf(&leaves)
            })
            .collect();
        let ciphertext_nodes = tree::build(&segment_leaves);
        SyntheticFile {
            ueb: Ueb {
                geometry: *g,
                share_root: share_nodes[0],
                ciphertext_root: ciphertext_nodes[0],
            },
            layout,
            blocks,
            block_trees,
            share_nodes,
            ciphertext_nodes,
            segment_leaves,
        }
    }

    /// The whole record of `share` for `segment`, if both are in the file.
    pub fn record(&self, share: ShareNum, segment: SegmentIndex) -> Option<Vec<u8>> {
        let g = &self.ueb.geometry;
        let block = self.blocks.get(share.index())?.get(segment.0 as usize)?;
        let (segment_tree, share_tree) = (g.segment_tree(), g.share_tree());
        let hashes = record_hashes(
            &self.layout,
            &tree::chain_of(&self.block_trees[share.index()], &segment_tree, segment.0),
            &tree::chain_of(&self.ciphertext_nodes, &segment_tree, segment.0),
            &tree::chain_of(&self.share_nodes, &share_tree, u64::from(share.0)),
        )?;
        let mut record = block.clone();
        record.extend(hashes);
        Some(record)
    }
}
