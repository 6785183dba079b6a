//! The encoder: pass 1 encrypts, codes and hashes the input a segment at a time into the
//! share spools; pass 2 builds the trees and writes each share's front (see the
//! [module above](super)). Runs on a thread of its own.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use tracing::debug;
use zeroize::Zeroizing;

#[cfg(any(test, feature = "testing"))]
use super::Tamper;
use super::tree_file::TreeSection;
use super::{Progress, PutError, PutOptions, PutSource};
use crate::core::cap::{ReadCap, StorageIndex};
use crate::core::cipher::{FileKey, Keystream};
use crate::core::codec::Codec as _;
use crate::core::erasure::Codec;
use crate::core::geometry::{Geometry, SegmentIndex, ShareNum};
use crate::core::hash::{self, Hash};
use crate::core::layout::ShareLayout;
use crate::core::share_header::ShareHeader;
use crate::core::tree;
use crate::core::ueb::Ueb;
use crate::grid::Grid;
use crate::store::SpooledShare;

pub(super) struct Encoded {
    pub(super) cap: ReadCap,
    pub(super) spools: Vec<SpooledShare>,
    pub(super) placement: Vec<usize>,
}

pub(super) fn spool_error(dir: impl fmt::Display) -> impl FnOnce(io::Error) -> PutError {
    let dir = dir.to_string();
    move |source| PutError::Spool { dir, source }
}

/// The input, positioned at its start, with its size and whether it is already encrypted.
pub(super) fn open_input(
    grid: &Grid,
    source: PutSource,
    keystream: &Keystream,
    progress: Option<&Progress>,
    stop: &AtomicBool,
) -> Result<(Box<dyn Read + Send>, u64, bool), PutError> {
    match source {
        PutSource::Path(path) => {
            // Read a segment at a time straight into the segment buffer: no BufReader copy.
            let file = File::open(&path).map_err(PutError::Input)?;
            let size = file.metadata().map_err(PutError::Input)?.len();
            Ok((Box::new(file), size, false))
        }
        PutSource::Bytes(bytes) => {
            let size = bytes.len() as u64;
            // Plaintext: wiped when the encoder is done with it.
            Ok((
                Box::new(io::Cursor::new(Zeroizing::new(bytes))),
                size,
                false,
            ))
        }
        PutSource::AsyncReader(_) => Err(PutError::Internal(
            "an async source reached the encoder unbridged".into(),
        )),
        PutSource::Reader(mut reader) => {
            let dir = grid
                .servers()
                .iter()
                .find_map(|s| s.store().spool_dir())
                .unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&dir).map_err(spool_error(dir.display()))?;
            let mut spool = tempfile::tempfile_in(&dir).map_err(spool_error(dir.display()))?;
            let mut buffer = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Err(PutError::Cancelled {
                        left_behind: String::new(),
                    });
                }
                let n = match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(PutError::Input(e)),
                };
                keystream.apply(size, &mut buffer[..n]);
                spool
                    .write_all(&buffer[..n])
                    .map_err(spool_error(dir.display()))?;
                size += n as u64;
                if let Some(progress) = progress {
                    progress(size);
                }
            }
            spool.rewind().map_err(spool_error(dir.display()))?;
            Ok((
                Box::new(io::BufReader::with_capacity(1 << 20, spool)),
                size,
                true,
            ))
        }
    }
}

pub(super) fn encode(
    grid: &Grid,
    responsive: &[usize],
    source: PutSource,
    options: &PutOptions,
    stop: &AtomicBool,
) -> Result<Encoded, PutError> {
    let key = FileKey::generate().map_err(|e| PutError::Random(e.to_string()))?;
    let keystream = Keystream::new(&key);
    let si = StorageIndex(key.storage_index());
    let (mut input, size, encrypted) =
        open_input(grid, source, &keystream, options.progress.as_ref(), stop)?;
    let segment_size = options.segment_size_for(size);
    let geometry = Geometry::new(size, segment_size, options.k, options.n)?;
    let layout = ShareLayout::new(&geometry);
    let placement = grid.placement_among(&si, options.n, responsive);
    debug!(%si, size, segment_size, k = options.k, n = options.n, "encoding");

    let spools = placement
        .iter()
        .map(|&server| {
            let dir = grid.servers()[server]
                .store()
                .spool_dir()
                .unwrap_or_else(std::env::temp_dir);
            SpooledShare::create(&dir, layout.share_len()).map_err(spool_error(dir.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let encoder = SegmentEncoder {
        geometry,
        layout,
        keystream: &keystream,
        encrypted,
        codec: Codec::new(options.k, options.n).map_err(|e| PutError::Internal(e.to_string()))?,
        spools: &spools,
        #[cfg(any(test, feature = "testing"))]
        tamper: options.tamper.as_ref(),
        stop,
    };
    let started = std::time::Instant::now();
    encoder.encode_all(&mut *input, options)?;
    let encoded = started.elapsed();
    let ueb_hash = finish_shares(&geometry, &layout, si, &spools, options.threads, stop)?;
    debug!(%si, encode_ms = encoded.as_millis(), trees_ms = (started.elapsed() - encoded).as_millis(), "shares built");
    Ok(Encoded {
        cap: ReadCap::new(key, ueb_hash, geometry),
        spools,
        placement,
    })
}

struct SegmentEncoder<'a> {
    geometry: Geometry,
    layout: ShareLayout,
    keystream: &'a Keystream,
    encrypted: bool,
    codec: Codec,
    spools: &'a [SpooledShare],
    #[cfg(any(test, feature = "testing"))]
    tamper: Option<&'a Tamper>,
    /// Set when the upload is cancelled.
    stop: &'a AtomicBool,
}

impl SegmentEncoder<'_> {
    fn section(&self, share: usize, ciphertext: bool) -> TreeSection<'_> {
        let range = if ciphertext {
            self.layout.ciphertext_tree_range()
        } else {
            self.layout.block_tree_range()
        };
        TreeSection {
            file: self.spools[share].file(),
            base: range.start,
            shape: self.geometry.segment_tree(),
        }
    }

    /// Reads the input a segment at a time and encodes segments on `options.threads` threads,
    /// with a fixed pool of segment buffers (memory: threads + 2 segments).
    fn encode_all(&self, input: &mut dyn Read, options: &PutOptions) -> Result<(), PutError> {
        let g = &self.geometry;
        let threads = options.threads.max(1);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<PutError>> = Mutex::new(None);
        let fail = |e: PutError| {
            failed.store(true, Ordering::SeqCst);
            first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
        };
        let done = AtomicU64::new(0);
        let (job_tx, job_rx) = mpsc::sync_channel::<(SegmentIndex, Vec<u8>)>(threads);
        let job_rx = Mutex::new(job_rx);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let (leaf_tx, leaf_rx) = mpsc::channel::<(SegmentIndex, Vec<Hash>)>();
        let mut leaves = LeafRuns::new(self);
        std::thread::scope(|scope| {
            // Buffers keep their full length between segments, so nothing is zeroed twice.
            for _ in 0..threads + 2 {
                let _ = free_tx.send(vec![0u8; g.padded_segment_len(SegmentIndex(0)) as usize]);
            }
            for worker in 0..threads {
                let (job_rx, free_tx, leaf_tx, failed, fail) =
                    (&job_rx, free_tx.clone(), leaf_tx.clone(), &failed, &fail);
                // Each thread walks the share files from a different one, so two threads
                // rarely wait on the same file's lock.
                let first_share = worker * usize::from(g.n()) / threads;
                scope.spawn(move || {
                    let mut parity =
                        vec![vec![0u8; g.full_block_size() as usize]; usize::from(g.n() - g.k())];
                    loop {
                        let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((segment, mut buffer)) = job else {
                            break;
                        };
                        if !failed.load(Ordering::SeqCst) {
                            match self.encode_segment(
                                segment,
                                &mut buffer,
                                &mut parity,
                                first_share,
                            ) {
                                Ok(hashes) => {
                                    let _ = leaf_tx.send((segment, hashes));
                                }
                                Err(e) => fail(e),
                            }
                        }
                        let _ = free_tx.send(buffer);
                    }
                });
            }
            drop(leaf_tx);
            for s in 0..g.num_segments() {
                if self.stop.load(Ordering::Relaxed) {
                    fail(PutError::Cancelled {
                        left_behind: String::new(),
                    });
                }
                if failed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut buffer) = free_rx.recv() else {
                    break;
                };
                let segment = SegmentIndex(s);
                let len = g.segment_len(segment) as usize;
                if let Err(e) = input.read_exact(&mut buffer[..len]) {
                    fail(if e.kind() == io::ErrorKind::UnexpectedEof {
                        PutError::InputChanged
                    } else {
                        PutError::Input(e)
                    });
                    break;
                }
                if job_tx.send((segment, buffer)).is_err() {
                    break;
                }
                let total = done.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
                if let Some(progress) = &options.progress {
                    progress(total);
                }
                for (segment, hashes) in leaf_rx.try_iter() {
                    if let Err(e) = leaves.add(segment, hashes) {
                        fail(e);
                    }
                }
            }
            // Closing the queue lets the workers finish what they hold and exit.
            drop(job_tx);
            for (segment, hashes) in leaf_rx.iter() {
                if let Err(e) = leaves.add(segment, hashes) {
                    fail(e);
                }
            }
        });
        if let Err(e) = leaves.flush() {
            fail(e);
        }
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        match input.read(&mut [0u8; 1]) {
            Ok(0) => Ok(()),
            Ok(_) => Err(PutError::InputChanged),
            Err(e) => Err(PutError::Input(e)),
        }
    }

    /// Encrypts, codes and hashes one segment and writes its blocks (starting with share
    /// `first_share`). Returns the n block leaves followed by the ciphertext leaf.
    fn encode_segment(
        &self,
        segment: SegmentIndex,
        buffer: &mut [u8],
        parity: &mut [Vec<u8>],
        first_share: usize,
    ) -> Result<Vec<Hash>, PutError> {
        let g = &self.geometry;
        let (k, n) = (usize::from(g.k()), usize::from(g.n()));
        let block = g.block_size(segment) as usize;
        let len = g.segment_len(segment) as usize;
        let buffer = &mut buffer[..block * k];
        if !self.encrypted {
            self.keystream
                .apply(g.segment_start(segment), &mut buffer[..len]);
        }
        buffer[len..].fill(0);
        {
            let data: Vec<&[u8]> = buffer.chunks_exact(block).collect();
            let mut parity: Vec<&mut [u8]> = parity.iter_mut().map(|p| &mut p[..block]).collect();
            self.codec
                .encode(&data, &mut parity)
                .map_err(|e| PutError::Internal(e.to_string()))?;
        }
        // A tampering test uploader commits its ciphertext tree to the data as it should be,
        // then changes blocks: each tampered share is authentic yet disagrees with the rest.
        #[cfg(any(test, feature = "testing"))]
        let honest_leaf = self.tamper.map(|tamper| {
            let leaves: Vec<Hash> = buffer.chunks_exact(block).map(hash::block_leaf).collect();
            for (share, bytes) in buffer
                .chunks_exact_mut(block)
                .chain(parity.iter_mut().map(|p| &mut p[..block]))
                .enumerate()
            {
                tamper(ShareNum(share as u8), segment, bytes);
            }
            hash::ciphertext_leaf(&leaves)
        });
        #[cfg(not(any(test, feature = "testing")))]
        let honest_leaf: Option<Hash> = None;
        let blocks: Vec<&[u8]> = buffer
            .chunks_exact(block)
            .chain(parity.iter().map(|p| &p[..block]))
            .collect();
        let mut hashes: Vec<Hash> = blocks.iter().map(|b| hash::block_leaf(b)).collect();
        hashes.push(honest_leaf.unwrap_or_else(|| hash::ciphertext_leaf(&hashes[..k])));
        let offset = self.layout.block_range(segment).start;
        for share in (first_share..n).chain(0..first_share) {
            self.spools[share]
                .file()
                .write_all_at(blocks[share], offset)
                .map_err(spool_error(self.spools[share].path().display()))?;
        }
        Ok(hashes)
    }
}

/// Leaf hashes arrive a segment at a time and out of order; they are written to the tree
/// sections in contiguous runs (one write per share per run, not one per leaf).
struct LeafRuns<'a> {
    encoder: &'a SegmentEncoder<'a>,
    next: u64,
    waiting: std::collections::BTreeMap<u64, Vec<Hash>>,
    /// Per share, then the ciphertext tree: the run being gathered.
    runs: Vec<Vec<u8>>,
    run_start: u64,
}

/// Leaves gathered before a run is written.
const LEAF_RUN: usize = 256;

impl<'a> LeafRuns<'a> {
    fn new(encoder: &'a SegmentEncoder<'a>) -> LeafRuns<'a> {
        let trees = usize::from(encoder.geometry.n()) + 1;
        LeafRuns {
            encoder,
            next: 0,
            waiting: std::collections::BTreeMap::new(),
            runs: vec![Vec::with_capacity(LEAF_RUN * 32); trees],
            run_start: 0,
        }
    }

    fn add(&mut self, segment: SegmentIndex, hashes: Vec<Hash>) -> Result<(), PutError> {
        self.waiting.insert(segment.0, hashes);
        while let Some(hashes) = self.waiting.remove(&self.next) {
            for (run, hash) in self.runs.iter_mut().zip(&hashes) {
                run.extend_from_slice(&hash.0);
            }
            self.next += 1;
            if self.next - self.run_start == LEAF_RUN as u64 {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PutError> {
        let n = self.runs.len() - 1;
        for (tree, run) in self.runs.iter_mut().enumerate() {
            if run.is_empty() {
                continue;
            }
            let (share, ciphertext) = if tree == n { (0, true) } else { (tree, false) };
            let section = self.encoder.section(share, ciphertext);
            section
                .write_leaves(self.run_start, run)
                .map_err(spool_error(self.encoder.spools[share].path().display()))?;
            run.clear();
        }
        self.run_start = self.next;
        Ok(())
    }
}

/// Builds every tree, writes chains, headers, UEB and share chains. Returns the UEB hash.
fn finish_shares(
    geometry: &Geometry,
    layout: &ShareLayout,
    si: StorageIndex,
    spools: &[SpooledShare],
    threads: usize,
    stop: &AtomicBool,
) -> Result<Hash, PutError> {
    let cancelled = || io::Error::new(io::ErrorKind::Interrupted, "cancelled");
    let shape = geometry.segment_tree();
    let section = |share: usize, range: std::ops::Range<u64>| TreeSection {
        file: spools[share].file(),
        base: range.start,
        shape,
    };
    let chunk = spools.len().div_ceil(threads.max(1));
    let roots: Vec<Hash> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..spools.len())
            .collect::<Vec<_>>()
            .chunks(chunk.max(1))
            .map(|shares| {
                let shares = shares.to_vec();
                scope.spawn(move || {
                    shares
                        .into_iter()
                        .map(|i| {
                            if stop.load(Ordering::Relaxed) {
                                return Err(cancelled());
                            }
                            section(i, layout.block_tree_range()).build()
                        })
                        .collect::<io::Result<Vec<Hash>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("tree thread panicked")))
            })
            .collect::<io::Result<Vec<Vec<Hash>>>>()
            .map(|v| v.into_iter().flatten().collect())
    })
    .map_err(|e| cancelled_or(e, stop))?;
    let ciphertext = section(0, layout.ciphertext_tree_range());
    let ciphertext_root = ciphertext.build().map_err(spool_error("share spools"))?;
    let share_tree = tree::build(&roots);
    let ueb = Ueb {
        geometry: *geometry,
        share_root: share_tree[0],
        ciphertext_root,
    };
    let ueb_bytes = ueb.to_bytes();

    let finish_one = |i: usize| -> io::Result<()> {
        let file = spools[i].file();
        if i != 0 {
            ciphertext.copy_to(file, layout.ciphertext_tree_range().start)?;
        }
        let front = ShareFront {
            geometry,
            layout,
            storage_index: si,
            share_tree: &share_tree,
            ueb_bytes: &ueb_bytes,
        };
        front.write(
            file,
            ShareNum(i as u8),
            &section(i, layout.block_tree_range()),
            &ciphertext,
            stop,
        )
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..spools.len())
            .collect::<Vec<_>>()
            .chunks(chunk.max(1))
            .map(|shares| {
                let shares = shares.to_vec();
                let finish_one = &finish_one;
                scope.spawn(move || shares.into_iter().try_for_each(finish_one))
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("share thread panicked")))
        })
    })
    .map_err(|e| cancelled_or(e, stop))?;
    Ok(hash::ueb(&ueb_bytes))
}

/// A spool error, or the cancellation that caused it.
pub(super) fn cancelled_or(error: io::Error, stop: &AtomicBool) -> PutError {
    if stop.load(Ordering::Relaxed) {
        PutError::Cancelled {
            left_behind: String::new(),
        }
    } else {
        spool_error("share spools")(error)
    }
}

/// What every share of a file has in common beyond its blocks: the geometry, the share tree
/// (over every share's block-tree root) and the UEB.
pub(crate) struct ShareFront<'a> {
    pub(crate) geometry: &'a Geometry,
    pub(crate) layout: &'a ShareLayout,
    pub(crate) storage_index: StorageIndex,
    /// The share tree's nodes, in array order.
    pub(crate) share_tree: &'a [Hash],
    pub(crate) ueb_bytes: &'a [u8],
}

impl ShareFront<'_> {
    /// Writes share `share`'s record chains (block- and ciphertext-tree siblings, then the
    /// share chain) and its front (header and UEB) into `file`, whose blocks and both tree
    /// sections (`blocks`, and `ciphertext` wherever it is) are already built.
    pub(crate) fn write(
        &self,
        file: &File,
        share: ShareNum,
        blocks: &TreeSection<'_>,
        ciphertext: &TreeSection<'_>,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let cancelled = || io::Error::new(io::ErrorKind::Interrupted, "cancelled");
        let (geometry, layout) = (self.geometry, self.layout);
        let mut block_chains = blocks.chain_reader();
        let mut ciphertext_chains = ciphertext.chain_reader();
        // Every record ends with the same share chain: the path from the block-tree root on
        // to the UEB's share root, so one contiguous read verifies a block from nothing.
        let share_chain: Vec<u8> = tree::chain_of(
            self.share_tree,
            &geometry.share_tree(),
            share.index() as u64,
        )
        .iter()
        .flat_map(|h| h.0)
        .collect();
        let mut path = Vec::with_capacity(layout.depth() as usize * 64 + share_chain.len());
        for s in 0..geometry.num_segments() {
            if s % 1024 == 0 && stop.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            path.clear();
            for level in 0..layout.depth() {
                path.extend_from_slice(&block_chains.sibling(s, level)?.0);
                path.extend_from_slice(&ciphertext_chains.sibling(s, level)?.0);
            }
            path.extend_from_slice(&share_chain);
            file.write_all_at(&path, layout.chain_range(SegmentIndex(s)).start)?;
        }
        let mut front = ShareHeader {
            share,
            geometry: *geometry,
            storage_index: self.storage_index,
        }
        .to_bytes();
        front.extend_from_slice(self.ueb_bytes);
        debug_assert_eq!(front.len() as u64, layout.header_region().end);
        file.write_all_at(&front, 0)
    }
}
