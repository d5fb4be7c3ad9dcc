//! The client `dvi --scheduler` runs with (`dvi-cluster sql`): sessions on a
//! scheduler, and the progress of their jobs as the scheduler reports it.

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ballista_core::extension::SessionConfigExt;
use datafusion::common::{plan_err, Result};
use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;
use datafusion_vector_index::cli::Cluster;
use datafusion_vector_index::VectorIndexSession;

use crate::jobs::running_jobs;
use crate::runner::BallistaRunner;

/// How long a client waits for the scheduler to accept a connection before it
/// says the scheduler is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// [`Cluster`] on Ballista: sessions from [`crate::session_state`], each naming
/// its jobs (`ballista.job.name`) so that their progress can be found among the
/// scheduler's running jobs.
#[derive(Debug, Default)]
pub struct ClusterClient {
    /// Session id → (scheduler `host:port`, job name).
    sessions: Mutex<HashMap<String, (String, String)>>,
}

#[async_trait]
impl Cluster for ClusterClient {
    fn connect(&self, scheduler_url: &str) -> Result<VectorIndexSession> {
        let runner = Arc::new(BallistaRunner::new(scheduler_url)?);
        let authority = runner
            .scheduler_url()
            .trim_start_matches("http://")
            .to_string();
        reachable(scheduler_url, &authority)?;
        let job_name = format!("dvi-{}", uuid_like());
        let config = SessionConfig::new_with_ballista().with_ballista_job_name(&job_name);
        let state = crate::runner::session_state_on(runner, config);
        let session = VectorIndexSession::with_context(SessionContext::new_with_state(state));
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.context().session_id(), (authority, job_name));
        Ok(session)
    }

    async fn status(&self, session: &VectorIndexSession) -> Option<String> {
        let (authority, job_name) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&session.context().session_id())?
            .clone();
        let jobs = running_jobs(&authority).await.ok()?;
        let job = jobs.into_iter().find(|job| job.job_name == job_name)?;
        Some(job.line())
    }
}

/// Fails at once, in one line, when nothing accepts connections at the scheduler's
/// address (instead of the Ballista client's retries on the first statement).
fn reachable(url: &str, authority: &str) -> Result<()> {
    let addrs = match authority.to_socket_addrs() {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(e) => return plan_err!("scheduler {url}: cannot resolve {authority}: {e}"),
    };
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    let reason = last.map_or_else(|| "no address".to_string(), |e| e.to_string());
    plan_err!(
        "scheduler {url} is unreachable ({reason}); is `dvi-cluster scheduler` running there?"
    )
}

/// A name no other client picks: process id and clock.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}
