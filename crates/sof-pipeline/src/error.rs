//! One error type for the pipeline's library calls: the lower crates' errors, passed through,
//! and problems with a call's inputs, each naming the file (or setting) and the fix.

use std::fmt::Display;
use std::path::PathBuf;

/// Errors of the pipeline's library calls.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Io(#[from] sof_io::Error),
    #[error(transparent)]
    Spatial(#[from] sof_spatial::SpatialError),
    #[error(transparent)]
    Tokenize(#[from] sof_tokenize::TokenizeError),
    #[error(transparent)]
    Model(#[from] sof_model::ModelError),
    #[error(transparent)]
    Task(#[from] sof_tasks::TaskError),
    #[error(transparent)]
    Synth(#[from] sof_synth::SynthError),
    #[error(transparent)]
    Train(#[from] sof_pretrain::trainer::TrainError),
    /// A file's content, or a setting, that the call cannot use; the message ends with the fix.
    #[error("{file}: {message}")]
    Input { file: String, message: String },
    /// A setting that cannot work whatever the files hold.
    #[error("{0}")]
    Setting(String),
    /// File-system errors (permissions, disk full, missing directory).
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

/// Shorthand for results of the pipeline's calls.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

impl PipelineError {
    /// A problem with `file` (a path, or a source's name); `message` ends with the fix.
    pub fn input(file: impl Display, message: impl Into<String>) -> Self {
        PipelineError::Input { file: file.to_string(), message: message.into() }
    }

    /// A setting that cannot work.
    pub fn setting(message: impl Into<String>) -> Self {
        PipelineError::Setting(message.into())
    }

    /// The same error with `more` appended to its message (e.g. a flag that avoids it).
    #[must_use]
    pub fn with_hint(self, more: &str) -> Self {
        match self {
            PipelineError::Input { file, message } => {
                PipelineError::Input { file, message: format!("{message}{more}") }
            }
            PipelineError::Setting(m) => PipelineError::Setting(format!("{m}{more}")),
            other => PipelineError::Setting(format!("{other}{more}")),
        }
    }
}
