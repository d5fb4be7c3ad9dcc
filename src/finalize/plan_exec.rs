//! `VectorIndexPlanExec`: checks the staged shards and plans the merge.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::DisplayFormatType;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use roaring::RoaringBitmap;

use super::planning::{
    check_expected_fragments, check_shard_model, plan_segments, CommittedSegment, Planned,
    PlannedShard,
};
use super::work_units::work_unit_schema;
use super::{fragment_ranges, FinalizeOptions, SegmentGrouping, WorkUnit};
use crate::catalog::{latest_version, read_segment, read_segment_fragments};
use crate::error::IndexError;
use crate::exec::{Partitions, Work, WorkExec, WorkStream};
use crate::format::{IndexLocation, VersionManifest};
use crate::model::ModelInfo;
use crate::progress::{ProgressStep, Tracker};
use crate::staging::{read_shard_row, ListedShard, Problem, ScannedShards, ShardStatus};

/// Checks the staged shards and groups them into segments, then splits each
/// segment into work units (contiguous ranges of IVF partitions).
///
/// Partitioning: requires a single input partition (the staging table's rows,
/// one per shard) and emits a single partition. Emits one batch per work unit
/// (schema: [`work_unit_schema`]) so a hash repartition on the unit spreads units over
/// merge partitions; the first unit of each segment carries the segment's
/// fragment set. Fails, before anything is written, on: no complete shards, an
/// incomplete or unreadable shard, a model/type/metric/dimension mismatch, missing
/// or truncated files, a duplicate shard id, fragments covered twice, or (append
/// mode) fragments already covered by a committed segment.
pub(crate) type VectorIndexPlanExec = WorkExec<PlanMerge>;

/// The work of [`VectorIndexPlanExec`].
#[derive(Debug)]
pub(crate) struct PlanMerge {
    pub(crate) location: IndexLocation,
    pub(crate) model: Arc<ModelInfo>,
    pub(crate) options: FinalizeOptions,
    /// Names this finalize (chosen when the plan is built). Segment ids derive from
    /// it and the shards of each segment, so that a planner task run again — a
    /// distributed engine re-running a stage after losing an executor — plans the
    /// very segments the merge tasks that already ran wrote, while two finalizes
    /// never share a segment id.
    pub(crate) finalize_id: String,
    /// Shards the staging scan below kept, taken from it instead of read again
    /// (see [`ScannedShards`]); others are read here. They stay in this process: a
    /// codec ships the operator without them.
    pub(crate) scanned: ScannedShards,
}

impl Work for PlanMerge {
    const NAME: &'static str = "VectorIndexPlanExec";
    const PARTITIONS: Partitions = Partitions::One;

    fn schema(&self) -> SchemaRef {
        work_unit_schema()
    }

    fn details(&self, _: DisplayFormatType, _: usize) -> Vec<(&'static str, String)> {
        let options = &self.options;
        let grouping = match options.grouping {
            SegmentGrouping::Single => "single".to_string(),
            SegmentGrouping::PerShard => "per_shard".to_string(),
            SegmentGrouping::TargetRows(n) => format!("target_rows({n})"),
        };
        let mut details = vec![
            ("model", self.model.fingerprint().to_string()),
            ("type", self.model.index_type().to_string()),
            ("segments", grouping),
            ("mode", options.mode.to_string()),
            ("target_file_bytes", options.target_file_bytes.to_string()),
            ("skip_incomplete", options.skip_incomplete.to_string()),
        ];
        if let Some(expected) = &options.expect_fragments {
            details.push(("expect_fragments", fragment_ranges(expected)));
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
        Ok(futures::stream::once(async move {
            // The latest version is read while the staging scan runs.
            let (rows, latest) = futures::try_join!(input.try_collect::<Vec<_>>(), async {
                Ok(latest_version(&self.location).await?)
            })?;
            let units = plan(&self, &rows, latest).await?;
            track_totals(&tracker, &self.model, &units.units);
            let units = units_to_batches(&units)?;
            Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(
                units.into_iter().map(Ok),
            ))
        })
        .try_flatten()
        .boxed())
    }
}

async fn plan(
    work: &PlanMerge,
    rows: &[RecordBatch],
    latest: Option<VersionManifest>,
) -> Result<Planned> {
    let PlanMerge {
        location,
        model,
        options,
        finalize_id,
        scanned,
    } = work;
    let listed = ListedShard::from_batches(rows)?;
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
        match s.status {
            ShardStatus::Complete => candidates.push(s),
            ShardStatus::Incomplete => incomplete.push(s.shard_id),
            status @ (ShardStatus::Invalid | ShardStatus::Unreadable) => {
                let problem = Problem {
                    status,
                    reason: s.problem.unwrap_or_default(),
                };
                return Err(problem.into_error(&s.shard_id).into());
            }
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
        if let Some(expected) = &options.expect_fragments {
            let committed = committed_segments(location, latest.as_ref()).await?;
            check_expected_fragments(expected, &RoaringBitmap::new(), &committed)?;
        }
        return Err(IndexError::NothingToFinalize(format!(
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

    let shards: Vec<PlannedShard> = futures::stream::iter(candidates)
        .map(|s| load_shard(location, scanned, s))
        .buffer_unordered(16)
        .try_collect()
        .await?;
    for s in &shards {
        check_shard_model(&s.manifest, model)?;
    }

    let committed = committed_segments(location, latest.as_ref()).await?;
    let planned = plan_segments(shards, &committed, model, options, &mut |shard_ids| {
        segment_id(finalize_id, shard_ids)
    })?;
    Ok(planned)
}

/// The id of the segment finalize `finalize_id` makes of the shards `shard_ids`: a
/// UUID (version 8) of their SHA-256.
fn segment_id(finalize_id: &str, shard_ids: &[&str]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(finalize_id.as_bytes());
    for id in shard_ids {
        hash.update([0]);
        hash.update(id.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The segments of `latest`, with their fragments.
async fn committed_segments(
    location: &IndexLocation,
    latest: Option<&VersionManifest>,
) -> Result<Vec<CommittedSegment>> {
    let mut committed = Vec::new();
    for s in latest.iter().flat_map(|v| &v.segments) {
        let seg = read_segment(location, &s.segment_id).await?;
        committed.push(CommittedSegment {
            segment_id: s.segment_id.clone(),
            rows: s.rows,
            fragments: read_segment_fragments(location, &seg).await?,
        });
    }
    Ok(committed)
}

/// One batch per work unit, so that a repartition spreads them one by one.
fn units_to_batches(planned: &Planned) -> Result<Vec<RecordBatch>> {
    planned
        .units
        .iter()
        .map(|u| {
            let fragments = planned
                .fragments
                .iter()
                .find(|(id, _)| *id == u.segment.segment_id)
                .map(|f| &f.1);
            u.to_batch(fragments)
        })
        .collect()
}

/// Starts the finalize's counters from the planned work units.
fn track_totals(tracker: &Tracker, model: &ModelInfo, units: &[WorkUnit]) {
    let rows = units.iter().map(|u| u.rows).sum();
    let segments: std::collections::HashSet<&str> = units
        .iter()
        .map(|u| u.segment.segment_id.as_str())
        .collect();
    tracker.start(ProgressStep::Merging, Some(units.len() as u64));
    tracker.start(ProgressStep::MergedRows, Some(rows));
    tracker.start(ProgressStep::WrittenBytes, None);
    if model.hnsw_params().is_some() {
        let graphs = segments.len() as u64 * u64::from(model.params().num_partitions);
        tracker.start(ProgressStep::Graphs, Some(graphs));
    }
}

/// A candidate shard as the staging scan kept it, or read and checked now when the
/// scan did not keep it (the operator fed by another input).
async fn load_shard(
    location: &IndexLocation,
    scanned: &ScannedShards,
    shard: ListedShard,
) -> Result<PlannedShard> {
    let (manifest, fragments) = match scanned.get(&shard.path) {
        Some(kept) => (kept.manifest.clone(), kept.fragments.clone()),
        None => {
            let file = Path::from(shard.path.as_str()).join("shard.json");
            let row = read_shard_row(location.store().as_ref(), Some(location), &file).await;
            let checked = row
                .complete()
                .map_err(|problem| problem.into_error(&shard.shard_id))?;
            (checked.manifest, checked.fragments)
        }
    };
    Ok(PlannedShard {
        manifest,
        dir: shard.path,
        fragments,
    })
}

#[cfg(test)]
mod tests {
    use super::segment_id;

    #[test]
    fn segment_ids_follow_the_finalize_and_its_shards() {
        let id = segment_id("f1", &["a", "b"]);
        assert_eq!(id, segment_id("f1", &["a", "b"]), "a planner run again");
        assert_ne!(id, segment_id("f2", &["a", "b"]), "another finalize");
        assert_ne!(id, segment_id("f1", &["a"]));
        assert_ne!(segment_id("f1", &["ab"]), segment_id("f1", &["a", "b"]));
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
    }
}
