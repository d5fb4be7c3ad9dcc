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
use datafusion_vector_index::{attach_runner, PlanRunner, Progress, VectorIndexSession};
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
        .map_err(|e| {
            DataFusionError::Execution(format!(
                "Ballista scheduler at {}: {}",
                self.scheduler_url,
                e.strip_backtrace()
            ))
        })
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
    let runner = Arc::new(BallistaRunner::new(scheduler_url)?);
    let config = Progress::new().attach(config.upgrade_for_ballista());
    let config = attach_runner(config, runner.clone());
    Ok(SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_query_planner(Arc::new(ClusterPlanner { runner }))
        .build())
}

/// A [`VectorIndexSession`] whose plans run on the Ballista scheduler at
/// `scheduler_url` (see [`session_state`]).
pub fn connect(scheduler_url: &str) -> Result<VectorIndexSession> {
    let state = session_state(scheduler_url, SessionConfig::new())?;
    Ok(VectorIndexSession::with_context(
        SessionContext::new_with_state(state),
    ))
}
