//! The progress of queued and running jobs, as the scheduler of [`crate::serve_scheduler`]
//! serves it (`GET /dvi/jobs`, JSON) and the client of [`crate::ClusterClient`]
//! reads it: one module owns the shape on both sides.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The path the scheduler serves the running jobs at.
pub(crate) const JOBS_PATH: &str = "/dvi/jobs";

/// A queued or running job: its stages done of their total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobProgress {
    pub(crate) job_id: String,
    /// `ballista.job.name` of the session that submitted it.
    pub(crate) job_name: String,
    /// `queued` or `running`.
    pub(crate) status: String,
    pub(crate) stages_done: usize,
    pub(crate) stages: usize,
}

impl JobProgress {
    /// `job 038JE…: running, stages 2/4 done`.
    pub(crate) fn line(&self) -> String {
        format!(
            "job {}: {}, stages {}/{} done",
            self.job_id, self.status, self.stages_done, self.stages
        )
    }
}

/// The running jobs of the scheduler at `host:port` (an HTTP/1.1 GET on its gRPC
/// port, which serves both). Fails fast: this is only for a progress line.
pub(crate) async fn running_jobs(authority: &str) -> Result<Vec<JobProgress>, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {JOBS_PATH} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no answer within 2 s".to_string())??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP response".to_string())?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    serde_json::from_str(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_line() {
        let job = JobProgress {
            job_id: "abc".into(),
            job_name: "dvi-1".into(),
            status: "running".into(),
            stages_done: 1,
            stages: 4,
        };
        let json = serde_json::to_string(&vec![job.clone()]).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<JobProgress>>(&json).unwrap(),
            vec![job.clone()]
        );
        assert_eq!(job.line(), "job abc: running, stages 1/4 done");
    }
}
