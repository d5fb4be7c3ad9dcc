//! `dvi-cluster`: the scheduler and executor processes of a Ballista cluster that
//! runs datafusion-vector-index's plans, and `dvi` on that cluster
//! (`dvi-cluster sql`, which `dvi --scheduler` runs). `--help` says how.

mod args;
mod logger;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use datafusion_vector_index::{error_line, Progress, StepProgress};
use datafusion_vector_index_ballista::{
    run_executor, serve_scheduler, ClusterClient, ExecutorOptions, SchedulerOptions,
};
use log::{error, info};

use args::{ArgsError, Command};

fn main() -> ExitCode {
    let command = match args::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(ArgsError::Info(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Invalid(message)) => {
            eprintln!("dvi-cluster: {message}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Sql(args) => {
            return datafusion_vector_index::cli::run(
                args,
                Some(Arc::new(ClusterClient::default())),
            )
        }
        Command::Scheduler {
            bind,
            options,
            log_level,
        } => {
            logger::init(log_level);
            scheduler(bind, options)
        }
        Command::Executor { options, log_level } => {
            logger::init(log_level);
            executor(options)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("dvi-cluster: {message}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Completes on SIGTERM or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => info!("Ctrl-C: stopping"),
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                info!("Ctrl-C: stopping");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        info!("Ctrl-C: stopping");
    }
}

fn scheduler(bind: SocketAddr, options: SchedulerOptions) -> Result<(), String> {
    tokio_runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
        info!(
            "dvi-cluster scheduler {} listening on {bind} (advertised as {}:{}), executor timeout {:?}",
            env!("CARGO_PKG_VERSION"),
            options.advertised_host,
            bind.port(),
            options.executor_timeout
        );
        serve_scheduler(listener, options, stop_signal())
            .await
            .map_err(error_line)?;
        info!("scheduler stopped");
        Ok(())
    })
}

fn executor(options: ExecutorOptions) -> Result<(), String> {
    tokio_runtime()?.block_on(async move {
        info!(
            "dvi-cluster executor {}: scheduler {}:{}, {} task slots, flight port {}, gRPC port {}",
            env!("CARGO_PKG_VERSION"),
            options.scheduler_host,
            options.scheduler_port,
            options.task_slots,
            options.flight_port,
            options.grpc_port
        );
        let progress = Progress::new();
        let reporter = tokio::spawn(report_work(progress.clone()));
        let result = run_executor(options, progress.clone())
            .await
            .map_err(error_line);
        reporter.abort();
        info!(
            "executor stopped; work done here: {}",
            work(&progress.snapshot())
        );
        result
    })
}

/// Logs the work this executor's tasks did whenever it changes (every 5 s at most).
async fn report_work(progress: Progress) {
    let mut last = work(&[]);
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticks.tick().await;
        let now = work(&progress.snapshot());
        if now != last {
            info!("work done here: {now}");
            last = now;
        }
    }
}

/// `merging=3, shard writing=2`: the counters of every step begun.
fn work(steps: &[StepProgress]) -> String {
    if steps.is_empty() {
        return "none".to_string();
    }
    steps
        .iter()
        .map(|s| format!("{}={}", s.step, s.done))
        .collect::<Vec<_>>()
        .join(", ")
}
