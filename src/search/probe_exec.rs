//! `VectorIndexProbeExec`: ranks IVF partitions once per query.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt32Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_datafusion_err, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::TryStreamExt;

use super::{SearchOptions, SearchTarget};
use crate::exec::{compute_properties, primitive, single_child, vectors};
use crate::model::distance::normalize;
use crate::model::Metric;
use crate::progress::{ProgressStep, Tracker};

/// Probe tasks: score `query` against IVF `partition` of every segment.
pub(super) fn probe_task_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::UInt32, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new(
            "query",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                dim as i32,
            ),
            false,
        ),
    ]))
}

/// The column that identifies the probed blocks of a task, as an expression over
/// `schema` (the probe task schema): the key the search plan hash-partitions probe
/// tasks on.
pub(crate) fn probe_task_key(schema: &SchemaRef) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    Ok(vec![datafusion::physical_expr::expressions::col(
        "partition",
        schema,
    )?])
}

/// Ranks the IVF partitions of each query once (all segments share the model) and
/// emits one probe task per (query, probed partition holding rows in some segment).
/// A task covers the partition in every segment: the query is prepared for the
/// partition once and scores its blocks one after another, so 64 small segments
/// cost about what one large one does.
///
/// Partitioning: requires a single input partition of queries (`query_id`,
/// `query`) and emits a single partition. Tasks are ordered by (partition, query)
/// and cut into many small batches; the plan hash-partitions them on the
/// partition, so each scan partition reads a block once for all the queries that
/// probe it.
#[derive(Debug)]
pub(crate) struct VectorIndexProbeExec {
    input: Arc<dyn ExecutionPlan>,
    target: Arc<SearchTarget>,
    options: SearchOptions,
    /// Whether the target came from the session's search cache.
    target_cached: bool,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

impl VectorIndexProbeExec {
    #[cfg(feature = "codec")]
    /// What the operator was built with (the codec's view of it).
    pub(crate) fn parts(&self) -> (&Arc<SearchTarget>, SearchOptions) {
        (&self.target, self.options)
    }

    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        target: Arc<SearchTarget>,
        options: SearchOptions,
        target_cached: bool,
    ) -> Result<Self> {
        let schema = probe_task_schema(target.model.dim());
        Ok(Self {
            input,
            target,
            options,
            target_cached,
            metrics: ExecutionPlanMetricsSet::new(),
            properties: compute_properties(schema, 1, EmissionType::Final),
        })
    }
}

impl DisplayAs for VectorIndexProbeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VectorIndexProbeExec: index={}, version={}, segments={}, nprobes={}, partitions={}, metric={}",
            self.target.location.url(),
            self.target.version,
            self.target.segments.len(),
            self.options.nprobes.min(self.target.model.num_partitions()),
            self.target.model.num_partitions(),
            self.target.model.metric()
        )
    }
}

impl ExecutionPlan for VectorIndexProbeExec {
    fn name(&self) -> &str {
        "VectorIndexProbeExec"
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
        Ok(Arc::new(Self::try_new(
            single_child(self.name(), children)?,
            Arc::clone(&self.target),
            self.options,
            self.target_cached,
        )?))
    }

    /// `target_cache_hits` / `target_cache_misses`: whether the model and segment
    /// manifests came from the session's search cache or were read.
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
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
                "VectorIndexProbeExec has one partition, asked for {partition}"
            );
        }
        let spread = context.session_config().target_partitions().max(1);
        let (hits, misses) = (
            MetricBuilder::new(&self.metrics).counter("target_cache_hits", 0),
            MetricBuilder::new(&self.metrics).counter("target_cache_misses", 0),
        );
        if self.target_cached {
            hits.add(1);
        } else {
            misses.add(1);
        }
        let tracker = Tracker::of_task(&context);
        let input = self.input.execute(0, context)?;
        let target = Arc::clone(&self.target);
        let nprobes = self.options.nprobes;
        let schema = self.properties.eq_properties.schema().clone();
        let out_schema = Arc::clone(&schema);
        let stream = futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let tasks = probe(&target, nprobes, &batches)?;
            tracker.start(ProgressStep::Probes, Some(tasks.len() as u64));
            // Several batches per scan partition keep every core busy.
            let per_batch = tasks.len().div_ceil(spread * 4).clamp(1, 256);
            let out: Vec<Result<RecordBatch>> = tasks
                .chunks(per_batch)
                .map(|c| task_batch(&out_schema, &target, c))
                .collect();
            Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(out))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

struct Task {
    partition: u32,
    query_id: u32,
    query: Arc<Vec<f32>>,
}

fn probe(target: &SearchTarget, nprobes: usize, batches: &[RecordBatch]) -> Result<Vec<Task>> {
    let model = &target.model;
    let dim = model.dim();
    let mut tasks = Vec::new();
    for b in batches {
        let ids = primitive::<UInt32Type>(b, "query_id")?;
        let list = vectors(b, "query")?;
        let values = list.values().as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            let start = (list.offset() + i) * dim;
            let mut q = values.values()[start..start + dim].to_vec();
            if model.metric() == Metric::Cosine {
                normalize(&mut q);
            }
            let q = Arc::new(q);
            for p in model.rank_partitions(&q, nprobes) {
                if !target.blocks_by_partition[p].is_empty() {
                    tasks.push(Task {
                        partition: p as u32,
                        query_id: ids.value(i),
                        query: Arc::clone(&q),
                    });
                }
            }
        }
    }
    tasks.sort_by_key(|t| (t.partition, t.query_id));
    Ok(tasks)
}

fn task_batch(schema: &SchemaRef, target: &SearchTarget, tasks: &[Task]) -> Result<RecordBatch> {
    let dim = target.model.dim();
    let values: Vec<f32> = tasks.iter().flat_map(|t| t.query.iter().copied()).collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let queries =
        FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(values)), None)?;
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(UInt32Array::from_iter_values(
                tasks.iter().map(|t| t.query_id),
            )),
            Arc::new(UInt32Array::from_iter_values(
                tasks.iter().map(|t| t.partition),
            )),
            Arc::new(queries),
        ],
    )
    .map_err(|e| exec_datafusion_err!("{e}"))
}
