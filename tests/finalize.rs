//! Finalize: determinism over worker splits, planning checks that change nothing,
//! concurrent finalizes, failures half-way, replace mode, re-runs and vacuum.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use common::*;
use datafusion_vector_index::IndexError;
use datafusion_vector_index::ShardWriter;
use datafusion_vector_index::{CommitMode, FinalizeOptions, SegmentGrouping, VacuumOptions};
use datafusion_vector_index::{IndexType, Metric, Model};
use proptest::prelude::*;

const ROWS: usize = 1200;
const FRAGMENTS: u64 = 8;

fn segment_data(t: &TestIndex) -> Vec<(String, Vec<u8>)> {
    let segments = t.path().join("segments");
    let dir = std::fs::read_dir(&segments)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    files_below(&dir)
        .into_iter()
        .filter(|(n, _)| n.ends_with(".arrow") || n.ends_with(".roaring"))
        .collect()
}

fn staged(t: &TestIndex) -> Vec<(String, Vec<u8>)> {
    files_below(&t.path().join("_staging"))
}

async fn finalize(
    t: &TestIndex,
    options: &FinalizeOptions,
) -> datafusion_vector_index::Result<datafusion_vector_index::FinalizeReport> {
    t.index.finalize(&t.ctx, options).await
}

async fn build(model: &Model, data: &[f32], ids: &[u64], owners: &[usize]) -> TestIndex {
    let t = TestIndex::new(model).await;
    t.stage(model, data, ids, owners).await;
    t
}

/// As [`build`], with the merge going through the object-store API.
async fn build_through_store(
    model: &Model,
    data: &[f32],
    ids: &[u64],
    owners: &[usize],
) -> TestIndex {
    let t = TestIndex::through_object_store(model).await;
    t.stage(model, data, ids, owners).await;
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]

    /// The committed segment's data (and, for HNSW types, its graphs) does not depend on
    /// how rows were spread over workers.
    #[test]
    fn segment_bytes_do_not_depend_on_the_worker_split(owners in proptest::collection::vec(0usize..8, FRAGMENTS as usize), ty in 0usize..IndexType::ALL.len()) {
        let ty = IndexType::ALL[ty];
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let data = clustered(ROWS, 6, 11);
            let ids = row_ids(ROWS, FRAGMENTS);
            let model = train(&data, ty, Metric::L2, 8);
            let one = build(&model, &data, &ids, &[0; FRAGMENTS as usize]).await;
            let many = build(&model, &data, &ids, &owners).await;
            let many_via_store = build_through_store(&model, &data, &ids, &owners).await;
            let small_files = FinalizeOptions::default()
.with_target_file_bytes(4096);
            for t in [&one, &many, &many_via_store] {
                finalize(t, &small_files).await.unwrap();
            }
            let a = segment_data(&one);
            prop_assert!(a.len() > 2, "several files per segment");
            prop_assert_eq!(&a, &segment_data(&many));
            prop_assert_eq!(&a, &segment_data(&many_via_store), "local files and the object-store API agree");
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn planning_errors_change_nothing() {
    let data = clustered(ROWS, 6, 12);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfPq, Metric::L2, 8);
    let t = TestIndex::new(&model).await;

    let err = finalize(&t, &FinalizeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no complete shards"), "{err}");

    // Two shards covering fragment 3.
    let a = t
        .stage(&model, &data, &ids, &[0, 0, 0, 0, 1, 1, 1, 1])
        .await;
    let mut writer = ShardWriter::new(t.location().clone(), Arc::new(model.clone()));
    writer
        .write(&[(3 << 32) | 5000], &vector_array(&data[..DIM]), "vec")
        .unwrap();
    let dup = writer.finish().await.unwrap().shard_id;
    let before = staged(&t);
    let err = finalize(&t, &FinalizeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&a[0]) && err.contains(&dup) && err.contains("fragments 3"),
        "{err}"
    );
    assert_eq!(staged(&t), before, "staging untouched");
    assert!(!t.path().join("_versions").exists(), "nothing committed");
    std::fs::remove_dir_all(t.path().join("_staging").join(format!("partial_{dup}"))).unwrap();

    // A shard built with another model.
    let other = train(&data[..DIM * 900], IndexType::IvfPq, Metric::L2, 8);
    let mut writer = ShardWriter::new(t.location().clone(), Arc::new(other.clone()));
    writer
        .write(&[(9 << 32) | 1], &vector_array(&data[..DIM]), "vec")
        .unwrap();
    let foreign = writer.finish().await.unwrap().shard_id;
    let err = finalize(&t, &FinalizeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&foreign)
            && err.contains(other.info().fingerprint())
            && err.contains(model.info().fingerprint()),
        "{err}"
    );
    std::fs::remove_dir_all(t.path().join("_staging").join(format!("partial_{foreign}"))).unwrap();

    // An incomplete shard: error by default, skipped when asked.
    let incomplete = t
        .path()
        .join("_staging/partial_00000000-0000-4000-8000-000000000000");
    std::fs::create_dir_all(&incomplete).unwrap();
    std::fs::write(incomplete.join("data.arrow"), b"partial").unwrap();
    let err = finalize(&t, &FinalizeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("incomplete") && err.contains("00000000-0000-4000-8000-000000000000"),
        "{err}"
    );

    // A truncated data file.
    let data_file = t
        .path()
        .join("_staging")
        .join(format!("partial_{}", a[0]))
        .join("data.arrow");
    let original = std::fs::read(&data_file).unwrap();
    std::fs::write(&data_file, &original[..original.len() - 10]).unwrap();
    let skip = FinalizeOptions::default().with_skip_incomplete(true);
    let err = finalize(&t, &skip).await.unwrap_err().to_string();
    assert!(err.contains(&a[0]) && err.contains("truncated"), "{err}");
    std::fs::write(&data_file, &original).unwrap();

    let out = finalize(&t, &skip).await.unwrap();
    assert_eq!(out.segments[0].rows, ROWS as u64);
    assert!(incomplete.exists(), "skipped shards stay for vacuum");
}

/// Shards interleaved within every partition, so merged partitions are made of many
/// short runs; both merge paths write the same bytes.
#[tokio::test]
async fn local_files_and_the_object_store_api_write_the_same_segments() {
    let data = clustered(ROWS, 6, 12);
    let ids = row_ids(ROWS, FRAGMENTS);
    let owners = [0, 1, 2, 0, 1, 2, 0, 1];
    for ty in [IndexType::IvfFlat, IndexType::IvfPq, IndexType::IvfSq] {
        let model = train(&data, ty, Metric::L2, 8);
        let local = build(&model, &data, &ids, &owners).await;
        let via_store = build_through_store(&model, &data, &ids, &owners).await;
        let options = FinalizeOptions::default().with_target_file_bytes(2048);
        finalize(&local, &options).await.unwrap();
        finalize(&via_store, &options).await.unwrap();
        assert_eq!(segment_data(&local), segment_data(&via_store), "{ty:?}");
        let query = &data[5 * DIM..6 * DIM];
        let options = datafusion_vector_index::SearchOptions::default;
        let a = local.index.search(&local.ctx, query, options()).await;
        let b = via_store
            .index
            .search(&via_store.ctx, query, options())
            .await;
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b, "{ty:?}");
    }
}

/// The commit operator reports how long removing the consumed shards took.
#[tokio::test]
async fn commit_reports_the_removal_of_consumed_shards() {
    let data = clustered(ROWS, 6, 15);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfSq, Metric::L2, 8);
    let t = build(&model, &data, &ids, &[0, 0, 1, 1, 2, 2, 3, 3]).await;
    let plan = t
        .index
        .finalize_plan(&t.ctx, &FinalizeOptions::default())
        .await
        .unwrap();
    datafusion::physical_plan::collect(Arc::clone(&plan), t.ctx.task_ctx())
        .await
        .unwrap();
    let removal = plan.metrics().unwrap().sum_by_name("cleanup_time").unwrap();
    assert!(removal.as_usize() > 0, "{removal:?}");
    assert!(staged(&t).is_empty(), "consumed shards removed");
}

#[tokio::test]
async fn a_merge_that_fails_half_way_commits_nothing() {
    let data = clustered(ROWS, 6, 13);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 8);
    merge_failure_commits_nothing(&data, &ids, &model, TestIndex::new(&model).await).await;
}

#[tokio::test]
async fn a_merge_through_the_object_store_that_fails_commits_nothing() {
    let data = clustered(ROWS, 6, 13);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 8);
    let t = TestIndex::through_object_store(&model).await;
    merge_failure_commits_nothing(&data, &ids, &model, t).await;
}

/// The staging table checks each shard's data file length against its manifest, so
/// a truncated shard shows as invalid (not complete) with the reason, and the
/// others stay complete.
#[tokio::test]
async fn the_staging_table_names_a_truncated_data_file() {
    let data = clustered(ROWS, 6, 19);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfSq, Metric::L2, 8);
    let t = TestIndex::new(&model).await;
    let shards = t
        .stage(&model, &data, &ids, &[0, 0, 0, 0, 1, 1, 1, 1])
        .await;
    truncate_data_file(&t, &shards[1]);

    let batches = t.index.shards(&t.ctx).unwrap().collect().await.unwrap();
    let mut seen = 0;
    for b in &batches {
        let id = b.column_by_name("shard_id").unwrap().as_string::<i32>();
        let complete = b.column_by_name("complete").unwrap().as_boolean();
        let status = b.column_by_name("status").unwrap().as_string::<i32>();
        let problem = b.column_by_name("problem").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            seen += 1;
            if id.value(i) == shards[1] {
                assert!(!complete.value(i));
                assert_eq!(status.value(i), "invalid");
                let problem = problem.value(i);
                assert!(
                    problem.contains("data.arrow is") && problem.contains("truncated"),
                    "{problem}"
                );
            } else {
                assert!(complete.value(i) && problem.is_null(i));
                assert_eq!(status.value(i), "complete");
            }
        }
    }
    assert_eq!(seen, 2);
}

/// Cuts a staged shard's data file in half.
fn truncate_data_file(t: &TestIndex, shard: &str) {
    let data_file = t
        .path()
        .join("_staging")
        .join(format!("partial_{shard}"))
        .join("data.arrow");
    let bytes = std::fs::read(&data_file).unwrap();
    std::fs::write(&data_file, &bytes[..bytes.len() / 2]).unwrap();
}

async fn merge_failure_commits_nothing(data: &[f32], ids: &[u64], model: &Model, t: TestIndex) {
    t.stage(model, data, ids, &[0, 0, 1, 1, 2, 2, 3, 3]).await;
    finalize(&t, &FinalizeOptions::default()).await.unwrap();
    let committed = files_below(&t.path().join("_versions"));

    // Stage more, then flip a byte inside the last partition of one shard.
    let more_ids: Vec<u64> = ids.iter().map(|i| i + (8 << 32)).collect();
    let shards = t
        .stage(
            model,
            data,
            &more_ids,
            &[9, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0, 0, 1, 1, 1, 1],
        )
        .await;
    let dir = t
        .path()
        .join("_staging")
        .join(format!("partial_{}", shards[1]));
    let manifest = datafusion_vector_index::format::ShardManifest::from_json(
        &shards[1],
        &std::fs::read(dir.join("shard.json")).unwrap(),
    )
    .unwrap();
    let block = manifest
        .partitions
        .iter()
        .rev()
        .find(|b| b.rows > 0)
        .unwrap();
    let mut bytes = std::fs::read(dir.join("data.arrow")).unwrap();
    bytes[(block.offset + block.length - 4) as usize] ^= 0xff;
    std::fs::write(dir.join("data.arrow"), &bytes).unwrap();
    let before = staged(&t);

    let options = FinalizeOptions::default().with_target_file_bytes(2048);
    let err = finalize(&t, &options).await.unwrap_err().to_string();
    assert!(
        err.contains(&shards[1]) && err.contains("checksum"),
        "{err}"
    );
    assert_eq!(
        files_below(&t.path().join("_versions")),
        committed,
        "previous version intact"
    );
    assert_eq!(staged(&t), before, "staged shards in place");
    let hits = t
        .index
        .search(
            &t.ctx,
            &data[..DIM],
            datafusion_vector_index::SearchOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(hits[0].len(), 10);
}

#[tokio::test]
async fn racing_finalizes_commit_once_and_lose_nothing() {
    let data = clustered(ROWS, 6, 14);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfSq, Metric::L2, 8);
    let t = build(&model, &data, &ids, &[0, 1, 2, 3, 0, 1, 2, 3]).await;
    let options = FinalizeOptions::default();
    let (a, b) = tokio::join!(
        t.index.finalize(&t.ctx, &options),
        t.index.finalize(&t.ctx, &options)
    );
    let ok = [a.is_ok(), b.is_ok()];
    assert_eq!(
        ok.iter().filter(|x| **x).count(),
        1,
        "exactly one commits: {a:?} / {b:?}"
    );
    let err = match (a, b) {
        (Err(e), _) | (_, Err(e)) => e,
        _ => unreachable!("one of the two failed"),
    };
    // However far the winner got — its commit, its removal of the shards, or a
    // commit before the loser planned — the loser is told it lost, or that nothing
    // was left to finalize: never that the index is damaged.
    assert!(
        matches!(
            err,
            IndexError::Conflict(_) | IndexError::NothingToFinalize(_)
        ),
        "{err:?}"
    );
    let v = latest_version(&t).await;
    assert_eq!(v.version, 1);
    assert_eq!(v.segments.iter().map(|s| s.rows).sum::<u64>(), ROWS as u64);

    // The loser's segment files are unreferenced; vacuum removes them and nothing else.
    t.index
        .vacuum(
            &VacuumOptions::default()
                .with_older_than(Duration::ZERO)
                .with_dry_run(false),
        )
        .await
        .unwrap();
    let hits = t
        .index
        .search(
            &t.ctx,
            &data[..DIM],
            datafusion_vector_index::SearchOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(hits[0].len(), 10);
    // Local folders emptied by vacuum may linger; only files count.
    let segment_dirs: std::collections::BTreeSet<String> = files_below(&t.path().join("segments"))
        .into_iter()
        .map(|(p, _)| p.split('/').next().unwrap().to_string())
        .collect();
    assert_eq!(segment_dirs.len(), 1, "{segment_dirs:?}");
}

#[tokio::test]
async fn commit_overlap_append_fails_replace_replaces() {
    let data = clustered(ROWS, 6, 15);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 8);
    let t = build(&model, &data, &ids, &[0, 0, 0, 0, 1, 1, 1, 1]).await;
    let per_shard = FinalizeOptions::default().with_grouping(SegmentGrouping::PerShard);
    let out = finalize(&t, &per_shard).await.unwrap();
    assert_eq!(out.segments.len(), 2);
    let first = latest_version(&t).await;

    // Re-index fragments 0..4 (owned by the first segment).
    let subset: Vec<u64> = ids.iter().copied().filter(|i| (i >> 32) < 4).collect();
    let rows: Vec<f32> = ids
        .iter()
        .enumerate()
        .filter(|(_, i)| (**i >> 32) < 4)
        .flat_map(|(n, _)| data[n * DIM..(n + 1) * DIM].to_vec())
        .collect();
    t.stage(&model, &rows, &subset, &[0, 0, 0, 0]).await;
    let err = finalize(&t, &FinalizeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already covered by committed segment") && err.contains("replace"),
        "{err}"
    );

    let replace = FinalizeOptions::default().with_mode(CommitMode::Replace);
    let out = finalize(&t, &replace).await.unwrap();
    let replaced = out.replaced_segments.join(",");
    let v2 = latest_version(&t).await;
    assert_eq!(v2.version, 2);
    assert_eq!(v2.segments.len(), 2);
    assert_eq!(v2.replaced_segments, vec![replaced.clone()]);
    assert!(first.segments.iter().any(|s| s.segment_id == replaced));
    assert_eq!(v2.segments.iter().map(|s| s.rows).sum::<u64>(), ROWS as u64);
    assert_eq!(
        t.index.versions().await.unwrap(),
        vec![1, 2],
        "version 1 kept as written"
    );
}

#[tokio::test]
async fn rerun_after_crash_between_commit_and_cleanup_merges_nothing_twice() {
    let data = clustered(ROWS, 6, 16);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 8);
    let t = build(&model, &data, &ids, &[0, 0, 0, 0, 1, 1, 1, 1]).await;
    let before = staged(&t);
    let target_rows = FinalizeOptions::default().with_grouping(SegmentGrouping::TargetRows(500));
    finalize(&t, &target_rows).await.unwrap();
    assert!(
        staged(&t).is_empty(),
        "consumed shards removed after commit"
    );

    // Simulate a crash before cleanup: the consumed shards are back.
    for (path, bytes) in &before {
        let p = t.path().join("_staging").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let err = finalize(&t, &FinalizeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already consumed"), "{err}");
    assert_eq!(t.index.versions().await.unwrap(), vec![1]);

    let report = t.index.vacuum(&VacuumOptions::default()).await.unwrap();
    assert_eq!(
        report
            .removed
            .iter()
            .filter(|r| r.kind == datafusion_vector_index::VacuumedKind::ConsumedShard)
            .count(),
        2
    );
    assert!(staged(&t).is_empty());
    // Unreferenced segment folders are kept until they are old enough.
    std::fs::create_dir_all(t.path().join("segments/orphan")).unwrap();
    std::fs::write(t.path().join("segments/orphan/part.arrow"), b"x").unwrap();
    let report = t.index.vacuum(&VacuumOptions::default()).await.unwrap();
    assert!(report.removed.is_empty());
    let report = t
        .index
        .vacuum(
            &VacuumOptions::default()
                .with_older_than(Duration::ZERO)
                .with_dry_run(false),
        )
        .await
        .unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].id, "orphan");
    assert_eq!(t.index.segments().await.unwrap().num_rows(), 2);
}

#[tokio::test]
async fn a_shard_copied_into_another_folder_is_refused() {
    let data = clustered(ROWS, 6, 17);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 8);
    let t = build(&model, &data, &ids, &[0, 0, 0, 0, 1, 1, 1, 1]).await;
    let shards = t.path().join("_staging");
    let first = std::fs::read_dir(&shards)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let copy = shards.join("partial_11111111-1111-4111-8111-111111111111");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["data.arrow", "fragments.roaring", "shard.json"] {
        std::fs::copy(first.join(f), copy.join(f)).unwrap();
    }
    let err = finalize(&t, &FinalizeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("11111111-1111-4111-8111-111111111111")
            && err.contains("shard.json names shard"),
        "{err}"
    );
    assert!(!t.path().join("_versions").exists());
}

/// The manifest of the index's latest version.
async fn latest_version(t: &TestIndex) -> datafusion_vector_index::format::VersionManifest {
    let latest = *t.index.versions().await.unwrap().last().unwrap();
    t.index.version(latest).await.unwrap()
}

/// On a local filesystem consumed shards leave `_staging` in one rename each and are
/// deleted in the background. A process that ends first leaves them in `_trash/`
/// (or, ending before the renames, consumed in `_staging`): a re-run merges nothing
/// twice and vacuum deletes both, whatever their age, leaving the index as it was.
#[tokio::test]
async fn consumed_shards_are_moved_aside_then_deleted_and_vacuum_finishes() {
    use datafusion_vector_index::{SearchOptions, VacuumedItem, VacuumedKind};

    let data = clustered(ROWS, 6, 21);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfSq, Metric::L2, 8);
    let t = build(&model, &data, &ids, &[0, 0, 1, 1, 2, 2, 3, 3]).await;
    let staging = t.path().join("_staging");
    let mut shards: Vec<std::path::PathBuf> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    shards.sort();
    let saved: Vec<Vec<(String, Vec<u8>)>> = shards.iter().map(|s| files_below(s)).collect();
    let id = |dir: &std::path::Path| {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        name.trim_start_matches("partial_").to_string()
    };
    let query = &data[..DIM];
    let options = SearchOptions::default().with_k(5).with_nprobes(4);

    finalize(&t, &FinalizeOptions::default()).await.unwrap();
    assert!(staged(&t).is_empty(), "consumed shards left _staging");
    let trash = t.path().join("_trash");
    let started = std::time::Instant::now();
    let in_trash = || std::fs::read_dir(&trash).map_or(0, |d| d.count());
    while in_trash() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "_trash never emptied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits = t.index.search(&t.ctx, query, options).await.unwrap();

    // Leftovers of a process that ended early: shard 0 in _trash, shard 1 in _staging.
    let restore = |dir: &std::path::Path, files: &[(String, Vec<u8>)]| {
        for (name, bytes) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    };
    restore(&trash.join(shards[0].file_name().unwrap()), &saved[0]);
    restore(&shards[1], &saved[1]);
    let err = finalize(&t, &FinalizeOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already consumed"), "{err}");
    assert_eq!(t.index.versions().await.unwrap(), vec![1]);

    let item = |dir: &std::path::Path, files: &[(String, Vec<u8>)]| VacuumedItem {
        kind: VacuumedKind::ConsumedShard,
        id: id(dir),
        objects: files.len(),
    };
    let mut expected = vec![item(&shards[1], &saved[1]), item(&shards[0], &saved[0])];
    let dry_run = VacuumOptions::default().with_dry_run(true);
    let mut report = t.index.vacuum(&dry_run).await.unwrap().removed;
    report.sort_by(|a, b| a.id.cmp(&b.id));
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(report, expected);
    assert!(!files_below(&trash).is_empty(), "a dry run removes nothing");
    let mut report = t
        .index
        .vacuum(&VacuumOptions::default())
        .await
        .unwrap()
        .removed;
    report.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(report, expected);
    assert!(files_below(&trash).is_empty() && staged(&t).is_empty());
    assert!(t
        .index
        .vacuum(&VacuumOptions::default())
        .await
        .unwrap()
        .removed
        .is_empty());
    assert_eq!(t.index.search(&t.ctx, query, options).await.unwrap(), hits);
}

/// The operator's day of issue 35: a worker run again over one committed fragment.
/// Append refuses and names the remedies; replace refuses to drop the segment's
/// other fragments and changes nothing; discarding the shard clears the way; a
/// later version is searched beside the older one, and restoring the older one
/// commits its segments as a new version with nothing lost.
#[tokio::test]
async fn a_restaged_fragment_never_drops_rows() {
    let data = clustered(ROWS, 6, 35);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 8);
    let t = build(&model, &data, &ids, &[0, 0, 1, 1, 2, 2, 3, 3]).await;
    finalize(&t, &FinalizeOptions::default()).await.unwrap();
    let v1 = latest_version(&t).await;

    let fragment_one: Vec<usize> = (0..ROWS).filter(|&i| ids[i] >> 32 == 1).collect();
    let one_ids: Vec<u64> = fragment_one.iter().map(|&i| ids[i]).collect();
    let one_data: Vec<f32> = fragment_one
        .iter()
        .flat_map(|&i| data[i * DIM..(i + 1) * DIM].iter().copied())
        .collect();
    let again = t.stage(&model, &one_data, &one_ids, &[0, 0]).await;
    assert_eq!(again.len(), 1);
    let staged_before = staged(&t);

    let err = finalize(&t, &FinalizeOptions::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "discard_vector_index_shard(index => ..., shard => '{}')",
            again[0]
        )) && text.contains("covering all 8 fragments"),
        "{text}"
    );
    let replace = FinalizeOptions::default().with_mode(CommitMode::Replace);
    let err = finalize(&t, &replace).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "replacing committed segment {} ({ROWS} rows, 8 fragments) would drop the rows of its 7 fragments",
            v1.segments[0].segment_id
        )),
        "{err}"
    );
    assert_eq!(t.index.versions().await.unwrap(), vec![1]);
    assert_eq!(staged(&t), staged_before, "the staging area is as it was");

    // Discarding the re-staged shard through SQL leaves nothing to finalize.
    let session = datafusion_vector_index::VectorIndexSession::with_context(t.ctx.clone());
    let url = t.location().url().to_string();
    let out = session
        .sql(&format!(
            "CALL discard_vector_index_shard(index => '{url}', shard => '{}')",
            again[0]
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(out[0].num_rows(), 1);
    assert!(staged(&t).is_empty());
    let err = finalize(&t, &FinalizeOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("no complete shards"), "{err}");

    // Version 2 adds fragments 8 and 9; version 1 still answers without them.
    let more_ids: Vec<u64> = ids.iter().map(|i| i + (8u64 << 32)).collect();
    let owners: Vec<usize> = (0..16).map(|f| usize::from(f < 8)).collect();
    assert_eq!(t.stage(&model, &data, &more_ids, &owners).await.len(), 1);
    finalize(&t, &FinalizeOptions::default()).await.unwrap();
    let query = &data[fragment_one[0] * DIM..(fragment_one[0] + 1) * DIM];
    let search = |version| {
        let mut options = datafusion_vector_index::SearchOptions::default()
            .with_k(2)
            .with_nprobes(8);
        options.version = version;
        let t = &t;
        async move { t.index.search(&t.ctx, query, options).await.unwrap() }
    };
    let fragments = |hits: Vec<Vec<datafusion_vector_index::SearchHit>>| -> Vec<u64> {
        hits[0].iter().map(|h| h.row_id >> 32).collect()
    };
    // The query's own row, and its twin in fragment 9 once version 2 has it.
    assert_eq!(fragments(search(Some(1)).await), [1, 1]);
    let latest = fragments(search(None).await);
    assert!(latest.contains(&1) && latest.contains(&9), "{latest:?}");

    let restored = t.index.restore(1).await.unwrap();
    assert_eq!((restored.version, restored.restored_from), (3, 1));
    assert_eq!(restored.rows, ROWS as u64);
    let v3 = latest_version(&t).await;
    assert_eq!(v3.segments, v1.segments);
    assert_eq!(v3.restored_from, Some(1));
    assert_eq!(fragments(search(None).await), [1, 1]);
    // Version 2 is kept as written, and can be restored in turn.
    assert_eq!(latest_version(&t).await.version, 3);
    assert_eq!(t.index.version(2).await.unwrap().segments.len(), 2);
    assert_eq!(t.index.restore(2).await.unwrap().version, 4);
}
