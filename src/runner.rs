//! Where the plans this crate builds run.
//!
//! Finalize, search and the distributed shard build are physical plans. By default
//! they run in this process on DataFusion's executor. A session whose config carries
//! a [`PlanRunner`] (attached like [`crate::Progress`], as a `SessionConfig`
//! extension) hands them to it instead: the `datafusion-vector-index-ballista` crate
//! attaches one that submits them to a Ballista scheduler, which cuts them into
//! stages at their hash repartitions and coalesces and runs the tasks on executors.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::SessionConfig;

/// Runs a physical plan somewhere and streams its output back.
#[async_trait]
pub trait PlanRunner: Debug + Send + Sync {
    /// Runs `plan`, planned in the session `task_ctx` belongs to.
    async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        task_ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream>;
}

/// The extension a session config carries; a newtype because extensions are keyed
/// by their concrete type.
#[derive(Debug)]
struct Attached(Arc<dyn PlanRunner>);

/// `config` with `runner` attached: this crate's plans run through it.
pub fn attach_runner(config: SessionConfig, runner: Arc<dyn PlanRunner>) -> SessionConfig {
    config.with_extension(Arc::new(Attached(runner)))
}

/// The runner attached to `config`, if any.
pub fn runner_of(config: &SessionConfig) -> Option<Arc<dyn PlanRunner>> {
    config.get_extension::<Attached>().map(|a| Arc::clone(&a.0))
}

/// Runs `plan` with the runner of its session, or in this process without one.
pub(crate) async fn execute(
    plan: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    match runner_of(task_ctx.session_config()) {
        Some(runner) => runner.execute(plan, task_ctx).await,
        None => execute_stream(plan, task_ctx),
    }
}

/// [`execute`], collected.
pub(crate) async fn collect(
    plan: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
) -> Result<Vec<arrow::array::RecordBatch>> {
    datafusion::physical_plan::common::collect(execute(plan, task_ctx).await?).await
}
