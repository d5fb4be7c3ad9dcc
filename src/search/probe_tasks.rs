//! Probe tasks as Arrow rows: what [`super::VectorIndexProbeExec`] emits and
//! [`super::VectorIndexScanExec`] reads, and which scan partition each one goes to.
//!
//! A task asks a scan partition to score `query` against a share of IVF `partition`
//! in every segment: part `part` of `parts` equal row ranges of each of the
//! partition's blocks — the whole blocks unless the probe split a large partition so
//! that few queries still keep every core busy. The exchange between the two
//! operators hashes `slot`, a key the probe chose so that DataFusion's own hash
//! partitioner sends the task to the scan partition it balanced the task onto
//! ([`slot_keys`]); hashing partition ids instead leaves one query's twenty probed
//! partitions unevenly spread over few cores.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt32Type};
use datafusion::common::{internal_err, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;

use crate::exec::{primitive, vectors};

/// One share of a partition's rows: part `index` of `of` equal row ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Part {
    index: u32,
    of: u32,
}

impl Part {
    /// Part `index` of `of`, if `index < of`.
    pub(crate) fn new(index: u32, of: u32) -> Option<Self> {
        (index < of).then_some(Self { index, of })
    }

    pub(crate) fn index(self) -> u32 {
        self.index
    }

    pub(crate) fn is_whole(self) -> bool {
        self.of == 1
    }

    /// The rows this part covers of a block of `rows` rows; the parts of a block
    /// cover each of its rows exactly once.
    pub(crate) fn rows(self, rows: usize) -> Range<usize> {
        let at = |i: u32| (rows as u64 * u64::from(i) / u64::from(self.of)) as usize;
        at(self.index)..at(self.index + 1)
    }
}

/// Score `query` (the probe's copy, normalized for cosine) against `part` of IVF
/// `partition` in every segment; `slot` routes it (see [`slot_keys`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProbeTask {
    pub slot: u32,
    pub query_id: u32,
    pub partition: u32,
    pub part: Part,
    pub query: Arc<[f32]>,
}

/// Schema of probe tasks of `dim`-dimensional queries.
pub(crate) fn probe_task_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SLOT, DataType::UInt32, false),
        Field::new(col::QUERY_ID, DataType::UInt32, false),
        Field::new(col::PARTITION, DataType::UInt32, false),
        Field::new(col::PART, DataType::UInt32, false),
        Field::new(col::PARTS, DataType::UInt32, false),
        super::query_field(dim),
    ]))
}

/// Column names of [`probe_task_schema`] (the last, `query`, is the queries' own).
mod col {
    pub(super) const SLOT: &str = "slot";
    pub(super) const QUERY_ID: &str = "query_id";
    pub(super) const PARTITION: &str = "partition";
    pub(super) const PART: &str = "part";
    pub(super) const PARTS: &str = "parts";
    pub(super) const QUERY: &str = "query";
}

/// What the search plan hash-partitions probe tasks on, as an expression over
/// `schema` (the probe task schema).
pub(crate) fn probe_task_key(schema: &SchemaRef) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    Ok(vec![datafusion::physical_expr::expressions::col(
        col::SLOT,
        schema,
    )?])
}

/// One batch of `tasks` (of `dim`-dimensional queries) in `schema`.
pub(crate) fn tasks_batch(
    schema: &SchemaRef,
    dim: usize,
    tasks: &[ProbeTask],
) -> Result<RecordBatch> {
    let column =
        |f: fn(&ProbeTask) -> u32| Arc::new(UInt32Array::from_iter_values(tasks.iter().map(f)));
    let values: Vec<f32> = tasks.iter().flat_map(|t| t.query.iter().copied()).collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let queries =
        FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(values)), None)?;
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            column(|t| t.slot),
            column(|t| t.query_id),
            column(|t| t.partition),
            column(|t| t.part.index),
            column(|t| t.part.of),
            Arc::new(queries),
        ],
    )?)
}

/// A batch of probe tasks, read in place: the reader of [`tasks_batch`]'s rows. Unlike
/// the other row contracts it builds no owned row per task, since the scan reads
/// every task on its hot path (the round trip is tested below all the same).
pub(crate) struct TaskRows<'a> {
    query_ids: &'a [u32],
    partitions: &'a [u32],
    parts: &'a [u32],
    part_counts: &'a [u32],
    queries: &'a [f32],
    dim: usize,
}

impl<'a> TaskRows<'a> {
    /// Views `batch`, which must have the probe task schema.
    pub(crate) fn of(batch: &'a RecordBatch) -> Result<Self> {
        let list = vectors(batch, col::QUERY)?;
        let dim = list.value_length() as usize;
        let values = list.values().as_primitive::<Float32Type>().values();
        let start = list.offset() * dim;
        let Some(queries) = values.get(start..start + list.len() * dim) else {
            return internal_err!("probe task queries hold fewer values than their rows need");
        };
        Ok(Self {
            query_ids: primitive::<UInt32Type>(batch, col::QUERY_ID)?.values(),
            partitions: primitive::<UInt32Type>(batch, col::PARTITION)?.values(),
            parts: primitive::<UInt32Type>(batch, col::PART)?.values(),
            part_counts: primitive::<UInt32Type>(batch, col::PARTS)?.values(),
            queries,
            dim,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.query_ids.len()
    }

    pub(crate) fn query_id(&self, i: usize) -> u32 {
        self.query_ids[i]
    }

    pub(crate) fn partition(&self, i: usize) -> u32 {
        self.partitions[i]
    }

    /// Task `i`'s part, or an error if the row names no part of its partition.
    pub(crate) fn part(&self, i: usize) -> Result<Part> {
        match Part::new(self.parts[i], self.part_counts[i]) {
            Some(part) => Ok(part),
            None => internal_err!(
                "probe task names part {} of {}",
                self.parts[i],
                self.part_counts[i]
            ),
        }
    }

    pub(crate) fn query(&self, i: usize) -> &'a [f32] {
        &self.queries[i * self.dim..(i + 1) * self.dim]
    }
}

/// For each of `n` exchange partitions, the smallest `slot` value DataFusion's hash
/// partitioner (the one `RepartitionExec` and Ballista's shuffle writer use) sends
/// there.
pub(crate) fn slot_keys(n: usize) -> Result<Vec<u32>> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "slot",
        DataType::UInt32,
        false,
    )]));
    let key = probe_task_key(&schema)?;
    let mut keys: Vec<Option<u32>> = vec![None; n];
    // Hashes spread evenly, so a few times n candidates almost always suffice.
    let mut candidates = 0..(4 * n as u32).max(8);
    loop {
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(UInt32Array::from_iter_values(candidates.clone()))],
        )?;
        let mut partitioner = BatchPartitioner::new_hash_partitioner(key.clone(), n, Time::new())?;
        partitioner.partition(batch, |p, routed| {
            let values = routed.column(0).as_primitive::<UInt32Type>();
            if let (Some(slot), Some(&v)) = (keys.get_mut(p), values.values().first()) {
                slot.get_or_insert(v);
            }
            Ok(())
        })?;
        if keys.iter().all(Option::is_some) {
            return Ok(keys.into_iter().flatten().collect());
        }
        let end = candidates.end;
        if end >= 1 << 24 {
            return internal_err!("no slot key reaches each of {n} exchange partitions");
        }
        candidates = end..end * 2;
    }
}

/// A probed partition: how many rows it holds over all segments, how many queries
/// probe it, and whether its rows can be scored in parts (not an HNSW graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probed {
    pub partition: u32,
    pub rows: u64,
    pub queries: u32,
    pub splittable: bool,
}

/// Work the scan does per query and partition beyond scoring rows (preparing the
/// query, binding each block), counted in rows.
const PREPARE_ROWS: u64 = 256;
/// The fewest rows a part of a split partition holds.
const MIN_PART_ROWS: u64 = 1024;
/// Units of work per scan partition the split aims for.
const UNITS_PER_SLOT: u64 = 2;

/// Splits the probed partitions into parts and spreads the parts over `slots` scan
/// partitions, most costly first, each to the least loaded (ties: lowest partition,
/// part and slot): every (partition, part) with its slot. A partition is split only
/// when it alone would cost more than half a slot's fair share — when few queries
/// probe few partitions — and never below `MIN_PART_ROWS` rows per part.
pub(crate) fn balance(probed: &[Probed], slots: usize) -> Vec<(u32, Part, usize)> {
    let slots = slots.max(1);
    let cost = |p: &Probed, of: u64| u64::from(p.queries) * (p.rows.div_ceil(of) + PREPARE_ROWS);
    let total: u64 = probed.iter().map(|p| cost(p, 1)).sum();
    let fair = total.div_ceil(slots as u64 * UNITS_PER_SLOT).max(1);
    let mut units: Vec<(u64, u32, Part)> = Vec::new();
    for p in probed {
        let of = if p.splittable && slots > 1 {
            cost(p, 1)
                .div_ceil(fair)
                .min(p.rows / MIN_PART_ROWS)
                .clamp(1, slots as u64 * UNITS_PER_SLOT) as u32
        } else {
            1
        };
        for index in 0..of {
            units.push((cost(p, u64::from(of)), p.partition, Part { index, of }));
        }
    }
    units.sort_by(|a, b| b.0.cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let mut load = vec![0u64; slots];
    units
        .into_iter()
        .map(|(c, partition, part)| {
            let slot = (0..slots).min_by_key(|&s| (load[s], s)).unwrap_or(0);
            load[slot] += c;
            (partition, part, slot)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::{ExecutionPlan, Partitioning};
    use datafusion::prelude::SessionContext;
    use futures::TryStreamExt;
    use proptest::prelude::*;

    fn task(slot: u32, query_id: u32, partition: u32, part: Part, dim: usize) -> ProbeTask {
        ProbeTask {
            slot,
            query_id,
            partition,
            part,
            query: (0..dim)
                .map(|d| (query_id * 100 + d as u32) as f32)
                .collect(),
        }
    }

    /// Tasks survive a batch and DataFusion's hash exchange, and each reaches the
    /// exchange partition its slot names.
    #[tokio::test]
    async fn tasks_reach_the_partition_their_slot_names() {
        let (dim, n) = (4, 3);
        let keys = slot_keys(n).unwrap();
        let schema = probe_task_schema(dim);
        let tasks: Vec<ProbeTask> = (0..30u32)
            .map(|i| {
                let slot = (i as usize * 7) % n;
                let part = Part::new(i % 3, 3).unwrap();
                task(keys[slot], i, i / 4, part, dim)
            })
            .collect();
        let batch = tasks_batch(&schema, dim, &tasks).unwrap();
        let leaf = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&schema),
            None,
        )
        .unwrap();
        let key = probe_task_key(&schema).unwrap();
        let exchange = RepartitionExec::try_new(leaf, Partitioning::Hash(key, n)).unwrap();
        let ctx = SessionContext::new().task_ctx();
        let mut seen = Vec::new();
        for (p, &key) in keys.iter().enumerate() {
            let batches: Vec<RecordBatch> = exchange
                .execute(p, Arc::clone(&ctx))
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            for b in &batches {
                let rows = TaskRows::of(b).unwrap();
                for i in 0..rows.len() {
                    let t = &tasks[rows.query_id(i) as usize];
                    assert_eq!(key, t.slot, "task {} went to partition {p}", t.query_id);
                    assert_eq!(rows.partition(i), t.partition);
                    assert_eq!(rows.part(i).unwrap(), t.part);
                    assert_eq!(rows.query(i), &t.query[..]);
                    seen.push(t.query_id);
                }
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<_>>());
    }

    #[test]
    fn a_row_naming_no_part_is_refused() {
        let schema = probe_task_schema(2);
        let mut t = task(0, 1, 2, Part::new(0, 1).unwrap(), 2);
        t.part = Part { index: 3, of: 3 };
        let batch = tasks_batch(&schema, 2, &[t]).unwrap();
        let err = TaskRows::of(&batch).unwrap().part(0).unwrap_err();
        assert!(err.to_string().contains("part 3 of 3"), "{err}");
    }

    #[test]
    fn slot_keys_are_distinct_for_every_width() {
        for n in 1..40 {
            let keys = slot_keys(n).unwrap();
            let mut distinct = keys.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), n, "{keys:?}");
        }
    }

    proptest! {
        /// Every probed partition's rows are covered once, each part goes to a slot
        /// that exists, graphs are never split, and no slot carries more than its
        /// fair share plus the costliest unit.
        #[test]
        fn balance_covers_every_row_once_and_evens_the_load(
            probed in proptest::collection::vec((1u64..40_000, 1u32..300, proptest::bool::ANY), 1..60),
            slots in 1usize..9,
        ) {
            let probed: Vec<Probed> = probed
                .into_iter()
                .enumerate()
                .map(|(i, (rows, queries, splittable))| Probed {
                    partition: i as u32 * 3,
                    rows,
                    queries,
                    splittable,
                })
                .collect();
            let units = balance(&probed, slots);
            let mut load = vec![0u64; slots];
            let mut costliest = 0;
            for p in &probed {
                let mine: Vec<_> = units.iter().filter(|u| u.0 == p.partition).collect();
                let of = mine.len();
                prop_assert!(of >= 1);
                prop_assert!(p.splittable || of == 1);
                let mut covered = 0;
                for (_, part, slot) in &mine {
                    prop_assert!(*slot < slots);
                    prop_assert_eq!(part.of as usize, of);
                    let rows = part.rows(p.rows as usize);
                    prop_assert_eq!(rows.start, covered);
                    covered = rows.end;
                    let c = u64::from(p.queries) * (rows.len() as u64 + PREPARE_ROWS);
                    load[*slot] += c;
                    costliest = costliest.max(c);
                }
                let mut parts: Vec<_> = mine.iter().map(|u| u.1).collect();
                parts.sort();
                parts.dedup();
                prop_assert_eq!(parts.len(), of);
                prop_assert_eq!(covered, p.rows as usize);
            }
            let total: u64 = load.iter().sum();
            // A part's rows differ by at most one from the count `balance` costed.
            let slack: u64 = units
                .iter()
                .map(|u| u64::from(probed.iter().find(|p| p.partition == u.0).map_or(0, |p| p.queries)))
                .sum();
            for l in &load {
                prop_assert!(*l <= total / slots as u64 + 1 + costliest + slack, "{load:?}");
            }
        }
    }
}
