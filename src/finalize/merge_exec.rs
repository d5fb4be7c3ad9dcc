//! `VectorIndexMergeExec`: merges work units into segment data files, in parallel.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{DisplayFormatType, Distribution};
use futures::StreamExt;

use super::merge::{merge_unit, MergeState};
use super::merged_files::{merged_file_schema, MergedFile};
use super::work_units::{work_unit_key, UnitRow};
use crate::exec::{index_detail, Partitions, Work, WorkExec, WorkStream};
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
pub(crate) type VectorIndexMergeExec = WorkExec<MergeUnits>;

/// The work of [`VectorIndexMergeExec`].
#[derive(Debug)]
pub(crate) struct MergeUnits {
    pub(crate) location: IndexLocation,
    pub(crate) model: Arc<ModelInfo>,
}

impl Work for MergeUnits {
    const NAME: &'static str = "VectorIndexMergeExec";
    const PARTITIONS: Partitions = Partitions::PerInput;
    const EMISSION: EmissionType = EmissionType::Incremental;

    fn schema(&self) -> SchemaRef {
        merged_file_schema()
    }

    /// Work units spread by a hash exchange (see `work_unit_key`): one a distributed
    /// scheduler cuts a stage at (it drops round-robin ones), so the units run as
    /// tasks on its executors.
    fn input_distribution(&self, input: &SchemaRef) -> Result<Distribution> {
        Ok(Distribution::KeyPartitioned(work_unit_key(input)?))
    }

    fn details(&self, format: DisplayFormatType, partitions: usize) -> Vec<(&'static str, String)> {
        let mut details = index_detail(format, &self.location);
        if format != DisplayFormatType::TreeRender {
            let stored = self.model.storage_schema();
            let stored = stored
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ");
            details.push(("stored", format!("[{stored}]")));
        }
        details.push(("partitions", partitions.to_string()));
        if let Some(h) = self.model.hnsw_params() {
            details.push((
                "graphs",
                format!("hnsw(m={}, ef_construction={})", h.m, h.ef_construction),
            ));
        }
        details
    }

    fn run(
        self: Arc<Self>,
        _partition: usize,
        input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> Result<WorkStream> {
        let tracker = Tracker::of_task(&context);
        let state = (input, MergeState::default());
        Ok(
            futures::stream::unfold(state, move |(mut input, mut state)| {
                let (work, tracker) = (Arc::clone(&self), tracker.clone());
                async move {
                    let batch = match input.next().await? {
                        Ok(b) => b,
                        Err(e) => return Some((Err(e), (input, state))),
                    };
                    let out =
                        merge_batch(&work.location, &work.model, &batch, &mut state, &tracker)
                            .await;
                    Some((out, (input, state)))
                }
            })
            .boxed(),
        )
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
    } in UnitRow::from_batch(batch)?
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
    MergedFile::to_batch(&merged)
}
