//! `s3://` URLs, per-bucket options, and the `object_store` client built from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};

/// How one bucket is reached, where the AWS environment is not enough (a grid file's
/// `[[servers]]` table takes the same fields). Unset fields come from the environment.
///
/// ```
/// # use segvault::store::S3Options;
/// let options: S3Options = toml::from_str(r#"
///     endpoint = "http://127.0.0.1:3900"
///     region = "garage"
///     credentials_file = "/etc/segvault/garage-credentials"
///     path_style = true
/// "#).unwrap();
/// assert_eq!(options.region.as_deref(), Some("garage"));
/// ```
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct S3Options {
    /// The S3 endpoint (`https://s3.eu-central-1.amazonaws.com`, `http://127.0.0.1:3900`).
    /// Default: `AWS_ENDPOINT_URL`, else AWS for the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region. Default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// An AWS shared-credentials file (`[profile]` sections with `aws_access_key_id`,
    /// `aws_secret_access_key` and optionally `aws_session_token`). Default: the
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The profile to take from `credentials_file`. Default: `AWS_PROFILE`, else `default`.
    #[serde(default)]
    pub profile: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most self-hosted servers want.
    /// Default: path style unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` says otherwise.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Plain `http://` endpoints (a loopback test server). Default: `AWS_ALLOW_HTTP`, else
    /// no.
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// Whether the store honours `If-None-Match: *` on `PUT` (AWS S3 since 2024, R2, Garage,
    /// MinIO do). Without it, a write is only guarded by the `HEAD` before it, and two
    /// writers racing on one key can overwrite each other (readers still verify every
    /// byte). Default: yes.
    #[serde(default = "yes")]
    pub conditional_put: bool,
    /// Shares up to this size go up in one `PUT` (held in memory meanwhile); larger ones in
    /// parts of this size, a few in flight. S3 needs at least 5 MiB per part. Default 8 MiB.
    #[serde(default = "default_part_size")]
    pub part_size: usize,
    /// Time limit for one request (a ranged read of up to 64 MiB, one part). Default 60 s.
    #[serde(default = "default_request_timeout", with = "seconds")]
    pub request_timeout: Duration,
}

fn yes() -> bool {
    true
}

fn default_part_size() -> usize {
    8 << 20
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Durations in a grid file as seconds (`request_timeout = 30`).
mod seconds {
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let seconds: f64 = serde::Deserialize::deserialize(d)?;
        if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
            return Err(serde::de::Error::custom(
                "request_timeout is a number of seconds between 0 and 3600",
            ));
        }
        Ok(Duration::from_secs_f64(seconds))
    }
}

impl Default for S3Options {
    fn default() -> S3Options {
        S3Options {
            endpoint: None,
            region: None,
            credentials_file: None,
            profile: None,
            path_style: None,
            allow_http: None,
            conditional_put: true,
            part_size: default_part_size(),
            request_timeout: default_request_timeout(),
        }
    }
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials_file", &self.credentials_file)
            .field("path_style", &self.path_style)
            .field("conditional_put", &self.conditional_put)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl S3Options {
    /// Resolves a relative `credentials_file` against `base` (a grid file's directory).
    pub fn relative_to(mut self, base: &Path) -> S3Options {
        if let Some(file) = &mut self.credentials_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        self
    }
}

/// Why an `s3://` server cannot be used. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum S3UrlError {
    /// Not `s3://BUCKET[/PREFIX]`.
    #[error(
        "{0:?}: an S3 server is s3://BUCKET[/PREFIX] (credentials come from the environment or a grid file, never the URL)"
    )]
    Malformed(String),
    /// A bucket name S3 refuses.
    #[error("{0:?}: bucket names are 3-63 lower-case letters, digits, dots and hyphens")]
    Bucket(String),
    /// The credentials file cannot be used.
    #[error("S3 credentials file {path}: {why}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's contents).
        why: String,
    },
    /// Options the client refuses (an endpoint that is not a URL, a part size S3 refuses).
    #[error("{server}: {why}")]
    Options {
        /// The server.
        server: String,
        /// What is wrong.
        why: String,
    },
}

/// Splits `s3://bucket/prefix/` into the bucket and a prefix that is empty or ends in `/`.
fn parse_url(url: &str) -> Result<(String, String), S3UrlError> {
    // What may be credentials (before an `@`) is never repeated.
    let shown = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}…{}", &url[..scheme + 3], &url[at..]),
        (None, Some(at)) => format!("…{}", &url[at..]),
        _ => url.to_owned(),
    };
    let malformed = || S3UrlError::Malformed(shown.chars().take(200).collect());
    let rest = url.strip_prefix("s3://").ok_or_else(malformed)?;
    if rest.contains(['@', '?', '#', '\\']) || rest.chars().any(char::is_control) {
        return Err(malformed());
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
    if !valid_bucket {
        return Err(S3UrlError::Bucket(bucket.chars().take(100).collect()));
    }
    let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(malformed());
    }
    let prefix = parts.iter().map(|p| format!("{p}/")).collect();
    Ok((bucket.to_owned(), prefix))
}

/// The keys of one profile of an AWS shared-credentials file.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

fn read_credentials(path: &Path, profile: &str) -> Result<Credentials, S3UrlError> {
    let fail = |why: String| S3UrlError::Credentials {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut section = None;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            section = Some(
                name.strip_prefix("profile ")
                    .unwrap_or(name)
                    .trim()
                    .to_owned(),
            );
            continue;
        }
        if section.as_deref() != Some(profile) {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = Some(value.trim().to_owned());
        match key.trim() {
            "aws_access_key_id" => id = value,
            "aws_secret_access_key" => secret = value,
            "aws_session_token" => token = value,
            _ => {}
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        _ => Err(fail(format!(
            "no aws_access_key_id and aws_secret_access_key in profile [{profile}]"
        ))),
    }
}

/// The client, the store's name and its key prefix.
pub(super) fn build(
    url: &str,
    options: &S3Options,
) -> Result<(AmazonS3, String, String), S3UrlError> {
    let (bucket, prefix) = parse_url(url)?;
    let mut name = format!("s3://{bucket}/{prefix}");
    if name.ends_with('/') {
        name.pop();
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .with_conditional_put(if options.conditional_put {
            S3ConditionalPut::ETagMatch
        } else {
            S3ConditionalPut::Disabled
        })
        // The engine hedges a slow request on another server: a long retry loop here would
        // only hold a slot. One quick retry covers a dropped keep-alive connection.
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(15),
        });
    if std::env::var_os("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_none() {
        builder = builder.with_virtual_hosted_style_request(false);
    }
    if let Some(endpoint) = &options.endpoint {
        if endpoint.contains('@') {
            return Err(S3UrlError::Options {
                server: name,
                why: "an endpoint is a URL without credentials".into(),
            });
        }
        name = format!("{name} at {endpoint}");
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(path_style) = options.path_style {
        builder = builder.with_virtual_hosted_style_request(!path_style);
    }
    // Set key by key: the environment's other client settings (a proxy) stay.
    let millis = |d: Duration| format!("{}ms", d.as_millis());
    builder = builder
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            millis(options.request_timeout),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            millis(Duration::from_secs(5)),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::PoolIdleTimeout),
            millis(Duration::from_secs(50)),
        );
    if let Some(allow) = options.allow_http {
        builder = builder.with_allow_http(allow);
    }
    if let Some(path) = &options.credentials_file {
        let profile = options
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok())
            .unwrap_or_else(|| "default".into());
        let credentials = read_credentials(path, &profile)?;
        builder = builder
            .with_access_key_id(credentials.access_key_id)
            .with_secret_access_key(credentials.secret_access_key);
        if let Some(token) = credentials.session_token {
            builder = builder.with_token(token);
        }
    }
    if !(5 << 20..=(5usize << 30)).contains(&options.part_size) {
        return Err(S3UrlError::Options {
            server: name,
            why: format!(
                "part size {} is outside S3's 5 MiB to 5 GiB",
                options.part_size
            ),
        });
    }
    let plain_http = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .is_some_and(|endpoint| endpoint.starts_with("http://"));
    if plain_http
        && builder
            .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_none_or(|allowed| allowed != "true")
    {
        return Err(S3UrlError::Options {
            server: name,
            why: "the endpoint is plain http://: requests and shares would cross the network \
                  unencrypted; set allow_http = true (or AWS_ALLOW_HTTP=true) if that is meant"
                .into(),
        });
    }
    #[cfg(target_os = "linux")]
    if plain_http {
        builder = builder.with_http_connector(super::connector::QuickAckConnector {
            timeout: options.request_timeout,
        });
    }
    let client = builder.build().map_err(|e| S3UrlError::Options {
        server: name.clone(),
        why: super::errors::describe(&e),
    })?;
    Ok((client, name, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("s3://media-1").unwrap(),
            ("media-1".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://media-1/a//b/").unwrap(),
            ("media-1".into(), "a/b/".into())
        );
        for bad in [
            "s3://b0",
            "s3://Upper",
            "s3://-dash",
            "http://bucket",
            "s3://key:secret@bucket",
            "s3://bucket?x=1",
            "s3://bucket/../x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let error = parse_url("s3://AKIA:hunter2@bucket")
            .unwrap_err()
            .to_string();
        assert!(error.contains("s3://BUCKET"), "{error}");
    }

    #[test]
    fn grid_file_tables() {
        let options: S3Options =
            toml::from_str("request_timeout = 2.5\npart_size = 5242880\nconditional_put = false")
                .unwrap();
        assert_eq!(options.request_timeout, Duration::from_millis(2500));
        assert!(!options.conditional_put);
        for bad in [
            "request_timeout = -1",
            "request_timeout = 1e9",
            "colour = 1",
            "region = 3",
        ] {
            assert!(toml::from_str::<S3Options>(bad).is_err(), "{bad}");
        }
        let relative = S3Options {
            credentials_file: Some("creds".into()),
            ..S3Options::default()
        }
        .relative_to(Path::new("/etc/segvault"));
        assert_eq!(
            relative.credentials_file.as_deref(),
            Some(Path::new("/etc/segvault/creds"))
        );
        let small = S3Options {
            part_size: 1 << 20,
            ..S3Options::default()
        };
        assert!(matches!(
            build("s3://bucket", &small),
            Err(S3UrlError::Options { .. })
        ));
        let with_user = S3Options {
            endpoint: Some("http://user:pass@127.0.0.1:9".into()),
            ..S3Options::default()
        };
        let error = build("s3://bucket", &with_user).unwrap_err().to_string();
        assert!(!error.contains("pass"), "{error}");
    }

    #[test]
    fn credentials_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n\n[profile other]\naws_access_key_id=A2\naws_secret_access_key=S2\naws_session_token=T2\n",
        )
        .unwrap();
        let default = read_credentials(&path, "default").unwrap();
        assert_eq!(
            (
                default.access_key_id.as_str(),
                default.secret_access_key.as_str()
            ),
            ("A1", "S1")
        );
        let other = read_credentials(&path, "other").unwrap();
        assert_eq!(other.session_token.as_deref(), Some("T2"));
        let missing = read_credentials(&path, "nope").err().unwrap().to_string();
        assert!(
            missing.contains("[nope]") && !missing.contains("S1"),
            "{missing}"
        );
    }
}
