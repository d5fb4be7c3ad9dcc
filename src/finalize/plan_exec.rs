//! `VectorIndexPlanExec`: checks the staged shards and plans the merge.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BinaryArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_datafusion_err, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use roaring::RoaringBitmap;

use super::planning::{check_shard_model, plan_segments, CommittedSegment, PlannedShard};
use super::{FinalizeOptions, SegmentGrouping, WorkUnit};
use crate::catalog::{latest_version, read_segment, read_segment_fragments};
use crate::error::IndexError;
use crate::exec::{compute_properties, single_child};
use crate::format::{IndexLocation, ShardManifest};
use crate::model::Model;

/// Schema of the work units emitted by [`VectorIndexPlanExec`].
pub fn work_unit_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("file_index", DataType::UInt32, false),
        Field::new("partition_start", DataType::UInt32, false),
        Field::new("partition_end", DataType::UInt32, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("unit", DataType::Utf8, false),
        Field::new("fragments", DataType::Binary, true),
    ]))
}

/// Checks the staged shards and groups them into segments, then splits each
/// segment into work units (contiguous ranges of IVF partitions).
///
/// Partitioning: requires a single input partition (the staging table's rows,
/// one per shard) and emits a single partition. Emits one batch per work unit
/// (schema: [`work_unit_schema`]) so a round-robin repartition spreads units over
/// merge partitions; the first unit of each segment carries the segment's
/// fragment set. Fails, before anything is written, on: no complete shards, an
/// incomplete or unreadable shard, a model/type/metric/dimension mismatch, missing
/// or truncated files, a duplicate shard id, fragments covered twice, or (append
/// mode) fragments already covered by a committed segment.
#[derive(Debug)]
pub struct VectorIndexPlanExec {
    input: Arc<dyn ExecutionPlan>,
    location: IndexLocation,
    model: Arc<Model>,
    options: FinalizeOptions,
    properties: Arc<PlanProperties>,
}

impl VectorIndexPlanExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        location: IndexLocation,
        model: Arc<Model>,
        options: FinalizeOptions,
    ) -> Result<Self> {
        Ok(Self {
            input,
            location,
            model,
            options,
            properties: compute_properties(work_unit_schema(), 1, EmissionType::Final),
        })
    }
}

impl DisplayAs for VectorIndexPlanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let grouping = match self.options.grouping {
            SegmentGrouping::Single => "single".to_string(),
            SegmentGrouping::PerShard => "per_shard".to_string(),
            SegmentGrouping::TargetRows(n) => format!("target_rows({n})"),
        };
        write!(
            f,
            "VectorIndexPlanExec: model={}, type={}, segments={grouping}, mode={}, target_file_bytes={}, skip_incomplete={}",
            self.model.fingerprint(),
            self.model.index_type(),
            self.options.mode,
            self.options.target_file_bytes,
            self.options.skip_incomplete
        )
    }
}

impl ExecutionPlan for VectorIndexPlanExec {
    fn name(&self) -> &str {
        "VectorIndexPlanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = single_child(self.name(), children)?;
        Ok(Arc::new(Self::try_new(
            input,
            self.location.clone(),
            Arc::clone(&self.model),
            self.options.clone(),
        )?))
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return datafusion::common::exec_err!(
                "VectorIndexPlanExec has one partition, asked for {partition}"
            );
        }
        let input = self.input.execute(0, context)?;
        let location = self.location.clone();
        let model = Arc::clone(&self.model);
        let options = self.options.clone();
        let batches = futures::stream::once(async move {
            let rows: Vec<RecordBatch> = input.try_collect().await?;
            let units = plan(&location, &model, &options, &rows).await?;
            Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(
                units.into_iter().map(Ok),
            ))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            work_unit_schema(),
            batches,
        )))
    }
}

/// One staged shard as the staging table listed it.
struct ListedShard {
    shard_id: String,
    complete: bool,
    problem: Option<String>,
    path: String,
}

fn listed_shards(batches: &[RecordBatch]) -> Result<Vec<ListedShard>> {
    let mut out = Vec::new();
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| exec_datafusion_err!("staging scan lacks column {name}"))
        };
        let ids = col("shard_id")?.as_string::<i32>().clone();
        let complete = col("complete")?.as_boolean().clone();
        let problem = col("problem")?.as_string::<i32>().clone();
        let path = col("path")?.as_string::<i32>().clone();
        for i in 0..b.num_rows() {
            out.push(ListedShard {
                shard_id: ids.value(i).to_string(),
                complete: complete.value(i),
                problem: problem.is_valid(i).then(|| problem.value(i).to_string()),
                path: path.value(i).to_string(),
            });
        }
    }
    Ok(out)
}

async fn plan(
    location: &IndexLocation,
    model: &Model,
    options: &FinalizeOptions,
    rows: &[RecordBatch],
) -> Result<Vec<RecordBatch>> {
    let listed = listed_shards(rows)?;
    let latest = latest_version(location).await?;
    let consumed: std::collections::HashSet<String> = latest
        .iter()
        .flat_map(|v| {
            v.segments
                .iter()
                .flat_map(|s| s.consumed_shards.iter().cloned())
        })
        .collect();

    let mut incomplete = Vec::new();
    let mut candidates = Vec::new();
    for s in listed
        .into_iter()
        .filter(|s| !consumed.contains(&s.shard_id))
    {
        match (&s.problem, s.complete) {
            (Some(p), false) if p.starts_with("incomplete") => incomplete.push(s.shard_id),
            (Some(p), _) => {
                return Err(IndexError::Finalize(format!("shard {}: {p}", s.shard_id)).into())
            }
            (None, _) => candidates.push(s),
        }
    }
    if !incomplete.is_empty() && !options.skip_incomplete {
        incomplete.sort();
        return Err(IndexError::Finalize(format!(
            "incomplete shards (no shard.json) are staged: {}; wait for their workers, remove them \
             with vacuum_vector_index, or pass skip_incomplete => true",
            incomplete.join(", ")
        ))
        .into());
    }
    if candidates.is_empty() {
        return Err(IndexError::Finalize(format!(
            "no complete shards are staged in {}/_staging{}",
            location.url(),
            if consumed.is_empty() {
                ""
            } else {
                " (staged shards were already consumed by committed segments)"
            }
        ))
        .into());
    }

    let store = Arc::clone(location.store());
    let shards: Vec<PlannedShard> = futures::stream::iter(candidates)
        .map(|s| {
            let store = Arc::clone(&store);
            async move { load_shard(store.as_ref(), &s.shard_id, &s.path).await }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    for s in &shards {
        check_shard_model(&s.manifest, model)?;
    }

    let mut committed = Vec::new();
    if let Some(v) = &latest {
        for s in &v.segments {
            let seg = read_segment(location, &s.segment_id).await?;
            committed.push(CommittedSegment {
                segment_id: s.segment_id.clone(),
                fragments: read_segment_fragments(location, &seg).await?,
            });
        }
    }
    let planned = plan_segments(shards, &committed, model, options, &mut || {
        uuid::Uuid::new_v4().to_string()
    })?;
    planned
        .units
        .iter()
        .map(|u| {
            unit_batch(
                u,
                planned
                    .fragments
                    .iter()
                    .find(|(id, _)| *id == u.segment.segment_id)
                    .map(|f| &f.1),
            )
        })
        .collect()
}

/// Reads a shard's manifest and sidecar and checks that its data file is whole.
async fn load_shard(
    store: &dyn object_store::ObjectStore,
    shard_id: &str,
    dir: &str,
) -> crate::Result<PlannedShard> {
    let dir_path = Path::from(dir);
    let what = |w: &str| format!("shard {shard_id}: {w}");
    let bytes = store
        .get(&dir_path.clone().join("shard.json"))
        .await?
        .bytes()
        .await?;
    let manifest = ShardManifest::from_json(shard_id, &bytes)?;
    let data = dir_path.clone().join(manifest.data_file.name.as_str());
    match store.head(&data).await {
        Ok(meta) if meta.size == manifest.data_file.size => {}
        Ok(meta) => {
            return Err(IndexError::corrupt(
                what("data.arrow"),
                format!(
                    "is {} bytes, shard.json says {} (truncated or rewritten)",
                    meta.size, manifest.data_file.size
                ),
            ))
        }
        Err(object_store::Error::NotFound { .. }) => {
            return Err(IndexError::corrupt(what("data.arrow"), "is missing"))
        }
        Err(e) => return Err(e.into()),
    }
    let sidecar = match store
        .get(&dir_path.clone().join(manifest.fragments_file.name.as_str()))
        .await
    {
        Ok(r) => r.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(IndexError::corrupt(what("fragments.roaring"), "is missing"))
        }
        Err(e) => return Err(e.into()),
    };
    if sidecar.len() as u64 != manifest.fragments_file.size
        || crc32fast::hash(&sidecar) != manifest.fragments_file.crc32
    {
        return Err(IndexError::corrupt(
            what("fragments.roaring"),
            "size or checksum does not match shard.json",
        ));
    }
    let fragments = RoaringBitmap::deserialize_from(&sidecar[..])
        .map_err(|e| IndexError::corrupt(what("fragments.roaring"), e.to_string()))?;
    if fragments.len() != manifest.num_fragments {
        return Err(IndexError::corrupt(
            what("fragments.roaring"),
            "fragment count does not match shard.json",
        ));
    }
    Ok(PlannedShard {
        manifest,
        dir: dir.to_string(),
        fragments,
    })
}

fn unit_batch(unit: &WorkUnit, fragments: Option<&RoaringBitmap>) -> Result<RecordBatch> {
    let json = serde_json::to_string(unit).map_err(|e| exec_datafusion_err!("{e}"))?;
    let frag_bytes = match (unit.file_index, fragments) {
        (0, Some(f)) => {
            let mut b = Vec::with_capacity(f.serialized_size());
            f.serialize_into(&mut b)?;
            Some(b)
        }
        _ => None,
    };
    Ok(RecordBatch::try_new(
        work_unit_schema(),
        vec![
            Arc::new(StringArray::from(vec![unit.segment.segment_id.as_str()])),
            Arc::new(UInt32Array::from(vec![unit.file_index])),
            Arc::new(UInt32Array::from(vec![unit.partition_start])),
            Arc::new(UInt32Array::from(vec![unit.partition_end])),
            Arc::new(UInt64Array::from(vec![unit.rows])),
            Arc::new(StringArray::from(vec![json])),
            Arc::new(BinaryArray::from(vec![frag_bytes.as_deref()])),
        ],
    )?)
}
