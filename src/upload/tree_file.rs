//! Hash trees built inside a spool file, a level at a time, so building the trees of any
//! file takes a few hundred kilobytes of memory. The leaves are written by the encoder as
//! segments are hashed; this fills in the padding leaves and every level above.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::core::hash::{self, HASH_LEN, Hash};
use crate::core::tree::{NodeIndex, TreeShape};

/// Nodes handled per read or write.
const CHUNK_NODES: u64 = 8192;

fn read_nodes(file: &File, offset: u64, count: u64) -> io::Result<Vec<Hash>> {
    let mut bytes = vec![0u8; (count as usize) * HASH_LEN];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes
        .chunks_exact(HASH_LEN)
        .map(|c| Hash(c.try_into().unwrap_or_default()))
        .collect())
}

fn write_nodes(file: &File, offset: u64, nodes: &[Hash]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(nodes.len() * HASH_LEN);
    for node in nodes {
        bytes.extend_from_slice(&node.0);
    }
    file.write_all_at(&bytes, offset)
}

/// A tree section (2·width − 1 nodes in array order) at `base` in `file`.
pub(crate) struct TreeSection<'a> {
    pub(crate) file: &'a File,
    pub(crate) base: u64,
    pub(crate) shape: TreeShape,
}

impl TreeSection<'_> {
    fn offset(&self, node: NodeIndex) -> u64 {
        self.base + node.0 * HASH_LEN as u64
    }

    /// Writes consecutive leaves starting at leaf `first` (`bytes` holds whole hashes).
    pub(crate) fn write_leaves(&self, first: u64, bytes: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(bytes, self.offset(self.shape.leaf_node(first)))
    }

    /// Fills the padding leaves and computes every interior node from the leaves already
    /// written. Returns the root.
    pub(crate) fn build(&self) -> io::Result<Hash> {
        let width = self.shape.width();
        let mut j = self.shape.leaves();
        while j < width {
            let count = (width - j).min(CHUNK_NODES);
            write_nodes(
                self.file,
                self.offset(self.shape.leaf_node(j)),
                &vec![hash::empty_leaf(); count as usize],
            )?;
            j += count;
        }
        for height in 1..=self.shape.depth() {
            let parents = width >> height;
            let parent_start = self.shape.level_start(height);
            let child_start = self.shape.level_start(height - 1);
            let mut done = 0;
            while done < parents {
                let count = (parents - done).min(CHUNK_NODES);
                let children = read_nodes(
                    self.file,
                    self.offset(NodeIndex(child_start.0 + 2 * done)),
                    2 * count,
                )?;
                let computed: Vec<Hash> = children
                    .chunks_exact(2)
                    .map(|pair| hash::node(&pair[0], &pair[1]))
                    .collect();
                write_nodes(
                    self.file,
                    self.offset(NodeIndex(parent_start.0 + done)),
                    &computed,
                )?;
                done += count;
            }
        }
        Ok(read_nodes(self.file, self.offset(NodeIndex::ROOT), 1)?[0])
    }

    /// Copies the whole section to `base` in `other`.
    pub(crate) fn copy_to(&self, other: &File, base: u64) -> io::Result<()> {
        let total = self.shape.node_count();
        let mut done = 0;
        while done < total {
            let count = (total - done).min(CHUNK_NODES);
            let nodes = read_nodes(self.file, self.offset(NodeIndex(done)), count)?;
            write_nodes(other, base + done * HASH_LEN as u64, &nodes)?;
            done += count;
        }
        Ok(())
    }

    /// Cursors for reading chains in segment order (see [`ChainReader`]).
    pub(crate) fn chain_reader(&self) -> ChainReader<'_> {
        ChainReader {
            section: self,
            levels: (0..self.shape.depth())
                .map(|_| LevelWindow::default())
                .collect(),
        }
    }
}

#[derive(Default)]
struct LevelWindow {
    first: u64,
    nodes: Vec<Hash>,
}

/// Reads the chain of leaf after leaf in increasing order, loading each level a chunk at a
/// time (each chunk is read once when leaves are visited in order).
pub(crate) struct ChainReader<'a> {
    section: &'a TreeSection<'a>,
    levels: Vec<LevelWindow>,
}

impl ChainReader<'_> {
    /// Sibling of leaf `j`'s ancestor at `level` (0 = the leaf's own sibling).
    pub(crate) fn sibling(&mut self, j: u64, level: u32) -> io::Result<Hash> {
        let shape = self.section.shape;
        let position = (j >> level) ^ 1;
        let window = &mut self.levels[level as usize];
        let loaded =
            position >= window.first && position < window.first + window.nodes.len() as u64;
        if !loaded {
            let level_len = shape.width() >> level;
            let first = position - position % CHUNK_NODES;
            let count = (level_len - first).min(CHUNK_NODES);
            let start = shape.level_start(level).0 + first;
            window.nodes = read_nodes(
                self.section.file,
                self.section.offset(NodeIndex(start)),
                count,
            )?;
            window.first = first;
        }
        Ok(window.nodes[(position - window.first) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tree;

    #[test]
    fn on_disk_trees_match_in_memory_trees() {
        for leaves in [0u64, 1, 2, 3, 5, 8, 9, 100] {
            let file = tempfile::tempfile().unwrap();
            let shape = TreeShape::new(leaves);
            let section = TreeSection {
                file: &file,
                base: 17,
                shape,
            };
            let hashes: Vec<Hash> = (0..leaves)
                .map(|i| hash::block_leaf(&i.to_be_bytes()))
                .collect();
            let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
            section.write_leaves(0, &bytes).unwrap();
            let root = section.build().unwrap();
            let expected = tree::build(&hashes);
            assert_eq!(root, expected[0], "{leaves} leaves");
            let mut chains = section.chain_reader();
            for j in 0..leaves {
                let chain: Vec<Hash> = (0..shape.depth())
                    .map(|l| chains.sibling(j, l).unwrap())
                    .collect();
                assert_eq!(chain, tree::chain_of(&expected, &shape, j));
            }
            let copy = tempfile::tempfile().unwrap();
            section.copy_to(&copy, 0).unwrap();
            let copied = TreeSection {
                file: &copy,
                base: 0,
                shape,
            };
            assert_eq!(
                read_nodes(copied.file, 0, shape.node_count()).unwrap(),
                expected
            );
        }
    }
}
