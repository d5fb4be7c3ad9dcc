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
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

use super::distance::Scorer;
use super::topk::{tops_to_batch, Scored, TopK};
use super::topk_exec::search_output_schema;
use super::{SearchOptions, SearchTarget};
use crate::error::IndexError;
use crate::exec::{compute_properties, primitive, single_child, vectors};
use crate::format::{decode_block, StoredRows};
use crate::hnsw::{graph_schema, HnswGraph, Visited};
use crate::progress::{ProgressStep, Tracker};

/// Blocks read at once by one scan partition.
const READ_CONCURRENCY: usize = 8;

/// Reads each probed (segment, partition) block with one ranged read (checked
/// against its CRC-32), scores it for every query that probes it, and keeps each
/// query's k nearest rows. For the HNSW types the partition's graph block is read
/// alongside (graphs are loaded lazily, only for probed partitions) and searched
/// with breadth `ef` instead of scoring every row.
///
/// Partitioning: one output partition per input partition of probe tasks; emits,
/// when its input ends, each query's local top k (`query_id`, `row_id`, `distance`).
#[derive(Debug)]
pub(crate) struct VectorIndexScanExec {
    input: Arc<dyn ExecutionPlan>,
    target: Arc<SearchTarget>,
    options: SearchOptions,
    /// What the input must be hash-partitioned on (see `probe_task_key`).
    key: Vec<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
}

impl VectorIndexScanExec {
    #[cfg(feature = "codec")]
    /// What the operator was built with (the codec's view of it).
    pub(crate) fn parts(&self) -> (&Arc<SearchTarget>, SearchOptions) {
        (&self.target, self.options)
    }

    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        target: Arc<SearchTarget>,
        options: SearchOptions,
    ) -> Result<Self> {
        let partitions = input.output_partitioning().partition_count();
        Ok(Self {
            key: super::probe_exec::probe_task_key(&input.schema())?,
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
            "VectorIndexScanExec: type={}, k={}",
            self.target.model.index_type(),
            self.options.k
        )?;
        if self.target.model.index_type().is_hnsw() {
            write!(f, ", ef={}", self.options.effective_ef())?;
        }
        write!(f, ", read_concurrency={READ_CONCURRENCY}")
    }
}

impl ExecutionPlan for VectorIndexScanExec {
    fn name(&self) -> &str {
        "VectorIndexScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// Each probed block goes to one partition with all the queries that probe it,
    /// and a distributed scheduler cuts a stage at the hash exchange this asks for.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::KeyPartitioned(self.key.clone())]
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
        let tracker = Tracker::of_task(&context);
        let mut input = self.input.execute(partition, context)?;
        let target = Arc::clone(&self.target);
        let options = self.options;
        let stream = futures::stream::once(async move {
            let mut tops: BTreeMap<u32, TopK> = BTreeMap::new();
            let mut visited = Visited::default();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                scan_tasks(&target, &batch, options, &mut tops, &mut visited).await?;
                tracker.add(ProgressStep::Probes, batch.num_rows() as u64);
            }
            Ok(tops_to_batch(tops)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            search_output_schema(),
            stream,
        )))
    }
}

/// A probed partition: its rows and, for HNSW types, its graph.
struct Block {
    rows: RecordBatch,
    graph: Option<HnswGraph>,
}

async fn read_block(target: &SearchTarget, s: u32, p: u32) -> crate::error::Result<Block> {
    let seg = &target.segments[s as usize];
    let what = format!("segment {}, partition {p}", seg.segment_id);
    let (file, block) = seg
        .block(p)
        .ok_or_else(|| IndexError::corrupt(&what, "no such partition"))?;
    let location = &target.location;
    let dir = location.segment_dir(&seg.segment_id);
    let schema = target.model.storage_schema();
    let data_path = dir.clone().join(file.name.as_str());
    let data = location.get_described_range(&data_path, block.range(), &what);
    let graph = async {
        if !target.model.index_type().is_hnsw() {
            return Ok(None);
        }
        let Some((file, block)) = seg.graph_block(p) else {
            return Ok(None);
        };
        let what = format!("{what}, graph");
        let bytes = location
            .get_described_range(&dir.clone().join(file.name.as_str()), block.range(), &what)
            .await?;
        Ok::<_, IndexError>(Some((
            what.clone(),
            decode_block(&what, &graph_schema(), block, bytes)?,
        )))
    };
    let (data, graph) = futures::try_join!(data, graph)?;
    let rows = decode_block(&what, &schema, block, data)?;
    let graph = match graph {
        Some((what, batch)) => Some(HnswGraph::from_batch(&what, &batch, rows.num_rows())?),
        None => None,
    };
    Ok(Block { rows, graph })
}

async fn scan_tasks(
    target: &Arc<SearchTarget>,
    batch: &RecordBatch,
    options: SearchOptions,
    tops: &mut BTreeMap<u32, TopK>,
    visited: &mut Visited,
) -> Result<()> {
    let query_ids = primitive::<UInt32Type>(batch, "query_id")?;
    let segments = primitive::<UInt32Type>(batch, "segment")?;
    let partitions = primitive::<UInt32Type>(batch, "partition")?;
    let queries = vectors(batch, "query")?;
    let dim = target.model.dim();
    let mut wanted: Vec<(u32, u32)> = (0..batch.num_rows())
        .map(|i| (segments.value(i), partitions.value(i)))
        .collect();
    wanted.dedup();
    let blocks: HashMap<(u32, u32), Block> = futures::stream::iter(wanted)
        .map(|(s, p)| {
            let target = Arc::clone(target);
            async move { Ok::<_, IndexError>(((s, p), read_block(&target, s, p).await?)) }
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
            .or_insert_with(|| TopK::new(options.k));
        let block = &blocks[&(s, p)];
        match &block.graph {
            Some(graph) => {
                let rows = StoredRows::of(&block.rows)?;
                let bound = scorer.bind(&rows)?;
                let found = graph.search(
                    options.effective_ef(),
                    |node| bound.distance(node as usize),
                    visited,
                );
                for c in found {
                    if c.distance <= top.threshold() {
                        top.push(Scored {
                            distance: c.distance,
                            row_id: rows.ids[c.node as usize],
                        });
                    }
                }
            }
            None => scorer.score_batch(&block.rows, top)?,
        }
    }
    Ok(())
}
