//! Finalize: turn staged shards into committed segments, as a DataFusion plan.
//!
//! ```text
//! VectorIndexCommitExec        1 partition: writes segment manifests, commits _versions/<N+1>.json
//!   CoalescePartitionsExec
//!     VectorIndexMergeExec     N partitions: merges (segment, partition range) work units
//!       RepartitionExec        hash of (segment_id, file_index): spreads work units
//!         VectorIndexPlanExec  1 partition: checks shards, groups segments, emits work units
//!           CoalescePartitionsExec
//!             DataSourceExec   the staging table (ShardManifestSource)
//! ```
//!
//! Finalize copies stored rows without decoding them, so the operators hold the
//! model's parameters ([`ModelInfo`]), not its tensors; only the HNSW types' merge
//! reads the whole model, to decode merged rows for their graphs.

mod commit_exec;
mod merge;
mod merge_exec;
mod merged_files;
mod plan_exec;
mod planning;
mod report;
#[cfg(test)]
mod tests;
mod work_units;

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

pub(crate) use commit_exec::{CommitSegments, VectorIndexCommitExec};
pub(crate) use merge_exec::{MergeUnits, VectorIndexMergeExec};
pub(crate) use plan_exec::{PlanMerge, VectorIndexPlanExec};
pub(crate) use report::commit_output_schema;
pub use report::{FinalizeReport, FinalizedSegment};
use work_units::work_unit_key;

use crate::catalog::CommitMode;
use crate::error::Result;
use crate::format::{BlockInfo, IndexLocation};
use crate::model::ModelInfo;
use crate::staging::{ScannedShards, ShardsTable};

/// How staged shards are grouped into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SegmentGrouping {
    /// All staged shards become one segment.
    #[default]
    Single,
    /// Shards, ordered by their first fragment, are packed into segments of about this many rows.
    TargetRows(u64),
    /// One segment per shard.
    PerShard,
}

/// Options of a finalize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FinalizeOptions {
    pub grouping: SegmentGrouping,
    pub mode: CommitMode,
    /// Skip incomplete shards (no `shard.json`) instead of failing.
    pub skip_incomplete: bool,
    /// Target size of one segment data file; a file covers a contiguous range of
    /// IVF partitions and is also the unit of parallel merge work.
    pub target_file_bytes: u64,
    /// Commit attempts when another finalize commits first.
    pub max_commit_attempts: usize,
    /// Merge partitions; defaults to the session's target partitions.
    pub merge_partitions: Option<usize>,
    /// Fragments that must be staged or committed once this finalize commits; a
    /// fragment in none of them (a worker that never staged) fails the finalize,
    /// naming it.
    #[serde(default)]
    pub expect_fragments: Option<Vec<std::ops::RangeInclusive<u32>>>,
}

impl FinalizeOptions {
    /// Refuses counts outside [`crate::limits`].
    pub fn check(&self) -> Result<()> {
        use crate::limits::*;
        if let SegmentGrouping::TargetRows(rows) = self.grouping {
            check_at_least("target_segment_rows", rows, 1)?;
        }
        check_count(
            "target_file_bytes",
            self.target_file_bytes,
            1,
            MAX_TARGET_FILE_BYTES,
        )?;
        check_count(
            "max_commit_attempts",
            self.max_commit_attempts,
            1,
            MAX_COMMIT_ATTEMPTS,
        )?;
        if let Some(n) = self.merge_partitions {
            check_count("merge_partitions", n, 1, MAX_MERGE_PARTITIONS)?;
        }
        Ok(())
    }
}

impl Default for FinalizeOptions {
    fn default() -> Self {
        Self {
            grouping: SegmentGrouping::Single,
            mode: CommitMode::Append,
            skip_incomplete: false,
            target_file_bytes: 4 << 20,
            max_commit_attempts: 5,
            merge_partitions: None,
            expect_fragments: None,
        }
    }
}

/// Builders, one per field: the struct is `#[non_exhaustive]` (it will grow), so
/// code outside this crate starts from `FinalizeOptions::default()`.
impl FinalizeOptions {
    /// Sets `grouping` (default: one segment).
    pub fn with_grouping(mut self, grouping: SegmentGrouping) -> Self {
        self.grouping = grouping;
        self
    }

    /// Sets `mode` (default: append).
    pub fn with_mode(mut self, mode: CommitMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets `skip_incomplete` (default: false).
    pub fn with_skip_incomplete(mut self, skip_incomplete: bool) -> Self {
        self.skip_incomplete = skip_incomplete;
        self
    }

    /// Sets `target_file_bytes` (default: 4 MiB).
    pub fn with_target_file_bytes(mut self, target_file_bytes: u64) -> Self {
        self.target_file_bytes = target_file_bytes;
        self
    }

    /// Sets `max_commit_attempts` (default: 5).
    pub fn with_max_commit_attempts(mut self, max_commit_attempts: usize) -> Self {
        self.max_commit_attempts = max_commit_attempts;
        self
    }

    /// Sets `merge_partitions` (default: the session's target partitions).
    pub fn with_merge_partitions(mut self, merge_partitions: usize) -> Self {
        self.merge_partitions = Some(merge_partitions);
        self
    }

    /// Sets `expect_fragments` (default: none expected).
    pub fn with_expect_fragments(
        mut self,
        expect_fragments: Vec<std::ops::RangeInclusive<u32>>,
    ) -> Self {
        self.expect_fragments = Some(expect_fragments);
        self
    }
}

/// Fragment ranges as written in `expect_fragments` (`0-11`, `0-3,5,7-9`).
pub(crate) fn fragment_ranges(ranges: &[std::ops::RangeInclusive<u32>]) -> String {
    ranges
        .iter()
        .map(|r| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{}-{}", r.start(), r.end())
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `expect_fragments`: comma-separated fragment ids and inclusive ranges
/// (`0-11`, `0-3,5,7-9`).
pub(crate) fn parse_fragment_ranges(text: &str) -> Result<Vec<std::ops::RangeInclusive<u32>>> {
    let bad = |why: String| {
        crate::error::IndexError::invalid_argument(
            "expect_fragments",
            format!("'{text}': {why}; write fragment ids and ranges such as '0-11' or '0-3,5,7-9'"),
        )
    };
    let id = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| bad(format!("'{}' is not a fragment id", s.trim())))
    };
    text.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (id(a)?, id(b)?);
                if a > b {
                    return Err(bad(format!("the range {a}-{b} is empty")));
                }
                Ok(a..=b)
            }
            None => id(part).map(|f| f..=f),
        })
        .collect()
}

/// A segment as planned: its shards and what the commit needs to know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SegmentPlan {
    pub segment_id: String,
    pub shards: Vec<String>,
    pub rows: u64,
    pub num_fragments: u64,
    pub min_fragment: Option<u32>,
    pub max_fragment: Option<u32>,
    pub num_files: u32,
    /// Committed segments this one replaces (`replace` mode).
    pub replaces: Vec<String>,
}

/// One shard's blocks for a work unit's partition range.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShardInput {
    pub shard_id: String,
    /// Object-store path of the shard folder.
    pub dir: String,
    /// The fragments the shard covers: its row ids must lie in them.
    pub fragments: Arc<RoaringBitmap>,
    pub blocks: Vec<BlockInfo>,
}

/// The unit of parallel merge work: one segment data file, i.e. a contiguous range
/// of IVF partitions of one segment. Travels between operators as a row of
/// [`work_unit_schema`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkUnit {
    pub segment: SegmentPlan,
    pub file_index: u32,
    pub file_name: String,
    pub partition_start: u32,
    pub partition_end: u32,
    pub rows: u64,
    pub shards: Vec<ShardInput>,
}

/// Builds the finalize plan for `location` (see the module docs for its shape).
pub(crate) async fn finalize_plan(
    state: &dyn Session,
    location: &IndexLocation,
    options: &FinalizeOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    options.check()?;
    let scanned = ScannedShards::default();
    let staging = ShardsTable::new(location.clone()).keeping_shards_in(scanned.clone());
    // Reading the model and listing the staging area are independent round trips.
    let (model, scan) = futures::try_join!(ModelInfo::read_current(location), async {
        Ok(staging.scan(state, None, &[], None).await?)
    })?;
    let model = Arc::new(model);
    let planner = PlanMerge {
        location: location.clone(),
        model: Arc::clone(&model),
        options: options.clone(),
        finalize_id: uuid::Uuid::new_v4().to_string(),
        scanned,
    };
    let plan: Arc<dyn ExecutionPlan> = Arc::new(VectorIndexPlanExec::try_new(
        Arc::new(CoalescePartitionsExec::new(scan)),
        planner,
    )?);
    let partitions = options
        .merge_partitions
        .unwrap_or(state.config().target_partitions())
        .clamp(1, crate::limits::MAX_MERGE_PARTITIONS);
    // A hash exchange, not round robin: distributed schedulers (Ballista) cut stages
    // at hash repartitions and drop round-robin ones, so this is what spreads the
    // merge's work units over their executors (docs/ballista.md).
    let unit_key = work_unit_key(&plan.schema())?;
    let spread = Arc::new(RepartitionExec::try_new(
        plan,
        Partitioning::Hash(unit_key, partitions),
    )?);
    let merge = MergeUnits {
        location: location.clone(),
        model: Arc::clone(&model),
    };
    let merge = Arc::new(VectorIndexMergeExec::try_new(spread, merge)?);
    let commit = CommitSegments {
        location: location.clone(),
        model,
        options: options.clone(),
    };
    let commit =
        VectorIndexCommitExec::try_new(Arc::new(CoalescePartitionsExec::new(merge)), commit)?;
    Ok(Arc::new(commit))
}
