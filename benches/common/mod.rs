//! Helpers shared by the benches.
#![allow(dead_code)]

/// A size from the environment (underscores allowed: `1_000_000`), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`), 0 where unavailable.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Median, min and max.
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// The CPU's model name and its vector extensions, from `/proc/cpuinfo`.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
            .unwrap_or_default()
    };
    let flags = field("flags");
    let simd: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| f.starts_with("avx") || *f == "fma" || *f == "f16c")
        .collect();
    format!("{} [{}]", field("model name"), simd.join(" "))
}

/// The index types named by `var` (comma-separated), by default FLAT, PQ and SQ.
pub fn env_types(var: &str) -> Vec<datafusion_vector_index::IndexType> {
    std::env::var(var)
        .unwrap_or_else(|_| "IVF_FLAT,IVF_PQ,IVF_SQ".into())
        .split(',')
        .map(|t| t.trim().parse().unwrap())
        .collect()
}

/// Child mode of the finalize benches: finalizes the index at `url` and prints its
/// time, the part of it spent removing the consumed shards after the commit (the
/// commit operator's `cleanup_time`), and peak RSS, as `key=value` words.
pub async fn finalize_child(url: &str, merge_partitions: Option<usize>) {
    let session = datafusion_vector_index::VectorIndexSession::new();
    let ctx = session.context();
    let index = datafusion_vector_index::VectorIndex::open(ctx, url).unwrap();
    let mut options = datafusion_vector_index::FinalizeOptions::default();
    options.merge_partitions = merge_partitions;
    let t = std::time::Instant::now();
    let plan = index.finalize_plan(ctx, &options).await.unwrap();
    datafusion::physical_plan::collect(std::sync::Arc::clone(&plan), ctx.task_ctx())
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let cleanup = plan
        .metrics()
        .and_then(|m| m.sum_by_name("cleanup_time"))
        .map_or(f64::NAN, |v| v.as_usize() as f64 / 1e9);
    println!(
        "finalize_secs={secs} cleanup_secs={cleanup} peak_rss_kib={}",
        proc_status_kib("VmHWM")
    );
}

/// The value of `key=` in a child's output, NaN when missing.
pub fn child_field(text: &str, key: &str) -> f64 {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The ids (`row_id(i)`) of the k nearest rows of `data` to each of the first
/// `count` queries, by squared L2, exactly.
pub fn ground_truth(
    data: &[f32],
    queries: &[f32],
    dim: usize,
    count: usize,
    k: usize,
    row_id: impl Fn(usize) -> u64,
) -> Vec<Vec<u64>> {
    let rows = data.len() / dim;
    queries
        .chunks(dim)
        .take(count)
        .map(|q| {
            let mut d: Vec<(f32, u64)> = (0..rows)
                .map(|i| {
                    (
                        datafusion_vector_index::Metric::L2
                            .distance(q, &data[i * dim..(i + 1) * dim]),
                        row_id(i),
                    )
                })
                .collect();
            d.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0));
            d[..k].iter().map(|x| x.1).collect()
        })
        .collect()
}
