//! Byte sizes as people write them: `128KiB`, `1MiB`, `1.5 GiB`, `4096`.

/// Parses a size. Binary suffixes (KiB, MiB, GiB) are powers of 1024; SI suffixes (KB, MB)
/// powers of 1000; a bare number is bytes.
///
/// `parse("128KiB") == Ok(131072)`, `parse("4096") == Ok(4096)`; `parse("lots")` is an error.
pub(crate) fn parse(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text)
        .map_err(|e| format!("invalid size {text:?}: {e} (examples: 4096, 128KiB, 1MiB)"))
}

/// Formats a byte count with a binary suffix, e.g. `128 KiB`, `1.50 GiB`.
pub(crate) fn format(bytes: u64) -> String {
    segvault::core::text::human_bytes(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_round_trip_through_text() {
        assert_eq!(super::parse("1MiB"), Ok(1 << 20));
        assert_eq!(super::parse("1 MB"), Ok(1_000_000));
        assert_eq!(super::format(128 << 10), "128 KiB");
        assert_eq!(super::format(1536 << 20), "1.50 GiB");
        assert_eq!(super::format(17), "17 B");
    }
}
