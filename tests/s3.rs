//! The whole flow on S3, against the S3 server `tests/common/s3.rs` starts on
//! 127.0.0.1: indexes at `s3://<bucket>/…` reached through the store a session
//! builds from the `AWS_*` variables, for every index type and several groupings;
//! racing finalizers; what a search reads; what the store must guarantee.
#![cfg(feature = "s3")]

mod common;
#[path = "common/s3.rs"]
mod s3_server;

use std::sync::Arc;

use common::*;
use datafusion::prelude::SessionContext;
use datafusion_vector_index::{
    FinalizeOptions, IndexError, IndexType, Metric, Model, SearchOptions, SegmentGrouping,
    ShardWriter, VacuumOptions, VectorIndex, VectorIndexSession,
};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

const ROWS: usize = 600;
const FRAGMENTS: u64 = 6;

fn session() -> SessionContext {
    s3_server::server();
    VectorIndexSession::new().context().clone()
}

/// Stages one shard per worker: worker w gets the fragments f with `owners[f] == w`.
async fn stage(index: &VectorIndex, model: &Model, data: &[f32], ids: &[u64], owners: &[usize]) {
    let workers = owners.iter().max().map_or(0, |m| m + 1);
    for w in 0..workers {
        let mine: Vec<usize> = (0..ids.len())
            .filter(|&i| owners[(ids[i] >> 32) as usize % owners.len()] == w)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut writer = ShardWriter::new(index.location().clone(), Arc::new(model.clone()));
        for chunk in mine.chunks(128) {
            let values: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| data[i * DIM..(i + 1) * DIM].iter().copied())
                .collect();
            let chunk_ids: Vec<u64> = chunk.iter().map(|&i| ids[i]).collect();
            writer
                .write(&chunk_ids, &vector_array(&values), "vec")
                .unwrap();
        }
        writer.finish().await.unwrap();
    }
}

/// Every type, staged by three workers and finalized one way on S3 and the same way
/// on a local disk: the same segments and the same search results.
#[tokio::test]
async fn every_type_builds_finalizes_and_searches_on_s3_as_on_a_local_disk() {
    let data = clustered(ROWS, 8, 31);
    let ids = row_ids(ROWS, FRAGMENTS);
    let server = s3_server::server();
    let groupings = [
        SegmentGrouping::Single,
        SegmentGrouping::PerShard,
        SegmentGrouping::TargetRows(250),
    ];
    for (n, ty) in IndexType::ALL.into_iter().enumerate() {
        let model = train(&data, ty, Metric::L2, 8);
        let options = FinalizeOptions::default()
            .with_grouping(groupings[n % groupings.len()])
            .with_target_file_bytes(4 << 10)
            .with_merge_partitions(2);
        let owners = [0, 0, 1, 1, 2, 2];

        let ctx = session();
        let bucket = server.bucket();
        let on_s3 = VectorIndex::open(&ctx, &format!("s3://{bucket}/idx/{ty}")).unwrap();
        model.write(on_s3.location()).await.unwrap();
        stage(&on_s3, &model, &data, &ids, &owners).await;
        let staged = on_s3.shards(&ctx).unwrap().count().await.unwrap();
        assert_eq!(staged, 3, "{ty}");
        let out = on_s3.finalize(&ctx, &options).await.unwrap();

        let local = TestIndex::new(&model).await;
        stage(&local.index, &model, &data, &ids, &owners).await;
        let expected = local.index.finalize(&local.ctx, &options).await.unwrap();
        assert_eq!(out.segments.len(), expected.segments.len(), "{ty}");
        assert_eq!(on_s3.versions().await.unwrap(), vec![1]);
        assert_eq!(
            on_s3.shards(&ctx).unwrap().count().await.unwrap(),
            0,
            "{ty}: consumed shards removed"
        );

        let queries = &data[..5 * DIM];
        let got = on_s3
            .search(&ctx, queries, SearchOptions::default())
            .await
            .unwrap();
        let want = local
            .index
            .search(&local.ctx, queries, SearchOptions::default())
            .await
            .unwrap();
        assert_eq!(got, want, "{ty}");
        assert_eq!(got[0][0].row_id, ids[0], "{ty}: a row finds itself");

        let report = on_s3
            .vacuum(
                &VacuumOptions::default()
                    .with_older_than(std::time::Duration::ZERO)
                    .with_dry_run(false),
            )
            .await
            .unwrap();
        assert!(report.removed.is_empty(), "{ty}: {:?}", report.removed);
    }
}

/// Eight finalizers at once over the same staged shards, round after round: each
/// round commits exactly one version, every row is in it, and losers fail cleanly.
#[tokio::test]
async fn racing_finalizers_commit_one_version_per_round_and_lose_nothing() {
    let data = clustered(ROWS, 8, 32);
    let model = train(&data, IndexType::IvfSq, Metric::L2, 8);
    let ctx = session();
    let bucket = s3_server::server().bucket();
    let index = VectorIndex::open(&ctx, &format!("s3://{bucket}/race")).unwrap();
    model.write(index.location()).await.unwrap();
    const ROUNDS: u64 = 3;
    for round in 0..ROUNDS {
        let ids: Vec<u64> = row_ids(ROWS, FRAGMENTS)
            .into_iter()
            .map(|id| id + ((round * FRAGMENTS) << 32))
            .collect();
        stage(&index, &model, &data, &ids, &[0, 1, 2, 3, 0, 1]).await;
        let finalizers = (0..8).map(|_| {
            let (index, ctx) = (index.clone(), ctx.clone());
            tokio::spawn(async move { index.finalize(&ctx, &FinalizeOptions::default()).await })
        });
        let results: Vec<_> = futures::future::join_all(finalizers)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        // A loser is told it lost (or, when the winner committed before it
        // planned, that nothing was left): never that the index is damaged.
        for err in results.into_iter().filter_map(Result::err) {
            assert!(
                matches!(
                    err,
                    IndexError::Conflict(_) | IndexError::NothingToFinalize(_)
                ),
                "round {round}: {err:?}"
            );
        }
        assert_eq!(
            index.versions().await.unwrap(),
            (1..=round + 1).collect::<Vec<_>>()
        );
        // Each version lists every segment committed so far.
        let version = index.version(round + 1).await.unwrap();
        assert_eq!(
            version.segments.iter().map(|s| s.rows).sum::<u64>(),
            (round + 1) * ROWS as u64,
            "round {round}"
        );
    }
    // Losers may have left segment files; vacuum removes only those.
    index
        .vacuum(
            &VacuumOptions::default()
                .with_older_than(std::time::Duration::ZERO)
                .with_dry_run(false),
        )
        .await
        .unwrap();
    let hits = index
        .search(&ctx, &data[..DIM], SearchOptions::default())
        .await
        .unwrap();
    assert_eq!(hits[0].len(), 10);
    let segments = index.segments().await.unwrap();
    assert_eq!(segments.num_rows(), ROUNDS as usize);
}

/// The guarantee the commit protocol stands on, asked of the server directly:
/// of eight concurrent create-if-absent PUTs of one key, exactly one succeeds.
#[tokio::test]
async fn concurrent_conditional_puts_create_once() {
    let server = s3_server::server();
    let bucket = server.bucket();
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .unwrap(),
    );
    one_create_wins(store, "conditional", 20).await;
}

/// A store that ignores `If-None-Match` (as some S3-compatible ones do) is refused
/// when the index is created, before any commit could race on it.
#[tokio::test]
async fn a_store_without_conditional_writes_is_refused_at_create() {
    let data = clustered(ROWS, 8, 33);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 4);
    let ctx = session();
    let bucket = s3_server::server().lax_bucket();
    let index = VectorIndex::open(&ctx, &format!("s3://{bucket}/idx")).unwrap();
    let err = model.write(index.location()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, IndexError::InvalidArgument { .. })
            && text.contains(&format!("s3://{bucket}/idx"))
            && text.contains("ignored a conditional write"),
        "{text}"
    );
    assert!(!text.contains(s3_server::SECRET_KEY));
}

/// `create` refuses what it can before it trains: a store that ignores conditional
/// writes, a bucket that does not exist, an index already there with other
/// parameters. None of them reads a row of the table (no sampling step starts), and
/// none leaves an object behind.
#[tokio::test]
async fn create_refuses_before_training() {
    let data = clustered(ROWS, 8, 36);
    let ctx = session();
    let session = VectorIndexSession::with_context(ctx.clone());
    let ctx = session.context().clone();
    let batch = arrow::array::RecordBatch::try_from_iter([("vec", vector_array(&data))]).unwrap();
    ctx.register_batch("items", batch).unwrap();
    let options = datafusion_vector_index::TrainOptions::default().with_num_partitions(4);
    let create = |url: String| {
        let (ctx, options) = (ctx.clone(), options.clone());
        async move {
            let index = VectorIndex::open(&ctx, &url).unwrap();
            index
                .create(ctx.table("items").await.unwrap(), "vec", &options)
                .await
        }
    };
    let server = s3_server::server();
    let lax = server.lax_bucket();
    let err = create(format!("s3://{lax}/idx"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ignored a conditional write"), "{err}");
    let err = create("s3://no-such-bucket-here/idx".to_string())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NoSuchBucket") && !err.contains("<?xml"),
        "{err}"
    );
    let sampled = session
        .progress()
        .unwrap()
        .snapshot()
        .into_iter()
        .any(|s| s.step == datafusion_vector_index::ProgressStep::Sampling);
    assert!(!sampled, "nothing was sampled");

    let bucket = server.bucket();
    let url = format!("s3://{bucket}/preflight");
    create(url.clone()).await.unwrap();
    // The same parameters again: the same model, a no-op.
    create(url.clone()).await.unwrap();
    let other = options.clone().with_num_partitions(8);
    let index = VectorIndex::open(&ctx, &url).unwrap();
    let err = index
        .create(ctx.table("items").await.unwrap(), "vec", &other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists with model") && err.contains("4 partitions"),
        "{err}"
    );
    let store = index.location().store();
    let left: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
        store.list(Some(&Path::from("preflight/_probe"))),
    )
    .await
    .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A search reads the probed partitions of each segment with ranged GETs, not
/// whole files: at nprobes 2 of 8 partitions, a handful of requests; the probed
/// partitions of one file with one request.
#[tokio::test]
async fn a_search_reads_only_the_probed_partitions() {
    let data = clustered(ROWS, 8, 34);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, IndexType::IvfPq, Metric::L2, 8);
    let ctx = session();
    let server = s3_server::server();
    let bucket = server.bucket();
    let index = VectorIndex::open(&ctx, &format!("s3://{bucket}/probe")).unwrap();
    model.write(index.location()).await.unwrap();
    stage(&index, &model, &data, &ids, &[0, 0, 0, 1, 1, 1]).await;
    let options = FinalizeOptions::default().with_target_file_bytes(1);
    index.finalize(&ctx, &options).await.unwrap();

    let count = |op: &str| server.requests.get(&bucket, op);
    let (gets, ranged) = (count("GetObject"), count("GetObject(range)"));
    let search = SearchOptions::default().with_k(5).with_nprobes(2);
    index.search(&ctx, &data[..DIM], search).await.unwrap();
    let (gets, ranged) = (
        count("GetObject") - gets,
        count("GetObject(range)") - ranged,
    );
    // Whole: index.json, the model, the latest version and its one segment's
    // manifest. Ranged: one read per probed partition (each in a file of its own
    // here), never a whole data file.
    assert_eq!(
        (gets - ranged, ranged),
        (4, 2),
        "{:?}",
        server.requests.of(&bucket)
    );

    // The probed partitions of one data file are fetched together.
    let one_file = VectorIndex::open(&ctx, &format!("s3://{bucket}/one-file")).unwrap();
    model.write(one_file.location()).await.unwrap();
    stage(&one_file, &model, &data, &ids, &[0, 0, 0, 1, 1, 1]).await;
    one_file
        .finalize(&ctx, &FinalizeOptions::default())
        .await
        .unwrap();
    let ranged = count("GetObject(range)");
    let four = search.with_nprobes(4);
    let hits = one_file.search(&ctx, &data[..DIM], four).await.unwrap();
    assert_eq!(
        count("GetObject(range)") - ranged,
        1,
        "{:?}",
        server.requests.of(&bucket)
    );
    assert_eq!(hits, index.search(&ctx, &data[..DIM], four).await.unwrap());
}

/// A store the application registered for the URL wins over the environment's.
#[tokio::test]
async fn a_store_the_application_registered_wins() {
    let ctx = session();
    let memory = Arc::new(object_store::memory::InMemory::new());
    ctx.register_object_store(
        &url::Url::parse("s3://app-bucket").unwrap(),
        Arc::clone(&memory) as Arc<dyn ObjectStore>,
    );
    let data = clustered(ROWS, 8, 35);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 4);
    let index = VectorIndex::open(&ctx, "s3://app-bucket/idx").unwrap();
    model.write(index.location()).await.unwrap();
    assert!(memory.head(&Path::from("idx/index.json")).await.is_ok());
}
