//! # datafusion-vector-index-ballista
//!
//! Runs [`datafusion_vector_index`]'s plans — the finalize, the search and the
//! distributed shard build — on Apache DataFusion Ballista, so that their
//! partitions (the merge's work units, the probed blocks, the shard writers) run as
//! tasks on a cluster's executors.
//!
//! - [`connect`]: a [`VectorIndexSession`](datafusion_vector_index::VectorIndexSession) whose plans run on the scheduler at a URL:
//!   `CALL …` procedures through a [`PlanRunner`], every SQL query (so
//!   `vector_search(…)`) through a query planner that plans here and submits the
//!   physical plan.
//! - [`codec`]: Ballista's physical codec composed with [`VectorIndexCodec`]; the
//!   scheduler and every executor must decode with it ([`ballista_codec`]).
//! - [`InProcessCluster`]: a scheduler and executors inside this process, on
//!   loopback (tests, benchmarks, a single machine).
//!
//! Plans travel as physical plans: the client plans them, the scheduler cuts them
//! into stages at hash repartitions and coalesces, executors decode them and
//! resolve each index URL through their own object stores (docs/ballista.md).

mod cluster;
mod runner;

use std::sync::Arc;

use ballista_core::serde::{BallistaCodec, BallistaPhysicalExtensionCodec};
use datafusion_proto::logical_plan::DefaultLogicalExtensionCodec;
use datafusion_proto::physical_plan::{ComposedPhysicalExtensionCodec, PhysicalExtensionCodec};
use datafusion_vector_index::VectorIndexCodec;

pub use cluster::{ExecutorSetup, InProcessCluster};
pub use datafusion_vector_index::PlanRunner;
pub use runner::{connect, session_state, BallistaRunner};

/// Ballista's physical codec (its shuffle operators) composed with
/// [`VectorIndexCodec`] (this project's operators and sources).
pub fn codec() -> Arc<dyn PhysicalExtensionCodec> {
    Arc::new(ComposedPhysicalExtensionCodec::new(vec![
        Arc::new(BallistaPhysicalExtensionCodec::default()),
        Arc::new(VectorIndexCodec),
    ]))
}

/// The codecs a scheduler and its executors are started with: DataFusion's logical
/// codec and [`codec`].
pub fn ballista_codec() -> BallistaCodec {
    BallistaCodec::new(Arc::new(DefaultLogicalExtensionCodec {}), codec())
}
