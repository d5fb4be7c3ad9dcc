//! # datafusion-vector-index
//!
//! Build IVF vector indexes in a distributed way and finalize them with Apache
//! DataFusion. See README.md for the flow and FORMAT.md for the on-disk format.
//!
//! - [`model`]: training the shared model (k-means, PQ, SQ) and distances.
//! - [`worker`]: encoding one worker's rows into a partial shard.
//! - [`format`](mod@format): the on-disk layout, manifests and block-addressed IPC files.
//! - [`hnsw`]: the per-partition HNSW graphs of the IVF_HNSW_* types.

pub mod catalog;
pub mod datasets;
pub mod error;
mod exec;
pub mod finalize;
pub mod format;
pub mod hnsw;
mod index;
pub mod limits;
pub mod model;
pub mod search;
pub mod sql;
pub mod staging;
pub mod worker;

pub use error::{IndexError, Result};
pub use index::{SearchHit, VectorIndex};
pub use sql::VectorIndexSession;
