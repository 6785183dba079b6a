//! Complete binary Merkle trees in array order, and an incomplete tree that accepts nodes
//! only when they hash up to what it already trusts.
//!
//! A tree over `leaves` real leaves has `width = next_power_of_two(max(leaves, 1))` leaf
//! positions; positions past the last real leaf hold [`hash::empty_leaf`]. Node 0 is the root,
//! the children of node `i` are `2i + 1` and `2i + 2`, and leaf `j` is node `width - 1 + j`.
//! A *chain* for leaf `j` is the list of siblings on the path from the leaf to the root,
//! bottom-up: level 0 is the leaf's sibling.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::hash::{self, Hash};

/// Index of a node in array order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIndex(pub u64);

impl NodeIndex {
    /// The root.
    pub const ROOT: NodeIndex = NodeIndex(0);

    /// Parent (the root is its own parent).
    pub fn parent(self) -> NodeIndex {
        NodeIndex(self.0.saturating_sub(1) / 2)
    }

    /// The other child of this node's parent (the root has none; returns itself).
    pub fn sibling(self) -> NodeIndex {
        match self.0 {
            0 => self,
            i if i % 2 == 1 => NodeIndex(i + 1),
            i => NodeIndex(i - 1),
        }
    }

    /// Whether this is a left child.
    pub fn is_left(self) -> bool {
        self.0 % 2 == 1
    }
}

impl fmt::Display for NodeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The shape of a tree: how many real leaves, how many leaf positions, how deep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TreeShape {
    leaves: u64,
    width: u64,
    depth: u32,
}

impl TreeShape {
    /// A tree over `leaves` real leaves (at most 2^62).
    pub fn new(leaves: u64) -> TreeShape {
        let leaves = leaves.min(1 << 62);
        let width = leaves.max(1).next_power_of_two();
        TreeShape {
            leaves,
            width,
            depth: width.trailing_zeros(),
        }
    }

    /// Number of real leaves.
    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    /// Number of leaf positions (a power of two).
    pub fn width(&self) -> u64 {
        self.width
    }

    /// Levels between a leaf and the root; also the length of a full chain.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Number of nodes (`2 * width - 1`).
    pub fn node_count(&self) -> u64 {
        2 * self.width - 1
    }

    /// Node of leaf position `j`.
    pub fn leaf_node(&self, j: u64) -> NodeIndex {
        NodeIndex(self.width - 1 + j)
    }

    /// Whether `node` is in the tree.
    pub fn contains(&self, node: NodeIndex) -> bool {
        node.0 < self.node_count()
    }

    /// Whether `node` is a leaf position.
    pub fn is_leaf(&self, node: NodeIndex) -> bool {
        node.0 >= self.width - 1 && self.contains(node)
    }

    /// The sibling at chain level `level` for leaf `j`.
    pub fn chain_node(&self, j: u64, level: u32) -> NodeIndex {
        self.ancestor(j, level).sibling()
    }

    /// The ancestor of leaf `j` that sits `height` levels above the leaves.
    pub fn ancestor(&self, j: u64, height: u32) -> NodeIndex {
        // At height h, nodes start at width / 2^h - 1 and the leaf's ancestor is j >> h.
        let level_width = self.width >> height;
        NodeIndex(level_width - 1 + (j >> height))
    }

    /// First node index of the level `height` levels above the leaves.
    pub fn level_start(&self, height: u32) -> NodeIndex {
        NodeIndex((self.width >> height) - 1)
    }
}

/// Why a batch of nodes was refused. A refused batch changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A node index outside the tree.
    #[error("node {node} is outside a tree of {count} nodes")]
    OutOfRange {
        /// The offending node.
        node: NodeIndex,
        /// Nodes in the tree.
        count: u64,
    },
    /// A node does not match what is known, or its children do not hash to it.
    #[error("hash mismatch at node {node}")]
    Mismatch {
        /// The node whose value disagrees.
        node: NodeIndex,
    },
    /// The batch gave two different values for one node.
    #[error("two different hashes offered for node {node}")]
    Conflict {
        /// The node offered twice.
        node: NodeIndex,
    },
    /// A node cannot be checked because a sibling on its path is unknown.
    #[error("cannot check the batch: sibling node {node} is missing")]
    MissingSibling {
        /// The sibling that is needed.
        node: NodeIndex,
    },
    /// A chain was shorter than the levels that must be checked.
    #[error("hash chain has {have} levels but {need} are needed")]
    ChainTooShort {
        /// Levels supplied.
        have: usize,
        /// Levels needed.
        need: usize,
    },
}

fn parent_hash(node: NodeIndex, value: &Hash, sibling: &Hash) -> Hash {
    if node.is_left() {
        hash::node(value, sibling)
    } else {
        hash::node(sibling, value)
    }
}

/// Root computed from a leaf and its full chain (`depth` siblings, bottom-up).
pub fn root_from_chain(
    shape: &TreeShape,
    leaf: u64,
    leaf_hash: Hash,
    chain: &[Hash],
) -> Result<Hash, TreeError> {
    let depth = shape.depth() as usize;
    if leaf >= shape.width() {
        return Err(TreeError::OutOfRange {
            node: NodeIndex(shape.width().saturating_add(leaf)),
            count: shape.node_count(),
        });
    }
    if chain.len() < depth {
        return Err(TreeError::ChainTooShort {
            have: chain.len(),
            need: depth,
        });
    }
    let mut node = shape.leaf_node(leaf);
    let mut value = leaf_hash;
    for sibling in &chain[..depth] {
        value = parent_hash(node, &value, sibling);
        node = node.parent();
    }
    Ok(value)
}

/// Every node of the tree over `leaves`, in array order (padding filled with empty leaves).
pub fn build(leaves: &[Hash]) -> Vec<Hash> {
    let shape = TreeShape::new(leaves.len() as u64);
    let width = shape.width() as usize;
    let mut nodes = vec![hash::empty_leaf(); 2 * width - 1];
    nodes[width - 1..width - 1 + leaves.len()].copy_from_slice(leaves);
    for i in (0..width - 1).rev() {
        nodes[i] = hash::node(&nodes[2 * i + 1], &nodes[2 * i + 2]);
    }
    nodes
}

/// The chain (siblings bottom-up) of leaf `j` in a fully built tree.
pub fn chain_of(nodes: &[Hash], shape: &TreeShape, j: u64) -> Vec<Hash> {
    (0..shape.depth())
        .map(|level| nodes[shape.chain_node(j, level).0 as usize])
        .collect()
}

/// A tree whose root is trusted and whose other nodes are learned as they are verified.
///
/// Storage is sparse, so a tree over millions of leaves costs only the nodes touched.
#[derive(Clone)]
pub struct PartialTree {
    shape: TreeShape,
    nodes: HashMap<u64, Hash>,
}

impl fmt::Debug for PartialTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialTree")
            .field("shape", &self.shape)
            .field("known", &self.nodes.len())
            .finish()
    }
}

/// Bytes one known node costs in memory, for accounting (key, value, table overhead).
pub const NODE_MEMORY_COST: usize = 8 + 32 + 16;

impl PartialTree {
    /// A tree that trusts `root` and knows nothing else.
    pub fn new(shape: TreeShape, root: Hash) -> PartialTree {
        let mut nodes = HashMap::new();
        nodes.insert(0, root);
        PartialTree { shape, nodes }
    }

    /// The tree's shape.
    pub fn shape(&self) -> &TreeShape {
        &self.shape
    }

    /// The trusted root.
    pub fn root(&self) -> Hash {
        self.nodes[&0]
    }

    /// A verified node, if known.
    pub fn get(&self, node: NodeIndex) -> Option<Hash> {
        self.nodes.get(&node.0).copied()
    }

    /// Number of verified nodes (including the root).
    pub fn known(&self) -> usize {
        self.nodes.len()
    }

    /// Approximate memory the verified nodes take.
    pub fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * NODE_MEMORY_COST
    }

    /// How many chain levels (bottom-up) a reader must bring to verify leaf `j`: the levels
    /// below the lowest ancestor already known. 0 when the leaf itself is known.
    pub fn levels_needed(&self, j: u64) -> u32 {
        if j >= self.shape.width() {
            return 0;
        }
        let mut node = self.shape.leaf_node(j);
        let mut levels = 0;
        while !self.nodes.contains_key(&node.0) {
            levels += 1;
            node = node.parent();
        }
        levels
    }

    /// Every sibling on leaf `j`'s path to the root (bottom-up), if all are known: the whole
    /// chain that proves the leaf against the root with no other node. A leaf verified here
    /// always has one, since a node is only learned together with its sibling.
    ///
    /// ```
    /// use segvault::core::{hash, tree::{self, PartialTree, TreeShape}};
    /// let leaves: Vec<_> = (0..5u8).map(|i| hash::block_leaf(&[i])).collect();
    /// let nodes = tree::build(&leaves);
    /// let shape = TreeShape::new(5);
    /// let mut partial = PartialTree::new(shape, nodes[0]);
    /// assert_eq!(partial.chain(3), None);
    /// partial.verify_leaf(3, leaves[3], &tree::chain_of(&nodes, &shape, 3)).unwrap();
    /// assert_eq!(partial.chain(3), Some(tree::chain_of(&nodes, &shape, 3)));
    /// ```
    pub fn chain(&self, j: u64) -> Option<Vec<Hash>> {
        if j >= self.shape.width() {
            return None;
        }
        (0..self.shape.depth())
            .map(|level| self.get(self.shape.chain_node(j, level)))
            .collect()
    }

    /// Verifies leaf `j` with `chain` (siblings bottom-up; extra levels are ignored) and
    /// learns the leaf and the siblings used. Atomic.
    pub fn verify_leaf(
        &mut self,
        j: u64,
        leaf_hash: Hash,
        chain: &[Hash],
    ) -> Result<(), TreeError> {
        if j >= self.shape.width() {
            return Err(TreeError::OutOfRange {
                node: NodeIndex(self.shape.width().saturating_add(j)),
                count: self.shape.node_count(),
            });
        }
        let need = self.levels_needed(j) as usize;
        if chain.len() < need {
            return Err(TreeError::ChainTooShort {
                have: chain.len(),
                need,
            });
        }
        let leaf = self.shape.leaf_node(j);
        let mut batch = Vec::with_capacity(need + 1);
        batch.push((leaf, leaf_hash));
        let mut node = leaf;
        for sibling in &chain[..need] {
            batch.push((node.sibling(), *sibling));
            node = node.parent();
        }
        self.insert(&batch).map(|_| ())
    }

    /// Accepts a batch of candidate nodes if every one of them hashes up to a node already
    /// trusted; otherwise changes nothing. Returns how many nodes were learned (candidates
    /// plus the interior nodes computed on the way).
    pub fn insert(&mut self, candidates: &[(NodeIndex, Hash)]) -> Result<usize, TreeError> {
        let mut overlay: HashMap<u64, Hash> = HashMap::new();
        for &(node, value) in candidates {
            if !self.shape.contains(node) {
                return Err(TreeError::OutOfRange {
                    node,
                    count: self.shape.node_count(),
                });
            }
            if let Some(known) = self.nodes.get(&node.0) {
                if *known != value {
                    return Err(TreeError::Mismatch { node });
                }
                continue;
            }
            if let Some(offered) = overlay.insert(node.0, value)
                && offered != value
            {
                return Err(TreeError::Conflict { node });
            }
        }

        // Walk each new node up until it meets a trusted node (or one this pass already proved).
        let mut proven: HashSet<u64> = HashSet::new();
        let mut starts: Vec<u64> = overlay.keys().copied().collect();
        starts.sort_unstable_by(|a, b| b.cmp(a));
        let mut path = Vec::new();
        for start in starts {
            path.clear();
            let mut node = NodeIndex(start);
            loop {
                if proven.contains(&node.0) {
                    break;
                }
                // The root is always trusted, so an untrusted node always has a parent.
                let value = overlay[&node.0];
                let sibling = node.sibling();
                let sibling_value = match self.nodes.get(&sibling.0).or(overlay.get(&sibling.0)) {
                    Some(v) => *v,
                    None => return Err(TreeError::MissingSibling { node: sibling }),
                };
                path.push(node.0);
                path.push(sibling.0);
                let parent = node.parent();
                let computed = parent_hash(node, &value, &sibling_value);
                if let Some(trusted) = self.nodes.get(&parent.0) {
                    if *trusted != computed {
                        return Err(TreeError::Mismatch { node: parent });
                    }
                    break;
                }
                match overlay.get(&parent.0) {
                    Some(offered) if *offered != computed => {
                        return Err(TreeError::Mismatch { node: parent });
                    }
                    Some(_) => {}
                    None => {
                        overlay.insert(parent.0, computed);
                    }
                }
                node = parent;
            }
            proven.extend(path.iter().copied());
        }

        let learned = overlay.len();
        self.nodes.extend(overlay);
        Ok(learned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| hash::block_leaf(&i.to_be_bytes())).collect()
    }

    #[test]
    fn every_verified_leaf_has_its_whole_chain() {
        for n in [1u64, 2, 3, 5, 8, 13, 33] {
            let l = leaves(n);
            let nodes = build(&l);
            let shape = TreeShape::new(n);
            let mut t = PartialTree::new(shape, nodes[0]);
            // Verify in a scattered order, each with only the levels still needed.
            let order: Vec<u64> = (0..n).map(|i| (i * 7 + 3) % n).collect();
            for &j in &order {
                let need = t.levels_needed(j) as usize;
                let chain = chain_of(&nodes, &shape, j);
                t.verify_leaf(j, l[j as usize], &chain[..need]).unwrap();
                assert_eq!(t.chain(j), Some(chain), "n={n} j={j}");
            }
            assert_eq!(t.chain(shape.width()), None);
        }
    }

    #[test]
    fn shape_of_small_trees() {
        let one = TreeShape::new(1);
        assert_eq!((one.width(), one.depth(), one.node_count()), (1, 0, 1));
        let zero = TreeShape::new(0);
        assert_eq!((zero.width(), zero.depth()), (1, 0));
        let five = TreeShape::new(5);
        assert_eq!((five.width(), five.depth(), five.node_count()), (8, 3, 15));
        assert_eq!(five.leaf_node(0), NodeIndex(7));
        assert_eq!(five.chain_node(0, 0), NodeIndex(8));
        assert_eq!(five.chain_node(0, 1), NodeIndex(4));
        assert_eq!(five.chain_node(0, 2), NodeIndex(2));
        assert_eq!(five.ancestor(5, 3), NodeIndex::ROOT);
    }

    #[test]
    fn single_leaf_tree_root_is_the_leaf() {
        let l = leaves(1);
        assert_eq!(build(&l), l);
        let mut t = PartialTree::new(TreeShape::new(1), l[0]);
        assert_eq!(t.levels_needed(0), 0);
        t.verify_leaf(0, l[0], &[]).unwrap();
        assert!(t.verify_leaf(0, leaves(2)[1], &[]).is_err());
    }

    #[test]
    fn chains_verify_and_warm_trees_need_fewer_levels() {
        let l = leaves(11);
        let nodes = build(&l);
        let shape = TreeShape::new(11);
        let mut t = PartialTree::new(shape, nodes[0]);
        assert_eq!(t.levels_needed(3), 4);
        t.verify_leaf(3, l[3], &chain_of(&nodes, &shape, 3))
            .unwrap();
        // Leaf 2 is the sibling of leaf 3, already learned.
        assert_eq!(t.levels_needed(2), 0);
        assert_eq!(t.levels_needed(4), 2);
        t.verify_leaf(4, l[4], &chain_of(&nodes, &shape, 4)[..2])
            .unwrap();
        assert_eq!(
            root_from_chain(&shape, 9, l[9], &chain_of(&nodes, &shape, 9)).unwrap(),
            nodes[0]
        );
    }

    #[test]
    fn a_bad_batch_changes_nothing() {
        let l = leaves(8);
        let nodes = build(&l);
        let shape = TreeShape::new(8);
        let mut t = PartialTree::new(shape, nodes[0]);
        let mut chain = chain_of(&nodes, &shape, 5);
        chain[2] = hash::block_leaf(b"evil");
        assert_eq!(
            t.verify_leaf(5, l[5], &chain),
            Err(TreeError::Mismatch {
                node: NodeIndex::ROOT
            })
        );
        assert_eq!(t.known(), 1);
        assert_eq!(
            t.verify_leaf(5, l[5], &chain[..1]),
            Err(TreeError::ChainTooShort { have: 1, need: 3 })
        );
    }

    #[test]
    fn lone_nodes_without_siblings_are_refused() {
        let l = leaves(4);
        let nodes = build(&l);
        let mut t = PartialTree::new(TreeShape::new(4), nodes[0]);
        assert_eq!(
            t.insert(&[(NodeIndex(3), nodes[3])]),
            Err(TreeError::MissingSibling { node: NodeIndex(4) })
        );
        assert_eq!(
            t.insert(&[
                (NodeIndex(3), nodes[3]),
                (NodeIndex(4), nodes[4]),
                (NodeIndex(2), nodes[2])
            ]),
            Ok(4)
        );
        // Root, the three offered nodes, and node 1 computed from 3 and 4.
        assert_eq!(t.known(), 5);
        assert_eq!(t.get(NodeIndex(1)), Some(nodes[1]));
    }
}
