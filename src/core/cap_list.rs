//! Lists of caps, one file per line, as `verify --caps` (and later `repair --caps`) read
//! them. Pure: text in, entries out.
//!
//! Each line is `CAP` or `NAME CAP`: the cap is the last word, and the name (everything
//! before it) only labels the file in messages, since a cap is a secret and is never printed.
//! Blank lines and lines starting with `#` are skipped.

use super::cap::{Cap, CapError};
use super::text::for_log;

/// Longest name kept for messages, in bytes.
const MAX_NAME_BYTES: usize = 200;

/// One file of a cap list.
#[derive(Debug, Clone)]
pub struct CapListEntry {
    /// Line number, from 1.
    pub line: usize,
    /// The name it goes by in messages, if the line gave one (hidden controls replaced).
    pub name: Option<String>,
    /// The file's cap.
    pub cap: Cap,
}

impl CapListEntry {
    /// How messages refer to this file: its name, else its storage index (never the cap).
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => self.cap.verify_cap().storage_index().to_string(),
        }
    }
}

/// Why a cap list was refused: the first bad line, without quoting it (it may hold a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {source}")]
pub struct CapListError {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong with the cap on it.
    pub source: CapError,
}

/// Reads a cap list (see the [module documentation](self)); every line is checked before any
/// is used.
///
/// ```
/// use segvault::core::cap_list::parse_cap_list;
/// let cap = format!("sv1-read:{}:{}:3:10:131072:5", "a".repeat(52), "a".repeat(52));
/// let list = parse_cap_list(&format!("# films\n{cap}\nholiday 2026.mp4 {cap}\n\n"))?;
/// assert_eq!(list.len(), 2);
/// assert_eq!(list[0].name, None);
/// assert_eq!(list[1].name.as_deref(), Some("holiday 2026.mp4"));
/// assert_eq!(list[1].line, 3);
/// assert_eq!(parse_cap_list("a b not-a-cap").unwrap_err().line, 1);
/// # Ok::<(), segvault::core::cap_list::CapListError>(())
/// ```
pub fn parse_cap_list(text: &str) -> Result<Vec<CapListEntry>, CapListError> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (name, cap_text) = match trimmed.rsplit_once(char::is_whitespace) {
            Some((name, cap)) => (Some(name.trim_end()), cap),
            None => (None, trimmed),
        };
        let cap = cap_text
            .parse::<Cap>()
            .map_err(|source| CapListError { line, source })?;
        let name = name
            .map(|n| for_log(n, MAX_NAME_BYTES))
            .filter(|n| !n.trim().is_empty());
        entries.push(CapListEntry { line, name, cap });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_cap(fill: char) -> String {
        // The last character carries 4 padding bits, which must be zero.
        let field = format!("{}a", fill.to_string().repeat(51));
        format!("sv1-read:{field}:{field}:3:10:131072:5")
    }

    #[test]
    fn names_are_everything_before_the_last_word_and_are_cleaned() {
        let cap = read_cap('b');
        let text = format!("  {cap}  \n\t# {cap}\nmy film\u{202e}4pm.exe \t {cap}\r\n");
        let list = parse_cap_list(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].line, list[0].name.as_deref()), (1, None));
        assert_eq!(list[1].line, 3);
        assert_eq!(list[1].name.as_deref(), Some("my film 4pm.exe"));
        assert!(matches!(list[1].cap, Cap::Read(_)));
        assert!(!list[1].label().contains(&cap));
        assert_eq!(
            list[0].label(),
            list[0].cap.verify_cap().storage_index().to_string()
        );
    }

    #[test]
    fn a_bad_line_is_named_by_number_and_never_quoted() {
        let secret = format!("sv1-read:{}:short:3:10:131072:5", "c".repeat(52));
        let text = format!("{}\n\nname {secret}\n", read_cap('a'));
        let error = parse_cap_list(&text).unwrap_err();
        assert_eq!(error.line, 3);
        assert!(!error.to_string().contains(&"c".repeat(52)), "{error}");
        assert!(parse_cap_list("").unwrap().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in "\\PC{0,200}") {
            let _ = parse_cap_list(&text);
        }

        #[test]
        fn a_named_line_gives_back_its_name(name in "[a-zA-Z0-9._-][a-zA-Z0-9 ._-]{0,40}[a-zA-Z0-9._-]") {
            let list = parse_cap_list(&format!("{name} {}", read_cap('d'))).unwrap();
            proptest::prop_assert_eq!(list[0].name.as_deref(), Some(name.as_str()));
        }
    }
}
