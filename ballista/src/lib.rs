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
//! - [`serve_scheduler`], [`run_executor`], [`ClusterClient`]: the scheduler and
//!   executor processes of the `dvi-cluster` program, and the client of
//!   `dvi --scheduler` (docs/cluster.md).
//!
//! Plans travel as physical plans: the client plans them, the scheduler cuts them
//! into stages at hash repartitions and coalesces, executors decode them and
//! resolve each index URL through their own object stores (docs/ballista.md).

mod client;
mod cluster;
mod executor;
mod jobs;
mod runner;
mod scheduler;

use std::sync::Arc;

use ballista_core::serde::{BallistaCodec, BallistaPhysicalExtensionCodec};
use datafusion::common::Result;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion_proto::logical_plan::DefaultLogicalExtensionCodec;
use datafusion_proto::physical_plan::{ComposedPhysicalExtensionCodec, PhysicalExtensionCodec};
use datafusion_vector_index::{EnvObjectStoreRegistry, VectorIndexCodec};

pub use client::ClusterClient;
pub use cluster::{ExecutorSetup, InProcessCluster};
pub use datafusion_vector_index::PlanRunner;
pub use executor::{run_executor, ExecutorOptions};
pub use runner::{connect, session_state, BallistaRunner};
pub use scheduler::{serve_scheduler, SchedulerOptions};

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

/// A runtime whose object stores are built from the process's environment
/// (`AWS_*`, `AZURE_*`, …; docs/object-stores.md) when a URL first needs one, with
/// spill files under `temp_dir` when given. Not Ballista's S3 helpers: their
/// registry fails on schemes it did not register, and they put credentials in
/// every plan's settings.
pub(crate) fn env_runtime(temp_dir: Option<&std::path::Path>) -> Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(EnvObjectStoreRegistry::default()));
    if let Some(dir) = temp_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

/// The functions an executor decodes plans with: every function of a DataFusion
/// session with its default features (Ballista's own default registry lacks the
/// nested ones, `make_array` and `array_distance` among them).
pub(crate) fn function_registry() -> ballista_core::registry::BallistaFunctionRegistry {
    let state = datafusion::execution::session_state::SessionStateBuilder::new()
        .with_default_features()
        .build();
    ballista_core::registry::BallistaFunctionRegistry::from(&state)
}
