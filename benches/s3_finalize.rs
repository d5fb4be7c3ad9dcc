//! Finalize through an object store: the index on an S3 server on 127.0.0.1.
//!
//! ```text
//! cargo bench --bench s3_finalize                          # N = 1,000,000
//! S3_BENCH_ROWS=200000 S3_BENCH_TYPES=IVF_SQ S3_BENCH_RUNS=3 cargo bench --bench s3_finalize
//! ```
//!
//! The finalize bench's data (a seeded Gaussian mixture, N × 128, 256 partitions,
//! 8 workers of 8 fragments) is staged through the `s3` feature into a bucket of the
//! S3 server the tests use (`s3s` over `s3s-fs`, in this process, on its own two
//! threads). Then, alternating in each run:
//!
//! - the **finalize** of a fresh server-side copy (`CopyObject`) of the staged index,
//!   in a child process so that its peak RSS is its own (the server's is not in it:
//!   the server stands for the remote store), reaching the server over HTTP like a
//!   coordinator on another machine; its removal of the consumed shards is timed
//!   apart, as in the finalize bench;
//! - the **copy**: a client-side copy of the same staged objects through the same
//!   store (GET each object whole and PUT it back under another prefix, two objects
//!   in flight), which moves the bytes the finalize reads and writes once each.
//!
//! Prints medians, min and max, the paired ratios and one `summary` line per type.

mod common;
#[path = "../tests/common/s3.rs"]
mod s3_server;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use datafusion_vector_index::datasets::{gaussian_mixture, vector_column};
use datafusion_vector_index::{
    IndexType, Metric, ShardWriter, TrainOptions, VectorIndex, VectorIndexSession,
};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use common::{child_field, env_types, env_usize, finalize_child, stats};

const DIM: usize = 128;
const PARTITIONS: usize = 256;
const WORKERS: usize = 8;
const FRAGMENTS: usize = 64;
const CLUSTERS: usize = 1024;

fn row_id(i: usize, rows: usize) -> u64 {
    let per = rows.div_ceil(FRAGMENTS);
    (((i / per) as u64) << 32) | (i % per) as u64
}

/// Every object below `prefix`: (path, size).
async fn objects(store: &dyn ObjectStore, prefix: &str) -> Vec<(Path, u64)> {
    store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| (m.location, m.size))
        .try_collect()
        .await
        .unwrap()
}

/// Moves every object below `from` to below `to`, `server_side` with `CopyObject`,
/// otherwise by GET and PUT through this client; returns the bytes copied.
async fn copy_prefix(store: &Arc<dyn ObjectStore>, from: &str, to: &str, server_side: bool) -> u64 {
    let listed = objects(store.as_ref(), from).await;
    let bytes = listed.iter().map(|(_, size)| size).sum();
    futures::stream::iter(listed)
        .map(|(path, _)| {
            let store = Arc::clone(store);
            let target = Path::from(format!("{to}{}", &path.as_ref()[from.len()..]));
            async move {
                if server_side {
                    store.copy(&path, &target).await
                } else {
                    let data = store.get(&path).await?.bytes().await?;
                    store.put(&target, data.into()).await.map(|_| ())
                }
            }
        })
        .buffer_unordered(2)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    bytes
}

async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &str) {
    for (path, _) in objects(store.as_ref(), prefix).await {
        store.delete(&path).await.unwrap();
    }
}

async fn bench_type(ty: IndexType, data: &[f32], rows: usize, runs: usize) -> String {
    println!("\n== {ty}: {rows} × {DIM}, {PARTITIONS} partitions, {WORKERS} workers, on S3");
    let server = s3_server::server();
    let bucket = server.bucket();
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .unwrap(),
    );
    let session = VectorIndexSession::new();
    let ctx = session.context().clone();
    let index = VectorIndex::open(&ctx, &format!("s3://{bucket}/pristine")).unwrap();

    let t = Instant::now();
    let options = TrainOptions::default()
        .with_index_type(ty)
        .with_metric(Metric::L2)
        .with_num_partitions(PARTITIONS);
    let sample_rows = options.sample_rows().min(rows);
    let sample =
        RecordBatch::try_from_iter([("vec", vector_column(&data[..sample_rows * DIM], DIM))])
            .unwrap();
    let model = index
        .create(ctx.read_batch(sample).unwrap(), "vec", &options)
        .await
        .unwrap();
    let model = Arc::new(model);
    let per_worker = FRAGMENTS / WORKERS;
    for w in 0..WORKERS {
        let mut writer = ShardWriter::new(index.location().clone(), Arc::clone(&model));
        let mine: Vec<usize> = (0..rows)
            .filter(|&i| (row_id(i, rows) >> 32) as usize / per_worker == w)
            .collect();
        for chunk in mine.chunks(8192) {
            let ids: Vec<u64> = chunk.iter().map(|&i| row_id(i, rows)).collect();
            let vals = &data[chunk[0] * DIM..(chunk[chunk.len() - 1] + 1) * DIM];
            writer
                .write(&ids, &vector_column(vals, DIM), "vec")
                .unwrap();
        }
        writer.finish().await.unwrap();
    }
    let staged: u64 = objects(store.as_ref(), "pristine/_staging")
        .await
        .iter()
        .map(|(_, s)| s)
        .sum();
    println!(
        "  training and staging through S3:    {:>8.2} s, {staged} bytes staged",
        t.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().unwrap();
    let (mut fin, mut cleanup, mut cp, mut rss) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let target = format!("run{run}");
        copy_prefix(&store, "pristine", &target, true).await;
        let out = Command::new(&exe)
            .env("S3_BENCH_CHILD", format!("s3://{bucket}/{target}"))
            .envs(server.env())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "finalize failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |k: &str| child_field(&text, k.trim_end_matches('='));
        fin.push(field("finalize_secs="));
        cleanup.push(field("cleanup_secs="));
        rss.push(field("peak_rss_kib=") / 1024.0);
        delete_prefix(&store, &target).await;

        let t = Instant::now();
        copy_prefix(&store, "pristine/_staging", &format!("cp{run}"), false).await;
        cp.push(t.elapsed().as_secs_f64());
        delete_prefix(&store, &format!("cp{run}")).await;
    }
    let committed: Vec<f64> = fin.iter().zip(&cleanup).map(|(f, c)| f - c).collect();
    let ratios: Vec<f64> = committed.iter().zip(&cp).map(|(f, c)| f / c).collect();
    let with_removal: Vec<f64> = fin.iter().zip(&cp).map(|(f, c)| f / c).collect();
    let (fm, fmin, fmax) = stats(&committed);
    let (um, _, _) = stats(&cleanup);
    let (cm, cmin, cmax) = stats(&cp);
    let (rm, rmin, rmax) = stats(&ratios);
    let (wm, _, _) = stats(&with_removal);
    let (pm, _, pmax) = stats(&rss);
    delete_prefix(&store, "pristine").await;
    println!(
        "  finalize ({runs} runs):                median {fm:.3} s  (min {fmin:.3}, max {fmax:.3})  plan + merge + commit"
    );
    println!("  then removing consumed shards:      median {um:.3} s");
    println!(
        "  client-side copy of _staging:       median {cm:.3} s  (min {cmin:.3}, max {cmax:.3})"
    );
    println!("  whole call / copy:                  median {wm:.2}");
    println!(
        "  without removal / copy, paired:     median {rm:.2}  (min {rmin:.2}, max {rmax:.2})"
    );
    println!("  finalize peak RSS:                  median {pm:.0} MiB (max {pmax:.0} MiB)");
    format!(
        "summary {} s3 finalize_over_copy={wm:.2} without_removal_over_copy={rm:.2} peak_rss_mib={pmax:.0}",
        ty.name()
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(url) = std::env::var("S3_BENCH_CHILD") {
        rt.block_on(finalize_child(&url, None));
        return;
    }
    let rows = env_usize("S3_BENCH_ROWS", 1_000_000);
    let runs = env_usize("S3_BENCH_RUNS", 3).max(1);
    let types = env_types("S3_BENCH_TYPES");
    println!(
        "s3 finalize bench: {rows} rows × {DIM}, {} cores, server at {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        s3_server::server().endpoint
    );
    let data = gaussian_mixture(rows, DIM, CLUSTERS, 0.15, 1, 7);
    let mut summaries = Vec::new();
    for ty in types {
        summaries.push(rt.block_on(bench_type(ty, &data, rows, runs)));
    }
    println!();
    for s in summaries {
        println!("{s}");
    }
}
