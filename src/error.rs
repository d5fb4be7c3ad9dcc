//! The crate's domain error. Inside a DataFusion plan it travels as
//! `DataFusionError::External`, and [`IndexError::from`] unwraps it again, so a Rust
//! caller of [`crate::VectorIndex`] can match the variant an operator raised.

use std::sync::Arc;

use datafusion::error::DataFusionError;

/// Errors raised by the index itself (as opposed to DataFusion or the object store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A finalize found no staged shard to merge: not a failure, and nothing was
    /// committed (`dvi` exits with status 3; SQL answers with a row saying so).
    #[error("nothing to finalize: {0}")]
    NothingToFinalize(String),
    /// Another writer committed first and the retry budget ran out.
    #[error("commit conflict: {0}")]
    Conflict(String),
    /// Something the caller asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The object store failed an operation on a file of the index: not a sign that
    /// the file is damaged; the operation can be retried.
    #[error("object store error {what}: {}", without_xml_bodies(&source.to_string()))]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    /// A bug: an invariant of this crate broke, or a task of its own panicked.
    #[error("internal error: {0}; this is a bug in datafusion-vector-index, please report it")]
    Internal(String),
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

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

impl IndexError {
    pub(crate) fn invalid_argument(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A store failure while working on `what` (a file of the index, or an action on it).
    pub(crate) fn store(what: impl Into<String>, source: object_store::Error) -> Self {
        Self::Store {
            what: what.into(),
            source,
        }
    }

    /// A task of this crate that did not finish: a panic in it is a bug.
    pub(crate) fn task_failed(what: &str, e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("{what} did not finish: {e}"))
    }
}

/// An error as one line for an operator: the domain error unwrapped from the
/// engine's layers and shown without the engine's prefixes (`External error: `,
/// `Internal error: `, …), and each XML error body a store answered with reduced
/// to its code, message and request id (the URL stays in the text around it).
pub fn error_line(error: DataFusionError) -> String {
    let text = match IndexError::from(error) {
        IndexError::DataFusion(e) => e.message().into_owned(),
        other => other.to_string(),
    };
    without_xml_bodies(&text).replace('\n', " ")
}

/// `text` with each `<?xml …><Error>…</Error>` body replaced by its `Code`,
/// `Message` and `RequestId`.
pub(crate) fn without_xml_bodies(text: &str) -> String {
    let tag = |body: &str, name: &str| -> Option<String> {
        let start = body.find(&format!("<{name}>"))? + name.len() + 2;
        let len = body[start..].find(&format!("</{name}>"))?;
        Some(body[start..start + len].to_string())
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<?xml") {
        let Some(len) = rest[start..].find("</Error>") else {
            break;
        };
        let body = &rest[start..start + len + "</Error>".len()];
        out.push_str(&rest[..start]);
        let parts: Vec<String> = [("Code", ""), ("Message", ""), ("RequestId", "request id ")]
            .iter()
            .filter_map(|(name, label)| tag(body, name).map(|v| format!("{label}{v}")))
            .collect();
        out.push_str(&parts.join(", "));
        rest = &rest[start + body.len()..];
    }
    out.push_str(rest);
    out
}

impl From<IndexError> for DataFusionError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::DataFusion(e) => *e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

impl From<DataFusionError> for IndexError {
    /// Unwraps an `IndexError` that an operator raised, through the layers a plan
    /// adds around errors (contexts, errors shared between partitions); any other
    /// error is kept whole.
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<IndexError>() {
                Ok(index) => *index,
                Err(other) => Self::DataFusion(Box::new(DataFusionError::External(other))),
            },
            DataFusionError::Context(context, inner) => match Self::from(*inner) {
                Self::DataFusion(inner) => {
                    Self::DataFusion(Box::new(DataFusionError::Context(context, inner)))
                }
                index => index,
            },
            DataFusionError::Shared(shared) => match Arc::try_unwrap(shared) {
                Ok(owned) => Self::from(owned),
                Err(shared) => match shared.as_ref() {
                    DataFusionError::External(inner) => match inner.downcast_ref::<IndexError>() {
                        Some(index) => index.duplicate(),
                        None => Self::DataFusion(Box::new(DataFusionError::Shared(shared))),
                    },
                    _ => Self::DataFusion(Box::new(DataFusionError::Shared(shared))),
                },
            },
            other => Self::DataFusion(Box::new(other)),
        }
    }
}

impl IndexError {
    /// The same variant with the same text, for an error several partitions share;
    /// a source error that cannot be cloned is kept as its text.
    fn duplicate(&self) -> Self {
        match self {
            Self::InvalidArgument { name, reason } => Self::invalid_argument(name, reason),
            Self::InvalidInput(s) => Self::InvalidInput(s.clone()),
            Self::Corrupt { what, reason } => Self::corrupt(what, reason),
            Self::UnsupportedVersion {
                what,
                found,
                supported,
            } => Self::UnsupportedVersion {
                what: what.clone(),
                found: *found,
                supported: *supported,
            },
            Self::Finalize(s) => Self::Finalize(s.clone()),
            Self::NothingToFinalize(s) => Self::NothingToFinalize(s.clone()),
            Self::Conflict(s) => Self::Conflict(s.clone()),
            Self::NotFound(s) => Self::NotFound(s.clone()),
            Self::Internal(s) => Self::Internal(s.clone()),
            Self::Store { what, source } => Self::store(
                what,
                object_store::Error::Generic {
                    store: "shared",
                    source: source.to_string().into(),
                },
            ),
            other => Self::DataFusion(Box::new(DataFusionError::Execution(other.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_read_one_line_without_prefixes_or_xml() {
        let body = "Error performing GET http://127.0.0.1:9000/b?list-type=2 in 1ms - Server \
            returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\
            <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>\
            <RequestId>R42</RequestId></Error>";
        let store = DataFusionError::External(Box::new(object_store::Error::Generic {
            store: "S3",
            source: body.into(),
        }));
        let line = error_line(store);
        assert!(
            line.ends_with(
                "404 Not Found: NoSuchBucket, The specified bucket does not exist, request id R42"
            ) && line.contains("http://127.0.0.1:9000/b")
                && !line.contains("External error"),
            "{line}"
        );
        let ours = error_line(IndexError::Conflict("version 3 exists".into()).into());
        assert_eq!(ours, "commit conflict: version 3 exists");
        let planning = error_line(DataFusionError::Plan("table 'x' not found".into()));
        assert_eq!(planning, "table 'x' not found");
    }

    #[test]
    fn domain_errors_survive_a_plan() {
        let conflict = || IndexError::Conflict("version 3 exists".into());
        let through_plan: DataFusionError = conflict().into();
        assert!(matches!(
            IndexError::from(through_plan),
            IndexError::Conflict(_)
        ));
        // As a repartition shares it between partitions, and with a context added.
        let arc: Arc<DataFusionError> = Arc::new(conflict().into());
        let shared = DataFusionError::Shared(Arc::clone(&arc));
        assert!(matches!(IndexError::from(shared), IndexError::Conflict(_)));
        drop(arc);
        let context = DataFusionError::Context("finalize".into(), Box::new(conflict().into()));
        assert!(matches!(IndexError::from(context), IndexError::Conflict(_)));
        let plain = DataFusionError::Plan("no table".into());
        assert!(matches!(
            IndexError::from(plain),
            IndexError::DataFusion(e) if matches!(*e, DataFusionError::Plan(_))
        ));
    }
}
