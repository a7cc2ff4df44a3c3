//! The crate's one error type, and what a rejected dataset file carries (its issues).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A file or path could not be read or written, with the path that failed.
    #[error("{}: {source}", path.display())]
    File {
        /// The path involved.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// JSON could not be parsed or written.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The tokenizer could not be built or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// A model configuration uses something this engine cannot run.
    #[error("unsupported model config: field `{field}`: {reason}")]
    UnsupportedConfig {
        /// The offending configuration field.
        field: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A model file lacks a tensor or has one of the wrong shape.
    #[error("model weights: {0}")]
    Weights(String),
    /// A dataset line is malformed.
    #[error("{}: line {line}: {reason}", path.display())]
    Data {
        /// The dataset file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A dataset file was rejected; every problem found is listed.
    #[error("{0}")]
    Dataset(Rejection),
    /// An adapter or checkpoint does not match the model or is malformed.
    #[error("adapter: {0}")]
    Adapter(String),
    /// Fetching the default model failed.
    #[error("fetch model: {0}")]
    Fetch(String),
    /// A parameter is out of range or inconsistent.
    #[error("invalid parameter: {0}")]
    Invalid(String),
    /// The run was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an io error with the path it concerns.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File { path: path.into(), source }
    }

    /// Whether this is the device running out of memory (CUDA's allocator or cuBLAS's):
    /// the trainer and the evaluation then go on in smaller pieces.
    pub fn is_out_of_memory(&self) -> bool {
        let text = format!("{self} {self:?}");
        text.contains("OUT_OF_MEMORY") || text.contains("out of memory") || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
    }
}

/// One problem with one place of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// 1-based line (0: the file as a whole); the 1-based row of a Parquet file.
    pub line: usize,
    /// 1-based column, for CSV.
    pub column: Option<usize>,
    /// The field concerned (a Parquet file's column).
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
    /// The file is a Parquet file: `line` counts rows and `field` names a column.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub row: bool,
}

impl Issue {
    /// A problem with a whole line.
    pub fn line(line: usize, reason: impl Into<String>) -> Self {
        Self { line, column: None, field: None, reason: reason.into(), row: false }
    }
    /// A problem at a CSV line and column.
    pub fn at(line: usize, column: usize, reason: impl Into<String>) -> Self {
        Self { line, column: Some(column), field: None, reason: reason.into(), row: false }
    }
    /// A problem with a named field of a line.
    pub fn field(line: usize, field: &str, reason: String) -> Self {
        Self { line, column: None, field: Some(field.into()), reason, row: false }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.row) {
            (0, _) => write!(f, "file")?,
            (n, true) => write!(f, "row {n}")?,
            (n, false) => write!(f, "line {n}")?,
        }
        if let Some(c) = self.column {
            write!(f, ", column {c}")?;
        }
        match &self.field {
            Some(field) if self.row => write!(f, ": column `{field}`")?,
            Some(field) => write!(f, ": field `{field}`")?,
            None => {}
        }
        write!(f, ": {}", self.reason)
    }
}

/// Why a dataset file was rejected: the first `data::MAX_LISTED` issues and how many
/// there were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The file's name.
    pub file: String,
    /// Listed issues.
    pub issues: Vec<Issue>,
    /// All issues found.
    pub total: usize,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: rejected, {} problem{}", self.file, self.total, if self.total == 1 { "" } else { "s" })?;
        for i in &self.issues {
            write!(f, "\n  {i}")?;
        }
        if self.total > self.issues.len() {
            write!(f, "\n  … and {} more", self.total - self.issues.len())?;
        }
        Ok(())
    }
}
