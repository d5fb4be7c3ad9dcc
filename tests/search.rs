//! Search: the merge is lossless for every type, IVF_FLAT with every partition
//! probed equals brute force, and recall on clustered data.

mod common;

use common::*;
use datafusion_vector_index::FinalizeOptions;
use datafusion_vector_index::IndexError;
use datafusion_vector_index::SearchOptions;
use datafusion_vector_index::{IndexType, Metric};

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
            let options = SearchOptions {
                k: 10,
                nprobes: 4,
                ef: Some(50),
            };
            let a = one.index.search(&one.ctx, &queries, options).await.unwrap();
            let b = eight
                .index
                .search(&eight.ctx, &queries, options)
                .await
                .unwrap();
            assert_eq!(a, b, "{ty} {metric}");
            assert!(a.iter().all(|h| h.len() == 10));
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
                SearchOptions {
                    k: 10,
                    nprobes: 16,
                    ef: None,
                },
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
                SearchOptions {
                    k: 10,
                    nprobes: 8,
                    ef: None,
                },
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
        (
            "k",
            SearchOptions {
                k: 0,
                ..Default::default()
            },
        ),
        (
            "k",
            SearchOptions {
                k: 1 << 40,
                ..Default::default()
            },
        ),
        (
            "k",
            SearchOptions {
                k: usize::MAX,
                ..Default::default()
            },
        ),
        (
            "ef",
            SearchOptions {
                ef: Some(0),
                ..Default::default()
            },
        ),
        (
            "ef",
            SearchOptions {
                ef: Some(1 << 40),
                ..Default::default()
            },
        ),
        (
            "nprobes",
            SearchOptions {
                nprobes: 0,
                ..Default::default()
            },
        ),
        (
            "nprobes",
            SearchOptions {
                nprobes: usize::MAX,
                ..Default::default()
            },
        ),
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
