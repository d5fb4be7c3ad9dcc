//! A scheduler process: Ballista's scheduler with [`crate::codec`], stores from the
//! environment, and, on its one port beside the gRPC service, `GET /healthz`,
//! `GET /readyz` and `GET /dvi/jobs` (the progress `dvi --scheduler` shows).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::job_status;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use crate::jobs::{JobProgress, JOBS_PATH};

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// How a scheduler process runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerOptions {
    /// The host name executors and clients reach this scheduler by.
    pub advertised_host: String,
    /// How long an executor may go without a heartbeat before its tasks are run
    /// elsewhere.
    pub executor_timeout: Duration,
    /// The largest gRPC message it sends or accepts, in bytes.
    pub grpc_max_message_bytes: u32,
    /// Attempts of one task before its job fails.
    pub task_max_failures: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            advertised_host: "localhost".to_string(),
            executor_timeout: Duration::from_secs(30),
            grpc_max_message_bytes: 64 << 20,
            task_max_failures: 4,
        }
    }
}

/// Runs a scheduler on `listener` until `shutdown` completes.
pub async fn serve_scheduler(
    listener: tokio::net::TcpListener,
    options: SchedulerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let runtime = crate::env_runtime(None)?;
    let mut config = SchedulerConfig::default()
        .with_hostname(options.advertised_host)
        .with_port(addr.port())
        // Executors ask for tasks when a slot is free (see run_executor).
        .with_scheduler_policy(TaskSchedulingPolicy::PullStaged)
        .with_grpc_server_max_decoding_message_size(options.grpc_max_message_bytes)
        .with_grpc_server_max_encoding_message_size(options.grpc_max_message_bytes)
        .with_grpc_client_max_message_size(options.grpc_max_message_bytes)
        .with_no_executors_grace_period_seconds(options.executor_timeout.as_secs())
        .with_override_config_producer(Arc::new(SessionConfig::new_with_ballista))
        .with_override_session_builder(Arc::new(move |config: SessionConfig| {
            Ok(SessionStateBuilder::new()
                .with_default_features()
                .with_config(config)
                .with_runtime_env(Arc::clone(&runtime))
                .build())
        }));
    config.bind_host = addr.ip().to_string();
    config.executor_timeout_seconds = options.executor_timeout.as_secs().max(1);
    config.expire_dead_executor_interval_seconds =
        (options.executor_timeout.as_secs() / 3).clamp(1, 15);
    config.task_max_failures = options.task_max_failures;
    config.override_physical_codec = Some(crate::codec());
    config.validate().map_err(ballista_error)?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(ballista_error)?;
    let scheduler: Scheduler =
        ballista_scheduler::scheduler_process::create_scheduler(cluster, Arc::new(config))
            .await
            .map_err(ballista_error)?;

    let max = options.grpc_max_message_bytes as usize;
    let mut grpc = tonic::service::RoutesBuilder::default();
    grpc.add_service(
        SchedulerGrpcServer::new(scheduler.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    let http = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(JOBS_PATH, get(jobs))
        .with_state(Arc::new(scheduler));
    let app = grpc.routes().into_axum_router().merge(http);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|e| DataFusionError::Execution(format!("scheduler on {addr}: {e}")))
}

fn ballista_error(e: ballista_core::error::BallistaError) -> DataFusionError {
    DataFusionError::Execution(format!("Ballista scheduler: {e}"))
}

/// 200 once an executor has registered: a cluster that can run a job.
async fn readyz(State(scheduler): State<Arc<Scheduler>>) -> impl IntoResponse {
    let alive = scheduler.state.executor_manager.get_executors_state().await;
    let alive = alive.map(|executors| executors.len()).unwrap_or(0);
    if scheduler.is_ready() {
        (StatusCode::OK, format!("ready: {alive} executors\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no executor has registered\n".to_string(),
        )
    }
}

/// The jobs the scheduler has running or queued, with their stages done of their
/// total. (Ballista 55 keeps a job's task counts in its execution graph, which
/// only the scheduler's own crate can read.)
async fn jobs(State(scheduler): State<Arc<Scheduler>>) -> impl IntoResponse {
    match scheduler.state.task_manager.get_all_jobs().await {
        Ok(jobs) => Json(
            jobs.into_iter()
                .filter_map(|job| {
                    let status = match job.status.status? {
                        job_status::Status::Queued(_) => "queued",
                        job_status::Status::Running(_) => "running",
                        job_status::Status::Failed(_) | job_status::Status::Successful(_) => {
                            return None
                        }
                    };
                    Some(JobProgress {
                        job_id: job.job_id.to_string(),
                        job_name: job.job_name,
                        status: status.to_string(),
                        stages_done: job.completed_stages,
                        stages: job.num_stages,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
