//! The whole flow on a seeded clustered dataset: train a model, build shards with
//! several concurrent workers, finalize through SQL, search, and measure recall@10
//! against brute force, for IVF_FLAT, IVF_PQ, IVF_SQ and IVF_HNSW_SQ (graph search
//! with the default `ef`).
//!
//! ```text
//! cargo run --example quickstart [INDEX_ROOT] [--rows N]
//! ```
//! INDEX_ROOT is a folder or URL under which one index per type is created
//! (default: a temporary folder, removed at the end).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::prelude::SessionContext;
use datafusion_vector_index::datasets::gaussian_mixture;
use datafusion_vector_index::SearchOptions;
use datafusion_vector_index::{Metric, VectorIndex, VectorIndexSession};

const DIM: usize = 64;
const CLUSTERS: usize = 48;
const FRAGMENTS: u64 = 8;
const WORKERS: u64 = 4;
const PARTITIONS: usize = 64;
const QUERIES: usize = 200;
const K: usize = 10;
const NPROBES: usize = 12;

/// A Gaussian mixture: `CLUSTERS` centers in [-1, 1]^DIM, σ = 0.25 around them; queries
/// share the data's centers.
fn dataset(rows: usize, seed: u64) -> Vec<f32> {
    gaussian_mixture(rows, DIM, CLUSTERS, 0.25, 7, seed)
}

/// Row ids follow Lance's convention: fragment in the high 32 bits.
fn row_id(i: usize, rows: usize) -> u64 {
    let per_fragment = rows.div_ceil(FRAGMENTS as usize);
    (((i / per_fragment) as u64) << 32) | (i % per_fragment) as u64
}

fn table(vectors: &[f32], rows: usize) -> Result<MemTable> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::UInt64, false),
        Field::new(
            "vec",
            DataType::FixedSizeList(Arc::clone(&item), DIM as i32),
            false,
        ),
    ]));
    let mut batches = Vec::new();
    for start in (0..rows).step_by(8192) {
        let end = (start + 8192).min(rows);
        let ids = UInt64Array::from_iter_values((start..end).map(|i| row_id(i, rows)));
        let values = Float32Array::from(vectors[start * DIM..end * DIM].to_vec());
        let list =
            FixedSizeListArray::try_new(Arc::clone(&item), DIM as i32, Arc::new(values), None)?;
        batches.push(RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(ids), Arc::new(list)],
        )?);
    }
    MemTable::try_new(schema, vec![batches])
}

fn brute_force(vectors: &[f32], rows: usize, query: &[f32]) -> Vec<u64> {
    let mut d: Vec<(f32, u64)> = (0..rows)
        .map(|i| {
            (
                Metric::L2.distance(query, &vectors[i * DIM..(i + 1) * DIM]),
                row_id(i, rows),
            )
        })
        .collect();
    d.select_nth_unstable_by(K, |a, b| a.0.total_cmp(&b.0));
    d[..K].iter().map(|x| x.1).collect()
}

fn step(label: &str, start: Instant) {
    println!("  {label:<44} {:>8.2} s", start.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut root = None;
    let mut rows = 200_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rows" => rows = args.next().and_then(|v| v.parse().ok()).unwrap_or(rows),
            other => root = Some(other.to_string()),
        }
    }
    let tmp = tempfile::tempdir()?;
    let root = match root {
        Some(r) if r.contains("://") => r.trim_end_matches('/').to_string(),
        Some(r) => {
            std::fs::create_dir_all(&r)?;
            format!("file://{}", std::fs::canonicalize(&r)?.display())
        }
        None => format!("file://{}", tmp.path().display()),
    };

    println!("datafusion-vector-index quickstart: {rows} vectors × {DIM} dims, {CLUSTERS} clusters, {FRAGMENTS} fragments, {WORKERS} workers");
    let t = Instant::now();
    let vectors = dataset(rows, 7);
    let queries = dataset(QUERIES, 99);
    let session = VectorIndexSession::new();
    let ctx: SessionContext = session.context().clone();
    ctx.register_table("items", Arc::new(table(&vectors, rows)?))?;
    step("generate data", t);
    let t = Instant::now();
    let truth: Vec<Vec<u64>> = queries
        .chunks(DIM)
        .map(|q| brute_force(&vectors, rows, q))
        .collect();
    step(&format!("brute-force ground truth ({QUERIES} queries)"), t);

    let mut summary = Vec::new();
    for (n, ty) in ["IVF_FLAT", "IVF_PQ", "IVF_SQ", "IVF_HNSW_SQ"]
        .into_iter()
        .enumerate()
    {
        let url = format!("{root}/{}", ty.to_lowercase());
        // 16 one-byte codes per 64-dim vector: PQ trades recall for 16× less storage than FLAT.
        let pq = if ty == "IVF_PQ" {
            ", num_sub_vectors => 16"
        } else {
            ""
        };
        println!("\n== {ty} at {url}");
        let t = Instant::now();
        session
            .sql(&format!(
                "CALL create_vector_index(index => '{url}', table => 'items', column => 'vec', \
                 type => '{ty}', num_partitions => {PARTITIONS}, metric => 'l2'{pq})"
            ))
            .await?
            .show()
            .await?;
        step("train model (create_vector_index)", t);

        let t = Instant::now();
        let per_worker = FRAGMENTS / WORKERS;
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let session = session.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let (lo, hi) = (w * per_worker, (w + 1) * per_worker);
                    let sql = format!(
                        "CALL build_vector_index_shard(index => '{url}', table => 'items', column => 'vec', \
                         row_id => 'row_id', where => 'row_id >> 32 >= {lo} AND row_id >> 32 < {hi}')"
                    );
                    session.sql(&sql).await?.collect().await
                })
            })
            .collect();
        for (w, worker) in workers.into_iter().enumerate() {
            worker
                .await
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))??;
            println!("  worker {w} staged its shard");
        }
        step(&format!("{WORKERS} workers build shards concurrently"), t);

        if n == 0 {
            println!("\nEXPLAIN CALL finalize_vector_index(index => '{url}'):");
            let explain = session
                .sql(&format!(
                    "EXPLAIN CALL finalize_vector_index(index => '{url}')"
                ))
                .await?
                .collect()
                .await?;
            for batch in &explain {
                let plans = batch.column(1).as_string::<i32>();
                println!("{}", plans.value(plans.len() - 1));
            }
        }
        let t = Instant::now();
        session
            .sql(&format!("CALL finalize_vector_index(index => '{url}')"))
            .await?
            .show()
            .await?;
        step("finalize (plan, parallel merge, commit)", t);
        session
            .sql(&format!("SELECT segment_id, version, rows, num_fragments, num_files, bytes FROM vector_index_segments('{url}')"))
            .await?
            .show()
            .await?;

        let index = VectorIndex::open(&ctx, &url)?;
        let t = Instant::now();
        let options = SearchOptions::default().with_k(K).with_nprobes(NPROBES);
        let hits = index.search(&ctx, &queries, options).await?;
        let secs = t.elapsed().as_secs_f64();
        let found: usize = hits
            .iter()
            .zip(&truth)
            .map(|(h, t)| h.iter().filter(|x| t.contains(&x.row_id)).count())
            .sum();
        let recall = found as f64 / (QUERIES * K) as f64;
        step(&format!("search {QUERIES} queries (nprobes {NPROBES})"), t);
        println!(
            "  recall@{K}: {recall:.3}   ({:.0} queries/s)",
            QUERIES as f64 / secs
        );
        summary.push((ty, recall));
    }

    let url = format!("{root}/ivf_flat");
    let q: Vec<String> = queries[..DIM].iter().map(|x| format!("{x:.4}")).collect();
    println!("\nSQL search joined back to the table:");
    session
        .sql(&format!(
            "SELECT s.row_id, s.row_id >> 32 AS fragment, s.distance, t.vec[1] AS first_dim \
             FROM vector_search('{url}', [{}], 5, 16) s JOIN items t ON t.row_id = s.row_id ORDER BY s.distance",
            q.join(", ")
        ))
        .await?
        .show()
        .await?;
    println!("\nrecall@{K} at nprobes {NPROBES}:");
    for (ty, r) in summary {
        println!("  {ty:<10} {r:.3}");
    }
    Ok(())
}
