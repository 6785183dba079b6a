//! The TOML grid file (`--grid FILE`).

use std::path::{Path, PathBuf};

use super::GridError;

/// A grid file (`--grid FILE`): the servers to use, and optionally the token file for them.
///
/// ```
/// # use std::path::Path;
/// # use segvault::grid::GridFile;
/// let text = r#"
/// ## Storage servers, in order: storage-node URLs or directories (relative to this file).
/// servers = ["http://10.0.0.5:7000", "http://10.0.0.6:7000", "disks/local"]
/// ## The nodes' access token, in a file of its own (relative to this file).
/// token_file = "token"
/// "#;
/// let grid = GridFile::parse(text, Path::new("/etc/segvault")).unwrap();
/// assert_eq!(grid.servers[2], "/etc/segvault/disks/local");
/// assert_eq!(grid.token_file.unwrap(), Path::new("/etc/segvault/token"));
/// assert!(GridFile::parse("servers = 3", Path::new("/")).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridFile {
    /// Server specs, as `--server` takes them.
    pub servers: Vec<String>,
    /// File holding the storage nodes' token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl GridFile {
    /// Parses a grid file's text; relative paths are taken from `base` (the file's directory).
    pub fn parse(text: &str, base: &Path) -> Result<GridFile, GridError> {
        let mut file: GridFile =
            toml::from_str(text).map_err(|e| GridError::GridFile(e.message().to_owned()))?;
        for spec in &mut file.servers {
            if !spec.contains("://") && Path::new(spec.as_str()).is_relative() {
                *spec = base.join(&*spec).to_string_lossy().into_owned();
            }
        }
        if let Some(token) = &mut file.token_file
            && token.is_relative()
        {
            *token = base.join(&*token);
        }
        Ok(file)
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
