//! `object_store` errors as the store's error kinds, each naming the bucket and never a
//! secret.

use crate::store::StoreError;

/// Longest piece of a server's error text kept in a message.
const MAX_DETAIL: usize = 300;

/// The innermost cause of `error`, on one line and cut short: what a user needs (a status,
/// an S3 error code, "connection refused"). Signed requests carry their signature in
/// headers, never in the text `object_store` puts in errors, and S3 never echoes a secret
/// key; the cut also keeps a hostile server's body out of our logs.
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let text = full_text(error);
    let mut one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_DETAIL)
        .collect();
    if text.chars().count() > MAX_DETAIL {
        one_line.push('…');
    }
    one_line
}

/// `error` and its causes, each once.
fn full_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !line.is_empty() && !text.contains(&line) {
            text = format!("{text}: {line}");
        }
        source = cause.source();
    }
    text
}

/// The HTTP status in `object_store`'s wording ("… status code: 503 Service Unavailable").
fn http_status(text: &str) -> Option<&str> {
    let start = text.find("status code: ")? + "status code: ".len();
    let rest = &text[start..];
    let end = rest.find(':').unwrap_or(rest.len()).min(40);
    // The text after the status may be a server's own words: cut on a character boundary.
    let end = (0..=end).rev().find(|&i| rest.is_char_boundary(i))?;
    Some(rest[..end].trim()).filter(|s| s.starts_with(|c: char| c.is_ascii_digit()))
}

/// S3's error code in an error body (`<Code>AccessDenied</Code>`), if any.
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len]).filter(|code| code.len() < 64)
}

/// Whether the store refused a ranged read as past the end (416), or `object_store` found
/// the answer shorter than asked: the only failures where the share's length says more.
pub(super) fn is_range_error(error: &object_store::Error) -> bool {
    let text = full_text(error);
    http_status(&text).is_some_and(|status| status.starts_with("416"))
        || text.contains("object was only")
}

pub(super) trait StoreErrorExt {
    /// The store's error kind for this error from the store called `store`, while doing
    /// `context`.
    fn to_store_error(&self, store: &str, context: &'static str) -> StoreError;
}

impl StoreErrorExt for object_store::Error {
    fn to_store_error(&self, store: &str, context: &'static str) -> StoreError {
        use object_store::Error as E;
        let full = full_text(self);
        let code = s3_code(&full).map(str::to_owned);
        // A status and S3's code say it all; otherwise (no answer at all) the transport's
        // words, cut short.
        let detail = match (http_status(&full), &code) {
            (Some(status), Some(code)) => format!("HTTP {status} ({code})"),
            (Some(status), None) => format!("HTTP {status}"),
            _ => describe(self),
        };
        match self {
            E::NotFound { .. } => StoreError::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                StoreError::Forbidden(format!(
                    "{store}: access denied ({}); check the credentials and the bucket's permissions",
                    code.as_deref().unwrap_or("HTTP 401/403")
                ))
            }
            _ if code.as_deref().is_some_and(|c| {
                matches!(
                    c,
                    "AccessDenied"
                        | "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "ExpiredToken"
                        | "InvalidToken"
                )
            }) =>
            {
                StoreError::Forbidden(format!(
                    "{store}: access denied ({}); check the credentials and the bucket's permissions",
                    code.unwrap_or_default()
                ))
            }
            _ if code.as_deref() == Some("NoSuchBucket") => StoreError::Io {
                context,
                message: format!("{store}: the bucket does not exist"),
            },
            _ => StoreError::Io {
                context,
                message: format!("{store}: {detail}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_cuts() {
        assert_eq!(
            s3_code("status 403: <Error><Code>AccessDenied</Code></Error>"),
            Some("AccessDenied")
        );
        assert_eq!(s3_code("no code"), None);
        assert_eq!(
            http_status("Server returned non-2xx status code: 503 Service Unavailable: <Error>"),
            Some("503 Service Unavailable")
        );
        let hostile = format!("status code: 599 {}", "é".repeat(40));
        assert!(http_status(&hostile).is_some_and(|s| s.starts_with("599")));
        let long = std::io::Error::other("x".repeat(10_000));
        assert!(describe(&long).chars().count() <= MAX_DETAIL + 1);
        let error = object_store::Error::NotFound {
            path: "k".into(),
            source: "gone".into(),
        };
        assert!(matches!(
            error.to_store_error("s3://b", "reading"),
            StoreError::NotFound
        ));
    }
}
