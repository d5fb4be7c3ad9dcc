//! `VectorIndexCommitExec`: hands the merged segments to the catalog's commit
//! protocol ([`crate::catalog::Transaction`]) and emits what it committed.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, Time};
use datafusion::physical_plan::DisplayFormatType;
use futures::{StreamExt, TryStreamExt};

use super::merged_files::MergedFile;
use super::report::{commit_output_schema, FinalizeReport};
use super::{FinalizeOptions, SegmentPlan};
use crate::catalog::{remove_consumed, NewSegment, Transaction};
use crate::exec::{index_detail, Partitions, Work, WorkExec, WorkStream};
use crate::format::IndexLocation;
use crate::model::ModelInfo;
use crate::progress::{ProgressStep, Tracker};

/// Commits the merged files as new segments.
///
/// Partitioning: requires a single input partition (every merged file) and emits
/// a single partition with one row per new segment (schema:
/// [`commit_output_schema`], carrying a [`FinalizeReport`]). The merged files are grouped by segment into a
/// [`Transaction`], which writes the segments' manifests and commits the version
/// (retries, re-checks and what "nothing lost" means live there); only after the
/// commit are the consumed shards removed from the staging area.
pub(crate) type VectorIndexCommitExec = WorkExec<CommitSegments>;

/// The work of [`VectorIndexCommitExec`].
#[derive(Debug)]
pub(crate) struct CommitSegments {
    pub(crate) location: IndexLocation,
    pub(crate) model: Arc<ModelInfo>,
    pub(crate) options: FinalizeOptions,
}

impl Work for CommitSegments {
    const NAME: &'static str = "VectorIndexCommitExec";
    const PARTITIONS: Partitions = Partitions::One;
    /// `cleanup_time`: removing the consumed shards after the commit.
    const METRICS: bool = true;

    fn schema(&self) -> SchemaRef {
        commit_output_schema()
    }

    fn details(&self, format: DisplayFormatType, _: usize) -> Vec<(&'static str, String)> {
        let mut details = index_detail(format, &self.location);
        details.extend([
            ("mode", self.options.mode.to_string()),
            ("max_attempts", self.options.max_commit_attempts.to_string()),
        ]);
        details
    }

    fn run(
        self: Arc<Self>,
        _partition: usize,
        input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<WorkStream> {
        let tracker = Tracker::of_task(&context);
        let cleanup_time = MetricBuilder::new(metrics).subset_time("cleanup_time", 0);
        Ok(futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let t = transaction(&batches, &self.location, &self.model, &self.options)?;
            tracker.start(ProgressStep::Commit, Some(1));
            let out = commit(t, &self.location, &cleanup_time).await?;
            tracker.add(ProgressStep::Commit, 1);
            Ok(out)
        })
        .boxed())
    }
}

/// Groups the merged files by segment into a transaction: the segment plans the
/// planner made, with the files the merge wrote for them.
fn transaction(
    batches: &[RecordBatch],
    location: &IndexLocation,
    model: &Arc<ModelInfo>,
    options: &FinalizeOptions,
) -> Result<Transaction> {
    let mut by_id: BTreeMap<String, (SegmentPlan, NewSegment)> = BTreeMap::new();
    for batch in batches {
        for merged in MergedFile::from_batch(batch)? {
            let (_, segment) = match by_id.entry(merged.segment_id.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let plan = merged.segment_plan()?;
                    let segment = NewSegment {
                        segment_id: plan.segment_id.clone(),
                        consumed_shards: plan.shards.clone(),
                        rows: plan.rows,
                        num_fragments: plan.num_fragments,
                        min_fragment: plan.min_fragment,
                        max_fragment: plan.max_fragment,
                        files: Vec::new(),
                        fragments: Vec::new(),
                    };
                    e.insert((plan, segment))
                }
            };
            if let Some(fragments) = merged.fragments {
                segment.fragments = fragments;
            }
            segment.files.push(merged.file);
        }
    }
    let mut t = Transaction::new(
        location.clone(),
        Arc::clone(model),
        options.mode,
        options.max_commit_attempts,
    );
    for (plan, segment) in by_id.into_values() {
        t.add(segment, plan.num_files as usize)?;
    }
    Ok(t)
}

async fn commit(
    t: Transaction,
    location: &IndexLocation,
    cleanup_time: &Time,
) -> crate::error::Result<RecordBatch> {
    let committed = t.commit().await?;
    let timer = cleanup_time.timer();
    remove_consumed(location, &committed).await;
    timer.done();
    Ok(FinalizeReport::of(&committed).to_batch()?)
}
