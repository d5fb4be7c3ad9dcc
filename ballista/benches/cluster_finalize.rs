//! Finalize on a Ballista cluster in this process, against the in-process plan.
//!
//! ```text
//! cargo bench -p datafusion-vector-index-ballista --bench cluster_finalize
//! CLUSTER_BENCH_TYPES=IVF_FLAT CLUSTER_BENCH_RUNS=5 cargo bench -p datafusion-vector-index-ballista --bench cluster_finalize
//! ```
//!
//! The data of `cargo bench --bench finalize`: a seeded Gaussian mixture of N × 128
//! vectors (N = `CLUSTER_BENCH_ROWS`, 1,000,000 by default), 256 partitions, 8
//! shards staged once. Then, per run and in turn, each on a fresh copy of the staged
//! index, a finalize (the whole `CALL`, commit and removal included):
//!
//! - `in-process`: DataFusion's executor in this process, the session's default
//!   partitions (one per core);
//! - `1 executor` and `2 executors`: a Ballista scheduler and one or two executors
//!   started in this process, one task slot each (a one-core executor), the merge
//!   spread over 8 partitions so tasks balance dynamically;
//! - `1 process` and `2 processes`: the same on `dvi-cluster scheduler` and one or
//!   two `dvi-cluster executor` processes (`--slots 1`), as an operator starts them.
//!
//! `CLUSTER_BENCH_VARIANTS` picks some (`in-process,1e,2e,1p,2p`, all by default).
//!
//! Prints each variant's median, min and max and the ratios of medians:
//! `1 ÷ 2 executors` (the speed-up from a second executor) and `2 executors ÷
//! in-process` (the distributed path's overhead). The machine's cores bound the
//! speed-up: every executor here shares them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion_vector_index::datasets::{gaussian_mixture, vector_column};
use datafusion_vector_index::{
    IndexType, Metric, ShardWriter, TrainOptions, VectorIndex, VectorIndexSession,
};
use datafusion_vector_index_ballista::{ExecutorSetup, InProcessCluster};

const DIM: usize = 128;
const PARTITIONS: usize = 256;
const SHARDS: usize = 8;
const FRAGMENTS: usize = 64;
const CLUSTER_PARTITIONS: usize = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cp -r {} {}", from.display(), to.display());
}

async fn stage(ty: IndexType, data: &[f32], rows: usize, dir: &Path) {
    let session = VectorIndexSession::new();
    let ctx = session.context();
    let index = VectorIndex::open(ctx, &format!("file://{}", dir.display())).unwrap();
    let options = TrainOptions::default()
        .with_index_type(ty)
        .with_metric(Metric::L2)
        .with_num_partitions(PARTITIONS);
    let t = Instant::now();
    let table = RecordBatch::try_from_iter([("vec", vector_column(data, DIM))]).unwrap();
    let model = Arc::new(
        index
            .create(ctx.read_batch(table).unwrap(), "vec", &options)
            .await
            .unwrap(),
    );
    let per = rows.div_ceil(FRAGMENTS);
    let per_shard = FRAGMENTS / SHARDS;
    for shard in 0..SHARDS {
        let mut writer = ShardWriter::new(index.location().clone(), Arc::clone(&model));
        let first = shard * per_shard * per;
        let last = ((shard + 1) * per_shard * per).min(rows);
        for start in (first..last).step_by(8192) {
            let end = (start + 8192).min(last);
            let ids: Vec<u64> = (start..end)
                .map(|i| (((i / per) as u64) << 32) | (i % per) as u64)
                .collect();
            writer
                .write(
                    &ids,
                    &vector_column(&data[start * DIM..end * DIM], DIM),
                    "vec",
                )
                .unwrap();
        }
        writer.finish().await.unwrap();
    }
    println!(
        "  trained and staged {SHARDS} shards in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    InProcess,
    /// Executors in this process.
    Executors(usize),
    /// `dvi-cluster` processes.
    Processes(usize),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::InProcess => "in-process".to_string(),
            Self::Executors(1) => "1 executor".to_string(),
            Self::Executors(n) => format!("{n} executors"),
            Self::Processes(1) => "1 process".to_string(),
            Self::Processes(n) => format!("{n} processes"),
        }
    }

    fn parse(text: &str) -> Self {
        match text.trim() {
            "in-process" => Self::InProcess,
            other => {
                let (n, kind) = other.split_at(other.len() - 1);
                let n = n
                    .parse()
                    .expect("CLUSTER_BENCH_VARIANTS: like in-process,1e,2p");
                match kind {
                    "e" => Self::Executors(n),
                    "p" => Self::Processes(n),
                    _ => panic!("CLUSTER_BENCH_VARIANTS: like in-process,1e,2p"),
                }
            }
        }
    }
}

/// A `dvi-cluster` scheduler and executors, killed when dropped.
struct Processes {
    url: String,
    children: Vec<Child>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a scheduler and `executors` one-slot executors, and waits until all
/// have registered.
fn start_processes(executors: usize, work: &Path) -> Processes {
    let program = env!("CARGO_BIN_EXE_dvi-cluster");
    let port = free_port();
    let spawn = |args: Vec<String>| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut children = vec![spawn(vec![
        "scheduler".into(),
        "--bind".into(),
        format!("127.0.0.1:{port}"),
        "--log-level".into(),
        "warn".into(),
    ])];
    for n in 0..executors {
        children.push(spawn(vec![
            "executor".into(),
            "--scheduler".into(),
            format!("127.0.0.1:{port}"),
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
            "--work-dir".into(),
            work.join(format!("executor-{n}")).display().to_string(),
            "--log-level".into(),
            "warn".into(),
        ]));
    }
    let ready = format!("ready: {executors} executors");
    let start = Instant::now();
    while !readyz(port).contains(&ready) {
        assert!(start.elapsed().as_secs() < 60, "the cluster did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Processes {
        url: format!("df://127.0.0.1:{port}"),
        children,
    }
}

fn readyz(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Finalizes a fresh copy of `pristine` `runs` times with `variant`; seconds per run.
fn time_variant(variant: Variant, pristine: &Path, work: &Path, runs: usize) -> Vec<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut _processes = None;
        let (session, _cluster) = match variant {
            Variant::InProcess => (VectorIndexSession::new(), None),
            Variant::Processes(n) => {
                let processes = start_processes(n, work);
                let session = datafusion_vector_index_ballista::connect(&processes.url).unwrap();
                _processes = Some(processes);
                (session, None)
            }
            Variant::Executors(n) => {
                let runtime = Arc::new(RuntimeEnv::default());
                let executors = (0..n)
                    .map(|_| ExecutorSetup::new(1, Arc::clone(&runtime)))
                    .collect();
                let cluster = InProcessCluster::start(runtime, executors).await.unwrap();
                let session = cluster.connect().unwrap();
                (session, Some(cluster))
            }
        };
        if variant != Variant::InProcess {
            // Merge tasks that free executors pull, so they balance dynamically.
            session
                .context()
                .state_ref()
                .write()
                .config_mut()
                .options_mut()
                .execution
                .target_partitions = CLUSTER_PARTITIONS;
        }
        let mut times = Vec::new();
        for run in 0..runs {
            let target = work.join(format!("run{run}"));
            copy_tree(pristine, &target);
            let _ = Command::new("sync").status();
            let sql = format!(
                "CALL finalize_vector_index(index => 'file://{}')",
                target.display()
            );
            let t = Instant::now();
            session.sql(&sql).await.unwrap().collect().await.unwrap();
            times.push(t.elapsed().as_secs_f64());
            let _ = std::fs::remove_dir_all(&target);
        }
        times
    })
}

fn main() {
    let rows = env_usize("CLUSTER_BENCH_ROWS", 1_000_000);
    let runs = env_usize("CLUSTER_BENCH_RUNS", 3).max(1);
    let types: Vec<IndexType> = std::env::var("CLUSTER_BENCH_TYPES")
        .unwrap_or_else(|_| "IVF_HNSW_SQ,IVF_FLAT".into())
        .split(',')
        .map(|t| t.trim().parse().unwrap())
        .collect();
    let work: PathBuf = std::env::var("CLUSTER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("dvi-cluster-bench"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    println!(
        "finalize on Ballista: {rows} × {DIM}, {PARTITIONS} partitions, {SHARDS} shards, {runs} runs, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let variants: Vec<Variant> = std::env::var("CLUSTER_BENCH_VARIANTS")
        .unwrap_or_else(|_| "in-process,1e,2e,1p,2p".into())
        .split(',')
        .map(Variant::parse)
        .collect();
    let data = gaussian_mixture(rows, DIM, 1024, 0.15, 1, 7);
    for ty in types {
        println!("\n== {ty}");
        let pristine = work.join(format!("{}-pristine", ty.name().to_lowercase()));
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(stage(ty, &data, rows, &pristine));
        let mut medians = Vec::new();
        for &variant in &variants {
            let times = time_variant(variant, &pristine, &work, runs);
            let (median, min, max) = median_min_max(&times);
            println!(
                "  {:<12} median {median:>7.2} s  (min {min:.2}, max {max:.2})",
                variant.name()
            );
            medians.push(median);
        }
        let median = |v: Variant| variants.iter().position(|x| *x == v).map(|i| medians[i]);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        let in_process = median(Variant::InProcess);
        println!(
            "  summary type={ty} executors_1_over_2={} processes_1_over_2={} executors_2_over_in_process={} processes_2_over_in_process={} processes_2_minus_in_process={}",
            ratio(median(Variant::Executors(1)), median(Variant::Executors(2))),
            ratio(median(Variant::Processes(1)), median(Variant::Processes(2))),
            ratio(median(Variant::Executors(2)), in_process),
            ratio(median(Variant::Processes(2)), in_process),
            match (median(Variant::Processes(2)), in_process) {
                (Some(p), Some(i)) => format!("{:.2}s", p - i),
                _ => "-".to_string(),
            },
        );
        let _ = std::fs::remove_dir_all(&pristine);
    }
}
