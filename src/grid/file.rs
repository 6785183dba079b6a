//! The TOML grid file (`--grid FILE`).

use std::path::{Path, PathBuf};

use super::GridError;

/// A grid file (`--grid FILE`): the servers to use, and optionally the token file for them.
/// A server is a string, as `--server` takes it, or (for a bucket that needs more than the
/// AWS environment gives) a table: `url = "s3://BUCKET[/PREFIX]"` and any of the fields of
/// [`S3Options`](crate::store::S3Options).
///
/// ```
/// # use std::path::Path;
/// # use segvault::grid::{GridFile, ServerEntry};
/// let text = r#"
/// ## Storage servers, in order: storage-node URLs or directories (relative to this file).
/// servers = [
///     "http://10.0.0.5:7000",
///     "disks/local",
///     "s3://media-1/segvault",
///     { url = "s3://media-2", endpoint = "http://10.0.0.9:3900", region = "garage", credentials_file = "garage.credentials" },
/// ]
/// ## The nodes' access token, in a file of its own (relative to this file).
/// token_file = "token"
/// "#;
/// let grid = GridFile::parse(text, Path::new("/etc/segvault")).unwrap();
/// assert_eq!(grid.servers[1], ServerEntry::Spec("/etc/segvault/disks/local".into()));
/// # #[cfg(feature = "s3")]
/// let ServerEntry::Bucket { url, options } = &grid.servers[3] else { panic!() };
/// # #[cfg(feature = "s3")]
/// assert_eq!(options.credentials_file.as_deref(), Some(Path::new("/etc/segvault/garage.credentials")));
/// assert_eq!(grid.token_file.unwrap(), Path::new("/etc/segvault/token"));
/// assert!(GridFile::parse("servers = 3", Path::new("/")).is_err());
/// assert!(GridFile::parse("servers = [{ url = \"s3://media-1\", colour = 3 }]", Path::new("/")).is_err());
/// assert!(GridFile::parse("servers = [{ region = \"x\" }]", Path::new("/")).is_err());
/// assert!(GridFile::parse("servers = [{ url = \"http://10.0.0.5:7000\" }]", Path::new("/")).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GridFile {
    /// The servers, in order.
    pub servers: Vec<ServerEntry>,
    /// File holding the storage nodes' token.
    pub token_file: Option<PathBuf>,
}

/// One server of a grid file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEntry {
    /// As `--server` takes it: a directory, a storage-node URL, `s3://BUCKET[/PREFIX]`.
    Spec(String),
    /// A bucket with options of its own.
    #[cfg(feature = "s3")]
    Bucket {
        /// `s3://BUCKET[/PREFIX]`.
        url: String,
        /// How to reach it.
        options: crate::store::S3Options,
    },
}

impl ServerEntry {
    /// Adds this server to a grid being built.
    pub fn add_to(&self, grid: super::GridBuilder) -> super::GridBuilder {
        match self {
            ServerEntry::Spec(spec) => grid.spec(spec),
            #[cfg(feature = "s3")]
            ServerEntry::Bucket { url, options } => grid.s3(url, options.clone()),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    servers: Vec<RawServer>,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RawServer {
    Spec(String),
    Table(toml::Table),
}

impl RawServer {
    fn resolve(self, base: &Path) -> Result<ServerEntry, GridError> {
        match self {
            RawServer::Spec(spec)
                if !spec.contains("://") && Path::new(spec.as_str()).is_relative() =>
            {
                Ok(ServerEntry::Spec(
                    base.join(&spec).to_string_lossy().into_owned(),
                ))
            }
            RawServer::Spec(spec) => Ok(ServerEntry::Spec(spec)),
            RawServer::Table(table) => table_entry(table, base),
        }
    }
}

#[cfg(feature = "s3")]
fn table_entry(mut table: toml::Table, base: &Path) -> Result<ServerEntry, GridError> {
    let Some(toml::Value::String(url)) = table.remove("url") else {
        return Err(GridError::GridFile(
            "a server table needs url = \"s3://BUCKET[/PREFIX]\"".into(),
        ));
    };
    if !url.starts_with("s3://") {
        return Err(GridError::GridFile(format!(
            "server {url}: only s3:// servers take a table of options"
        )));
    }
    let options: crate::store::S3Options =
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                GridError::GridFile(format!("server {url}: {}", e.message()))
            })?;
    Ok(ServerEntry::Bucket {
        options: options.relative_to(base),
        url,
    })
}

#[cfg(not(feature = "s3"))]
fn table_entry(_: toml::Table, _: &Path) -> Result<ServerEntry, GridError> {
    Err(GridError::GridFile(
        "server tables are for s3:// servers, and this build has no S3 support".into(),
    ))
}

impl GridFile {
    /// Parses a grid file's text; relative paths are taken from `base` (the file's directory).
    pub fn parse(text: &str, base: &Path) -> Result<GridFile, GridError> {
        let raw: RawFile =
            toml::from_str(text).map_err(|e| GridError::GridFile(e.message().to_owned()))?;
        let servers = raw
            .servers
            .into_iter()
            .map(|server| server.resolve(base))
            .collect::<Result<_, _>>()?;
        let token_file = raw.token_file.map(|token| {
            if token.is_relative() {
                base.join(token)
            } else {
                token
            }
        });
        Ok(GridFile {
            servers,
            token_file,
        })
    }

    /// Reads and parses a grid file.
    pub fn load(path: &Path) -> Result<GridFile, GridError> {
        let text = std::fs::read_to_string(path).map_err(|source| GridError::Directory {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        GridFile::parse(&text, base).map_err(|e| match e {
            GridError::GridFile(why) => GridError::GridFile(format!("{}: {why}", path.display())),
            other => other,
        })
    }
}
