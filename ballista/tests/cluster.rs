//! The finalize, the search and the distributed shard build on a Ballista
//! scheduler and two executors started in this process, and the codec that ships
//! their plans.

#[path = "../../tests/common/mod.rs"]
mod common;
#[cfg(feature = "s3")]
#[path = "../../tests/common/s3.rs"]
mod s3_server;

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, UInt64Type};
use common::faults::{Fault, FaultyStore};
use common::{clustered, copy_dir, files_below, row_ids, vector_array, DIM};
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::{collect, displayable, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_vector_index::{
    FinalizeOptions, ProgressStep, VectorIndex, VectorIndexCodec, VectorIndexSession,
};
use datafusion_vector_index_ballista::{ExecutorSetup, InProcessCluster};
use object_store::local::LocalFileSystem;

const ROWS: usize = 6_000;
const FRAGMENTS: u64 = 24;
const PARTITIONS: usize = 8;

fn items() -> (Vec<f32>, MemTable) {
    let data = clustered(ROWS, 12, 11);
    let ids = row_ids(ROWS, FRAGMENTS);
    let schema = Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::UInt64, false),
        Field::new("vec", vector_array(&data[..DIM]).data_type().clone(), false),
    ]));
    // Several batches in several partitions, so the scan itself is parallel.
    let partitions = (0..3)
        .map(|p| {
            (p * ROWS / 3..(p + 1) * ROWS / 3)
                .step_by(500)
                .map(|start| {
                    let end = (start + 500).min((p + 1) * ROWS / 3);
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(UInt64Array::from(ids[start..end].to_vec())),
                            vector_array(&data[start * DIM..end * DIM]),
                        ],
                    )
                    .unwrap()
                })
                .collect()
        })
        .collect();
    (data, MemTable::try_new(schema, partitions).unwrap())
}

fn many_partitions(session: &VectorIndexSession) {
    let state = session.context().state_ref();
    let mut state = state.write();
    let options = state.config_mut().options_mut();
    options.execution.target_partitions = PARTITIONS;
    // What would split a staged manifest if our scan allowed it.
    options.optimizer.repartition_file_min_size = 1;
}

async fn call(session: &VectorIndexSession, sql: &str) -> Vec<RecordBatch> {
    session
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Registers the test table with `session`, creates the index at `url` (`ty`, 16
/// partitions) and stages it with `build_vector_index_shards` into at most
/// `shards` shards; returns the data and the procedure's summary row.
async fn create_and_build(
    session: &VectorIndexSession,
    url: &str,
    ty: &str,
    shards: usize,
) -> (Vec<f32>, Vec<RecordBatch>) {
    let (data, table) = items();
    session
        .context()
        .register_table("items", Arc::new(table))
        .unwrap();
    call(
        session,
        &format!(
            "CALL create_vector_index(index => '{url}', table => 'items', column => 'vec', \
             type => '{ty}', num_partitions => 16, seed => 7)"
        ),
    )
    .await;
    let built = call(
        session,
        &format!(
            "CALL build_vector_index_shards(index => '{url}', table => 'items', column => 'vec', \
             row_id => 'row_id', shards => {shards})"
        ),
    )
    .await;
    (data, built)
}

fn u64_value(batches: &[RecordBatch], column: &str) -> u64 {
    let batch = &batches[0];
    batch
        .column_by_name(column)
        .unwrap()
        .as_primitive::<UInt64Type>()
        .value(0)
}

fn done(setup: &ExecutorSetup, step: ProgressStep) -> u64 {
    setup
        .progress
        .snapshot()
        .into_iter()
        .find(|s| s.step == step)
        .map_or(0, |s| s.done)
}

/// The data files and graphs of every committed segment, by name within the
/// segment (segment ids are random), with their bytes.
fn segment_files(index_dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = files_below(&index_dir.join("segments"))
        .into_iter()
        .filter(|(name, _)| !name.ends_with(".json"))
        .map(|(name, bytes)| {
            let within = name
                .split_once('/')
                .map_or(name.clone(), |(_, f)| f.to_string());
            (within, bytes)
        })
        .collect();
    files.sort();
    files
}

fn query_sql(url: &str, data: &[f32], row: usize) -> String {
    let query: Vec<String> = data[row * DIM..(row + 1) * DIM]
        .iter()
        .map(|x| format!("{x:.6}"))
        .collect();
    format!(
        "SELECT row_id, distance FROM vector_search('{url}', [{}], 10, 6) ORDER BY distance, row_id",
        query.join(", ")
    )
}

/// Two one-slot executors whose tasks write through a store that waits 50 ms before
/// each write, so that no task is over before the other executor's next poll (every
/// 50 ms when idle): both get tasks whatever the speed of the machine.
fn two_slow_executors() -> Vec<ExecutorSetup> {
    let slow = FaultyStore::new(Arc::new(LocalFileSystem::new()));
    slow.delay_writes(std::time::Duration::from_millis(50));
    let runtime = Arc::new(RuntimeEnv::default());
    runtime.register_object_store(&url::Url::parse("file://").unwrap(), Arc::new(slow));
    vec![
        ExecutorSetup::new(1, Arc::clone(&runtime)),
        ExecutorSetup::new(1, runtime),
    ]
}

/// A cluster of two slow executors (see [`two_slow_executors`]), so both get tasks,
/// whose second one writes through a store that fails, once armed, the operations
/// on paths containing `scope`.
async fn one_failing_executor(scope: &str) -> (InProcessCluster, FaultyStore) {
    let executors = two_slow_executors();
    let faulty = FaultyStore::new(Arc::new(LocalFileSystem::new()));
    faulty.scope_to(scope);
    faulty.delay_writes(std::time::Duration::from_millis(50));
    let failing = Arc::new(RuntimeEnv::default());
    failing.register_object_store(
        &url::Url::parse("file://").unwrap(),
        Arc::new(faulty.clone()),
    );
    let cluster = InProcessCluster::start(
        Arc::new(RuntimeEnv::default()),
        vec![executors[0].clone(), ExecutorSetup::new(1, failing)],
    )
    .await
    .unwrap();
    (cluster, faulty)
}

fn two_executors(runtime: &Arc<RuntimeEnv>) -> Vec<ExecutorSetup> {
    vec![
        ExecutorSetup::new(1, Arc::clone(runtime)),
        ExecutorSetup::new(1, Arc::clone(runtime)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_build_runs_as_tasks_on_both_executors_and_matches_one_process() {
    let cluster = InProcessCluster::start(Arc::new(RuntimeEnv::default()), two_slow_executors())
        .await
        .unwrap();
    let session = cluster.connect().unwrap();
    many_partitions(&session);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/idx", dir.path().display());
    // Workers as one distributed plan: one shard per partition, whole fragments each.
    let (data, built) = create_and_build(&session, &url, "IVF_HNSW_SQ", 6).await;
    assert_eq!(u64_value(&built, "rows"), ROWS as u64);
    assert_eq!(u64_value(&built, "num_fragments"), FRAGMENTS);
    let shards = u64_value(&built, "shards");
    assert!((2..=6).contains(&shards), "{shards} shards");
    let [a, b] = cluster.executors() else {
        unreachable!()
    };
    let (encoded_a, encoded_b) = (
        done(a, ProgressStep::Encoding),
        done(b, ProgressStep::Encoding),
    );
    assert_eq!(encoded_a + encoded_b, ROWS as u64);
    assert!(
        encoded_a > 0 && encoded_b > 0,
        "shard writers ran on one executor only: {encoded_a} and {encoded_b} rows"
    );

    // The staged shards, listed through the cluster: each once, whatever the
    // partitioning options say.
    let listed = call(
        &session,
        &format!("SELECT count(*) AS n, sum(rows) AS r FROM vector_index_shards('{url}')"),
    )
    .await;
    assert_eq!(
        listed[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        shards as i64
    );

    let reference = dir.path().join("reference");
    copy_dir(&dir.path().join("idx"), &reference);

    // Small files, so the segment is many work units.
    let finalize = "CALL finalize_vector_index(index => '{}', target_file_bytes => 16384)";
    let finalized = call(&session, &finalize.replace("{}", &url)).await;
    assert_eq!(finalized.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let (merged_a, merged_b) = (
        done(a, ProgressStep::Merging),
        done(b, ProgressStep::Merging),
    );
    assert!(
        merged_a > 0 && merged_b > 0,
        "merge work units ran on one executor only: {merged_a} and {merged_b}"
    );

    // The same shards finalized in one process, with the same partitions.
    let local = VectorIndexSession::new();
    many_partitions(&local);
    let reference_url = format!("file://{}", reference.display());
    call(&local, &finalize.replace("{}", &reference_url)).await;
    let distributed = segment_files(&dir.path().join("idx"));
    assert!(!distributed.is_empty());
    assert_eq!(distributed, segment_files(&reference));

    // Search through the cluster answers as one process does. A search this small
    // runs in one partition, one stage; spread (as larger searches are), its probe
    // tasks cross a hash exchange, which the scheduler cuts a stage at.
    let plan = |sql: String| {
        let session = session.clone();
        async move {
            let explained = call(&session, &format!("EXPLAIN {sql}")).await;
            arrow::util::pretty::pretty_format_batches(&explained)
                .unwrap()
                .to_string()
        }
    };
    let single = plan(query_sql(&url, &data, 0)).await;
    assert!(!single.contains("RepartitionExec"), "{single}");
    let on_cluster = call(&session, &query_sql(&url, &data, 0)).await;
    let in_process = call(&local, &query_sql(&reference_url, &data, 0)).await;
    assert_eq!(on_cluster, in_process);
    call(&session, "SET vector_index.parallel_search_min_bytes = 0").await;
    let spread = plan(query_sql(&url, &data, 0)).await;
    assert!(
        spread.contains("partitioning=Hash([slot@0], 8)"),
        "{spread}"
    );
    for row in [0, 1234, 5999] {
        let on_cluster = call(&session, &query_sql(&url, &data, row)).await;
        let in_process = call(&local, &query_sql(&reference_url, &data, row)).await;
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&on_cluster)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&in_process)
                .unwrap()
                .to_string()
        );
        let hits: usize = on_cluster.iter().map(|b| b.num_rows()).sum();
        assert_eq!(hits, 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_failing_on_an_executor_commits_nothing_and_a_rerun_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, faulty) = one_failing_executor("segments/").await;
    let session = cluster.connect().unwrap();
    many_partitions(&session);
    let url = format!("file://{}/idx", dir.path().display());
    create_and_build(&session, &url, "IVF_FLAT", 4).await;
    let staged = files_below(&dir.path().join("idx/_staging"));

    // Every write of merged data on the second executor fails from now on, as if
    // its disk had gone; the first executor's succeed.
    faulty.arm(0, Fault::Crash);
    let sql = format!("CALL finalize_vector_index(index => '{url}', target_file_bytes => 4096)");
    let err = session
        .sql(&sql)
        .await
        .expect_err("the merge failed on one executor");
    let err = err.to_string();
    assert!(err.contains("injected fault"), "{err}");
    assert!(err.contains("/segments/"), "names the file: {err}");
    let index = VectorIndex::open(session.context(), &url).unwrap();
    assert_eq!(index.versions().await.unwrap(), Vec::<u64>::new());
    assert_eq!(files_below(&dir.path().join("idx/_staging")), staged);

    faulty.disarm();
    let rows = call(&session, &sql).await;
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(index.versions().await.unwrap(), vec![1]);
    let segments = index.segments().await.unwrap();
    let total: u64 = segments
        .column_by_name("rows")
        .unwrap()
        .as_primitive::<UInt64Type>()
        .values()
        .iter()
        .sum();
    assert_eq!(total, ROWS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_writer_failing_on_an_executor_stages_no_shard_and_a_rerun_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, faulty) = one_failing_executor("_staging/").await;
    let session = cluster.connect().unwrap();
    many_partitions(&session);
    let (_, table) = items();
    session
        .context()
        .register_table("items", Arc::new(table))
        .unwrap();
    let url = format!("file://{}/idx", dir.path().display());
    call(
        &session,
        &format!(
            "CALL create_vector_index(index => '{url}', table => 'items', column => 'vec', \
             type => 'IVF_SQ', num_partitions => 16, seed => 7)"
        ),
    )
    .await;

    // The second executor's first write of a shard fails.
    faulty.arm(0, Fault::Once);
    let err = session
        .sql(&format!(
            "CALL build_vector_index_shards(index => '{url}', table => 'items', column => 'vec', \
             row_id => 'row_id', shards => 6)"
        ))
        .await
        .expect_err("a shard writer failed");
    assert!(err.to_string().contains("injected fault"), "{err}");

    // No shard is complete: the publish step never ran, so no part of the table is
    // staged, and the pieces the other writers wrote are incomplete shards.
    let status = call(
        &session,
        &format!(
            "SELECT count(*) FILTER (WHERE complete) AS complete \
             FROM vector_index_shards('{url}')"
        ),
    )
    .await;
    let complete = status[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(complete, 0);

    // So the build can simply run again; finalize skips what the failed run left.
    faulty.disarm();
    let built = call(
        &session,
        &format!(
            "CALL build_vector_index_shards(index => '{url}', table => 'items', column => 'vec', \
             row_id => 'row_id', shards => 6)"
        ),
    )
    .await;
    assert_eq!(u64_value(&built, "rows"), ROWS as u64);
    call(
        &session,
        &format!("CALL finalize_vector_index(index => '{url}', skip_incomplete => true)"),
    )
    .await;
    let segments = VectorIndex::open(session.context(), &url)
        .unwrap()
        .segments()
        .await
        .unwrap();
    let committed: u64 = segments
        .column_by_name("rows")
        .unwrap()
        .as_primitive::<UInt64Type>()
        .values()
        .iter()
        .sum();
    assert_eq!(committed, ROWS as u64);
}

/// An index on S3: the client, the scheduler and each executor build their store
/// from the environment (the `AWS_*` variables point at the test server), as the
/// processes of a real cluster would.
#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_index_on_s3_is_built_finalized_and_searched_on_the_cluster() {
    let server = s3_server::server();
    let bucket = server.bucket();
    let runtime = Arc::new(RuntimeEnv::default());
    let cluster = InProcessCluster::start(Arc::clone(&runtime), two_executors(&runtime))
        .await
        .unwrap();
    let session = cluster.connect().unwrap();
    many_partitions(&session);
    let url = format!("s3://{bucket}/idx");
    let (data, built) = create_and_build(&session, &url, "IVF_SQ", 4).await;
    assert_eq!(u64_value(&built, "rows"), ROWS as u64);
    let puts_before = server.requests.get(&bucket, "PutObject");
    call(
        &session,
        &format!("CALL finalize_vector_index(index => '{url}')"),
    )
    .await;
    assert!(server.requests.get(&bucket, "PutObject") > puts_before);
    let [a, b] = cluster.executors() else {
        unreachable!()
    };
    assert!(done(a, ProgressStep::Merging) + done(b, ProgressStep::Merging) > 0);
    let index = VectorIndex::open(session.context(), &url).unwrap();
    assert_eq!(index.versions().await.unwrap(), vec![1]);
    let hits = call(&session, &query_sql(&url, &data, 7)).await;
    assert_eq!(hits.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
}

/// Encodes `plan` with the codec and decodes it in `ctx`.
fn round_trip(plan: &Arc<dyn ExecutionPlan>, ctx: &SessionContext) -> Arc<dyn ExecutionPlan> {
    let codec = datafusion_vector_index_ballista::codec();
    let bytes = physical_plan_to_bytes_with_extension_codec(Arc::clone(plan), codec.as_ref())
        .unwrap_or_else(|e| panic!("encoding {}: {e}", plan.name()));
    physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), codec.as_ref())
        .unwrap_or_else(|e| panic!("decoding {}: {e}", plan.name()))
}

fn explain(plan: &Arc<dyn ExecutionPlan>) -> String {
    displayable(plan.as_ref()).indent(true).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plan_round_trips_through_the_codec() {
    let session = VectorIndexSession::new();
    many_partitions(&session);
    let ctx = session.context().clone();
    let (data, table) = items();
    ctx.register_table("items", Arc::new(table)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/idx", dir.path().display());
    call(
        &session,
        &format!(
            "CALL create_vector_index(index => '{url}', table => 'items', column => 'vec', \
             type => 'IVF_PQ', num_partitions => 16, num_sub_vectors => 4, seed => 7)"
        ),
    )
    .await;
    let index = VectorIndex::open(&ctx, &url).unwrap();

    // The shard build: same plan text; the decoded plan stages the shards.
    let plan = index
        .build_shards_plan(ctx.table("items").await.unwrap(), "row_id", "vec", 4)
        .await
        .unwrap();
    let decoded = round_trip(&plan, &ctx);
    assert_eq!(explain(&decoded), explain(&plan));
    assert!(explain(&plan).contains("VectorIndexShardWriteExec"));
    let staged: usize = collect(decoded, ctx.task_ctx())
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(staged, 4);

    // The staging scan: same text, same rows.
    let plan = index
        .shards(&ctx)
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let decoded = round_trip(&plan, &ctx);
    assert_eq!(explain(&decoded), explain(&plan));
    let rows = |batches: Vec<RecordBatch>| {
        let mut ids: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let c = b
                    .column_by_name("shard_id")
                    .unwrap()
                    .as_string::<i32>()
                    .clone();
                (0..c.len()).map(move |i| c.value(i).to_string())
            })
            .collect();
        ids.sort();
        ids
    };
    let listed = rows(collect(plan, ctx.task_ctx()).await.unwrap());
    assert_eq!(listed.len(), 4);
    assert_eq!(
        rows(collect(decoded, ctx.task_ctx()).await.unwrap()),
        listed
    );

    // The finalize: same text; the decoded plan commits what the original would.
    let reference = dir.path().join("reference");
    copy_dir(&dir.path().join("idx"), &reference);
    let plan = index
        .finalize_plan(&ctx, &FinalizeOptions::default())
        .await
        .unwrap();
    let decoded = round_trip(&plan, &ctx);
    // The shards the scan keeps for the planner stay in the planning process.
    assert_eq!(
        explain(&decoded),
        explain(&plan).replace(", keeps=complete shards", "")
    );
    collect(decoded, ctx.task_ctx()).await.unwrap();
    assert_eq!(index.versions().await.unwrap(), vec![1]);
    let reference_index =
        VectorIndex::open(&ctx, &format!("file://{}", reference.display())).unwrap();
    reference_index
        .finalize(&ctx, &FinalizeOptions::default())
        .await
        .unwrap();
    assert_eq!(
        segment_files(&dir.path().join("idx")),
        segment_files(&reference)
    );

    // The search: same text, same hits.
    let plan = session
        .sql(&query_sql(&url, &data, 42))
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let decoded = round_trip(&plan, &ctx);
    assert_eq!(explain(&decoded), explain(&plan));
    for name in [
        "VectorIndexTopKExec",
        "VectorIndexScanExec",
        "VectorIndexProbeExec",
    ] {
        assert!(explain(&plan).contains(name), "{}", explain(&plan));
    }
    assert_eq!(
        collect(decoded, ctx.task_ctx()).await.unwrap(),
        collect(plan, ctx.task_ctx()).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codec_refuses_other_nodes_and_other_versions() {
    use datafusion_proto::physical_plan::{DefaultPhysicalProtoConverter, PhysicalExtensionCodec};
    let ctx = SessionContext::new_with_config(SessionConfig::new());
    let plan: Arc<dyn ExecutionPlan> = Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
        Arc::new(Schema::empty()),
    ));
    let mut buf = Vec::new();
    let err = VectorIndexCodec
        .try_encode(plan, &mut buf, &DefaultPhysicalProtoConverter {})
        .unwrap_err();
    assert!(
        err.to_string().contains("does not encode EmptyExec"),
        "{err}"
    );
    let err = VectorIndexCodec
        .try_decode(
            br#"{"codec_version":99,"node":{"operator":"top_k","k":3}}"#,
            &[],
            &ctx.task_ctx(),
            &DefaultPhysicalProtoConverter {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}
