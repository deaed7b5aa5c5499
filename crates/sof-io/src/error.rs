//! One error type for every reader and writer in this crate.
//!
//! Every variant names the file and, where there is one, the field inside it, and its message
//! ends with what the user can do about it.

use std::path::{Path, PathBuf};

/// Errors from reading, validating, writing and aligning cell data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be opened as HDF5 (missing, empty, truncated or not HDF5 at all).
    #[error(
        "{path}: cannot open as an HDF5 file ({reason}); check that the path is right and the file is complete (a truncated or corrupt download reads like this: fetch it again)"
    )]
    Open { path: PathBuf, reason: String },
    /// A required field (dataset, group, attribute or column) is absent.
    #[error("{path}: field '{field}' is missing; {fix}")]
    MissingField { path: PathBuf, field: String, fix: String },
    /// A field is present but its content is unusable.
    #[error("{path}: field '{field}': {problem}; {fix}")]
    Invalid { path: PathBuf, field: String, problem: String, fix: String },
    /// An HDF5 call failed while reading or writing a field.
    #[error("{path}: field '{field}': HDF5 error: {reason}; the file may be truncated or corrupt")]
    Hdf5 { path: PathBuf, field: String, reason: String },
    /// Plain file-system errors (permissions, disk full, missing directory).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// Another process is writing the same output ([`crate::OutputLock`]).
    #[error(
        "{path}: another sof run (pid {pid}) is writing this output; wait for it to finish or stop it, or write elsewhere (its lock file {lock} goes when that process ends)"
    )]
    Locked { path: PathBuf, lock: PathBuf, pid: u32 },
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(
        path: &Path,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Error::Invalid { path: path.to_path_buf(), field: field.into(), problem: problem.into(), fix: fix.into() }
    }

    pub(crate) fn missing(path: &Path, field: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::MissingField { path: path.to_path_buf(), field: field.into(), fix: fix.into() }
    }

    pub(crate) fn hdf5(path: &Path, field: impl Into<String>, err: hdf5::Error) -> Self {
        Error::Hdf5 { path: path.to_path_buf(), field: field.into(), reason: err.to_string() }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), error: source }
    }
}
