//! Finalize at the speed of the disk.
//!
//! ```text
//! cargo bench --bench finalize                          # N = 1,000,000
//! FINALIZE_BENCH_ROWS=4000000 cargo bench --bench finalize
//! FINALIZE_BENCH_TYPES=IVF_PQ FINALIZE_BENCH_RUNS=5 cargo bench --bench finalize
//! FINALIZE_BENCH_TYPES=IVF_HNSW_SQ FINALIZE_BENCH_HNSW_EF_CONSTRUCTION=64 cargo bench --bench finalize
//! ```
//!
//! For IVF_FLAT, IVF_PQ and IVF_SQ: a seeded Gaussian mixture of N × 128 vectors,
//! 256 partitions, 8 workers. The shards are staged once; then, alternating, the
//! finalize (plan + merge + commit, in a child process so its peak RSS is its own)
//! of a fresh copy of the staged index, read into the page cache first, and a
//! `cp -r` of the staged folder on the same disk are timed, each right after a fresh
//! copy of the staged index was read and written back (`sync`). The finalize time
//! is the whole call, as a user waits for it: plan, merge, commit and the removal
//! of the consumed shards that follows (moving them to `_trash/`; their files are
//! unlinked by a background thread the call does not wait for). The removal step is
//! also timed apart (the commit operator's `cleanup_time` metric). Prints medians,
//! min and max, the ratios, bytes, build throughput, training time, search
//! throughput and recall@10 at nprobes 20, and one `summary` line per type:
//! `finalize_over_copy` is the whole call ÷ `cp -r`, `without_removal_over_copy`
//! leaves the removal step out.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch};
use datafusion::prelude::SessionContext;
use datafusion_vector_index::datasets::{gaussian_mixture, vector_column};
use datafusion_vector_index::SearchOptions;
use datafusion_vector_index::{HnswParams, IndexType, Metric, TrainOptions};
use datafusion_vector_index::{VectorIndex, VectorIndexSession};

use common::{child_field, env_types, env_usize, finalize_child, ground_truth, stats};

const DIM: usize = 128;
const PARTITIONS: usize = 256;
const WORKERS: usize = 8;
const FRAGMENTS: usize = 64;
const CLUSTERS: usize = 1024;
const QUERIES: usize = 200;
const TRUTH_QUERIES: usize = 100;

fn dataset(rows: usize, seed: u64) -> Vec<f32> {
    gaussian_mixture(rows, DIM, CLUSTERS, 0.15, 1, seed)
}

fn row_id(i: usize, rows: usize) -> u64 {
    let per = rows.div_ceil(FRAGMENTS);
    (((i / per) as u64) << 32) | (i % per) as u64
}

fn vectors(values: &[f32]) -> ArrayRef {
    vector_column(values, DIM)
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

/// Reads every file below `dir`, so that it is in the page cache.
fn warm(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            warm(&p);
        } else {
            let mut f = std::fs::File::open(&p).unwrap();
            std::io::copy(&mut f, &mut std::io::sink()).unwrap();
        }
    }
}

/// Writes back every dirty page before a timed step, so that neither the finalize nor
/// the copy it is compared with pays for the write-back of an earlier step's gigabytes.
fn settle() {
    let ok = Command::new("sync").status().map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "sync failed");
}

/// Copies the staged index `pristine` to `to`, reads the copy into the page cache (as
/// the staged original is) and writes it back (staged shards are on disk by the time
/// a coordinator finalizes them; left dirty, the copy's pages would add to the
/// finalize's own and start the kernel's background write-back in the middle of it).
fn fresh_copy(pristine: &Path, to: &Path) {
    copy_tree(pristine, to);
    warm(to);
    settle();
}

fn copy_tree(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "cp -r {} {} failed", from.display(), to.display());
}

async fn bench_type(
    ty: IndexType,
    data: &[f32],
    rows: usize,
    queries: &[f32],
    truth: &[Vec<u64>],
    runs: usize,
    work: &Path,
) -> String {
    println!("\n== {ty}: {rows} × {DIM}, {PARTITIONS} partitions, {WORKERS} workers");
    let session = VectorIndexSession::new();
    let ctx: SessionContext = session.context().clone();
    let pristine = work.join(format!("{}-pristine", ty.name().to_lowercase()));
    let url = format!("file://{}", pristine.display());
    let index = VectorIndex::open(&ctx, &url).unwrap();

    let t = Instant::now();
    let defaults = HnswParams::default();
    let options = TrainOptions::default()
        .with_index_type(ty)
        .with_metric(Metric::L2)
        .with_num_partitions(PARTITIONS)
        .with_hnsw(HnswParams {
            m: env_usize("FINALIZE_BENCH_HNSW_M", defaults.m as usize) as u32,
            ef_construction: env_usize(
                "FINALIZE_BENCH_HNSW_EF_CONSTRUCTION",
                defaults.ef_construction as usize,
            ) as u32,
        });
    if ty.is_hnsw() {
        println!(
            "  graphs: m={}, ef_construction={}; search ef={}",
            options.hnsw.m,
            options.hnsw.ef_construction,
            SearchOptions::default().effective_ef()
        );
    }
    let table = RecordBatch::try_from_iter([("vec", vectors(data))]).unwrap();
    let model = index
        .create(ctx.read_batch(table).unwrap(), "vec", &options)
        .await
        .unwrap();
    println!(
        "  training ({} sample rows):          {:>8.2} s",
        options.sample_rows(),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let model = Arc::new(model);
    let per_worker = FRAGMENTS / WORKERS;
    for w in 0..WORKERS {
        let mut writer =
            datafusion_vector_index::ShardWriter::new(index.location().clone(), Arc::clone(&model));
        let mine: Vec<usize> = (0..rows)
            .filter(|&i| (row_id(i, rows) >> 32) as usize / per_worker == w)
            .collect();
        for chunk in mine.chunks(8192) {
            let ids: Vec<u64> = chunk.iter().map(|&i| row_id(i, rows)).collect();
            let vals = &data[chunk[0] * DIM..(chunk[chunk.len() - 1] + 1) * DIM];
            writer.write(&ids, &vectors(vals), "vec").unwrap();
        }
        writer.finish().await.unwrap();
    }
    let build = t.elapsed().as_secs_f64();
    let staged = dir_bytes(&pristine.join("_staging"));
    println!(
        "  worker build:                       {build:>8.2} s  ({:.0} vectors/s)",
        rows as f64 / build
    );
    println!("  bytes staged:                       {staged:>12}");

    let exe = std::env::current_exe().unwrap();
    let (mut fin, mut cleanup, mut cp, mut rss, mut written) = (vec![], vec![], vec![], vec![], 0);
    let mut last = PathBuf::new();
    for run in 0..runs {
        // The finalize reads a fresh copy of the staged index; the copy reads the
        // staged original.
        let target = work.join(format!("{}-run{run}", ty.name().to_lowercase()));
        fresh_copy(&pristine, &target);
        let out = Command::new(&exe)
            .env(
                "FINALIZE_BENCH_CHILD",
                format!("file://{}", target.display()),
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "finalize failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |k: &str| child_field(&text, k.trim_end_matches('='));
        fin.push(field("finalize_secs="));
        cleanup.push(field("cleanup_secs="));
        rss.push(field("peak_rss_kib=") / 1024.0);
        written = dir_bytes(&target.join("segments"));
        // Removed before `settle`, while the new segments are still unwritten:
        // deleting gigabytes already on disk makes the filesystem free their blocks
        // for seconds afterwards, which would land on the next timed step.
        if run + 1 < runs {
            std::fs::remove_dir_all(&target).ok();
        }

        // The copy step starts as the finalize step does, right after a fresh copy
        // of the staged index was written back: on this kind of VM the seconds after
        // writing back gigabytes are slower for whatever runs (a 4M IVF_FLAT `cp -r`
        // took 1.0 s after writing back nothing, 2.8–3.4 s after writing back a
        // fresh copy).
        let alike = work.join(format!("{}-alike{run}", ty.name().to_lowercase()));
        fresh_copy(&pristine, &alike);
        let copy_target = work.join(format!("{}-cp{run}", ty.name().to_lowercase()));
        let t = Instant::now();
        copy_tree(&pristine.join("_staging"), &copy_target);
        cp.push(t.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&copy_target).ok();
        std::fs::remove_dir_all(&alike).ok();
        last = target;
    }
    // The user waits for the whole call; the removal step is also reported apart.
    let committed: Vec<f64> = fin.iter().zip(&cleanup).map(|(f, c)| f - c).collect();
    let ratios: Vec<f64> = committed.iter().zip(&cp).map(|(f, c)| f / c).collect();
    let with_cleanup: Vec<f64> = fin.iter().zip(&cp).map(|(f, c)| f / c).collect();
    let (fm, fmin, fmax) = stats(&committed);
    let (um, umin, umax) = stats(&cleanup);
    let (cm, cmin, cmax) = stats(&cp);
    let (rm, rmin, rmax) = stats(&ratios);
    let (wm, wmin, wmax) = stats(&with_cleanup);
    let (pm, _, pmax) = stats(&rss);
    println!(
        "  finalize ({runs} runs):                median {fm:.3} s  (min {fmin:.3}, max {fmax:.3})  plan + merge + commit"
    );
    println!(
        "  then removing consumed shards:      median {um:.3} s  (min {umin:.3}, max {umax:.3})  (moved aside)"
    );
    println!(
        "  cp -r _staging ({runs} runs):          median {cm:.3} s  (min {cmin:.3}, max {cmax:.3})"
    );
    println!(
        "  whole call / cp, paired:            median {wm:.2}  (min {wmin:.2}, max {wmax:.2})"
    );
    println!(
        "  without removal / cp, paired:       median {rm:.2}  (min {rmin:.2}, max {rmax:.2})"
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  each run (s):                       finalize {} | removal {} | cp {}",
        list(&committed),
        list(&cleanup),
        list(&cp)
    );
    println!("  finalize peak RSS:                  median {pm:.0} MiB (max {pmax:.0} MiB)");
    println!("  bytes written (segments):           {written:>12}");

    let index = VectorIndex::open(&ctx, &format!("file://{}", last.display())).unwrap();
    let options = SearchOptions::default().with_k(10).with_nprobes(20);
    index.search(&ctx, &queries[..DIM], options).await.unwrap();
    let t = Instant::now();
    let hits = index.search(&ctx, queries, options).await.unwrap();
    let qps = QUERIES as f64 / t.elapsed().as_secs_f64();
    let found: usize = hits
        .iter()
        .zip(truth)
        .map(|(h, t)| h.iter().filter(|x| t.contains(&x.row_id)).count())
        .sum();
    let recall = found as f64 / (truth.len() * 10) as f64;
    println!(
        "  search ({QUERIES} queries, nprobes 20):   {qps:>8.0} queries/s, recall@10 {recall:.3}"
    );
    std::fs::remove_dir_all(&last).ok();
    // FINALIZE_BENCH_KEEP=1 keeps the staged index, e.g. to profile a finalize of it.
    if std::env::var("FINALIZE_BENCH_KEEP").is_err() {
        std::fs::remove_dir_all(&pristine).ok();
    }
    format!(
        "summary {} finalize_over_copy={wm:.2} peak_rss_mib={pmax:.0} recall_at_10={recall:.3} without_removal_over_copy={rm:.2}",
        ty.name()
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(url) = std::env::var("FINALIZE_BENCH_CHILD") {
        // FINALIZE_BENCH_MERGE_PARTITIONS=1 merges on one thread, e.g. to profile it.
        let merge_partitions = std::env::var("FINALIZE_BENCH_MERGE_PARTITIONS")
            .ok()
            .and_then(|v| v.parse().ok());
        rt.block_on(finalize_child(&url, merge_partitions));
        return;
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rows = env_usize("FINALIZE_BENCH_ROWS", 1_000_000);
    let runs = env_usize("FINALIZE_BENCH_RUNS", 5).max(1);
    let types = env_types("FINALIZE_BENCH_TYPES");
    let keep = std::env::var("FINALIZE_BENCH_KEEP").is_ok();
    let work = tempfile::Builder::new()
        .prefix("finalize-bench")
        .tempdir_in(
            std::env::var("FINALIZE_BENCH_DIR")
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )
        .unwrap();
    println!(
        "finalize bench: {rows} rows × {DIM}, {} cores, work dir {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        work.path().display()
    );
    let t = Instant::now();
    let data = dataset(rows, 7);
    let queries = dataset(QUERIES, 99);
    let truth = ground_truth(&data, &queries, DIM, TRUTH_QUERIES, 10, |i| row_id(i, rows));
    println!(
        "  data and ground truth:              {:>8.2} s",
        t.elapsed().as_secs_f64()
    );
    let mut summaries = Vec::new();
    for ty in types {
        summaries.push(rt.block_on(bench_type(
            ty,
            &data,
            rows,
            &queries,
            &truth,
            runs,
            work.path(),
        )));
    }
    println!();
    for s in summaries {
        println!("{s}");
    }
    if keep {
        println!("kept {}", work.keep().display());
    }
}
