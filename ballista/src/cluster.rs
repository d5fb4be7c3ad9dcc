//! A Ballista scheduler and executors inside this process, on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_vector_index::{Progress, VectorIndexSession};
use tonic::transport::Channel;

/// One executor of an [`InProcessCluster`].
#[derive(Debug, Clone)]
pub struct ExecutorSetup {
    /// Tasks it runs at once.
    pub task_slots: usize,
    /// The runtime its tasks run with: the object stores the index URLs resolve to.
    pub runtime: Arc<RuntimeEnv>,
    /// Counters of the work its tasks do (attached to every task's config), so a
    /// caller can see what ran where.
    pub progress: Progress,
}

impl ExecutorSetup {
    pub fn new(task_slots: usize, runtime: Arc<RuntimeEnv>) -> Self {
        Self {
            task_slots,
            runtime,
            progress: Progress::new(),
        }
    }
}

/// A scheduler and executors started in this process, listening on loopback ports
/// the system picks. They run on the current Tokio runtime (which must be
/// multi-threaded) until it shuts down.
#[derive(Debug)]
pub struct InProcessCluster {
    scheduler: SocketAddr,
    executors: Vec<ExecutorSetup>,
}

impl InProcessCluster {
    /// Starts a scheduler whose sessions use `runtime` and one executor per entry
    /// of `executors`, all with [`crate::ballista_codec`].
    pub async fn start(runtime: Arc<RuntimeEnv>, executors: Vec<ExecutorSetup>) -> Result<Self> {
        let scheduler_runtime = Arc::clone(&runtime);
        let scheduler = ballista_scheduler::standalone::new_standalone_scheduler_with_builder(
            Arc::new(move |config: SessionConfig| {
                Ok(SessionStateBuilder::new()
                    .with_default_features()
                    .with_config(config)
                    .with_runtime_env(Arc::clone(&scheduler_runtime))
                    .build())
            }),
            Arc::new(SessionConfig::new_with_ballista),
            crate::ballista_codec(),
        )
        .await
        .map_err(|e| DataFusionError::Execution(format!("starting a Ballista scheduler: {e}")))?;
        for setup in &executors {
            let client = connect_to(scheduler).await?;
            let progress = setup.progress.clone();
            let runtime = Arc::clone(&setup.runtime);
            ballista_executor::new_standalone_executor_from_builder(
                client,
                setup.task_slots,
                Arc::new(move || progress.attach(SessionConfig::new_with_ballista())),
                Arc::new(move |_: &SessionConfig| Ok(Arc::clone(&runtime))),
                crate::ballista_codec(),
                crate::function_registry(),
            )
            .await
            .map_err(|e| {
                DataFusionError::Execution(format!("starting a Ballista executor: {e}"))
            })?;
        }
        Ok(Self {
            scheduler,
            executors,
        })
    }

    /// The scheduler's URL, for [`crate::connect`].
    pub fn scheduler_url(&self) -> String {
        format!("df://localhost:{}", self.scheduler.port())
    }

    /// The executors, in the order they were started.
    pub fn executors(&self) -> &[ExecutorSetup] {
        &self.executors
    }

    /// A session whose plans run on this cluster.
    pub fn connect(&self) -> Result<VectorIndexSession> {
        crate::connect(&self.scheduler_url())
    }
}

/// A client of the scheduler at `addr`, waiting briefly for it to accept.
async fn connect_to(addr: SocketAddr) -> Result<SchedulerGrpcClient<Channel>> {
    let url = format!("http://localhost:{}", addr.port());
    let mut last = None;
    for _ in 0..50 {
        match SchedulerGrpcClient::connect(url.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DataFusionError::Execution(format!(
        "Ballista scheduler at {url} did not accept connections: {}",
        last.map_or_else(String::new, |e| e.to_string())
    )))
}
