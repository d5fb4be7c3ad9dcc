//! The crate's domain error, converted to `DataFusionError` at the boundary.

use datafusion::error::DataFusionError;

/// Errors raised by the index itself (as opposed to DataFusion or the object store).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// An argument given by the caller is out of range or malformed.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument { name: String, reason: String },
    /// Input data (vectors, row ids) cannot be indexed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A file on the object store does not follow FORMAT.md.
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// A file was written by a newer (or unknown) format version.
    #[error("{what} has format version {found}, this reader understands version {supported}")]
    UnsupportedVersion {
        what: String,
        found: u32,
        supported: u32,
    },
    /// Staged shards cannot be finalized as they are.
    #[error("cannot finalize: {0}")]
    Finalize(String),
    /// Another writer committed first and the retry budget ran out.
    #[error("commit conflict: {0}")]
    Conflict(String),
    /// Something the caller asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An error from a DataFusion plan this crate ran (kept whole, so it round-trips).
    #[error(transparent)]
    DataFusion(Box<DataFusionError>),
}

impl From<DataFusionError> for IndexError {
    fn from(e: DataFusionError) -> Self {
        Self::DataFusion(Box::new(e))
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

impl IndexError {
    pub fn invalid_argument(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

impl From<IndexError> for DataFusionError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Arrow(e) => DataFusionError::ArrowError(Box::new(e), None),
            IndexError::ObjectStore(e) => DataFusionError::ObjectStore(Box::new(e)),
            IndexError::DataFusion(e) => *e,
            IndexError::InvalidArgument { .. } => DataFusionError::Plan(e.to_string()),
            other => DataFusionError::Execution(other.to_string()),
        }
    }
}
