//! `VectorIndexMergeExec`: merges work units into segment data files, in parallel.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::StreamExt;

use super::merge::{merge_unit, MergeState};
use super::merged_files::{merged_file_schema, to_batch, MergedFile};
use super::work_units::{units_of, work_unit_key, UnitRow};
use crate::exec::{compute_properties, single_child};
use crate::format::IndexLocation;
use crate::model::ModelInfo;
use crate::progress::{ProgressStep, Tracker};

/// Merges work units (rows of [`super::work_unit_schema`]) into segment
/// data files under `segments/<segment_id>/`, which no committed version references yet.
///
/// Partitioning: one output partition per input partition; each partition merges
/// the units it receives one after another, streaming partition by partition,
/// reading about 4 MiB of staged blocks per request while the previous chunk is
/// merged, so memory is bounded by the chunks in flight, not by the index. Emits one row
/// per file written (schema: [`merged_file_schema`]), carrying the unit's segment
/// plan and fragment set through to the commit. For the HNSW types each merged IVF
/// partition's graph is built here too (on a blocking thread, seeded per
/// partition), so graph building is spread over the same partitions and cores.
#[derive(Debug)]
pub(crate) struct VectorIndexMergeExec {
    input: Arc<dyn ExecutionPlan>,
    location: IndexLocation,
    model: Arc<ModelInfo>,
    /// What the input must be hash-partitioned on (see `work_unit_key`).
    key: Vec<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
}

impl VectorIndexMergeExec {
    #[cfg(feature = "codec")]
    /// What the operator was built with (the codec's view of it).
    pub(crate) fn parts(&self) -> (&IndexLocation, &Arc<ModelInfo>) {
        (&self.location, &self.model)
    }

    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        location: IndexLocation,
        model: Arc<ModelInfo>,
    ) -> Result<Self> {
        let partitions = input.output_partitioning().partition_count();
        Ok(Self {
            key: work_unit_key(&input.schema())?,
            input,
            location,
            model,
            properties: compute_properties(
                merged_file_schema(),
                partitions,
                EmissionType::Incremental,
            ),
        })
    }
}

impl DisplayAs for VectorIndexMergeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let schema = self.model.storage_schema();
        write!(
            f,
            "VectorIndexMergeExec: index={}, stored=[{}], partitions={}",
            self.location.url(),
            schema
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", "),
            self.properties.partitioning.partition_count()
        )?;
        if let Some(h) = self.model.hnsw_params() {
            write!(
                f,
                ", graphs=hnsw(m={}, ef_construction={})",
                h.m, h.ef_construction
            )?;
        }
        Ok(())
    }
}

impl ExecutionPlan for VectorIndexMergeExec {
    fn name(&self) -> &str {
        "VectorIndexMergeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// Work units spread by a hash exchange: one a distributed scheduler cuts a stage
    /// at (it drops round-robin ones), so the units run as tasks on its executors.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::KeyPartitioned(self.key.clone())]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true]
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
        let tracker = Tracker::of_task(&context);
        let input = self.input.execute(partition, context)?;
        let location = self.location.clone();
        let model = Arc::clone(&self.model);
        let state = (input, MergeState::default());
        let stream = futures::stream::unfold(state, move |(mut input, mut state)| {
            let location = location.clone();
            let model = Arc::clone(&model);
            let tracker = tracker.clone();
            async move {
                let batch = match input.next().await? {
                    Ok(b) => b,
                    Err(e) => return Some((Err(e), (input, state))),
                };
                let out = merge_batch(&location, &model, &batch, &mut state, &tracker).await;
                Some((out, (input, state)))
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            merged_file_schema(),
            stream,
        )))
    }
}

async fn merge_batch(
    location: &IndexLocation,
    model: &Arc<ModelInfo>,
    batch: &RecordBatch,
    state: &mut MergeState,
    tracker: &Tracker,
) -> Result<RecordBatch> {
    let mut merged = Vec::new();
    for UnitRow {
        unit,
        segment_json,
        segment_fragments,
    } in units_of(batch)?
    {
        let file = merge_unit(location, model, &unit, state).await?;
        tracker.add(ProgressStep::Merging, 1);
        tracker.add(ProgressStep::MergedRows, unit.rows);
        let graph = file.graph.as_ref();
        tracker.add(
            ProgressStep::WrittenBytes,
            file.size + graph.map_or(0, |g| g.size),
        );
        if let Some(g) = graph {
            tracker.add(ProgressStep::Graphs, g.partitions.len() as u64);
        }
        merged.push(MergedFile {
            segment_id: unit.segment.segment_id.clone(),
            file_index: unit.file_index,
            rows: unit.rows,
            file,
            segment: segment_json,
            fragments: segment_fragments,
        });
    }
    to_batch(&merged)
}
