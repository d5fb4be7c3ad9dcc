//! Fault injection: a store failure at every operation of a finalize, once and as a
//! crash (every later operation fails too), for every index type. Each run must end
//! with an error (never a panic) that is the store's, the old or the new version
//! committed and nothing lost; after the fault, the index recovers (a re-run, or
//! vacuum after a commit) and searches exactly as a clean build does. Searches meet
//! the same faults: the store's error or the clean answer.

mod common;

use std::sync::Arc;

use common::faults::{Fault, FaultyStore, LostAck};
use common::*;
use datafusion_vector_index::SearchOptions;
use datafusion_vector_index::ShardWriter;
use datafusion_vector_index::{FinalizeOptions, VacuumOptions};
use datafusion_vector_index::{IndexError, SearchHit, VectorIndex, VectorIndexSession};
use datafusion_vector_index::{IndexType, Metric, Model};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

const ROWS: usize = 480;
const FRAGMENTS: u64 = 6;

/// Several work units per segment (small files) and two segments.
fn options() -> FinalizeOptions {
    FinalizeOptions::default()
        .with_grouping(datafusion_vector_index::SegmentGrouping::TargetRows(250))
        .with_target_file_bytes(2 << 10)
        .with_merge_partitions(2)
}

/// An index whose store is `store`, in a session of its own.
fn open(store: Arc<dyn ObjectStore>) -> (datafusion::prelude::SessionContext, VectorIndex) {
    let ctx = VectorIndexSession::new().context().clone();
    ctx.register_object_store(&url::Url::parse("faulty://t").unwrap(), store);
    let index = VectorIndex::open(&ctx, "faulty://t/idx").unwrap();
    (ctx, index)
}

/// Every object below `prefix`, as (path, bytes), sorted.
async fn objects(store: &dyn ObjectStore, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let metas: Vec<_> = store
        .list(Some(&Path::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for m in metas {
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.push((m.location.to_string(), bytes.to_vec()));
    }
    out.sort();
    out
}

/// The model, the data, and a store holding the model and three staged shards.
async fn staged_template(ty: IndexType) -> (Model, Vec<f32>, Arc<InMemory>) {
    let data = clustered(ROWS, 5, 71);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, ty, Metric::L2, 4);
    let template = Arc::new(InMemory::new());
    let (_, index) = open(Arc::clone(&template) as Arc<dyn ObjectStore>);
    model.write(index.location()).await.unwrap();
    let owners = [0usize, 1, 2, 0, 1, 2];
    for w in 0..3 {
        let mut writer = ShardWriter::new(index.location().clone(), Arc::new(model.clone()));
        let mine: Vec<usize> = (0..ROWS)
            .filter(|&i| owners[(ids[i] >> 32) as usize] == w)
            .collect();
        let vals: Vec<f32> = mine
            .iter()
            .flat_map(|&i| data[i * DIM..(i + 1) * DIM].iter().copied())
            .collect();
        let mine_ids: Vec<u64> = mine.iter().map(|&i| ids[i]).collect();
        writer
            .write(&mine_ids, &vector_array(&vals), "vec")
            .unwrap();
        writer.finish().await.unwrap();
    }
    (model, data, template)
}

async fn search(
    ctx: &datafusion::prelude::SessionContext,
    index: &VectorIndex,
    data: &[f32],
) -> Vec<Vec<SearchHit>> {
    try_search(ctx, index, data).await.unwrap()
}

async fn try_search(
    ctx: &datafusion::prelude::SessionContext,
    index: &VectorIndex,
    data: &[f32],
) -> Result<Vec<Vec<SearchHit>>, IndexError> {
    let queries: Vec<f32> = data[..20 * DIM].to_vec();
    let options = SearchOptions::default().with_k(10).with_nprobes(4);
    index.search(ctx, &queries, options).await
}

/// A store failure at any operation of a search, once or as a crash, ends in the
/// store's error or in the clean answer (a failed read of several blocks is retried
/// block by block) — never a panic, damage reported, or another answer. Each run
/// has a session of its own, so nothing comes from a cache.
#[tokio::test]
async fn every_fault_of_a_search() {
    for ty in [IndexType::IvfPq, IndexType::IvfHnswSq] {
        let (_, data, template) = staged_template(ty).await;
        let (ctx, index) = open(Arc::clone(&template) as Arc<dyn ObjectStore>);
        index.finalize(&ctx, &options()).await.unwrap();
        let clean = FaultyStore::new(Arc::new(template.fork()));
        let (ctx, index) = open(Arc::new(clean.clone()));
        clean.disarm();
        let expected = search(&ctx, &index, &data).await;
        let operations = clean.ops();
        assert!(operations > 5, "{ty}: {operations} operations");
        let mut recovered = 0;
        for fault in [Fault::Once, Fault::Crash] {
            for k in 0..operations {
                let store = FaultyStore::new(Arc::new(template.fork()));
                let (ctx, index) = open(Arc::new(store.clone()));
                store.arm(k, fault);
                let data = data.clone();
                let run = tokio::spawn(async move { try_search(&ctx, &index, &data).await });
                let at = format!("{ty}, {fault:?} fault at operation {k}");
                match run.await {
                    Err(e) => panic!("{at}: the search panicked: {e}"),
                    Ok(Ok(hits)) => {
                        assert_eq!(hits, expected, "{at}: another answer");
                        recovered += 1;
                    }
                    Ok(Err(e)) => assert!(
                        matches!(e, IndexError::Store { .. } | IndexError::ObjectStore(_))
                            && e.to_string().contains("injected fault"),
                        "{at}: the store's error should be reported, got {e:?}"
                    ),
                }
            }
        }
        // Only retried reads recover: a crash never does.
        assert!(
            recovered > 0 && recovered < operations,
            "{ty}: {recovered} recovered"
        );
    }
}

async fn every_fault_of_a_finalize(ty: IndexType) {
    let (_, data, template) = staged_template(ty).await;
    let staging_before = objects(template.as_ref(), "idx/_staging").await;

    // A clean build: the answers every recovered index must give, and the number
    // of store operations a finalize makes.
    let clean = FaultyStore::new(Arc::new(template.fork()));
    let (ctx, index) = open(Arc::new(clean.clone()));
    clean.disarm();
    index.finalize(&ctx, &options()).await.unwrap();
    let operations = clean.ops();
    let expected = search(&ctx, &index, &data).await;
    assert!(operations > 10, "{ty}: {operations} operations");

    for fault in [Fault::Once, Fault::Crash] {
        for k in 0..operations {
            let store = FaultyStore::new(Arc::new(template.fork()));
            let (ctx, index) = open(Arc::new(store.clone()));
            store.arm(k, fault);
            let run = {
                let (ctx, index) = (ctx.clone(), index.clone());
                tokio::spawn(async move { index.finalize(&ctx, &options()).await })
            };
            let outcome = match run.await {
                Ok(outcome) => outcome,
                Err(e) => {
                    panic!("{ty}, {fault:?} fault at operation {k}: the finalize panicked: {e}")
                }
            };
            store.disarm();
            let at = format!("{ty}, {fault:?} fault at operation {k}");
            // The store's own error, never taken for damage, bad input or a bug.
            if let Err(e) = &outcome {
                assert!(
                    matches!(e, IndexError::Store { .. } | IndexError::ObjectStore(_))
                        && e.to_string().contains("injected fault"),
                    "{at}: the store's error should be reported, got {e:?}"
                );
            }
            let versions = index.versions().await.unwrap();
            match versions.as_slice() {
                [] => {
                    // The old state: nothing staged may be lost, and a re-run commits.
                    assert!(outcome.is_err(), "{at}: succeeded without a version");
                    assert_eq!(
                        objects(index.location().store().as_ref(), "idx/_staging").await,
                        staging_before,
                        "{at}: the staging area changed"
                    );
                    index
                        .finalize(&ctx, &options())
                        .await
                        .unwrap_or_else(|e| panic!("{at}: the re-run failed: {e}"));
                }
                [1] => {
                    // The new state: vacuum removes what cleanup did not.
                    index.vacuum(&VacuumOptions::default()).await.unwrap();
                    assert!(
                        objects(index.location().store().as_ref(), "idx/_staging")
                            .await
                            .is_empty(),
                        "{at}: consumed shards left after vacuum"
                    );
                }
                other => panic!("{at}: versions {other:?}"),
            }
            assert_eq!(index.versions().await.unwrap(), vec![1], "{at}");
            assert_eq!(search(&ctx, &index, &data).await, expected, "{at}");
        }
    }
}

#[tokio::test]
async fn every_fault_of_an_ivf_flat_finalize() {
    every_fault_of_a_finalize(IndexType::IvfFlat).await;
}

#[tokio::test]
async fn every_fault_of_an_ivf_pq_finalize() {
    every_fault_of_a_finalize(IndexType::IvfPq).await;
}

#[tokio::test]
async fn every_fault_of_an_ivf_sq_finalize() {
    every_fault_of_a_finalize(IndexType::IvfSq).await;
}

#[tokio::test]
async fn every_fault_of_an_ivf_hnsw_flat_finalize() {
    every_fault_of_a_finalize(IndexType::IvfHnswFlat).await;
}

#[tokio::test]
async fn every_fault_of_an_ivf_hnsw_pq_finalize() {
    every_fault_of_a_finalize(IndexType::IvfHnswPq).await;
}

#[tokio::test]
async fn every_fault_of_an_ivf_hnsw_sq_finalize() {
    every_fault_of_a_finalize(IndexType::IvfHnswSq).await;
}

/// A commit that loses its race to another writer and runs out of attempts reaches
/// the Rust caller as `IndexError::Conflict`, not as text.
#[tokio::test]
async fn a_lost_commit_race_is_a_conflict() {
    let (model, _, template) = staged_template(IndexType::IvfFlat).await;
    let store = FaultyStore::new(Arc::new(template.fork()));
    let competitor = datafusion_vector_index::format::VersionManifest {
        format_version: datafusion_vector_index::format::FORMAT_VERSION,
        version: 1,
        model: model.info().fingerprint().to_string(),
        segments: vec![],
        replaced_segments: vec![],
        restored_from: None,
    };
    store.race_create("_versions/1.json", competitor.to_json().unwrap().into());
    let (ctx, index) = open(Arc::new(store.clone()));
    let options = options().with_max_commit_attempts(1);
    let err = index.finalize(&ctx, &options).await.unwrap_err();
    assert!(matches!(err, IndexError::Conflict(_)), "{err:?}");
    // Nothing of this run was committed, and its shards are still staged.
    assert_eq!(index.versions().await.unwrap(), vec![1]);
    assert_eq!(
        objects(index.location().store().as_ref(), "idx/_staging").await,
        objects(template.as_ref(), "idx/_staging").await
    );
}

/// A worker whose store fails at any operation of writing its shard gets the
/// store's error, never a panic, and leaves no shard that looks complete.
#[tokio::test]
async fn every_fault_of_a_worker_leaves_no_complete_shard() {
    let data = clustered(ROWS, 5, 72);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfSq, Metric::L2, 4);
    let base = Arc::new(InMemory::new());
    let (_, index) = open(Arc::clone(&base) as Arc<dyn ObjectStore>);
    model.write(index.location()).await.unwrap();
    let write = |store: FaultyStore| {
        let (ctx, index) = open(Arc::new(store));
        let (model, data, ids) = (model.clone(), data.clone(), ids.clone());
        tokio::spawn(async move {
            let mut writer = ShardWriter::new(index.location().clone(), Arc::new(model));
            writer.write(&ids, &vector_array(&data), "vec")?;
            writer.finish().await?;
            Ok::<_, IndexError>((ctx, index))
        })
    };
    let clean = FaultyStore::new(Arc::new(base.fork()));
    clean.disarm();
    write(clean.clone()).await.unwrap().unwrap();
    let operations = clean.ops();
    assert!(operations >= 3, "{operations} operations");
    for fault in [Fault::Once, Fault::Crash] {
        for k in 0..operations {
            let store = FaultyStore::new(Arc::new(base.fork()));
            store.arm(k, fault);
            let at = format!("{fault:?} fault at operation {k}");
            let outcome = match write(store.clone()).await {
                Ok(outcome) => outcome,
                Err(e) => panic!("{at}: the worker panicked: {e}"),
            };
            store.disarm();
            let err = outcome.err().unwrap_or_else(|| panic!("{at}: succeeded"));
            assert!(
                matches!(err, IndexError::Store { .. } | IndexError::ObjectStore(_)),
                "{at}: {err:?}"
            );
            let (ctx, index) = open(Arc::new(store));
            let complete = index
                .shards(&ctx)
                .unwrap()
                .filter(datafusion::prelude::col("complete"))
                .unwrap()
                .count()
                .await
                .unwrap();
            assert_eq!(complete, 0, "{at}");
        }
    }
}

/// A commit whose version PUT the store carried out but whose answer was lost (the
/// connection broke, or a retry found the first attempt's object) is a commit: the
/// finalize reads the version back, finds its own bytes, and reports success.
#[tokio::test]
async fn a_lost_acknowledgement_of_the_commit_is_a_commit() {
    for ack in [LostAck::Failure, LostAck::AlreadyExists] {
        let (_, data, template) = staged_template(IndexType::IvfFlat).await;
        let store = FaultyStore::new(Arc::new(template.fork()));
        store.lose_create_ack("_versions/1.json", ack);
        let (ctx, index) = open(Arc::new(store.clone()));
        let out = index.finalize(&ctx, &options()).await.unwrap_or_else(|e| {
            panic!("{ack:?}: {e}");
        });
        assert_eq!(index.versions().await.unwrap(), vec![1], "{ack:?}");
        // The same segments and hits as a finalize that heard its answer.
        let clean = FaultyStore::new(Arc::new(template.fork()));
        let (clean_ctx, clean_index) = open(Arc::new(clean));
        let clean_out = clean_index.finalize(&clean_ctx, &options()).await.unwrap();
        assert_eq!(out.segments.len(), clean_out.segments.len(), "{ack:?}");
        assert_eq!(out.rows(), clean_out.rows(), "{ack:?}");
        assert_eq!(
            search(&ctx, &index, &data).await,
            search(&clean_ctx, &clean_index, &data).await,
            "{ack:?}"
        );
    }
}

/// Two finalizers race; the loser is paused at its first read of a staged
/// `data.arrow` while the winner commits and removes the shards. The loser reports a
/// conflict naming the winner's version, not a damaged index, and commits nothing.
#[tokio::test]
async fn a_finalize_that_loses_a_race_mid_merge_reports_a_conflict() {
    let (_, _, template) = staged_template(IndexType::IvfFlat).await;
    let shared: Arc<dyn ObjectStore> = Arc::new(template.fork());
    let store = FaultyStore::new(Arc::clone(&shared));
    let winner = Arc::clone(&shared);
    store.before_first_read(
        "data.arrow",
        Box::new(move || {
            Box::pin(async move {
                let (ctx, index) = open(winner);
                index.finalize(&ctx, &options()).await.unwrap();
            })
        }),
    );
    let (ctx, index) = open(Arc::new(store));
    let err = index.finalize(&ctx, &options()).await.unwrap_err();
    assert!(
        matches!(&err, IndexError::Conflict(m) if m.contains("finalized concurrently by version 1")),
        "{err:?}"
    );
    assert_eq!(index.versions().await.unwrap(), vec![1]);
    let v1 = index.version(1).await.unwrap();
    assert_eq!(v1.segments.iter().map(|s| s.rows).sum::<u64>(), ROWS as u64);
}
