//! Untrusted text that reaches people: file names from URLs, which end up in
//! `Content-Disposition`, and free text from peers, which ends up in logs. Pure functions.

use std::fmt;

/// Invisible characters that change how text around them reads: controls (Unicode Cc) and
/// the format characters (Cf) used for spoofing, above all the bidirectional overrides that
/// make `report\u{202e}fdp.exe` display as `reportexe.pdf`.
///
/// ```
/// use segvault::core::text::is_hidden_control;
/// assert!(is_hidden_control('\u{202e}') && is_hidden_control('\n') && is_hidden_control('\u{200b}'));
/// assert!(!is_hidden_control('é') && !is_hidden_control(' '));
/// ```
pub fn is_hidden_control(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}'                 // soft hyphen
            | '\u{061c}'               // Arabic letter mark
            | '\u{180e}'               // Mongolian vowel separator
            | '\u{200b}'..='\u{200f}'  // zero-width spaces and joiners, LRM, RLM
            | '\u{2028}'..='\u{202e}'  // line and paragraph separators, embeddings, overrides
            | '\u{2060}'..='\u{206f}'  // word joiner, invisible operators, isolates
            | '\u{034f}'               // combining grapheme joiner
            | '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' // Hangul fillers
            | '\u{feff}'               // zero-width no-break space
            | '\u{fff9}'..='\u{fffb}'  // interlinear annotations
            | '\u{e0000}'..='\u{e007f}') // tag characters
}

/// Free text from a peer, fit for one log line: hidden controls become spaces, and at most
/// `max_bytes` bytes are kept (on a character boundary).
///
/// ```
/// use segvault::core::text::for_log;
/// assert_eq!(for_log("bad\nblock \u{202e}3", 100), "bad block  3");
/// assert_eq!(for_log("ééé", 4), "éé");
/// ```
pub fn for_log(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    for c in text.chars() {
        let c = if is_hidden_control(c) { ' ' } else { c };
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

/// Longest file name, in bytes (as on common filesystems).
pub const MAX_NAME_BYTES: usize = 255;

/// Why the name after a cap in a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// Empty, `.` or `..`.
    DotOrEmpty,
    /// A `/` or `\` (also percent-encoded): a name is one path segment.
    Separator,
    /// A control or invisible formatting character.
    Control,
    /// More than [`MAX_NAME_BYTES`] bytes.
    TooLong,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameError::BadEscape => "invalid percent-encoding",
            NameError::NotUtf8 => "not UTF-8",
            NameError::DotOrEmpty => "empty, `.` or `..`",
            NameError::Separator => "contains `/` or `\\`: a name is a single path segment",
            NameError::Control => "contains control or invisible formatting characters",
            NameError::TooLong => "longer than 255 bytes",
        })
    }
}

/// Decodes a file name given as one percent-encoded URL path segment, strictly: every `%`
/// starts a valid escape, the result is UTF-8, a single segment (no `/`, `\`, `.`, `..`),
/// without controls, and at most [`MAX_NAME_BYTES`] long.
///
/// ```
/// use segvault::core::text::{parse_name, NameError};
/// assert_eq!(parse_name("caf%C3%A9%20menu.pdf").unwrap(), "café menu.pdf");
/// assert_eq!(parse_name("%2e%2e"), Err(NameError::DotOrEmpty));
/// assert_eq!(parse_name("a%5cb"), Err(NameError::Separator));
/// assert_eq!(parse_name("100%"), Err(NameError::BadEscape));
/// ```
pub fn parse_name(raw: &str) -> Result<String, NameError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(NameError::BadEscape)?;
            let text = std::str::from_utf8(hex).map_err(|_| NameError::BadEscape)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(NameError::BadEscape);
            }
            decoded.push(u8::from_str_radix(text, 16).map_err(|_| NameError::BadEscape)?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(decoded).map_err(|_| NameError::NotUtf8)?;
    if name.is_empty() || name == "." || name == ".." {
        return Err(NameError::DotOrEmpty);
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Separator);
    }
    if name.chars().any(is_hidden_control) {
        return Err(NameError::Control);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    Ok(name)
}

/// The name to offer for saving a file: a base name safe on every common filesystem.
/// Characters that are separators, reserved on Windows, or hidden become `_`; leading dots
/// (a hidden file) and surrounding spaces and trailing dots go; nothing left is `download`.
///
/// ```
/// use segvault::core::text::download_name;
/// assert_eq!(download_name("../../escaped.txt"), "_.._escaped.txt");
/// assert_eq!(download_name("a:b*?.txt "), "a_b__.txt");
/// assert_eq!(download_name("..."), "download");
/// ```
pub fn download_name(name: &str) -> String {
    let replaced: String = name
        .chars()
        .map(|c| {
            if is_hidden_control(c)
                || matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*')
            {
                '_'
            } else {
                c
            }
        })
        .collect();
    let edge = |c: char| c == '.' || c.is_whitespace();
    let mut out = String::new();
    for c in replaced.trim_start_matches(edge).chars() {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    out.truncate(out.trim_end_matches(edge).len());
    if out.is_empty() {
        return "download".to_owned();
    }
    // Names Windows reserves for devices, with any extension (`con.txt` opens the console).
    let stem = out.split('.').next().unwrap_or("").to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        out.insert(0, '_');
        if out.len() > MAX_NAME_BYTES {
            out.pop();
        }
    }
    out
}

/// A byte count for people, with a binary suffix: `17 B`, `128 KiB`, `1.50 GiB`.
///
/// ```
/// use segvault::core::text::human_bytes;
/// assert_eq!(human_bytes(17), "17 B");
/// assert_eq!(human_bytes(128 << 10), "128 KiB");
/// assert_eq!(human_bytes(1536 << 20), "1.50 GiB");
/// ```
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_that_are_not_one_segment_are_refused() {
        for (raw, error) in [
            ("..", NameError::DotOrEmpty),
            (".", NameError::DotOrEmpty),
            ("%2e%2e", NameError::DotOrEmpty),
            ("%2E%2e", NameError::DotOrEmpty),
            ("a%2fb", NameError::Separator),
            ("..%5c..%5cescaped.txt", NameError::Separator),
            ("a%zzb", NameError::BadEscape),
            ("a%2", NameError::BadEscape),
            ("%", NameError::BadEscape),
            ("%ff", NameError::NotUtf8),
            ("a%00b", NameError::Control),
            ("a%0Ab", NameError::Control),
            ("evil%E2%80%AEtxt.exe", NameError::Control),
        ] {
            assert_eq!(parse_name(raw), Err(error), "{raw}");
        }
        assert_eq!(parse_name(&"a".repeat(256)), Err(NameError::TooLong));
        assert_eq!(parse_name(&"a".repeat(255)).unwrap().len(), 255);
        assert_eq!(parse_name("..hidden").unwrap(), "..hidden");
        assert_eq!(parse_name("a+b c").unwrap(), "a+b c");
    }

    /// Any characters, with the troublesome ones (dots, separators, overrides, spaces) often.
    fn any_name() -> impl Strategy<Value = String> {
        let tricky = prop_oneof![
            Just('.'),
            Just('/'),
            Just('\\'),
            Just(' '),
            Just('\u{202e}'),
            Just('\u{200b}'),
            Just('\u{e0041}'),
        ];
        proptest::collection::vec(prop_oneof![any::<char>(), tricky], 0..300)
            .prop_map(|chars| chars.into_iter().collect())
    }

    #[test]
    fn windows_device_names_are_not_offered() {
        assert_eq!(download_name("con.txt"), "_con.txt");
        assert_eq!(download_name("LPT1"), "_LPT1");
        assert_eq!(download_name("console.txt"), "console.txt");
    }

    proptest! {
        #[test]
        fn download_names_are_safe_base_names(name in any_name()) {
            let safe = download_name(&name);
            prop_assert!(!safe.is_empty() && safe.len() <= MAX_NAME_BYTES);
            prop_assert!(!safe.starts_with('.') && !safe.ends_with('.'));
            prop_assert!(!safe.contains(['/', '\\', '"']));
            prop_assert!(!safe.chars().any(is_hidden_control));
        }

        #[test]
        fn parsed_names_round_trip_and_are_single_segments(raw in "[a-zA-Z0-9%./\\\\]{0,40}") {
            if let Ok(name) = parse_name(&raw) {
                prop_assert!(!name.contains(['/', '\\']) && name != "." && name != "..");
                let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC).to_string();
                prop_assert_eq!(parse_name(&encoded), Ok(name));
            }
        }
    }
}
