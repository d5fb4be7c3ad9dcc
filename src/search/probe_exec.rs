//! `VectorIndexProbeExec`: ranks IVF partitions once per query.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, SchemaRef, UInt32Type};
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder};
use datafusion::physical_plan::DisplayFormatType;
use futures::{StreamExt, TryStreamExt};

use super::probe_tasks::{balance, probe_task_schema, slot_keys, tasks_batch, ProbeTask, Probed};
use super::{SearchOptions, SearchTarget};
use crate::exec::{index_detail, primitive, vectors, Partitions, Work, WorkExec, WorkStream};
use crate::format::Metric;
use crate::model::distance::normalize;
use crate::progress::{ProgressStep, Tracker};

/// Ranks the IVF partitions of each query once (all segments share the model) and
/// emits one probe task per (query, probed partition holding rows in some segment)
/// — or per part of it, when few queries probe few partitions and a large one would
/// hold up one core (see [`super::probe_tasks`]). A task covers the partition in
/// every segment: the query is prepared for the partition once and scores its blocks
/// one after another, so 64 small segments cost about what one large one does.
///
/// Partitioning: requires a single input partition of queries (`query_id`,
/// `query`) and emits a single partition. Tasks are ordered by (partition, part,
/// query) and cut into many small batches; each carries the slot of the `slots`
/// scan partitions it was balanced onto (by rows to score), which the plan's hash
/// exchange routes it to, so each scan partition reads a block once for all the
/// queries that probe it.
pub(crate) type VectorIndexProbeExec = WorkExec<Probe>;

/// The work of [`VectorIndexProbeExec`].
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) target: Arc<SearchTarget>,
    pub(crate) options: SearchOptions,
    /// Whether the target came from the session's search cache.
    pub(crate) target_cached: bool,
    /// Partitions of the hash exchange above, which tasks are balanced over.
    pub(crate) slots: usize,
}

impl Probe {
    pub(crate) fn new(
        target: Arc<SearchTarget>,
        options: SearchOptions,
        target_cached: bool,
        slots: usize,
    ) -> Self {
        Self {
            target,
            options,
            target_cached,
            slots: slots.max(1),
        }
    }
}

impl Work for Probe {
    const NAME: &'static str = "VectorIndexProbeExec";
    const PARTITIONS: Partitions = Partitions::One;
    /// `target_cache_hits` / `target_cache_misses`: whether the model and segment
    /// manifests came from the session's search cache or were read;
    /// `split_partitions`: partitions scored in parts by several scan partitions.
    const METRICS: bool = true;

    fn schema(&self) -> SchemaRef {
        probe_task_schema(self.target.model.info().dim())
    }

    fn details(&self, format: DisplayFormatType, _: usize) -> Vec<(&'static str, String)> {
        let model = &self.target.model;
        let mut details = index_detail(format, &self.target.location);
        details.extend([
            ("version", self.target.version.to_string()),
            ("segments", self.target.segments.len().to_string()),
            (
                "nprobes",
                self.options
                    .nprobes
                    .min(model.info().num_partitions())
                    .to_string(),
            ),
            ("partitions", model.info().num_partitions().to_string()),
            ("metric", model.info().metric().to_string()),
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
        let (hits, misses, split) = (
            MetricBuilder::new(metrics).counter("target_cache_hits", 0),
            MetricBuilder::new(metrics).counter("target_cache_misses", 0),
            MetricBuilder::new(metrics).counter("split_partitions", 0),
        );
        if self.target_cached {
            hits.add(1);
        } else {
            misses.add(1);
        }
        let tracker = Tracker::of_task(&context);
        Ok(futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let (tasks, split_partitions) =
                probe(&self.target, self.options.nprobes, self.slots, &batches)?;
            split.add(split_partitions);
            tracker.start(ProgressStep::Probes, Some(tasks.len() as u64));
            let (schema, dim) = (self.schema(), self.target.model.info().dim());
            let out: Vec<Result<RecordBatch>> = batches_of(&tasks, self.slots)
                .map(|c| tasks_batch(&schema, dim, c))
                .collect();
            Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(out))
        })
        .try_flatten()
        .boxed())
    }
}

type Query = (u32, Arc<[f32]>);

/// Tasks per batch the probe aims for: several batches per scan partition let the
/// scans start early when the tasks are spread over several.
const TASKS_PER_BATCH: usize = 256;

/// `tasks` (ordered by partition and part) cut into batches of at least
/// `TASKS_PER_BATCH` tasks — fewer, down to a quarter of each of `slots` scan
/// partitions' share, when spread — each ending where a (partition, part) does, so
/// that no scan partition looks a block up twice.
fn batches_of(tasks: &[ProbeTask], slots: usize) -> impl Iterator<Item = &[ProbeTask]> {
    let per_batch = match slots {
        1 => TASKS_PER_BATCH,
        _ => tasks.len().div_ceil(slots * 4).clamp(1, TASKS_PER_BATCH),
    };
    let mut rest = tasks;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = per_batch.min(rest.len());
        while end < rest.len()
            && (rest[end].partition, rest[end].part)
                == (rest[end - 1].partition, rest[end - 1].part)
        {
            end += 1;
        }
        let (batch, after) = rest.split_at(end);
        rest = after;
        Some(batch)
    })
}

/// The probe tasks of the queries in `batches`: each query's `nprobes` nearest
/// partitions that hold rows, split and balanced over `slots` scan partitions,
/// ordered by (partition, part, query); and how many partitions were split.
fn probe(
    target: &SearchTarget,
    nprobes: usize,
    slots: usize,
    batches: &[RecordBatch],
) -> Result<(Vec<ProbeTask>, usize)> {
    let model = &target.model;
    let dim = model.info().dim();
    // Per partition, the queries (id, vector) that probe it.
    let mut probing: BTreeMap<u32, Vec<Query>> = BTreeMap::new();
    for b in batches {
        let ids = primitive::<UInt32Type>(b, "query_id")?;
        let list = vectors(b, "query")?;
        let values = list.values().as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            let start = (list.offset() + i) * dim;
            let mut q = values.values()[start..start + dim].to_vec();
            if model.info().metric() == Metric::Cosine {
                normalize(&mut q);
            }
            let q: Arc<[f32]> = q.into();
            for p in model.rank_partitions(&q, nprobes) {
                if !target.blocks_by_partition[p].is_empty() {
                    probing
                        .entry(p as u32)
                        .or_default()
                        .push((ids.value(i), Arc::clone(&q)));
                }
            }
        }
    }
    let splittable = !model.info().index_type().is_hnsw();
    let probed: Vec<Probed> = probing
        .iter()
        .map(|(&partition, queries)| Probed {
            partition,
            rows: target.rows_by_partition[partition as usize],
            queries: queries.len() as u32,
            splittable,
        })
        .collect();
    let keys = slot_keys(slots)?;
    let mut tasks = Vec::new();
    let units = balance(&probed, slots);
    let split = units.iter().filter(|u| u.1.index() == 1).count();
    for (partition, part, slot) in units {
        for (query_id, query) in probing.get(&partition).into_iter().flatten() {
            tasks.push(ProbeTask {
                slot: keys[slot],
                query_id: *query_id,
                partition,
                part,
                query: Arc::clone(query),
            });
        }
    }
    tasks.sort_by_key(|t| (t.partition, t.part, t.query_id));
    Ok((tasks, split))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::probe_tasks::Part;
    use proptest::prelude::*;

    proptest! {
        /// The batches hold every task once, in order; each (partition, part) lies
        /// in one batch; every batch but the last holds at least its share.
        #[test]
        fn batches_end_where_a_partition_part_does(
            counts in proptest::collection::vec((1u32..4, 1usize..40), 0..40),
            slots in 1usize..6,
        ) {
            let mut tasks = Vec::new();
            for (partition, &(parts, queries)) in counts.iter().enumerate() {
                for index in 0..parts {
                    for query_id in 0..queries as u32 {
                        tasks.push(ProbeTask {
                            slot: 0,
                            query_id,
                            partition: partition as u32,
                            part: Part::new(index, parts).unwrap(),
                            query: Arc::from(vec![0.0f32]),
                        });
                    }
                }
            }
            let batches: Vec<&[ProbeTask]> = batches_of(&tasks, slots).collect();
            prop_assert_eq!(batches.concat(), tasks.clone());
            let least = match slots {
                1 => TASKS_PER_BATCH,
                _ => tasks.len().div_ceil(slots * 4).clamp(1, TASKS_PER_BATCH),
            };
            for pair in batches.windows(2) {
                prop_assert!(pair[0].len() >= least);
                let (last, first) = (&pair[0][pair[0].len() - 1], &pair[1][0]);
                prop_assert_ne!((last.partition, last.part), (first.partition, first.part));
            }
        }
    }
}
