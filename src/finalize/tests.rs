//! The finalize operators and the planner driven on their own, with inputs a full
//! plan never hands them (rows collected earlier, shards changed since).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;

use super::merge_exec::{MergeUnits, VectorIndexMergeExec};
use super::plan_exec::{PlanMerge, VectorIndexPlanExec};
use super::planning::{plan_segments, PlannedShard};
use super::FinalizeOptions;
use crate::datasets::{gaussian_mixture, vector_column};
use crate::format::ShardManifest;
use crate::format::{IndexType, Metric};
use crate::index::VectorIndex;
use crate::model::{Model, TrainOptions};
use crate::sql::VectorIndexSession;
use crate::worker::ShardWriter;

const DIM: usize = 16;
const ROWS: usize = 1200;
const FRAGMENTS: u64 = 8;

/// An index in a temporary folder whose shards were staged by workers owning
/// `owners[f]` for each fragment f.
struct Staged {
    dir: tempfile::TempDir,
    ctx: SessionContext,
    index: VectorIndex,
    model: Model,
    shards: Vec<String>,
}

impl Staged {
    async fn new(index_type: IndexType, seed: u64, owners: &[usize]) -> Self {
        let data = gaussian_mixture(ROWS, DIM, 6, 0.3, seed, seed + 1);
        let options = TrainOptions {
            index_type,
            metric: Metric::L2,
            num_partitions: 8,
            num_sub_vectors: Some(4),
            max_iterations: 10,
            seed: 3,
            ..Default::default()
        };
        let model = Model::train(DIM, data.clone(), &options).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ctx = VectorIndexSession::new().context().clone();
        let index =
            VectorIndex::open(&ctx, &format!("file://{}/idx", dir.path().display())).unwrap();
        model.write(index.location()).await.unwrap();
        let mut shards = Vec::new();
        let workers = owners.iter().max().map_or(0, |m| m + 1);
        for w in 0..workers {
            let mut writer = ShardWriter::new(index.location().clone(), Arc::new(model.clone()));
            let mine: Vec<usize> = (0..ROWS)
                .filter(|&i| owners[i % FRAGMENTS as usize] == w)
                .collect();
            let ids: Vec<u64> = mine
                .iter()
                .map(|&i| ((i as u64 % FRAGMENTS) << 32) | i as u64)
                .collect();
            let values: Vec<f32> = mine
                .iter()
                .flat_map(|&i| data[i * DIM..(i + 1) * DIM].iter().copied())
                .collect();
            writer
                .write(&ids, &vector_column(&values, DIM), "vec")
                .unwrap();
            shards.push(writer.finish().await.unwrap().shard_id);
        }
        Self {
            dir,
            ctx,
            index,
            model,
            shards,
        }
    }

    fn shard_dir(&self, shard: &str) -> PathBuf {
        self.dir
            .path()
            .join("idx/_staging")
            .join(format!("partial_{shard}"))
    }

    /// Cuts a staged shard's data file in half.
    fn truncate_data_file(&self, shard: &str) {
        let data_file = self.shard_dir(shard).join("data.arrow");
        let bytes = std::fs::read(&data_file).unwrap();
        std::fs::write(&data_file, &bytes[..bytes.len() / 2]).unwrap();
    }

    /// The `VectorIndexPlanExec` of a finalize plan.
    async fn plan_operator(&self, options: &FinalizeOptions) -> Arc<dyn ExecutionPlan> {
        let plan = self.index.finalize_plan(&self.ctx, options).await.unwrap();
        // commit <- coalesce <- merge <- repartition <- plan
        let planner = Arc::clone(plan.children()[0].children()[0].children()[0].children()[0]);
        assert_eq!(planner.name(), "VectorIndexPlanExec");
        planner
    }
}

/// A shard whose data file shrinks between planning and merging (someone else's
/// doing: staged files are immutable) fails the merge with an error naming it, and
/// the local-file merge maps nothing past the file's end.
#[tokio::test]
async fn a_shard_truncated_after_planning_fails_the_merge_cleanly() {
    let t = Staged::new(IndexType::IvfFlat, 17, &[0, 0, 0, 0, 1, 1, 1, 1]).await;
    let planner = t.plan_operator(&FinalizeOptions::default()).await;
    let units = collect(planner, t.ctx.task_ctx()).await.unwrap();
    t.truncate_data_file(&t.shards[1]);

    let input =
        MemorySourceConfig::try_new_exec(std::slice::from_ref(&units), units[0].schema(), None)
            .unwrap();
    let merge = MergeUnits {
        location: t.index.location().clone(),
        model: Arc::new(t.model.info().clone()),
    };
    let merge = VectorIndexMergeExec::try_new(input, merge).unwrap();
    let err = collect(Arc::new(merge), t.ctx.task_ctx())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&t.shards[1]) && err.contains("truncated"),
        "{err}"
    );
    let written = files_below(&t.dir.path().join("idx/segments"));
    assert!(written.is_empty(), "partial files removed: {written:?}");
}

/// Every file below `dir` (none when it does not exist).
fn files_below(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// `VectorIndexPlanExec` fed by something other than a staging scan that kept the
/// shards it read (here: rows collected earlier) reads and checks every shard itself:
/// the same work units, and a shard truncated since the rows were read is refused.
#[tokio::test]
async fn the_plan_operator_reads_shards_the_scan_did_not_keep() {
    let t = Staged::new(IndexType::IvfPq, 23, &[0, 1, 2, 0, 1, 2, 0, 1]).await;
    let options = FinalizeOptions {
        target_file_bytes: 2048,
        ..Default::default()
    };
    let kept = t.plan_operator(&options).await;
    let staging_rows = t.index.shards(&t.ctx).unwrap().collect().await.unwrap();
    let unkept = |rows: &[RecordBatch]| -> Arc<dyn ExecutionPlan> {
        let input =
            MemorySourceConfig::try_new_exec(&[rows.to_vec()], rows[0].schema(), None).unwrap();
        Arc::new(
            VectorIndexPlanExec::try_new(
                Arc::new(CoalescePartitionsExec::new(input)),
                PlanMerge {
                    location: t.index.location().clone(),
                    model: Arc::new(t.model.info().clone()),
                    options: options.clone(),
                    finalize_id: "test".to_string(),
                    scanned: Default::default(),
                },
            )
            .unwrap(),
        )
    };
    // Units without their segment (its id is new each time), in partition order.
    let shape = |batches: &[RecordBatch]| -> Vec<RecordBatch> {
        let mut units: Vec<RecordBatch> = batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(|i| b.slice(i, 1)))
            .map(|unit| {
                let schema = unit.schema();
                let kept: Vec<usize> = (0..schema.fields().len())
                    .filter(|&i| {
                        !["segment_id", "segment"].contains(&schema.field(i).name().as_str())
                    })
                    .collect();
                unit.project(&kept).unwrap()
            })
            .collect();
        units.sort_by_key(|u| {
            u.column_by_name("partition_start")
                .unwrap()
                .as_primitive::<UInt32Type>()
                .value(0)
        });
        units
    };
    let from_kept = shape(&collect(kept, t.ctx.task_ctx()).await.unwrap());
    let from_read = shape(
        &collect(unkept(&staging_rows), t.ctx.task_ctx())
            .await
            .unwrap(),
    );
    assert!(from_kept.len() > 1);
    assert_eq!(from_kept, from_read);

    t.truncate_data_file(&t.shards[2]);
    let err = collect(unkept(&staging_rows), t.ctx.task_ctx())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&t.shards[2]) && err.contains("truncated"),
        "{err}"
    );
}

/// Planning refuses one shard id listed from two folders (what an operator fed by
/// another input than the staging scan could hand it), naming both.
#[tokio::test]
async fn a_shard_id_planned_twice_is_refused() {
    let t = Staged::new(IndexType::IvfFlat, 18, &[0, 0, 0, 0, 1, 1, 1, 1]).await;
    let bytes = std::fs::read(t.shard_dir(&t.shards[0]).join("shard.json")).unwrap();
    let manifest = ShardManifest::from_json("s", &bytes).unwrap();
    let shard = |dir: &str, fragment: u32| PlannedShard {
        manifest: manifest.clone(),
        dir: dir.to_string(),
        fragments: [fragment].into_iter().collect(),
    };
    let mut fresh = |_: &[&str]| "new".to_string();
    let err = plan_segments(
        vec![shard("a", 0), shard("b", 1)],
        &[],
        t.model.info(),
        &FinalizeOptions::default(),
        &mut fresh,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "shard id {} is staged twice (a and b)",
            manifest.shard_id
        )),
        "{err}"
    );
}
