//! HNSW graph building on the finalize bench's data, partition by partition.
//!
//! ```text
//! cargo bench --bench hnsw --features internals
//! HNSW_BENCH_ROWS=200000 HNSW_BENCH_PARTITIONS=51 cargo bench --bench hnsw --features internals
//! HNSW_BENCH_M=12 HNSW_BENCH_EF_CONSTRUCTION=64 cargo bench --bench hnsw --features internals
//! cargo bench --bench hnsw --features hnsw-crate-comparison   # also the hnsw_rs crate
//! ```
//!
//! The rows of the finalize bench's Gaussian mixture (128 dimensions) are assigned
//! to IVF partitions of about the size a 1M-row, 256-partition index has (~3,900
//! rows), encoded as IVF_HNSW_SQ and decoded, exactly as finalize does. For every
//! partition a graph is built (one partition per core at a time, like finalize),
//! then queries drawn from the same mixture search each partition with `ef` = 100
//! and are compared with the exact 10 nearest decoded rows of that partition.
//! Prints build time, rows/s, recall@10, memory, search time and a fingerprint of
//! the graphs (a speed-up meant to leave them as they were must keep it); with the
//! `hnsw-crate-comparison` feature, the same for the `hnsw_rs` crate with the same
//! parameters (its own L2 kernel, one graph per partition, serial insertion).
//!
//! Graph building is crate-private; the `internals` feature shows it to this bench.

mod common;

use std::sync::Arc;
use std::time::Instant;

use datafusion_vector_index::datasets::gaussian_mixture;
use datafusion_vector_index::internals::{
    build_graph, code_width, decode_rows, partition_seed, rank_partitions, Encoder, Visited,
};
use datafusion_vector_index::{HnswParams, IndexType, Metric, Model, TrainOptions};
use rayon::prelude::*;

use common::env_usize;

const DIM: usize = 128;
const QUERIES: usize = 100;
const EF: usize = 100;

/// Rows of one IVF partition, decoded as finalize decodes them.
struct Partition {
    ids: Vec<u64>,
    vectors: Vec<f32>,
}

fn main() {
    let rows = env_usize("HNSW_BENCH_ROWS", 200_000);
    let partitions = env_usize("HNSW_BENCH_PARTITIONS", 51);
    let defaults = HnswParams::default();
    let params = HnswParams {
        m: env_usize("HNSW_BENCH_M", defaults.m as usize) as u32,
        ef_construction: env_usize(
            "HNSW_BENCH_EF_CONSTRUCTION",
            defaults.ef_construction as usize,
        ) as u32,
    };
    println!(
        "hnsw bench: {rows} rows × {DIM} in {partitions} partitions (IVF_HNSW_SQ), m={}, ef_construction={}, ef={EF}, {} cores",
        params.m,
        params.ef_construction,
        rayon::current_num_threads()
    );
    let mut data = gaussian_mixture(rows, DIM, 1024, 0.15, 1, 7);
    let options = TrainOptions::default()
        .with_index_type(IndexType::IvfHnswSq)
        .with_metric(Metric::L2)
        .with_num_partitions(partitions);
    let sample = data[..options.sample_rows().min(rows) * DIM].to_vec();
    let model = Arc::new(Model::train(DIM, sample, &options).unwrap());
    let (mut parts, mut codes) = (Vec::new(), Vec::new());
    Encoder::new(Arc::clone(&model)).encode(&mut data, &mut parts, &mut codes);
    let width = code_width(&model);
    let mut by_partition: Vec<Vec<u8>> = vec![Vec::new(); partitions];
    let mut ids: Vec<Vec<u64>> = vec![Vec::new(); partitions];
    for (i, &p) in parts.iter().enumerate() {
        by_partition[p as usize].extend_from_slice(&codes[i * width..(i + 1) * width]);
        ids[p as usize].push(i as u64);
    }
    let data: Vec<Partition> = by_partition
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(p, (c, ids))| Partition {
            ids,
            vectors: decode_rows(&model, p, c).unwrap(),
        })
        .collect();
    let sizes: Vec<usize> = data.iter().map(|p| p.ids.len()).collect();
    println!(
        "  partition rows: min {}, median {}, max {}",
        sizes.iter().min().unwrap(),
        {
            let mut s = sizes.clone();
            s.sort();
            s[s.len() / 2]
        },
        sizes.iter().max().unwrap()
    );
    let queries = gaussian_mixture(QUERIES, DIM, 1024, 0.15, 1, 99);
    let query_partition: Vec<usize> = queries
        .chunks(DIM)
        .map(|q| rank_partitions(&model, q, 1)[0])
        .collect();

    let exact: Vec<Vec<u32>> = queries
        .chunks(DIM)
        .zip(&query_partition)
        .map(|(q, &p)| {
            let part = &data[p];
            let dist = |i: u32| {
                Metric::L2.distance(q, &part.vectors[i as usize * DIM..(i as usize + 1) * DIM])
            };
            let mut all: Vec<u32> = (0..part.ids.len() as u32).collect();
            all.sort_by(|&a, &b| dist(a).total_cmp(&dist(b)));
            all.truncate(10);
            all
        })
        .collect();

    // Ours.
    let rss_before = rss_mib();
    let t = Instant::now();
    let graphs: Vec<_> = (0..partitions)
        .into_par_iter()
        .map(|p| {
            let part = &data[p];
            build_graph(
                &part.vectors,
                DIM,
                &part.ids,
                Metric::L2,
                params,
                partition_seed(options.seed, p),
            )
        })
        .collect();
    let build = t.elapsed().as_secs_f64();
    let bytes: usize = graphs
        .iter()
        .map(|g| g.to_batch().unwrap().get_array_memory_size())
        .sum();
    let rss_built = rss_mib();
    // Changes meant to leave the graphs as they were (speed-ups) must keep this.
    let mut fingerprint = std::hash::DefaultHasher::new();
    for g in &graphs {
        for level in 0..g.num_levels() {
            for node in 0..g.num_nodes() as u32 {
                std::hash::Hash::hash(g.neighbors_of(level, node), &mut fingerprint);
            }
        }
    }
    let mut visited = Visited::default();
    let mut search_at = |ef: usize| {
        measure(&queries, &query_partition, &exact, |q, p| {
            let part = &data[p];
            let dist = |i: u32| {
                Metric::L2.distance(q, &part.vectors[i as usize * DIM..(i as usize + 1) * DIM])
            };
            let hits = graphs[p].search(ef, dist, &mut visited);
            hits.iter().take(10).map(|c| c.node).collect()
        })
    };
    let (narrow, _) = search_at(10);
    let (recall, search) = search_at(EF);
    println!(
        "  ours:     build {build:>6.2} s ({:>6.0} rows/s), recall@10 {recall:.3} (ef 10: {narrow:.3}), graphs {:>6.1} MiB stored, RSS +{:.0} MiB, {QUERIES} searches {:.1} ms, graphs' fingerprint {:016x}",
        rows as f64 / build,
        bytes as f64 / (1 << 20) as f64,
        rss_built - rss_before,
        search * 1e3,
        std::hash::Hasher::finish(&fingerprint)
    );
    drop(graphs);
    #[cfg(feature = "hnsw-crate-comparison")]
    crate_comparison(&data, params, &queries, &query_partition, &exact);
}

/// The same graphs built and searched with the `hnsw_rs` crate.
#[cfg(feature = "hnsw-crate-comparison")]
fn crate_comparison(
    data: &[Partition],
    params: HnswParams,
    queries: &[f32],
    query_partition: &[usize],
    exact: &[Vec<u32>],
) {
    use hnsw_rs::prelude::{DistL2, Hnsw};
    let rows: usize = data.iter().map(|p| p.ids.len()).sum();
    let rss_before = rss_mib();
    let t = Instant::now();
    let graphs: Vec<Hnsw<f32, DistL2>> = data
        .par_iter()
        .map(|part| {
            let n = part.ids.len();
            let hnsw = Hnsw::new(
                params.m as usize,
                n,
                16,
                params.ef_construction as usize,
                DistL2 {},
            );
            for (i, v) in part.vectors.chunks_exact(DIM).enumerate() {
                hnsw.insert_slice((v, i));
            }
            hnsw
        })
        .collect();
    let build = t.elapsed().as_secs_f64();
    let rss_built = rss_mib();
    let search_at = |ef: usize| {
        measure(queries, query_partition, exact, |q, p| {
            let hits = graphs[p].search(q, 10, ef);
            hits.iter().map(|h| h.d_id as u32).collect()
        })
    };
    let (narrow, _) = search_at(10);
    let (recall, search) = search_at(EF);
    println!(
        "  hnsw_rs:  build {build:>6.2} s ({:>6.0} rows/s), recall@10 {recall:.3} (ef 10: {narrow:.3}), RSS +{:.0} MiB, {QUERIES} searches {:.1} ms",
        rows as f64 / build,
        rss_built - rss_before,
        search * 1e3
    );
}

/// Recall@10 of `search` (a query and its partition → the nodes found) against the
/// exact top 10 of each query's partition, and the seconds the searches took.
fn measure(
    queries: &[f32],
    query_partition: &[usize],
    exact: &[Vec<u32>],
    mut search: impl FnMut(&[f32], usize) -> Vec<u32>,
) -> (f64, f64) {
    let t = Instant::now();
    let mut found = 0;
    for ((q, &p), exact) in queries.chunks(DIM).zip(query_partition).zip(exact) {
        found += search(q, p).iter().filter(|n| exact.contains(n)).count();
    }
    (
        found as f64 / (QUERIES * 10) as f64,
        t.elapsed().as_secs_f64(),
    )
}

/// Resident memory of this process now, in MiB.
fn rss_mib() -> f64 {
    common::proc_status_kib("VmRSS") as f64 / 1024.0
}
