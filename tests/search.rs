//! Search: the merge is lossless for every type, IVF_FLAT with every partition
//! probed equals brute force, recall on clustered data, and the search cache
//! answering as the store does.

mod common;

use common::*;
use datafusion::prelude::SessionContext;
use datafusion_vector_index::FinalizeOptions;
use datafusion_vector_index::IndexError;
use datafusion_vector_index::SearchOptions;
use datafusion_vector_index::{IndexType, Metric};
use datafusion_vector_index::{
    SearchCache, SearchHit, VectorIndex, VectorIndexConfig, VectorIndexSession,
};
use std::sync::Arc;

const ROWS: usize = 3000;
const FRAGMENTS: u64 = 16;

#[tokio::test]
async fn eight_workers_equal_one_worker_for_every_type() {
    let data = clustered(ROWS, 12, 21);
    let ids = row_ids(ROWS, FRAGMENTS);
    let queries = clustered(20, 12, 22);
    let owners: Vec<usize> = (0..FRAGMENTS as usize).map(|f| (f * 5 + 3) % 8).collect();
    for ty in IndexType::ALL {
        for metric in [Metric::L2, Metric::Cosine, Metric::Dot] {
            let model = train(&data, ty, metric, 16);
            let one = TestIndex::new(&model).await;
            one.stage(&model, &data, &ids, &[0; FRAGMENTS as usize])
                .await;
            let eight = TestIndex::new(&model).await;
            assert_eq!(eight.stage(&model, &data, &ids, &owners).await.len(), 8);
            one.index
                .finalize(&one.ctx, &FinalizeOptions::default())
                .await
                .unwrap();
            eight
                .index
                .finalize(&eight.ctx, &FinalizeOptions::default())
                .await
                .unwrap();
            let options = SearchOptions::default()
                .with_k(10)
                .with_nprobes(4)
                .with_ef(50);
            let a = searched(&one, &queries, options).await;
            let b = searched(&eight, &queries, options).await;
            assert_eq!(a, b, "{ty} {metric}");
            assert!(a.iter().all(|h| h.len() == 10));
            // The same rows committed as eight segments: scanned as one (their
            // blocks of a partition joined) but for the HNSW types, whose graphs
            // are searched per segment.
            if !ty.is_hnsw() {
                let segments = TestIndex::new(&model).await;
                segments.stage(&model, &data, &ids, &owners).await;
                let per_shard = FinalizeOptions::default()
                    .with_grouping(datafusion_vector_index::SegmentGrouping::PerShard);
                let out = segments
                    .index
                    .finalize(&segments.ctx, &per_shard)
                    .await
                    .unwrap();
                assert_eq!(
                    out.segments.len(),
                    8,
                    "{ty} {metric}: one segment per shard"
                );
                let c = searched(&segments, &queries, options).await;
                assert_eq!(a, c, "{ty} {metric}, eight segments");
            }
        }
    }
}

fn brute_force(data: &[f32], ids: &[u64], q: &[f32], metric: Metric, k: usize) -> Vec<(u64, f32)> {
    let mut q = q.to_vec();
    metric.prepare(&mut q);
    let mut all: Vec<(f32, u64)> = data
        .chunks(DIM)
        .zip(ids)
        .map(|(v, &id)| {
            let mut v = v.to_vec();
            metric.prepare(&mut v);
            (metric.distance(&q, &v), id)
        })
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(k).map(|(d, id)| (id, d)).collect()
}

#[tokio::test]
async fn flat_with_every_partition_probed_is_brute_force() {
    let data = clustered(ROWS, 12, 23);
    let ids = row_ids(ROWS, FRAGMENTS);
    let queries = clustered(15, 12, 24);
    for metric in [Metric::L2, Metric::Cosine, Metric::Dot] {
        let model = train(&data, IndexType::IvfFlat, metric, 16);
        let t = TestIndex::new(&model).await;
        t.stage(
            &model,
            &data,
            &ids,
            &[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3],
        )
        .await;
        t.index
            .finalize(&t.ctx, &FinalizeOptions::default())
            .await
            .unwrap();
        let hits = t
            .index
            .search(
                &t.ctx,
                &queries,
                SearchOptions::default().with_k(10).with_nprobes(16),
            )
            .await
            .unwrap();
        for (q, h) in queries.chunks(DIM).zip(&hits) {
            let got: Vec<(u64, f32)> = h.iter().map(|s| (s.row_id, s.distance)).collect();
            assert_eq!(got, brute_force(&data, &ids, q, metric, 10), "{metric}");
        }
    }
}

#[tokio::test]
async fn recall_on_clustered_data() {
    let data = clustered(ROWS, 12, 25);
    let ids = row_ids(ROWS, FRAGMENTS);
    let queries = clustered(40, 12, 26);
    for (ty, floor) in [
        (IndexType::IvfFlat, 0.97),
        (IndexType::IvfSq, 0.9),
        (IndexType::IvfPq, 0.3),
    ] {
        let model = train(&data, ty, Metric::L2, 16);
        let t = TestIndex::new(&model).await;
        t.stage(
            &model,
            &data,
            &ids,
            &(0..FRAGMENTS as usize).map(|f| f % 4).collect::<Vec<_>>(),
        )
        .await;
        t.index
            .finalize(&t.ctx, &FinalizeOptions::default())
            .await
            .unwrap();
        let hits = t
            .index
            .search(
                &t.ctx,
                &queries,
                SearchOptions::default().with_k(10).with_nprobes(8),
            )
            .await
            .unwrap();
        let mut found = 0;
        for (q, h) in queries.chunks(DIM).zip(&hits) {
            let truth: Vec<u64> = brute_force(&data, &ids, q, Metric::L2, 10)
                .into_iter()
                .map(|x| x.0)
                .collect();
            found += h.iter().filter(|s| truth.contains(&s.row_id)).count();
        }
        let recall = found as f64 / 400.0;
        assert!(recall >= floor, "{ty}: recall@10 {recall} below {floor}");
    }
}

#[tokio::test]
async fn search_arguments_are_checked() {
    let data = clustered(600, 4, 27);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 4);
    let t = TestIndex::new(&model).await;
    let err = t.search_error(&data[..DIM], SearchOptions::default()).await;
    assert!(err.contains("no committed version"), "{err}");
    t.stage(&model, &data, &row_ids(600, 2), &[0, 0]).await;
    t.index
        .finalize(&t.ctx, &FinalizeOptions::default())
        .await
        .unwrap();
    let err = t
        .search_error(&data[..DIM - 1], SearchOptions::default())
        .await;
    assert!(err.contains("dimension 16"), "{err}");
    // Every count is bounded before anything is allocated from it; the error is
    // the argument's own variant, naming it and the bound.
    let bad = [
        ("k", SearchOptions::default().with_k(0)),
        ("k", SearchOptions::default().with_k(1 << 40)),
        ("k", SearchOptions::default().with_k(usize::MAX)),
        ("ef", SearchOptions::default().with_ef(0)),
        ("ef", SearchOptions::default().with_ef(1 << 40)),
        ("nprobes", SearchOptions::default().with_nprobes(0)),
        ("nprobes", SearchOptions::default().with_nprobes(usize::MAX)),
    ];
    for (arg, options) in bad {
        let err = t
            .index
            .search(&t.ctx, &data[..DIM], options)
            .await
            .unwrap_err();
        match &err {
            IndexError::InvalidArgument { name, reason } => {
                assert_eq!(name, arg);
                assert!(reason.contains("must be between 1 and"), "{err}");
            }
            other => panic!("{arg}: {other:?}"),
        }
    }
}

/// An index of `data`, staged by one worker and finalized into one segment.
async fn searched(t: &TestIndex, queries: &[f32], options: SearchOptions) -> Vec<Vec<SearchHit>> {
    t.index.search(&t.ctx, queries, options).await.unwrap()
}

async fn committed(model: &datafusion_vector_index::Model, data: &[f32], ids: &[u64]) -> TestIndex {
    let t = TestIndex::new(model).await;
    t.stage(model, data, ids, &[0; FRAGMENTS as usize]).await;
    t.finalize().await;
    t
}

/// Searches through a session with `cache` attached, and the same searches through a
/// session without any cache (the reference answer).
async fn cached_and_uncached(
    t: &TestIndex,
    cache: &Arc<SearchCache>,
    queries: &[f32],
) -> (Vec<Vec<SearchHit>>, Vec<Vec<SearchHit>>) {
    let options = SearchOptions::default().with_k(10).with_nprobes(6);
    let url = t.location().url().to_string();
    let cached = VectorIndexSession::with_search_cache(Arc::clone(cache));
    let plain = SessionContext::new();
    let a = VectorIndex::open(cached.context(), &url)
        .unwrap()
        .search(cached.context(), queries, options)
        .await
        .unwrap();
    let b = VectorIndex::open(&plain, &url)
        .unwrap()
        .search(&plain, queries, options)
        .await
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn repeated_searches_come_from_the_cache_with_the_same_hits() {
    let data = clustered(ROWS, 12, 41);
    let ids = row_ids(ROWS, FRAGMENTS);
    let queries = clustered(30, 12, 42);
    for ty in [IndexType::IvfSq, IndexType::IvfHnswSq] {
        let model = train(&data, ty, Metric::L2, 16);
        let t = committed(&model, &data, &ids).await;
        let cache = Arc::new(SearchCache::new(64 << 20));
        let (first, reference) = cached_and_uncached(&t, &cache, &queries).await;
        assert_eq!(first, reference, "{ty}");
        let cold = cache.stats();
        assert_eq!((cold.target_hits, cold.target_misses), (0, 1), "{ty}");
        assert!(
            cold.block_misses > 0 && cold.block_hits == 0,
            "{ty}: {cold:?}"
        );
        assert!(
            cold.bytes > 0 && cold.bytes <= cold.capacity,
            "{ty}: {cold:?}"
        );
        let (again, _) = cached_and_uncached(&t, &cache, &queries).await;
        assert_eq!(again, reference, "{ty}");
        let warm = cache.stats();
        assert_eq!((warm.target_hits, warm.target_misses), (1, 1), "{ty}");
        assert_eq!(warm.block_misses, cold.block_misses, "{ty}: {warm:?}");
        assert_eq!(warm.block_hits, cold.block_misses, "{ty}: {warm:?}");
    }
}

#[tokio::test]
async fn a_new_version_or_a_recreated_index_is_never_answered_from_the_cache() {
    let data = clustered(ROWS, 12, 43);
    let ids = row_ids(ROWS, FRAGMENTS);
    let queries = clustered(20, 12, 44);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 16);
    let t = TestIndex::new(&model).await;
    let cache = Arc::new(SearchCache::new(64 << 20));
    // Version 1 holds the first half of the fragments, version 2 (an append) all.
    let half: Vec<usize> = (0..FRAGMENTS as usize)
        .map(|f| if f < 8 { 0 } else { 1 })
        .collect();
    let first: Vec<usize> = (0..ROWS).filter(|&i| (ids[i] >> 32) < 8).collect();
    let pick = |rows: &[usize]| -> (Vec<f32>, Vec<u64>) {
        (
            rows.iter()
                .flat_map(|&i| data[i * DIM..(i + 1) * DIM].iter().copied())
                .collect(),
            rows.iter().map(|&i| ids[i]).collect(),
        )
    };
    let (d1, i1) = pick(&first);
    t.stage(&model, &d1, &i1, &half).await;
    t.finalize().await;
    let (v1, reference) = cached_and_uncached(&t, &cache, &queries).await;
    assert_eq!(v1, reference);
    let rest: Vec<usize> = (0..ROWS).filter(|&i| (ids[i] >> 32) >= 8).collect();
    let (d2, i2) = pick(&rest);
    t.stage(&model, &d2, &i2, &half).await;
    t.finalize().await;
    let (v2, reference) = cached_and_uncached(&t, &cache, &queries).await;
    assert_eq!(v2, reference);
    assert_ne!(v1, v2, "version 2 adds rows some queries find");
    assert_eq!(cache.stats().target_misses, 2);

    // The index is deleted and created again at the same URL with other vectors:
    // its version 1 is not the cached version 1.
    std::fs::remove_dir_all(t.path()).unwrap();
    let other = clustered(ROWS, 12, 45);
    let model = train(&other, IndexType::IvfFlat, Metric::L2, 16);
    model.write(t.location()).await.unwrap();
    t.stage(&model, &other, &ids, &[0; FRAGMENTS as usize])
        .await;
    t.finalize().await;
    let (v1_again, reference) = cached_and_uncached(&t, &cache, &queries).await;
    assert_eq!(v1_again, reference);
    assert_ne!(v1_again, v1);
    assert_eq!(cache.stats().target_misses, 3);
}

#[tokio::test]
async fn the_cache_keeps_within_its_budget_and_answers_the_same() {
    let data = clustered(ROWS, 12, 46);
    let ids = row_ids(ROWS, FRAGMENTS);
    let queries = clustered(30, 12, 47);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 16);
    let t = committed(&model, &data, &ids).await;
    // Room for a few partitions of 3000 × 16 floats over 16 partitions, and none.
    for capacity in [40_000, 0] {
        let cache = Arc::new(SearchCache::new(capacity));
        for _ in 0..3 {
            let (a, b) = cached_and_uncached(&t, &cache, &queries).await;
            assert_eq!(a, b);
            let stats = cache.stats();
            assert!(stats.bytes <= capacity, "{stats:?}");
        }
        let stats = cache.stats();
        if capacity == 0 {
            assert_eq!(
                (stats.bytes, stats.block_hits, stats.target_hits),
                (0, 0, 0)
            );
        } else {
            // Whether a block is still there when asked for again depends on the
            // order the scan partitions ran in; that something was evicted does not.
            assert!(stats.evictions > 0 && stats.bytes > 0, "{stats:?}");
        }
    }
}

/// `EXPLAIN ANALYZE` of a search shows where its model, manifests and blocks came from.
#[tokio::test]
async fn explain_analyze_shows_cache_hits_and_misses() {
    let data = clustered(ROWS, 12, 48);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfSq, Metric::L2, 16);
    let t = committed(&model, &data, &ids).await;
    let session = VectorIndexSession::new();
    let sql = format!(
        "EXPLAIN ANALYZE SELECT * FROM vector_search('{}', {}, 5, 4)",
        t.location().url(),
        literal(&data[..DIM])
    );
    let mut plans = Vec::new();
    for _ in 0..2 {
        plans.push(rendered(&session, &sql).await);
    }
    let metric = |plan: &str, name: &str| -> u64 {
        let at = plan
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {plan}"));
        plan[at + name.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    assert_eq!(metric(&plans[0], "target_cache_misses"), 1, "{}", plans[0]);
    assert_eq!(metric(&plans[0], "block_cache_misses"), 4, "{}", plans[0]);
    assert!(metric(&plans[0], "bytes_read") > 0, "{}", plans[0]);
    assert_eq!(metric(&plans[1], "target_cache_hits"), 1, "{}", plans[1]);
    assert_eq!(metric(&plans[1], "block_cache_hits"), 4, "{}", plans[1]);
    assert_eq!(metric(&plans[1], "block_cache_misses"), 0, "{}", plans[1]);
}

/// `sql` run through `session`, its result as a table of text.
async fn rendered(session: &VectorIndexSession, sql: &str) -> String {
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// `query` as a SQL list literal.
fn literal(query: &[f32]) -> String {
    let items: Vec<String> = query.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// The `vector_index.` settings with `parallel_search_min_bytes` of `bytes`.
fn parallel_search_min_bytes(bytes: usize) -> VectorIndexConfig {
    let mut config = VectorIndexConfig::default();
    config.parallel_search_min_bytes = bytes;
    config
}

/// A search that may score fewer bytes of codes than
/// `vector_index.parallel_search_min_bytes` is planned in one partition, without an
/// exchange; larger ones over `target_partitions`; the hits are the same. A
/// `VectorIndexSession` over a context that has the settings keeps them.
#[tokio::test]
async fn small_searches_run_in_one_partition_larger_ones_spread() {
    let data = clustered(ROWS, 12, 45);
    let ids = row_ids(ROWS, FRAGMENTS);
    let queries = clustered(40, 12, 46);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 16);
    let t = committed(&model, &data, &ids).await;
    let url = t.location().url().to_string();
    let session = |min_size: usize| {
        let config = datafusion::prelude::SessionConfig::new()
            .with_target_partitions(3)
            .with_option_extension(parallel_search_min_bytes(min_size));
        VectorIndexSession::with_context(SessionContext::new_with_config(config))
    };
    let sql = format!(
        "EXPLAIN SELECT * FROM vector_search('{url}', {}, 10, 4)",
        literal(&queries[..DIM])
    );
    let spread = rendered(&session(1), &sql).await;
    assert!(
        spread.contains("RepartitionExec: partitioning=Hash([slot@0], 3)"),
        "{spread}"
    );
    let single = rendered(&session(usize::MAX), &sql).await;
    assert!(!single.contains("RepartitionExec"), "{single}");
    assert!(!single.contains("CoalescePartitionsExec"), "{single}");
    assert!(single.contains("VectorIndexScanExec"), "{single}");
    // One query reads at most every row (ROWS × DIM × 4 bytes), forty queries probing
    // 4 of 16 partitions at least ten times that: at this threshold single queries
    // run in one partition and the batch spreads. Every way gives the same hits.
    let options = SearchOptions::default().with_k(10).with_nprobes(4);
    let reference = VectorIndex::open(&SessionContext::new(), &url)
        .unwrap()
        .search(&SessionContext::new(), &queries, options)
        .await
        .unwrap();
    for s in [session(1), session(ROWS * DIM * 4 + 1), session(usize::MAX)] {
        let index = VectorIndex::open(s.context(), &url).unwrap();
        let hits = index.search(s.context(), &queries, options).await.unwrap();
        assert_eq!(hits, reference);
        for (q, found) in queries.chunks(DIM).zip(&hits) {
            let one = index.search(s.context(), q, options).await.unwrap();
            assert_eq!(&one[0], found);
        }
    }
}

/// One query over few large partitions: the probe splits them into parts scored by
/// every scan partition (`split_partitions` in EXPLAIN ANALYZE), and the hits are
/// those of a search that scores each partition whole — brute force for IVF_FLAT
/// probing every partition. HNSW graphs are searched whole. IVF_PQ scans skip rows
/// by distance bounds where the CPU can (`pq_rows_skipped_by_bound`).
#[tokio::test]
async fn one_query_split_over_the_cores_answers_as_a_whole_scan() {
    let rows = 12_000;
    let data = clustered(rows, 3, 51);
    let ids = row_ids(rows, FRAGMENTS);
    let queries = clustered(3, 3, 52);
    // The split session spreads even this small search over its partitions.
    let session = |partitions| {
        let config = datafusion::prelude::SessionConfig::new()
            .with_target_partitions(partitions)
            .with_option_extension(parallel_search_min_bytes(0));
        VectorIndexSession::with_context(SessionContext::new_with_config(config))
    };
    let (whole, split) = (session(1), session(8));
    let options = SearchOptions::default().with_k(10).with_nprobes(2);
    for ty in IndexType::ALL {
        let model = train(&data, ty, Metric::L2, 2);
        let t = TestIndex::new(&model).await;
        let owners: Vec<usize> = (0..FRAGMENTS as usize).map(|f| f % 3).collect();
        t.stage(&model, &data, &ids, &owners).await;
        t.index
            .finalize(
                &t.ctx,
                &FinalizeOptions::default()
                    .with_grouping(datafusion_vector_index::SegmentGrouping::PerShard),
            )
            .await
            .unwrap();
        let url = t.location().url().to_string();
        for q in queries.chunks(DIM) {
            let search = |s: &VectorIndexSession| {
                let ctx = s.context().clone();
                let url = url.clone();
                async move {
                    VectorIndex::open(&ctx, &url)
                        .unwrap()
                        .search(&ctx, q, options)
                        .await
                        .unwrap()
                }
            };
            let (a, b) = (search(&whole).await, search(&split).await);
            assert_eq!(a, b, "{ty}");
            if ty == IndexType::IvfFlat {
                let got: Vec<(u64, f32)> = b[0].iter().map(|s| (s.row_id, s.distance)).collect();
                assert_eq!(got, brute_force(&data, &ids, q, Metric::L2, 10));
            }
        }
        let sql = format!(
            "EXPLAIN ANALYZE SELECT * FROM vector_search('{url}', {}, 10, 2)",
            literal(&queries[..DIM])
        );
        let plan = rendered(&split, &sql).await;
        let expected = if ty.is_hnsw() {
            "split_partitions=0"
        } else {
            "split_partitions=2"
        };
        assert!(plan.contains(expected), "{ty}: {plan}");
        // IVF_PQ rows whose distance bound cannot enter the top k go unscored, on CPUs
        // with the bound's byte permutes.
        let skipped = plan.split("pq_rows_skipped_by_bound=").nth(1).map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        });
        let skipped: u64 = skipped
            .unwrap_or_else(|| panic!("{ty}: {plan}"))
            .parse()
            .unwrap();
        let bounds = has_byte_permutes();
        assert_eq!(
            skipped > 0,
            ty == IndexType::IvfPq && bounds,
            "{ty}: {plan}"
        );
    }
}

/// What `pq_bound::available` asks of the CPU (crate-private, so asked again here).
fn has_byte_permutes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
