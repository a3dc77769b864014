//! What can go wrong loading the configuration, said so that it can be fixed.

use std::fmt;
use std::path::PathBuf;

/// A configuration that cannot be used. Every variant names where the bad input is:
/// the file, key and line, or the environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something in the file is wrong.
    #[error("{0}")]
    File(FileError),
    /// An environment variable has a value that cannot be used.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// A problem at one place in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub file: PathBuf,
    /// Dotted path of the key (`otel_traces_export.sampler.name`,
    /// `discovery.instrument[0].open_ports`); `None` when the problem is not in a key
    /// (YAML syntax, `${VAR}` substitution).
    pub key: Option<String>,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration file {}", self.file.display())?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, ", line {l} column {c}")?,
            (Some(l), None) => write!(f, ", line {l}")?,
            _ => {}
        }
        if let Some(key) = &self.key {
            write!(f, ", key {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    /// A bad value of `key` in `file` (no line known: the value was read already).
    pub(crate) fn file_key(file: Option<PathBuf>, key: &str, message: impl Into<String>) -> Self {
        ConfigError::File(FileError {
            file: file.unwrap_or_default(),
            key: Some(key.to_string()),
            line: None,
            column: None,
            message: message.into(),
        })
    }

    pub(crate) fn env(var: &str, message: impl Into<String>) -> Self {
        ConfigError::Env {
            var: var.to_string(),
            message: message.into(),
        }
    }
}
