//! Which bytes of a file a read asks for, in one convention for every read: a bounded range,
//! everything from an offset, or the last n bytes (as `object_store`'s `GetRange` and HTTP's
//! `bytes=a-b`, `bytes=a-`, `bytes=-n`).

use std::ops::{Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};

/// The bytes of a file to read. Resolved against the file's length by
/// [`resolve`](Self::resolve): whatever lies past the end is left out, so no range is ever
/// an error; one wholly past the end reads nothing.
///
/// ```
/// use segvault::GetRange;
/// assert_eq!(GetRange::from(10..20).resolve(15), 10..15);
/// assert_eq!(GetRange::from(10..).resolve(15), 10..15);
/// assert_eq!(GetRange::Suffix(4).resolve(15), 11..15);
/// assert_eq!(GetRange::at(14, 100).resolve(15), 14..15);
/// assert_eq!(GetRange::from(..).resolve(15), 0..15);
/// assert!(GetRange::from(20..30).resolve(15).is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GetRange {
    /// Bytes `start..end`.
    Bounded(Range<u64>),
    /// Bytes from this offset to the end.
    Offset(u64),
    /// The last this many bytes (all of a shorter file).
    Suffix(u64),
}

impl GetRange {
    /// `len` bytes starting at `offset`.
    pub fn at(offset: u64, len: u64) -> GetRange {
        GetRange::Bounded(offset..offset.saturating_add(len))
    }

    /// The byte range of a `file_len`-byte file this asks for, clamped to the file (a reversed
    /// range is empty).
    pub fn resolve(&self, file_len: u64) -> Range<u64> {
        let (start, end) = match *self {
            GetRange::Bounded(ref range) => (range.start, range.end),
            GetRange::Offset(start) => (start, file_len),
            GetRange::Suffix(len) => (file_len.saturating_sub(len), file_len),
        };
        let start = start.min(file_len);
        start..end.clamp(start, file_len)
    }
}

impl From<Range<u64>> for GetRange {
    fn from(range: Range<u64>) -> GetRange {
        GetRange::Bounded(range)
    }
}

impl From<RangeInclusive<u64>> for GetRange {
    fn from(range: RangeInclusive<u64>) -> GetRange {
        GetRange::Bounded(*range.start()..range.end().saturating_add(1))
    }
}

impl From<RangeFrom<u64>> for GetRange {
    fn from(range: RangeFrom<u64>) -> GetRange {
        GetRange::Offset(range.start)
    }
}

impl From<RangeTo<u64>> for GetRange {
    fn from(range: RangeTo<u64>) -> GetRange {
        GetRange::Bounded(0..range.end)
    }
}

impl From<RangeToInclusive<u64>> for GetRange {
    fn from(range: RangeToInclusive<u64>) -> GetRange {
        GetRange::Bounded(0..range.end.saturating_add(1))
    }
}

impl From<RangeFull> for GetRange {
    fn from(_: RangeFull) -> GetRange {
        GetRange::Offset(0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::GetRange;

    fn any_range() -> impl Strategy<Value = GetRange> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| GetRange::Bounded(a..b)),
            any::<u64>().prop_map(GetRange::Offset),
            any::<u64>().prop_map(GetRange::Suffix),
        ]
    }

    proptest! {
        #[test]
        fn resolved_ranges_lie_in_the_file(range in any_range(), len in prop_oneof![0..100_000u64, any::<u64>()]) {
            let resolved = range.resolve(len);
            prop_assert!(resolved.start <= resolved.end && resolved.end <= len);
            match range {
                GetRange::Bounded(r) if r.start < len && r.start < r.end => {
                    prop_assert_eq!(resolved, r.start..r.end.min(len));
                }
                GetRange::Offset(start) => prop_assert_eq!(resolved.end, len.max(start.min(len))),
                GetRange::Suffix(n) => prop_assert_eq!(resolved.end - resolved.start, n.min(len)),
                _ => prop_assert!(resolved.is_empty()),
            }
        }
    }
}
