//! `VectorIndexScanExec`: scores probed blocks and keeps each query's local top k.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, UInt32Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use super::distance::Scorer;
use super::topk::{tops_to_batch, TopK};
use super::topk_exec::search_output_schema;
use super::{SearchOptions, SearchTarget};
use crate::error::IndexError;
use crate::exec::{compute_properties, single_child};
use crate::format::decode_block;

/// Blocks read at once by one scan partition.
const READ_CONCURRENCY: usize = 8;

/// Reads each probed (segment, partition) block with one ranged read (checked
/// against its CRC-32), scores it for every query that probes it, and keeps each
/// query's k nearest rows.
///
/// Partitioning: one output partition per input partition of probe tasks; emits,
/// when its input ends, each query's local top k (`query_id`, `row_id`, `distance`).
#[derive(Debug)]
pub struct VectorIndexScanExec {
    input: Arc<dyn ExecutionPlan>,
    target: Arc<SearchTarget>,
    options: SearchOptions,
    properties: Arc<PlanProperties>,
}

impl VectorIndexScanExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        target: Arc<SearchTarget>,
        options: SearchOptions,
    ) -> Result<Self> {
        let partitions = input.output_partitioning().partition_count();
        Ok(Self {
            input,
            target,
            options,
            properties: compute_properties(search_output_schema(), partitions, EmissionType::Final),
        })
    }
}

impl DisplayAs for VectorIndexScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VectorIndexScanExec: type={}, k={}, read_concurrency={READ_CONCURRENCY}",
            self.target.model.index_type(),
            self.options.k
        )
    }
}

impl ExecutionPlan for VectorIndexScanExec {
    fn name(&self) -> &str {
        "VectorIndexScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::try_new(
            single_child(self.name(), children)?,
            Arc::clone(&self.target),
            self.options,
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
        let mut input = self.input.execute(partition, context)?;
        let target = Arc::clone(&self.target);
        let k = self.options.k;
        let stream = futures::stream::once(async move {
            let mut tops: BTreeMap<u32, TopK> = BTreeMap::new();
            while let Some(batch) = input.next().await {
                scan_tasks(&target, &batch?, k, &mut tops).await?;
            }
            Ok(tops_to_batch(tops)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            search_output_schema(),
            stream,
        )))
    }
}

async fn scan_tasks(
    target: &Arc<SearchTarget>,
    batch: &RecordBatch,
    k: usize,
    tops: &mut BTreeMap<u32, TopK>,
) -> Result<()> {
    let query_ids = batch.column(0).as_primitive::<UInt32Type>();
    let segments = batch.column(1).as_primitive::<UInt32Type>();
    let partitions = batch.column(2).as_primitive::<UInt32Type>();
    let queries = batch.column(3).as_fixed_size_list();
    let dim = target.model.dim();
    let mut wanted: Vec<(u32, u32)> = (0..batch.num_rows())
        .map(|i| (segments.value(i), partitions.value(i)))
        .collect();
    wanted.dedup();
    let schema = target.model.storage_schema();
    let blocks: HashMap<(u32, u32), RecordBatch> = futures::stream::iter(wanted)
        .map(|(s, p)| {
            let target = Arc::clone(target);
            let schema = Arc::clone(&schema);
            async move {
                let seg = &target.segments[s as usize];
                let what = format!("segment {}, partition {p}", seg.segment_id);
                let (file, block) = seg
                    .block(p)
                    .ok_or_else(|| IndexError::corrupt(&what, "no such partition"))?;
                let path = target
                    .location
                    .segment_dir(&seg.segment_id)
                    .join(file.name.as_str());
                let bytes = target
                    .location
                    .store()
                    .get_range(&path, block.range())
                    .await?;
                Ok::<_, IndexError>(((s, p), decode_block(&what, &schema, block, bytes)?))
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let values = queries.values().as_primitive::<Float32Type>().values();
    for i in 0..batch.num_rows() {
        let (s, p) = (segments.value(i), partitions.value(i));
        let start = (queries.offset() + i) * dim;
        let scorer = Scorer::new(&target.model, &values[start..start + dim], p as usize)?;
        let top = tops
            .entry(query_ids.value(i))
            .or_insert_with(|| TopK::new(k));
        scorer.score_batch(&blocks[&(s, p)], top)?;
    }
    Ok(())
}
