//! Systematic Reed–Solomon over GF(2^8) (`reed-solomon-erasure`, Vandermonde matrix,
//! polynomial 0x11d): blocks `0..k` are the data itself, blocks `k..n` are parity, and any
//! `k` of the `n` reconstruct the data.

use std::fmt;

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Coding failed: the inputs did not have the shape the codec needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErasureError {
    /// `k`/`n` outside what the field supports.
    #[error("unsupported coding parameters k={k} n={n}")]
    Parameters {
        /// Data shares.
        k: u16,
        /// Total shares.
        n: u16,
    },
    /// Fewer than `k` blocks were supplied.
    #[error("need {k} blocks to decode, got {got}")]
    TooFewBlocks {
        /// Needed.
        k: usize,
        /// Supplied.
        got: usize,
    },
    /// Blocks of unequal or zero length.
    #[error("blocks must all be {expected} bytes")]
    BlockSize {
        /// The length every block must have.
        expected: usize,
    },
    /// A share number outside `0..n`.
    #[error("share {share} is not below n={n}")]
    ShareOutOfRange {
        /// The share number.
        share: usize,
        /// Total shares.
        n: usize,
    },
}

/// The `k`-of-`n` code of one file.
#[derive(Clone)]
pub struct Codec {
    k: usize,
    n: usize,
    rs: Option<ReedSolomon>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Codec({}-of-{})", self.k, self.n)
    }
}

impl Codec {
    /// A codec for `k` data and `n - k` parity blocks (`1 <= k <= n <= 256`).
    pub fn new(k: u16, n: u16) -> Result<Codec, ErasureError> {
        if k == 0 || k > n || n > 256 {
            return Err(ErasureError::Parameters { k, n });
        }
        let (k, n) = (usize::from(k), usize::from(n));
        // With no parity there is nothing to compute; the library refuses zero parity.
        let rs = if n > k {
            Some(
                ReedSolomon::new(k, n - k).map_err(|_| ErasureError::Parameters {
                    k: k as u16,
                    n: n as u16,
                })?,
            )
        } else {
            None
        };
        Ok(Codec { k, n, rs })
    }

    /// Data blocks per segment.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Blocks per segment.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Computes the `n - k` parity blocks of `data` (k blocks of equal, non-zero length).
    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), ErasureError> {
        let size = data.first().map_or(0, |b| b.len());
        if data.len() != self.k {
            return Err(ErasureError::TooFewBlocks {
                k: self.k,
                got: data.len(),
            });
        }
        if size == 0
            || parity.len() != self.n - self.k
            || data.iter().any(|b| b.len() != size)
            || parity.iter().any(|b| b.len() != size)
        {
            return Err(ErasureError::BlockSize { expected: size });
        }
        match &self.rs {
            Some(rs) => rs
                .encode_sep(data, parity)
                .map_err(|_| ErasureError::BlockSize { expected: size }),
            None => Ok(()),
        }
    }

    /// Rebuilds the `k` data blocks from any `k` blocks given as `(share number, bytes)`.
    ///
    /// Data blocks among the inputs are returned as they are; only missing ones are computed.
    ///
    /// ```
    /// use segvault::core::erasure::Codec;
    /// let codec = Codec::new(2, 4).unwrap();
    /// let data: [&[u8]; 2] = [b"abcd", b"efgh"];
    /// let mut p0 = vec![0; 4];
    /// let mut p1 = vec![0; 4];
    /// codec.encode(&data, &mut [&mut p0, &mut p1]).unwrap();
    /// let rebuilt = codec.decode(&[(1, b"efgh".as_slice()), (3, &p1)]).unwrap();
    /// assert_eq!(rebuilt, vec![b"abcd".to_vec(), b"efgh".to_vec()]);
    /// ```
    pub fn decode(&self, blocks: &[(usize, &[u8])]) -> Result<Vec<Vec<u8>>, ErasureError> {
        let size = blocks.first().map_or(0, |(_, b)| b.len());
        if size == 0 || blocks.iter().any(|(_, b)| b.len() != size) {
            return Err(ErasureError::BlockSize { expected: size });
        }
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; self.n];
        let mut present = 0;
        for &(share, bytes) in blocks {
            let slot = slots
                .get_mut(share)
                .ok_or(ErasureError::ShareOutOfRange { share, n: self.n })?;
            if slot.is_none() {
                *slot = Some(bytes.to_vec());
                present += 1;
            }
        }
        if present < self.k {
            return Err(ErasureError::TooFewBlocks {
                k: self.k,
                got: present,
            });
        }
        if slots[..self.k].iter().any(Option::is_none) {
            let rs = self.rs.as_ref().ok_or(ErasureError::TooFewBlocks {
                k: self.k,
                got: present,
            })?;
            rs.reconstruct_data(&mut slots)
                .map_err(|_| ErasureError::BlockSize { expected: size })?;
        }
        slots
            .into_iter()
            .take(self.k)
            .map(|slot| {
                slot.ok_or(ErasureError::TooFewBlocks {
                    k: self.k,
                    got: present,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_of_n_rebuild_the_data() {
        let codec = Codec::new(3, 6).unwrap();
        let data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i * 40 + 1; 5]).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut parity = vec![vec![0u8; 5]; 3];
        let mut prefs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
        codec.encode(&refs, &mut prefs).unwrap();
        let all: Vec<&[u8]> = refs
            .iter()
            .copied()
            .chain(parity.iter().map(Vec::as_slice))
            .collect();
        for a in 0..6 {
            for b in a + 1..6 {
                for c in b + 1..6 {
                    let got = codec
                        .decode(&[(a, all[a]), (b, all[b]), (c, all[c])])
                        .unwrap();
                    assert_eq!(got, data, "shares {a},{b},{c}");
                }
            }
        }
    }

    #[test]
    fn k_equals_n_is_a_plain_split() {
        let codec = Codec::new(2, 2).unwrap();
        codec.encode(&[b"ab", b"cd"], &mut []).unwrap();
        assert_eq!(
            codec.decode(&[(1, b"cd"), (0, b"ab")]).unwrap(),
            vec![b"ab".to_vec(), b"cd".to_vec()]
        );
        assert!(codec.decode(&[(1, b"cd")]).is_err());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let codec = Codec::new(2, 3).unwrap();
        assert!(codec.decode(&[(0, b"ab"), (7, b"cd")]).is_err());
        assert!(codec.decode(&[(0, b"ab"), (1, b"c")]).is_err());
        assert!(codec.decode(&[]).is_err());
        assert!(Codec::new(0, 1).is_err());
        assert!(Codec::new(3, 257).is_err());
    }
}
