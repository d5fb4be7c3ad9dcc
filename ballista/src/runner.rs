//! The client side: a [`PlanRunner`] that submits plans to a scheduler, and the
//! session that uses it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::execution::context::{QueryPlanner, SessionContext, SessionState};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use datafusion_proto::protobuf::PhysicalPlanNode;
use datafusion_vector_index::{
    attach_runner, IndexError, PlanRunner, Progress, VectorIndexSession,
};
use futures::TryStreamExt;

/// Runs plans on the Ballista scheduler at a URL (`df://host:port` or
/// `http://host:port`), encoded with [`crate::codec`].
#[derive(Clone)]
pub struct BallistaRunner {
    scheduler_url: String,
    codec: Arc<dyn PhysicalExtensionCodec>,
}

impl fmt::Debug for BallistaRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BallistaRunner")
            .field("scheduler_url", &self.scheduler_url)
            .finish_non_exhaustive()
    }
}

impl BallistaRunner {
    pub fn new(scheduler_url: &str) -> Result<Self> {
        let http = match scheduler_url.split_once("://") {
            Some(("df" | "http", rest)) if !rest.is_empty() => format!("http://{rest}"),
            _ => {
                return plan_err!(
                    "scheduler URL '{scheduler_url}': expected df://host:port or http://host:port"
                )
            }
        };
        Ok(Self {
            scheduler_url: http.trim_end_matches('/').to_string(),
            codec: crate::codec(),
        })
    }

    pub fn scheduler_url(&self) -> &str {
        &self.scheduler_url
    }
}

#[async_trait]
impl PlanRunner for BallistaRunner {
    async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        task_ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let config = task_ctx.session_config().clone();
        execute_physical_plan::<PhysicalPlanNode>(
            self.scheduler_url.clone(),
            &config.ballista_config(),
            plan,
            self.codec.as_ref(),
            task_ctx.session_id(),
            config,
        )
        .await
        .map_err(|e| job_error(&self.scheduler_url, &e.strip_backtrace()))
    }
}

/// The error of a job that failed on the cluster. Ballista carries a task's error
/// as text (its `Debug` rendering); this crate's domain errors are found in it and
/// typed again, so that a finalize with nothing to do, a conflict or a refused
/// finalize reads, and exits, as in one process. Others keep the stage that failed
/// and the reason.
fn job_error(scheduler: &str, text: &str) -> DataFusionError {
    type Variant = fn(String) -> IndexError;
    let variants: [(&str, Variant); 5] = [
        ("NothingToFinalize", IndexError::NothingToFinalize),
        ("Finalize", IndexError::Finalize),
        ("Conflict", IndexError::Conflict),
        ("NotFound", IndexError::NotFound),
        ("InvalidInput", IndexError::InvalidInput),
    ];
    for (name, variant) in variants {
        let marker = format!("{name}(\"");
        let found = text.match_indices(&marker).find(|(at, _)| {
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(char::is_alphanumeric)
        });
        if let Some(message) = found.and_then(|(at, _)| debug_string(&text[at + marker.len()..])) {
            return DataFusionError::External(Box::new(variant(message)));
        }
    }
    let stage = text
        .split_once("due to stage ")
        .and_then(|(_, rest)| rest.split_whitespace().next());
    let reason = text
        .find("(\"")
        .and_then(|at| debug_string(&text[at + 2..]))
        .unwrap_or_else(|| text.to_string());
    DataFusionError::Execution(match stage {
        Some(stage) => {
            format!("job on the cluster at {scheduler} failed in stage {stage}: {reason}")
        }
        None => format!("Ballista scheduler at {scheduler}: {reason}"),
    })
}

/// The string a `Debug`-rendered string literal holds, `text` starting after its
/// opening quote.
fn debug_string(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                'u' => {
                    let code: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                    out.push(char::from_u32(u32::from_str_radix(&code, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_come_back_typed() {
        let text = "Execution error: Job 038J failed: Job failed due to stage 2 failed: Task failed \
                    due to runtime execution error: DataFusionError(Shared(External(\
                    NothingToFinalize(\"no complete shards are staged in s3://b/i/_staging \\\"x\\\"\"))))";
        let DataFusionError::External(e) = job_error("http://s:1", text) else {
            panic!("not typed")
        };
        assert!(matches!(
            e.downcast_ref::<IndexError>(),
            Some(IndexError::NothingToFinalize(m)) if m == "no complete shards are staged in s3://b/i/_staging \"x\""
        ));
        let other = job_error(
            "http://s:1",
            "Job 1 failed: Job failed due to stage 4 failed: Task failed due to runtime execution \
             error: DataFusionError(Execution(\"disk full\"))",
        );
        assert_eq!(
            other.to_string(),
            "Execution error: job on the cluster at http://s:1 failed in stage 4: disk full"
        );
    }
}

/// Plans SQL queries here, with DataFusion's planner, and wraps the physical plan
/// in [`OnClusterExec`], which submits it whole.
#[derive(Debug)]
struct ClusterPlanner {
    runner: Arc<BallistaRunner>,
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session_state)
            .await?;
        Ok(Arc::new(OnClusterExec::new(plan, Arc::clone(&self.runner))))
    }
}

/// Runs its child on the cluster and streams the result back.
///
/// Partitioning: one output partition, whatever the child's: the scheduler runs
/// the child's partitions as tasks and returns its output as one stream.
#[derive(Debug)]
struct OnClusterExec {
    plan: Arc<dyn ExecutionPlan>,
    runner: Arc<BallistaRunner>,
    properties: Arc<PlanProperties>,
}

impl OnClusterExec {
    fn new(plan: Arc<dyn ExecutionPlan>, runner: Arc<BallistaRunner>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            plan.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            plan,
            runner,
            properties,
        }
    }
}

impl DisplayAs for OnClusterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "OnClusterExec: scheduler={}",
            self.runner.scheduler_url()
        )
    }
}

impl ExecutionPlan for OnClusterExec {
    fn name(&self) -> &str {
        "OnClusterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.plan]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([plan]) => Ok(Arc::new(Self::new(plan, Arc::clone(&self.runner)))),
            Err(children) => plan_err!("OnClusterExec takes one child, got {}", children.len()),
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return plan_err!("OnClusterExec has one partition, asked for {partition}");
        }
        let plan = Arc::clone(&self.plan);
        let runner = Arc::clone(&self.runner);
        let schema = self.plan.schema();
        let stream =
            futures::stream::once(async move { runner.execute(plan, context).await }).try_flatten();
        Ok(Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream),
        ))
    }
}

/// A session state whose plans run on the scheduler at `scheduler_url`: procedures
/// through a [`BallistaRunner`], SQL queries planned here and submitted whole. Its
/// config carries Ballista's settings and a [`Progress`].
pub fn session_state(scheduler_url: &str, config: SessionConfig) -> Result<SessionState> {
    Ok(session_state_on(
        Arc::new(BallistaRunner::new(scheduler_url)?),
        config,
    ))
}

/// [`session_state`] with its runner already made.
pub(crate) fn session_state_on(runner: Arc<BallistaRunner>, config: SessionConfig) -> SessionState {
    let config = Progress::new().attach(config.upgrade_for_ballista());
    let config = attach_runner(config, runner.clone());
    SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_query_planner(Arc::new(ClusterPlanner { runner }))
        .build()
}

/// A [`VectorIndexSession`] whose plans run on the Ballista scheduler at
/// `scheduler_url` (see [`session_state`]).
pub fn connect(scheduler_url: &str) -> Result<VectorIndexSession> {
    let state = session_state(scheduler_url, SessionConfig::new())?;
    Ok(VectorIndexSession::with_context(
        SessionContext::new_with_state(state),
    ))
}
