//! # datafusion-vector-index
//!
//! Build IVF vector indexes in a distributed way and finalize them with Apache
//! DataFusion. See README.md for the flow and FORMAT.md for the on-disk format.
//!
//! The API is small on purpose (its baseline is `public-api.txt`, checked by
//! `tests/public_api.rs`):
//!
//! - [`VectorIndexSession`]: a DataFusion session with the procedures
//!   (`CALL create_vector_index`, `finalize_vector_index`, …) and table functions.
//! - [`VectorIndex`]: the same steps from Rust — create (train the model), build
//!   shards (workers, or a [`ShardWriter`] fed batch by batch), finalize, search,
//!   vacuum — and their options.
//! - [`format`](mod@format): the manifests of the on-disk format, for readers of it.
//! - [`datasets`]: seeded synthetic vectors for examples, benchmarks and tests.
//! - [`limits`]: the bounds every count argument is checked against.
//! - [`SearchCache`]: a bounded cache of decoded models, manifests and probed
//!   partitions that repeated searches share.
//! - [`Progress`]: live counters of training, shard building, finalize and search,
//!   attached to a session and readable while they run.
//! - [`cli`] (feature `cli`): the `dvi` command line, for binaries that add a
//!   cluster to it.
//! - [`PlanRunner`]: where the plans run (this process, or a distributed engine's
//!   cluster), and with feature `codec`, `VectorIndexCodec` to ship them there.
//!
//! The plans' operators, the merge and the HNSW graphs are crate-private.
#![warn(unreachable_pub)]

mod catalog;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "codec")]
mod codec;
pub mod datasets;
mod error;
mod exec;
mod finalize;
pub mod format;
mod hnsw;
mod index;
pub mod limits;
mod model;
mod progress;
mod runner;
mod search;
mod sql;
mod staging;
mod worker;

pub use catalog::{
    CommitMode, KeptItem, Restored, VacuumOptions, VacuumReport, VacuumedItem, VacuumedKind,
};
#[cfg(feature = "codec")]
pub use codec::VectorIndexCodec;
pub use error::{error_line, IndexError, Result};
pub use finalize::{FinalizeOptions, FinalizeReport, FinalizedSegment, SegmentGrouping};
pub use format::{
    EnvObjectStoreRegistry, HnswParams, IndexType, Metric, ModelParams, STORE_TIMEOUT_VAR,
};
pub use index::{SearchHit, ShardBuild, VectorIndex};
pub use model::{simd_level, Model, ModelInfo, SimdLevel, TrainOptions, SIMD_ENV};
pub use progress::{Progress, ProgressStep, ProgressUnit, StepProgress};
pub use runner::{attach_runner, runner_of, PlanRunner};
pub use search::{
    SearchCache, SearchCacheStats, SearchOptions, VectorIndexConfig, DEFAULT_SEARCH_CACHE_BYTES,
};
pub use sql::{VectorIndexSession, NOTHING_TO_FINALIZE, OUTCOME_KEY};
pub use staging::DiscardedShard;
pub use worker::ShardWriter;

/// Graph building and code decoding for `cargo bench --bench hnsw`, which measures
/// them apart from finalize. Not part of the API: no documentation, no stability.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::hnsw::{build_graph, partition_seed, HnswGraph, Visited};
    pub use crate::model::{decode_rows, Encoder};

    /// Bytes of one stored row.
    pub fn code_width(model: &crate::model::Model) -> usize {
        model.code_width()
    }

    /// The `nprobes` partitions nearest to `query`, nearest first.
    pub fn rank_partitions(
        model: &crate::model::Model,
        query: &[f32],
        nprobes: usize,
    ) -> Vec<usize> {
        model.rank_partitions(query, nprobes)
    }
}
