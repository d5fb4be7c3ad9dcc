//! The cluster as an operator runs it: a `dvi-cluster scheduler` and two
//! `dvi-cluster executor` processes on 127.0.0.1, the S3 server of the tests
//! (`tests/common/s3.rs`) as their store, and `dvi --scheduler` as the client.
//! Every process gets its store from its environment, as on a real cluster.
//!
//! `dvi` is the core crate's binary, found beside `dvi-cluster` in the target
//! directory: the core's `cargo test` builds it (`.ci/run` runs that first), or
//! `cargo build --bin dvi`.
#![cfg(feature = "s3")]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/s3.rs"]
mod s3_server;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::copy_dir;

const CLUSTER: &str = env!("CARGO_BIN_EXE_dvi-cluster");

/// 8,000 rows of 8 dimensions in 8 fragments (`row_id >> 32`).
const ROWS: &str = "SELECT \
    CAST(value AS BIGINT UNSIGNED) + (CAST(value % 8 AS BIGINT UNSIGNED) << 32) AS row_id, \
    make_array(sin(value), cos(value * 0.7), value / 8000.0, (value % 13) / 13.0, \
               sin(value * 0.3), cos(value * 1.3), (value % 7) / 7.0, (value % 29) / 29.0) AS vec \
    FROM generate_series(0, 7999)";

const QUERY: &str = "[0.3, -0.2, 0.5, 0.4, 0.1, 0.9, 0.2, 0.6]";

fn dvi_program() -> PathBuf {
    let dvi = Path::new(CLUSTER).with_file_name("dvi");
    assert!(
        dvi.is_file(),
        "{} is missing: build it with `cargo build --bin dvi` (or the core's `cargo test`)",
        dvi.display()
    );
    dvi
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `GET` of `path` on 127.0.0.1:`port`: the status code and the body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process of the cluster, its log in a file; killed when dropped.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Node {
    fn start(args: &[String], log: PathBuf) -> Self {
        let server = s3_server::server();
        let child = Command::new(CLUSTER)
            .args(args)
            .envs(server.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the process has no chance to say goodbye.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit status.
    fn stop(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scheduler and executors as processes, with their logs in a folder.
struct Cluster {
    port: u16,
    dir: tempfile::TempDir,
    scheduler: Node,
    executors: Vec<Node>,
}

impl Cluster {
    fn start(executors: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let scheduler = Self::scheduler_on(port, dir.path(), 0);
        let mut cluster = Self {
            port,
            dir,
            scheduler,
            executors: Vec::new(),
        };
        for _ in 0..executors {
            cluster.add_executor();
        }
        cluster
    }

    fn scheduler_on(port: u16, dir: &Path, generation: usize) -> Node {
        let node = Node::start(
            &[
                "scheduler".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
                "--executor-timeout".into(),
                "6".into(),
            ],
            dir.join(format!("scheduler-{generation}.log")),
        );
        wait_for("the scheduler", Duration::from_secs(60), || {
            http_get(port, "/healthz").is_some_and(|(code, _)| code == 200)
        });
        node
    }

    /// Starts one more executor (one task slot) and waits until it has registered.
    fn add_executor(&mut self) {
        let n = self.executors.len();
        let work = self.dir.path().join(format!("executor-{n}"));
        std::fs::create_dir_all(&work).unwrap();
        self.executors.push(Node::start(
            &[
                "executor".into(),
                "--scheduler".into(),
                format!("127.0.0.1:{}", self.port),
                "--bind".into(),
                "127.0.0.1".into(),
                "--advertise".into(),
                "127.0.0.1".into(),
                "--flight-port".into(),
                free_port().to_string(),
                "--grpc-port".into(),
                free_port().to_string(),
                "--slots".into(),
                "1".into(),
                "--heartbeat".into(),
                "1".into(),
                "--work-dir".into(),
                work.display().to_string(),
            ],
            self.dir.path().join(format!("executor-{n}.log")),
        ));
        self.wait_registered(n + 1);
    }

    fn wait_registered(&self, executors: usize) {
        let expected = format!("ready: {executors} executors");
        wait_for(
            &format!("{executors} executors"),
            Duration::from_secs(60),
            || http_get(self.port, "/readyz").is_some_and(|(_, body)| body.contains(&expected)),
        );
    }

    /// Stops the scheduler (SIGTERM) and starts another on the same port.
    fn restart_scheduler(&mut self, generation: usize) {
        assert!(self.scheduler.stop().success(), "{}", self.scheduler.log());
        self.scheduler = Self::scheduler_on(self.port, self.dir.path(), generation);
    }

    /// `dvi --scheduler df://…` running `sql`, progress on stderr.
    fn dvi(&self, sql: &str) -> Command {
        let mut command = Command::new(dvi_program());
        command
            .envs(s3_server::server().env())
            .args([
                "--scheduler",
                &format!("df://127.0.0.1:{}", self.port),
                "--progress",
                "always",
                "-c",
                sql,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

/// `dvi` in this process's way: no cluster.
fn local_dvi(sql: &str) -> Command {
    let mut command = Command::new(dvi_program());
    command
        .envs(s3_server::server().env())
        .args(["-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn succeeds(mut command: Command) -> (String, String) {
    let output = command.output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}\n{stdout}");
    (stdout, stderr)
}

/// Finalizes `index` in small files, so that its segment is many merge work units.
fn finalize(index: &str) -> String {
    format!(
        "SET datafusion.execution.target_partitions = 4; \
         CALL finalize_vector_index(index => '{index}', target_file_bytes => 16384)"
    )
}

/// The statements that stage `index` (of `kind`) from the Parquet table on S3.
fn create_and_stage(bucket: &str, index: &str, kind: &str) -> String {
    let pq = if kind == "IVF_PQ" {
        ", num_sub_vectors => 4"
    } else {
        ""
    };
    format!(
        "{}; \
         CALL create_vector_index(index => '{index}', table => 'items', column => 'vec', \
           type => '{kind}', num_partitions => 8, seed => 3{pq}); \
         CALL build_vector_index_shards(index => '{index}', table => 'items', column => 'vec', \
           row_id => 'row_id', shards => 4)",
        table(bucket)
    )
}

fn table(bucket: &str) -> String {
    format!(
        "SET datafusion.execution.target_partitions = 4; \
         CREATE EXTERNAL TABLE items STORED AS PARQUET LOCATION 's3://{bucket}/table/'"
    )
}

/// The committed segments' data files and graphs, by name within the segment
/// (segment ids are random), with their bytes.
fn segment_files(index_dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                // s3s-fs keeps object metadata in side files.
                if !name.ends_with(".json") && !name.starts_with(".") {
                    out.push((name, std::fs::read(&path).unwrap()));
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(&index_dir.join("segments"), &mut files);
    files.sort();
    files
}

/// The last "work done here" counters an executor logged.
fn work_done(log: &str, step: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|line| line.split_once("work done here: "))
        .and_then(|(_, counters)| {
            counters.split(", ").find_map(|c| {
                let (name, n) = c.split_once('=')?;
                (name == step).then(|| n.parse().ok())?
            })
        })
        .unwrap_or(0)
}

fn versions(index: &str) -> String {
    succeeds(local_dvi(&format!(
        "SELECT version FROM vector_index_versions('{index}') ORDER BY version"
    )))
    .0
}

#[test]
fn a_whole_build_on_a_scheduler_and_two_executor_processes() {
    let server = s3_server::server();
    let bucket = server.bucket();
    let cluster = Cluster::start(2);
    // The table itself is written by the executors, to S3.
    succeeds(cluster.dvi(&format!(
        "SET datafusion.execution.target_partitions = 4; \
         COPY ({ROWS}) TO 's3://{bucket}/table/' STORED AS PARQUET"
    )));

    for kind in ["IVF_PQ", "IVF_HNSW_SQ"] {
        let name = kind.to_lowercase();
        let index = format!("s3://{bucket}/{name}");
        let (staged, _) = succeeds(cluster.dvi(&create_and_stage(&bucket, &index, kind)));
        assert!(staged.contains("8000"), "{staged}");

        // The same staged shards, finalized in one process for comparison.
        let copy = format!("{name}-local");
        copy_dir(
            &server.bucket_dir(&bucket).join(&name),
            &server.bucket_dir(&bucket).join(&copy),
        );
        let (finalized, _) = succeeds(cluster.dvi(&finalize(&index)));
        assert!(finalized.contains("8000"), "{finalized}");
        let local = format!("s3://{bucket}/{copy}");
        succeeds(local_dvi(&finalize(&local)));
        let (ours, theirs) = (
            segment_files(&server.bucket_dir(&bucket).join(&name)),
            segment_files(&server.bucket_dir(&bucket).join(&copy)),
        );
        assert!(!ours.is_empty());
        assert!(ours == theirs, "{kind}: segment bytes differ");

        let search = |index: &str| {
            format!(
                "SELECT row_id, distance FROM vector_search('{index}', {QUERY}, 10, 8) \
                 ORDER BY distance, row_id"
            )
        };
        let (on_cluster, _) = succeeds(cluster.dvi(&search(&index)));
        let (in_process, _) = succeeds(local_dvi(&search(&local)));
        assert_eq!(on_cluster, in_process, "{kind}");
        assert_eq!(on_cluster.lines().count(), 10 + 4, "{on_cluster}");
    }

    // Both executors worked: their own counters, logged when they stop.
    let mut cluster = cluster;
    for executor in &mut cluster.executors {
        assert!(executor.stop().success(), "{}", executor.log());
        let log = executor.log();
        assert!(
            work_done(&log, "encoding") > 0 && work_done(&log, "merging") > 0,
            "an executor wrote no shard or merged nothing:\n{log}"
        );
        assert!(!log.contains(s3_server::SECRET_KEY), "a secret in the log");
    }
    assert!(cluster.scheduler.stop().success());
    assert!(cluster.scheduler.log().contains("SIGTERM: stopping"));
}

/// A new bucket holding the table (written in one process), and a cluster of
/// `executors`.
fn bucket_with_table(executors: usize) -> (&'static s3_server::S3Server, String, Cluster) {
    let server = s3_server::server();
    let bucket = server.bucket();
    succeeds(local_dvi(&format!(
        "COPY ({ROWS}) TO 's3://{bucket}/table/' STORED AS PARQUET"
    )));
    (server, bucket, Cluster::start(executors))
}

#[test]
fn an_executor_killed_in_the_middle_of_a_merge() {
    let (server, bucket, mut cluster) = bucket_with_table(2);
    let index = format!("s3://{bucket}/idx");
    succeeds(cluster.dvi(&create_and_stage(&bucket, &index, "IVF_HNSW_SQ")));
    let staging = server.bucket_dir(&bucket).join("idx/_staging");
    let staged = std::fs::read_dir(&staging).unwrap().count();

    // Each segment write waits a second: the merge is under way for a while.
    server.slow_writes(&bucket, "/segments/", Duration::from_secs(1));
    let finalize = finalize(&index);
    let client = cluster.dvi(&finalize).spawn().unwrap();
    wait_for("a segment write", Duration::from_secs(120), || {
        server.slow_writes_begun(&bucket) > 0
    });
    cluster.executors[0].kill();
    let output = client.wait_with_output().unwrap();
    server.slow_writes(&bucket, "/segments/", Duration::ZERO);
    let (stdout, stderr) = text(&output);
    assert!(
        stderr.contains("progress: job ") && stderr.contains("stages"),
        "no progress from the scheduler: {stderr}"
    );

    let committed = versions(&index);
    if output.status.success() {
        // Run again on the surviving executor: one version.
        assert!(committed.contains("| 1 "), "{committed}\n{stdout}");
    } else {
        // Failed, in one line that says why; nothing committed, staging intact.
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(
            stderr
                .trim_end()
                .lines()
                .last()
                .map(|l| l.starts_with("dvi: ")),
            Some(true)
        );
        assert!(!committed.contains("| 1 "), "{committed}");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), staged);
        succeeds(cluster.dvi(&finalize));
    }
    // Whatever happened, one version; a re-run finds nothing left to do.
    let committed = versions(&index);
    assert!(
        committed.contains("| 1 ") && !committed.contains("| 2 "),
        "{committed}"
    );
    let again = cluster.dvi(&finalize).output().unwrap();
    assert_eq!(again.status.code(), Some(3), "{:?}", text(&again));
    let hits = succeeds(cluster.dvi(&format!(
        "SELECT count(*) AS n FROM vector_search('{index}', {QUERY}, 10, 8)"
    )))
    .0;
    assert!(hits.contains("| 10 "), "{hits}");
}

#[test]
fn restarts_late_executors_and_an_unreachable_scheduler() {
    let (_, bucket, mut cluster) = bucket_with_table(1);
    let index = format!("s3://{bucket}/idx");
    succeeds(cluster.dvi(&create_and_stage(&bucket, &index, "IVF_FLAT")));

    // A new scheduler on the same port: the executor finds it again.
    cluster.restart_scheduler(1);
    cluster.wait_registered(1);
    // An executor that joins now takes work too.
    cluster.add_executor();
    succeeds(cluster.dvi(&finalize(&index)));
    let hits = succeeds(cluster.dvi(&format!(
        "SELECT count(*) AS n FROM vector_search('{index}', {QUERY}, 10, 8)"
    )))
    .0;
    assert!(hits.contains("| 10 "), "{hits}");
    let late = &mut cluster.executors[1];
    assert!(late.stop().success());
    assert!(
        work_done(&late.log(), "merging") > 0,
        "the late executor merged nothing:\n{}",
        late.log()
    );

    // Nothing listens: one line, within seconds.
    let closed = free_port();
    let start = Instant::now();
    let output = Command::new(dvi_program())
        .args([
            "--scheduler",
            &format!("df://127.0.0.1:{closed}"),
            "-c",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("df://127.0.0.1:{closed} is unreachable")),
        "{stderr}"
    );
}

#[test]
fn help_an_operator_can_follow() {
    let output = Command::new(CLUSTER).arg("--help").output().unwrap();
    let (stdout, _) = text(&output);
    assert!(output.status.success());
    for command in ["scheduler", "executor", "sql"] {
        assert!(stdout.contains(command), "{stdout}");
    }
    let output = Command::new(CLUSTER)
        .args(["executor", "--slots", "none"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output)
        .1
        .starts_with("dvi-cluster: --slots takes a whole number"));
}

#[test]
fn the_deploy_files_use_flags_the_programs_accept() {
    let help = |args: &[&str], program: &str| {
        let output = Command::new(program).args(args).output().unwrap();
        assert!(output.status.success());
        text(&output).0
    };
    let accepted = [
        help(&["scheduler", "--help"], CLUSTER),
        help(&["executor", "--help"], CLUSTER),
        help(&["--help"], dvi_program().to_str().unwrap()),
    ]
    .concat();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = [
        "Dockerfile",
        "deploy/compose.yaml",
        "deploy/kubernetes/scheduler.yaml",
        "deploy/kubernetes/executor.yaml",
    ];
    let mut checked = 0;
    for file in files {
        let content = std::fs::read_to_string(root.join(file)).unwrap();
        // Flags inside the command lines: quoted "--flag" items.
        for flag in content.split('"').filter(|item| item.starts_with("--")) {
            if ["--release", "--locked", "--bin"].contains(&flag) {
                continue; // cargo's, in the Dockerfile
            }
            assert!(
                accepted.contains(&format!("{flag} ")),
                "{file}: {flag} is not an option of dvi-cluster or dvi"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} flags found");
}

#[test]
fn an_executor_killed_in_the_middle_of_a_shard_build() {
    let (server, bucket, mut cluster) = bucket_with_table(2);
    let index = format!("s3://{bucket}/idx");
    succeeds(cluster.dvi(&format!(
        "{}; CALL create_vector_index(index => '{index}', table => 'items', column => 'vec', \
           type => 'IVF_SQ', num_partitions => 8, seed => 3)",
        table(&bucket)
    )));
    // Each staged write waits a second: the writers are under way for a while.
    server.slow_writes(&bucket, "/_staging/", Duration::from_secs(1));
    let build = format!(
        "{}; CALL build_vector_index_shards(index => '{index}', table => 'items', \
           column => 'vec', row_id => 'row_id', shards => 4)",
        table(&bucket)
    );
    let client = cluster.dvi(&build).spawn().unwrap();
    wait_for("a staged write", Duration::from_secs(120), || {
        server.slow_writes_begun(&bucket) > 0
    });
    cluster.executors[1].kill();
    let output = client.wait_with_output().unwrap();
    server.slow_writes(&bucket, "/_staging/", Duration::ZERO);

    // Complete shards hold the whole table or nothing of it.
    let complete_rows = || {
        succeeds(local_dvi(&format!(
            "SELECT coalesce(sum(rows), 0) AS r FROM vector_index_shards('{index}') \
             WHERE status = 'complete'"
        )))
        .0
    };
    let rows = complete_rows();
    if output.status.success() {
        assert!(rows.contains("| 8000 |"), "{rows}");
    } else {
        assert!(
            rows.contains("| 0 "),
            "a failed build left complete shards: {rows}"
        );
        succeeds(cluster.dvi(&build));
        assert!(complete_rows().contains("| 8000 |"));
    }
    // The pieces of the killed writers are incomplete shards, passed over.
    let (finalized, _) = succeeds(cluster.dvi(&format!(
        "CALL finalize_vector_index(index => '{index}', skip_incomplete => true)"
    )));
    assert!(finalized.contains("| 8000 "), "{finalized}");
}
