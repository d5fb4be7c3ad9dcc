//! Search throughput: one segment against 64, cold and warm, batches and SQL calls.
//!
//! ```text
//! cargo bench --bench search                             # N = 1,000,000
//! SEARCH_BENCH_ROWS=200000 SEARCH_BENCH_NPROBES=12 SEARCH_BENCH_TYPES=IVF_SQ cargo bench --bench search
//! ```
//!
//! For IVF_FLAT, IVF_PQ and IVF_SQ (`SEARCH_BENCH_TYPES`): the finalize bench's data
//! (a seeded Gaussian mixture of N × 128 vectors, 256 partitions), staged by 64
//! workers (one fragment each), finalized twice: into one segment, and with
//! `segments => 'per_shard'` into 64. Each index is searched at nprobes 20, k 10,
//! through the public API:
//!
//! - `batch`: 200 queries in one `VectorIndex::search` call;
//! - `sql call`: the same 200 queries, one `SELECT … FROM vector_search(…)` per query,
//!   the query a list literal (`[…]`; warm also as text, `'[…]'`);
//!
//! each with a session whose [`SearchCache`] holds nothing yet (`cold`: the model,
//! manifests and probed partitions are read and decoded; the files themselves are
//! in the page cache), again with the same cache (`warm`), and with a cache of zero
//! bytes (`no cache`). Every figure is measured once per round (`SEARCH_BENCH_RUNS`
//! rounds, default 5) and printed as its median and spread (min–max). Recall@10 of
//! the first 100 queries against brute force. One `summary` line per index.
//!
//! `SEARCH_BENCH_FAISS=<python with faiss>` also runs `benches/faiss_search.py
//! --serve` on the same data and measures faiss once after each round of the
//! one-segment index, so the two alternate in one sitting; the summary then gives
//! ours ÷ faiss of the medians. `DVI_SIMD=avx2` (or `portable`) measures the
//! narrower kernels on a CPU that has AVX-512.
//!
//! `SEARCH_BENCH_BREAKDOWN=1` instead prints where a warm one-query SQL call spends
//! its time (parsing and planning, running, the query written as text, the API
//! alone, nprobes 1).

mod common;

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use datafusion_vector_index::datasets::{gaussian_mixture, vector_column};
use datafusion_vector_index::{
    FinalizeOptions, IndexType, Metric, SearchCache, SearchOptions, SegmentGrouping, ShardWriter,
    TrainOptions, VectorIndex, VectorIndexSession,
};

use common::{env_types, env_usize, ground_truth, stats};

const DIM: usize = 128;
const PARTITIONS: usize = 256;
const FRAGMENTS: usize = 64;
const CLUSTERS: usize = 1024;
const QUERIES: usize = 200;
const TRUTH_QUERIES: usize = 100;
const CACHE_BYTES: usize = 4 << 30;

fn row_id(i: usize, rows: usize) -> u64 {
    let per = rows.div_ceil(FRAGMENTS);
    (((i / per) as u64) << 32) | (i % per) as u64
}

struct Setup<'a> {
    queries: &'a [f32],
    truth: &'a [Vec<u64>],
    options: SearchOptions,
    runs: usize,
}

/// A figure measured once per round.
#[derive(Debug, Default, Clone)]
struct Runs(Vec<f64>);

impl Runs {
    fn median(&self) -> f64 {
        stats(&self.0).0
    }

    /// `median (min–max)`.
    fn show(&self) -> String {
        let (median, min, max) = stats(&self.0);
        format!("{median:.0} ({min:.0}–{max:.0})")
    }
}

/// Queries per second of a batch and of one SQL call per query, cold, warm and
/// without a cache, each once per round; recall@10.
#[derive(Debug, Default)]
struct Figures {
    batch_cold: Runs,
    batch_warm: Runs,
    batch_none: Runs,
    call_cold: Runs,
    call_warm: Runs,
    call_none: Runs,
    /// Warm, the query written as text.
    call_text: Runs,
    recall: f64,
}

/// faiss's figures, once per round, alternating with ours.
#[derive(Debug, Default)]
struct FaissFigures {
    batch: Runs,
    batch_one_thread: Runs,
    call: Runs,
    recall: f64,
}

/// `benches/faiss_search.py --serve` on the bench's data: indexes built once, then
/// measured on request.
struct Faiss {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    _data: tempfile::TempDir,
}

impl Faiss {
    fn start(python: &str, data: &[f32], queries: &[f32], types: &[IndexType]) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        export(dir.path(), data, queries);
        let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/faiss_search.py");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .arg(dir.path())
            .arg("--serve")
            .arg("--types")
            .arg(names.join(","))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("SEARCH_BENCH_FAISS={python}: {e}"));
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            println!("  {line}");
            if line == "ready" {
                break;
            }
        }
        Self {
            child,
            lines,
            _data: dir,
        }
    }

    /// One more measurement of `ty`, into `f`.
    fn round(&mut self, ty: IndexType, f: &mut FaissFigures) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", ty.name()).unwrap();
        stdin.flush().unwrap();
        let line = self.lines.next().unwrap().unwrap();
        assert!(line.starts_with("summary faiss"), "faiss said: {line}");
        f.batch.0.push(common::child_field(&line, "batch_qps"));
        f.batch_one_thread
            .0
            .push(common::child_field(&line, "batch_1thread_qps"));
        f.call.0.push(common::child_field(&line, "call_qps"));
        f.recall = common::child_field(&line, "recall_at_10");
    }
}

/// Writes the vectors and queries (little-endian f32, row-major) for
/// `benches/faiss_search.py`.
fn export(dir: &std::path::Path, data: &[f32], queries: &[f32]) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("base.f32"), bytes(data)).unwrap();
    std::fs::write(dir.join("queries.f32"), bytes(queries)).unwrap();
}

async fn batch_qps(session: &VectorIndexSession, url: &str, s: &Setup<'_>) -> (f64, f64) {
    let ctx = session.context();
    let index = VectorIndex::open(ctx, url).unwrap();
    let t = Instant::now();
    let hits = index.search(ctx, s.queries, s.options).await.unwrap();
    let qps = QUERIES as f64 / t.elapsed().as_secs_f64();
    let found: usize = hits
        .iter()
        .zip(s.truth)
        .map(|(h, t)| h.iter().filter(|x| t.contains(&x.row_id)).count())
        .sum();
    (qps, found as f64 / (s.truth.len() * s.options.k) as f64)
}

/// One SQL call per query; the query as a list literal (`[…]`), or with `text` as
/// a string (`'[…]'`).
async fn call_qps(session: &VectorIndexSession, url: &str, s: &Setup<'_>, text: bool) -> f64 {
    let quote = if text { "'" } else { "" };
    let t = Instant::now();
    for q in s.queries.chunks(DIM) {
        let literal: Vec<String> = q.iter().map(|x| x.to_string()).collect();
        let sql = format!(
            "SELECT row_id, distance FROM vector_search('{url}', {quote}[{}]{quote}, {}, {})",
            literal.join(", "),
            s.options.k,
            s.options.nprobes
        );
        let rows: usize = session
            .sql(&sql)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        assert_eq!(rows, s.options.k);
    }
    QUERIES as f64 / t.elapsed().as_secs_f64()
}

/// Median milliseconds of 50 runs of `f`.
async fn median_ms<F: std::future::Future<Output = ()>>(mut f: impl FnMut() -> F) -> f64 {
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats(&times).0
}

/// Where a warm call with one query spends its time: SQL parsing and logical
/// planning (`sql()`), physical planning and running (`collect()`), against a
/// trivial statement, a bare 128-float literal, and the public API's search with
/// nprobes 20 and 1.
async fn breakdown(session: &VectorIndexSession, url: &str, s: &Setup<'_>) {
    let q = &s.queries[..DIM];
    let list: Vec<String> = q.iter().map(|x| x.to_string()).collect();
    let list = list.join(", ");
    let (k, nprobes) = (s.options.k, s.options.nprobes);
    for (what, sql) in [
        ("SELECT 1", "SELECT 1".to_string()),
        ("SELECT [128 floats]", format!("SELECT [{list}]")),
        (
            "vector_search",
            format!(
                "SELECT row_id, distance FROM vector_search('{url}', [{list}], {k}, {nprobes})"
            ),
        ),
        (
            "vector_search, query as text",
            format!(
                "SELECT row_id, distance FROM vector_search('{url}', '[{list}]', {k}, {nprobes})"
            ),
        ),
    ] {
        let plan = median_ms(|| async {
            session.sql(&sql).await.unwrap();
        })
        .await;
        let whole = median_ms(|| async {
            session.sql(&sql).await.unwrap().collect().await.unwrap();
        })
        .await;
        println!("  {what}: sql() {plan:.3} ms, sql() and collect() {whole:.3} ms");
    }
    let ctx = session.context();
    let index = VectorIndex::open(ctx, url).unwrap();
    for nprobes in [s.options.nprobes, 1] {
        let options = s.options.with_nprobes(nprobes);
        let api = median_ms(|| async {
            index.search(ctx, q, options).await.unwrap();
        })
        .await;
        println!("  VectorIndex::search of one query, nprobes {nprobes}: {api:.3} ms");
    }
}

/// `s.runs` rounds of every figure; after each, a round of faiss when given.
async fn measure(
    url: &str,
    s: &Setup<'_>,
    mut faiss: Option<(&mut Faiss, IndexType, &mut FaissFigures)>,
) -> Figures {
    let mut f = Figures::default();
    let none = VectorIndexSession::with_search_cache(Arc::new(SearchCache::new(0)));
    for _ in 0..s.runs {
        let cached = VectorIndexSession::with_search_cache(Arc::new(SearchCache::new(CACHE_BYTES)));
        let (cold, recall) = batch_qps(&cached, url, s).await;
        f.recall = recall;
        f.batch_cold.0.push(cold);
        f.batch_warm.0.push(batch_qps(&cached, url, s).await.0);
        f.batch_none.0.push(batch_qps(&none, url, s).await.0);

        let cached = VectorIndexSession::with_search_cache(Arc::new(SearchCache::new(CACHE_BYTES)));
        f.call_cold.0.push(call_qps(&cached, url, s, false).await);
        f.call_warm.0.push(call_qps(&cached, url, s, false).await);
        f.call_text.0.push(call_qps(&cached, url, s, true).await);
        f.call_none.0.push(call_qps(&none, url, s, false).await);
        if let Some((faiss, ty, figures)) = &mut faiss {
            faiss.round(*ty, figures);
        }
    }
    f
}

async fn bench_type(
    ty: IndexType,
    data: &[f32],
    rows: usize,
    s: &Setup<'_>,
    mut faiss: Option<&mut Faiss>,
) -> Vec<String> {
    println!("\n== {ty}: {rows} × {DIM}, {PARTITIONS} partitions, {FRAGMENTS} workers");
    let work = tempfile::tempdir().unwrap();
    let session = VectorIndexSession::new();
    let ctx = session.context();
    let one_dir = work.path().join("one");
    let url = |dir: &std::path::Path| format!("file://{}", dir.display());
    let index = VectorIndex::open(ctx, &url(&one_dir)).unwrap();
    let options = TrainOptions::default()
        .with_index_type(ty)
        .with_metric(Metric::L2)
        .with_num_partitions(PARTITIONS);
    let table = RecordBatch::try_from_iter([("vec", vector_column(data, DIM))]).unwrap();
    let model = Arc::new(
        index
            .create(ctx.read_batch(table).unwrap(), "vec", &options)
            .await
            .unwrap(),
    );
    let per = rows.div_ceil(FRAGMENTS);
    for chunk in (0..rows).collect::<Vec<_>>().chunks(per) {
        let mut writer = ShardWriter::new(index.location().clone(), Arc::clone(&model));
        for part in chunk.chunks(8192) {
            let ids: Vec<u64> = part.iter().map(|&i| row_id(i, rows)).collect();
            let vals = &data[part[0] * DIM..(part[part.len() - 1] + 1) * DIM];
            writer
                .write(&ids, &vector_column(vals, DIM), "vec")
                .unwrap();
        }
        writer.finish().await.unwrap();
    }
    let many_dir = work.path().join("many");
    let ok = std::process::Command::new("cp")
        .arg("-r")
        .arg(&one_dir)
        .arg(&many_dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -r failed");
    let mut summaries = Vec::new();
    let mut figures = Vec::new();
    for (dir, grouping) in [
        (&one_dir, SegmentGrouping::Single),
        (&many_dir, SegmentGrouping::PerShard),
    ] {
        let index = VectorIndex::open(ctx, &url(dir)).unwrap();
        let committed = index
            .finalize(ctx, &FinalizeOptions::default().with_grouping(grouping))
            .await
            .unwrap();
        let segments: usize = committed.segments.len();
        // SEARCH_BENCH_BREAKDOWN=1 prints where a warm one-query call's time goes
        // (on the first index) and measures nothing else.
        if std::env::var("SEARCH_BENCH_BREAKDOWN").is_ok() {
            let session =
                VectorIndexSession::with_search_cache(Arc::new(SearchCache::new(CACHE_BYTES)));
            call_qps(&session, &url(dir), s, false).await;
            breakdown(&session, &url(dir), s).await;
            return summaries;
        }
        // SEARCH_BENCH_PROFILE=<secs> repeats warm batch searches (with
        // SEARCH_BENCH_PROFILE_CALLS set: SQL calls; with SEARCH_BENCH_PROFILE_ONE:
        // one query per API call) of the one-segment index (with
        // SEARCH_BENCH_PROFILE_MANY set: the 64-segment one) that long, e.g. under
        // `perf record`, and measures nothing else.
        if let Some(secs) = std::env::var("SEARCH_BENCH_PROFILE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            let many = std::env::var("SEARCH_BENCH_PROFILE_MANY").is_ok();
            if many != (grouping == SegmentGrouping::PerShard) {
                continue;
            }
            let session =
                VectorIndexSession::with_search_cache(Arc::new(SearchCache::new(CACHE_BYTES)));
            batch_qps(&session, &url(dir), s).await;
            println!("  profiling for {secs} s");
            let t = Instant::now();
            let mut n = 0;
            let calls = std::env::var("SEARCH_BENCH_PROFILE_CALLS").is_ok();
            let one = std::env::var("SEARCH_BENCH_PROFILE_ONE").is_ok();
            let index = VectorIndex::open(session.context(), &url(dir)).unwrap();
            while t.elapsed().as_secs_f64() < secs {
                if calls {
                    call_qps(&session, &url(dir), s, false).await;
                } else if one {
                    for q in s.queries.chunks(DIM) {
                        index.search(session.context(), q, s.options).await.unwrap();
                    }
                } else {
                    batch_qps(&session, &url(dir), s).await;
                }
                n += 1;
            }
            println!(
                "  profiled {n} rounds of {QUERIES} queries: {:.0} q/s",
                (n * QUERIES) as f64 / t.elapsed().as_secs_f64()
            );
            return summaries;
        }
        let mut faiss_figures = FaissFigures::default();
        // faiss alternates with the one-segment index's rounds.
        let with_faiss = match (&mut faiss, grouping) {
            (Some(faiss), SegmentGrouping::Single) => Some((&mut **faiss, ty, &mut faiss_figures)),
            _ => None,
        };
        let has_faiss = with_faiss.is_some();
        let f = measure(&url(dir), s, with_faiss).await;
        println!(
            "  {segments:>2} segment(s), q/s, median (min–max) of {} rounds, recall@10 {:.3}",
            s.runs, f.recall
        );
        println!(
            "    batch of {QUERIES}: cold {}  warm {}  no cache {}",
            f.batch_cold.show(),
            f.batch_warm.show(),
            f.batch_none.show()
        );
        println!(
            "    one SQL call per query: cold {}  warm {}  no cache {}  warm, query as text {}",
            f.call_cold.show(),
            f.call_warm.show(),
            f.call_none.show(),
            f.call_text.show()
        );
        summaries.push(format!(
            "summary {} segments={segments} nprobes={} batch_cold_qps={:.0} batch_warm_qps={:.0} batch_no_cache_qps={:.0} call_cold_qps={:.0} call_warm_qps={:.0} call_no_cache_qps={:.0} call_text_warm_qps={:.0} recall_at_10={:.3}",
            ty.name(),
            s.options.nprobes,
            f.batch_cold.median(),
            f.batch_warm.median(),
            f.batch_none.median(),
            f.call_cold.median(),
            f.call_warm.median(),
            f.call_none.median(),
            f.call_text.median(),
            f.recall
        ));
        if has_faiss {
            let g = &faiss_figures;
            println!(
                "    faiss, alternating: batch {} (1 thread {})  one query per call {}, recall@10 {:.3}",
                g.batch.show(),
                g.batch_one_thread.show(),
                g.call.show(),
                g.recall
            );
            let over = |ours: &Runs, theirs: &Runs| ours.median() / theirs.median();
            let line = format!(
                "summary {} over_faiss batch_warm={:.2} call_warm={:.2} call_text_warm={:.2} batch_cold={:.2} call_cold={:.2} faiss_recall_at_10={:.3}",
                ty.name(),
                over(&f.batch_warm, &g.batch),
                over(&f.call_warm, &g.call),
                over(&f.call_text, &g.call),
                over(&f.batch_cold, &g.batch),
                over(&f.call_cold, &g.call),
                g.recall
            );
            println!(
                "    ours ÷ faiss (medians): {}",
                &line[line.find("batch_warm").unwrap_or(0)..]
            );
            summaries.push(line);
        }
        figures.push(f);
    }
    if let [one, many] = &figures[..] {
        let line = format!(
            "summary {} one_over_many_segments batch_warm={:.2} call_warm={:.2}",
            ty.name(),
            one.batch_warm.median() / many.batch_warm.median(),
            one.call_warm.median() / many.call_warm.median()
        );
        println!(
            "  one segment ÷ 64 segments, warm q/s: batch {:.2}, SQL call {:.2}",
            one.batch_warm.median() / many.batch_warm.median(),
            one.call_warm.median() / many.call_warm.median()
        );
        summaries.push(line);
    }
    summaries
}

fn main() {
    let rows = env_usize("SEARCH_BENCH_ROWS", 1_000_000);
    let runs = env_usize("SEARCH_BENCH_RUNS", 5).max(1);
    let nprobes = env_usize("SEARCH_BENCH_NPROBES", 20);
    let types = env_types("SEARCH_BENCH_TYPES");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "search bench: {rows} rows × {DIM}, {} cores, nprobes {nprobes}, k 10, {QUERIES} queries",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "CPU: {}; kernels: {} ({}=avx2 or portable for narrower ones)",
        common::cpu_description(),
        datafusion_vector_index::simd_level().name(),
        datafusion_vector_index::SIMD_ENV
    );
    let data = gaussian_mixture(rows, DIM, CLUSTERS, 0.15, 1, 7);
    let queries = gaussian_mixture(QUERIES, DIM, CLUSTERS, 0.15, 1, 99);
    // SEARCH_BENCH_EXPORT=<dir> writes the vectors and queries for
    // benches/faiss_search.py, and measures nothing.
    if let Ok(dir) = std::env::var("SEARCH_BENCH_EXPORT") {
        export(std::path::Path::new(&dir), &data, &queries);
        println!("wrote {rows} vectors and {QUERIES} queries of dimension {DIM} to {dir}");
        return;
    }
    let mut faiss = std::env::var("SEARCH_BENCH_FAISS")
        .ok()
        .map(|python| Faiss::start(&python, &data, &queries, &types));
    let truth = ground_truth(&data, &queries, DIM, TRUTH_QUERIES, 10, |i| row_id(i, rows));
    let setup = Setup {
        queries: &queries,
        truth: &truth,
        options: SearchOptions::default().with_k(10).with_nprobes(nprobes),
        runs,
    };
    let mut summaries = Vec::new();
    for ty in types {
        summaries.extend(rt.block_on(bench_type(ty, &data, rows, &setup, faiss.as_mut())));
    }
    println!();
    for s in summaries {
        println!("{s}");
    }
}
