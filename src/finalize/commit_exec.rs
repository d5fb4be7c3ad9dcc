//! `VectorIndexCommitExec`: writes segment manifests and commits a new version.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_datafusion_err, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::{
    ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;

use super::{CommitMode, FinalizeOptions, SegmentPlan};
use crate::catalog::{latest_version, read_segment, read_segment_fragments};
use crate::error::IndexError;
use crate::exec::{compute_properties, single_child};
use crate::format::{
    FileInfo, IndexLocation, SegmentFile, SegmentManifest, SegmentRef, VersionManifest,
    FORMAT_VERSION,
};
use crate::model::ModelInfo;

/// Schema of the rows emitted by a finalize: one per new segment.
pub fn commit_output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("shards", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("num_fragments", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("replaced_segments", DataType::Utf8, true),
    ]))
}

/// Commits the merged files as new segments.
///
/// Partitioning: requires a single input partition (every merged file) and emits
/// a single partition with one row per new segment (schema:
/// [`commit_output_schema`]). It writes each segment's `fragments.roaring` and
/// `segment.json`, then `_versions/<N+1>.json` with put-if-absent. When another
/// writer committed first it re-reads the latest version, re-checks that no
/// consumed shard was consumed meanwhile and that fragments stay disjoint, and
/// retries, up to `max_commit_attempts`. Only after the commit does it remove the
/// consumed shards from the staging area.
#[derive(Debug)]
pub struct VectorIndexCommitExec {
    input: Arc<dyn ExecutionPlan>,
    location: IndexLocation,
    model: Arc<ModelInfo>,
    options: FinalizeOptions,
    properties: Arc<PlanProperties>,
    /// `cleanup_time`: removing the consumed shards after the commit.
    metrics: ExecutionPlanMetricsSet,
}

impl VectorIndexCommitExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        location: IndexLocation,
        model: Arc<ModelInfo>,
        options: FinalizeOptions,
    ) -> Result<Self> {
        Ok(Self {
            input,
            location,
            model,
            options,
            properties: compute_properties(commit_output_schema(), 1, EmissionType::Final),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for VectorIndexCommitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VectorIndexCommitExec: index={}, mode={}, max_attempts={}",
            self.location.url(),
            self.options.mode,
            self.options.max_commit_attempts
        )
    }
}

impl ExecutionPlan for VectorIndexCommitExec {
    fn name(&self) -> &str {
        "VectorIndexCommitExec"
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

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return datafusion::common::exec_err!(
                "VectorIndexCommitExec has one partition, asked for {partition}"
            );
        }
        let input = self.input.execute(0, context)?;
        let location = self.location.clone();
        let model = Arc::clone(&self.model);
        let options = self.options.clone();
        let cleanup_time = MetricBuilder::new(&self.metrics).subset_time("cleanup_time", 0);
        let stream = futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let segments = collect_segments(&batches, &model)?;
            Ok(commit(&location, &model, &options, segments, &cleanup_time).await?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            commit_output_schema(),
            stream,
        )))
    }
}

struct NewSegment {
    plan: SegmentPlan,
    files: Vec<SegmentFile>,
    fragments: Vec<u8>,
}

fn collect_segments(batches: &[RecordBatch], model: &ModelInfo) -> Result<Vec<NewSegment>> {
    let mut by_id: BTreeMap<String, NewSegment> = BTreeMap::new();
    for b in batches {
        let col = |n: &str| {
            b.column_by_name(n)
                .ok_or_else(|| exec_datafusion_err!("merged files lack column {n}"))
        };
        let files = col("file")?.as_string::<i32>().clone();
        let segs = col("segment")?.as_string::<i32>().clone();
        let frags = col("fragments")?.as_binary::<i32>().clone();
        for i in 0..b.num_rows() {
            let file: SegmentFile =
                serde_json::from_str(files.value(i)).map_err(|e| exec_datafusion_err!("{e}"))?;
            let plan: SegmentPlan =
                serde_json::from_str(segs.value(i)).map_err(|e| exec_datafusion_err!("{e}"))?;
            let entry = by_id
                .entry(plan.segment_id.clone())
                .or_insert_with(|| NewSegment {
                    plan,
                    files: Vec::new(),
                    fragments: Vec::new(),
                });
            if frags.is_valid(i) {
                entry.fragments = frags.value(i).to_vec();
            }
            entry.files.push(file);
        }
    }
    let mut out: Vec<NewSegment> = by_id.into_values().collect();
    for s in &mut out {
        s.files.sort_by_key(|f| f.partition_start);
        let mut next = 0;
        for f in &s.files {
            if f.partition_start != next {
                return Err(exec_datafusion_err!(
                    "segment {}: merged files do not cover partition {next}",
                    s.plan.segment_id
                ));
            }
            let graphs = f.graph.as_ref().map(|g| g.partitions.len());
            if model.index_type().is_hnsw() && graphs != Some(f.partitions.len()) {
                return Err(exec_datafusion_err!(
                    "segment {}: file {} lacks the HNSW graphs of its partitions",
                    s.plan.segment_id,
                    f.name
                ));
            }
            next = f.partition_end;
        }
        if next as usize != model.num_partitions() || s.files.len() != s.plan.num_files as usize {
            return Err(exec_datafusion_err!(
                "segment {}: merged files are incomplete",
                s.plan.segment_id
            ));
        }
    }
    Ok(out)
}

async fn commit(
    location: &IndexLocation,
    model: &ModelInfo,
    options: &FinalizeOptions,
    segments: Vec<NewSegment>,
    cleanup_time: &Time,
) -> crate::Result<RecordBatch> {
    let mut refs = Vec::new();
    let mut new_fragments: Vec<(String, RoaringBitmap)> = Vec::new();
    for s in segments {
        let dir = location.segment_dir(&s.plan.segment_id);
        let fragments_file = FileInfo {
            name: "fragments.roaring".into(),
            size: s.fragments.len() as u64,
            crc32: crc32fast::hash(&s.fragments),
        };
        let bitmap = RoaringBitmap::deserialize_from(&s.fragments[..])?;
        location
            .put_if_absent(&dir.clone().join("fragments.roaring"), s.fragments)
            .await?;
        let manifest = SegmentManifest {
            format_version: FORMAT_VERSION,
            segment_id: s.plan.segment_id.clone(),
            model: model.fingerprint().to_string(),
            index_type: model.index_type(),
            metric: model.metric(),
            dim: model.dim() as u32,
            num_partitions: model.num_partitions() as u32,
            rows: s.plan.rows,
            num_fragments: s.plan.num_fragments,
            min_fragment: s.plan.min_fragment,
            max_fragment: s.plan.max_fragment,
            files: s.files,
            fragments_file,
            consumed_shards: s.plan.shards.clone(),
        };
        if !location
            .put_if_absent(&dir.join("segment.json"), manifest.to_json()?)
            .await?
        {
            return Err(IndexError::Conflict(format!(
                "segment {} already exists",
                s.plan.segment_id
            )));
        }
        refs.push(SegmentRef {
            segment_id: manifest.segment_id.clone(),
            rows: manifest.rows,
            num_fragments: manifest.num_fragments,
            min_fragment: manifest.min_fragment,
            max_fragment: manifest.max_fragment,
            bytes: manifest.bytes(),
            consumed_shards: manifest.consumed_shards.clone(),
        });
        new_fragments.push((manifest.segment_id, bitmap));
    }

    let mut committed_fragments: HashMap<String, RoaringBitmap> = HashMap::new();
    for attempt in 1..=options.max_commit_attempts.max(1) {
        let latest = latest_version(location).await?;
        let base = latest
            .as_ref()
            .map(|v| v.segments.clone())
            .unwrap_or_default();
        let mut replaced = Vec::new();
        for seg in &base {
            if let Some(shard) = refs
                .iter()
                .flat_map(|r| &r.consumed_shards)
                .find(|s| seg.consumed_shards.contains(s))
            {
                return Err(IndexError::Conflict(format!(
                    "shard {shard} was merged into segment {} by a concurrent finalize (version {}); \
                     nothing was committed here, and vacuum_vector_index removes this run's segment files",
                    seg.segment_id,
                    latest.as_ref().map_or(0, |v| v.version)
                )));
            }
            if !committed_fragments.contains_key(&seg.segment_id) {
                let manifest = read_segment(location, &seg.segment_id).await?;
                committed_fragments.insert(
                    seg.segment_id.clone(),
                    read_segment_fragments(location, &manifest).await?,
                );
            }
            let theirs = &committed_fragments[&seg.segment_id];
            if let Some((id, _)) = new_fragments.iter().find(|(_, f)| !f.is_disjoint(theirs)) {
                match options.mode {
                    CommitMode::Append => {
                        return Err(IndexError::Conflict(format!(
                            "new segment {id} overlaps committed segment {} (committed concurrently); nothing was committed",
                            seg.segment_id
                        )))
                    }
                    CommitMode::Replace => replaced.push(seg.segment_id.clone()),
                }
            }
        }
        let version = latest.as_ref().map_or(1, |v| v.version + 1);
        let mut segments: Vec<SegmentRef> = base
            .into_iter()
            .filter(|s| !replaced.contains(&s.segment_id))
            .collect();
        segments.extend(refs.iter().cloned());
        let manifest = VersionManifest {
            format_version: FORMAT_VERSION,
            version,
            model: model.fingerprint().to_string(),
            segments,
            replaced_segments: replaced.clone(),
        };
        if location
            .put_if_absent(&location.version_file(version), manifest.to_json()?)
            .await?
        {
            let timer = cleanup_time.timer();
            cleanup_consumed(location, &refs).await;
            timer.done();
            return output(&refs, version, &replaced);
        }
        if attempt == options.max_commit_attempts.max(1) {
            break;
        }
    }
    Err(IndexError::Conflict(format!(
        "version could not be committed after {} attempts: other writers kept committing first",
        options.max_commit_attempts
    )))
}

/// Shard folders removed at once after a commit.
const CLEANUP_CONCURRENCY: usize = 8;

/// Best effort: what fails here is left for `vacuum_vector_index`, and a re-run of
/// finalize skips it because the committed segments name it as consumed.
async fn cleanup_consumed(location: &IndexLocation, refs: &[SegmentRef]) {
    // Concurrently: unlinking large files is slow, and the finalize waits for it.
    futures::stream::iter(refs.iter().flat_map(|r| &r.consumed_shards))
        .for_each_concurrent(CLEANUP_CONCURRENCY, |shard| async move {
            let _ = location.delete_dir(&location.shard_dir(shard)).await;
        })
        .await;
}

fn output(refs: &[SegmentRef], version: u64, replaced: &[String]) -> crate::Result<RecordBatch> {
    let n = refs.len();
    let replaced = (!replaced.is_empty()).then(|| replaced.join(","));
    Ok(RecordBatch::try_new(
        commit_output_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                refs.iter().map(|r| r.segment_id.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                refs.iter().map(|r| r.consumed_shards.len() as u64),
            )),
            Arc::new(UInt64Array::from_iter_values(refs.iter().map(|r| r.rows))),
            Arc::new(UInt64Array::from_iter_values(
                refs.iter().map(|r| r.num_fragments),
            )),
            Arc::new(UInt64Array::from_iter_values(refs.iter().map(|r| r.bytes))),
            Arc::new(UInt64Array::from(vec![version; n])),
            Arc::new(StringArray::from(vec![replaced.as_deref(); n])),
        ],
    )?)
}
