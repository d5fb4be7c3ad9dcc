//! An executor process: Ballista's executor with [`crate::codec`] and stores from
//! the environment, counting the work its tasks do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use datafusion::common::{DataFusionError, Result};
use datafusion::prelude::SessionConfig;
use datafusion_vector_index::Progress;

/// How an executor process runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecutorOptions {
    /// The scheduler's host and gRPC port.
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// The address its services listen on.
    pub bind_host: String,
    /// The host name the scheduler and other executors reach it by; unset, the
    /// scheduler uses the address the executor's connection comes from.
    pub advertised_host: Option<String>,
    /// The Arrow Flight port other executors and clients fetch results from.
    pub flight_port: u16,
    /// The gRPC port the scheduler sends tasks to.
    pub grpc_port: u16,
    /// Tasks it runs at once. Our merge and shard writers use threads of their
    /// own for a task's work, so fewer slots than cores is the default.
    pub task_slots: usize,
    /// Where shuffle files and spills go; unset, a temporary directory.
    pub work_dir: Option<PathBuf>,
    /// How often it tells the scheduler it is alive (keep it well under the
    /// scheduler's executor timeout).
    pub heartbeat_interval: Duration,
    /// How long it keeps trying to reach the scheduler at start.
    pub scheduler_connect_timeout: Duration,
    /// The largest gRPC message it sends or accepts, in bytes.
    pub grpc_max_message_bytes: u32,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            scheduler_host: "localhost".to_string(),
            scheduler_port: 50050,
            bind_host: "0.0.0.0".to_string(),
            advertised_host: None,
            flight_port: 50051,
            grpc_port: 50052,
            task_slots: (cores / 2).max(1),
            work_dir: None,
            heartbeat_interval: Duration::from_secs(5),
            scheduler_connect_timeout: Duration::from_secs(60),
            grpc_max_message_bytes: 64 << 20,
        }
    }
}

/// Runs an executor until SIGTERM or Ctrl-C (it then finishes its running tasks
/// and tells the scheduler), or until it fails. `progress` counts the work of
/// every task it runs.
pub async fn run_executor(options: ExecutorOptions, progress: Progress) -> Result<()> {
    let work_dir = options.work_dir.clone();
    let runtime = crate::env_runtime(work_dir.as_deref())?;
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host,
        external_host: options.advertised_host,
        port: options.flight_port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler_host,
        scheduler_port: options.scheduler_port,
        scheduler_connect_timeout_seconds: options
            .scheduler_connect_timeout
            .as_secs()
            .clamp(1, u16::MAX as u64) as u16,
        vcores: options.task_slots.max(1),
        work_dir: work_dir.map(|dir| dir.display().to_string()),
        grpc_max_decoding_message_size: options.grpc_max_message_bytes,
        grpc_max_encoding_message_size: options.grpc_max_message_bytes,
        executor_heartbeat_interval_seconds: options.heartbeat_interval.as_secs().max(1),
        // Shuffle files of finished jobs: checked hourly, kept a day.
        job_data_clean_up_interval_seconds: 3600,
        job_data_ttl_seconds: 86_400,
        // The executor asks for a task whenever a slot is free. With push-based
        // scheduling, Ballista 55's scheduler loses the slot of a task it cancels
        // when another executor dies, and the job then waits forever
        // (ballista/tests/cluster_processes.rs kills an executor mid-merge).
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_physical_codec: Some(crate::codec()),
        override_function_registry: Some(Arc::new(crate::function_registry())),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| {
            Ok(Arc::clone(&runtime))
        })),
        override_config_producer: Some(Arc::new(move || {
            progress.attach(SessionConfig::new_with_ballista())
        })),
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| DataFusionError::Execution(format!("Ballista executor: {e}")))
}
