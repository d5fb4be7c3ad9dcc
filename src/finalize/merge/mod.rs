//! Merging one work unit: for each IVF partition of the unit's range, the rows of
//! every shard of the segment are merged in row-id order and appended to one
//! segment data file. Codes are copied as bytes, never decoded — except that for
//! the HNSW types each merged partition is also decoded to build its graph, which
//! goes to a graph file next to the data file.
//!
//! Two ways to move the bytes, writing identical files:
//! - [`local`]: the index is on a local filesystem. Positional reads through small
//!   reused windows, plain sequential writes, on a blocking thread; memory does not
//!   grow with the size of a partition.
//! - [`store`]: any object store. Ranged reads of several partitions at once,
//!   multipart uploads; also the path of the HNSW types, which need each merged
//!   partition whole to build its graph.

mod local;
mod store;

use std::sync::Arc;

use roaring::RoaringBitmap;

use super::WorkUnit;
use crate::error::{IndexError, Result};
use crate::format::{BlockInfo, GraphFile, IndexLocation, SegmentFile};
use crate::model::{Model, ModelInfo};
use crate::worker::fragment_of;

/// What a merge partition keeps from one work unit to the next.
#[derive(Default)]
pub(super) struct MergeState {
    scratch: local::Scratch,
    /// HNSW types: the whole model, to decode merged rows for their graphs; read
    /// (and its fingerprint checked) on the partition's first unit.
    graph_model: Option<Arc<Model>>,
}

impl MergeState {
    async fn graph_model(
        &mut self,
        location: &IndexLocation,
        model: &ModelInfo,
    ) -> Result<Arc<Model>> {
        if let Some(m) = &self.graph_model {
            return Ok(Arc::clone(m));
        }
        let m = Model::read_current(location).await?;
        if m.info().fingerprint() != model.fingerprint() {
            return Err(IndexError::corrupt(
                "index.json",
                format!(
                    "names model {} while this finalize was planned with model {}",
                    m.info().fingerprint(),
                    model.fingerprint()
                ),
            ));
        }
        let m = Arc::new(m);
        self.graph_model = Some(Arc::clone(&m));
        Ok(m)
    }
}

/// Merges `unit` into `segments/<segment>/<file_name>` and describes the file written.
/// On error the partial file is removed; nothing else is touched.
pub(super) async fn merge_unit(
    location: &IndexLocation,
    model: &Arc<ModelInfo>,
    unit: &WorkUnit,
    state: &mut MergeState,
) -> Result<SegmentFile> {
    if model.hnsw_params().is_some() {
        let graph_model = state.graph_model(location, model).await?;
        return store::merge_unit(location, model, Some(graph_model), unit).await;
    }
    let Some(files) = local::LocalFiles::of(location, unit) else {
        return store::merge_unit(location, model, None, unit).await;
    };
    let (model, unit) = (Arc::clone(model), unit.clone());
    let mut scratch = std::mem::take(&mut state.scratch);
    let (file, scratch) = tokio::task::spawn_blocking(move || {
        let file = files.merge(&model, &unit, &mut scratch);
        (file, scratch)
    })
    .await
    .map_err(|e| IndexError::task_failed("the merge of a work unit", e))?;
    state.scratch = scratch;
    file
}

/// The manifest entry of the data file written for `unit`.
fn described(
    unit: &WorkUnit,
    size: u64,
    blocks: Vec<BlockInfo>,
    graph: Option<GraphFile>,
) -> SegmentFile {
    SegmentFile {
        name: unit.file_name.clone(),
        size,
        partition_start: unit.partition_start,
        partition_end: unit.partition_end,
        partitions: blocks,
        graph,
    }
}

/// Shards (indices into `unit.shards`) holding rows in `partition`, in shard order.
fn non_empty_blocks(unit: &WorkUnit, partition: usize) -> Vec<usize> {
    let i = partition - unit.partition_start as usize;
    (0..unit.shards.len())
        .filter(|&s| unit.shards[s].blocks[i].rows > 0)
        .collect()
}

/// A run of consecutive rows of one shard's block that the merged partition takes
/// as a whole: rows `start..end` of the `block`-th non-empty block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    block: usize,
    start: usize,
    end: usize,
}

/// k-way merge of sorted blocks by row id, taking the longest possible run at a
/// time; returns the runs in output order and the partition's row count. `ids_of`
/// holds the row ids of the non-empty blocks of `partition`, in shard order (as
/// [`non_empty_blocks`] lists them). Rows are not copied: when shards own disjoint
/// fragment ranges each block is one run.
fn merge_runs(unit: &WorkUnit, partition: usize, ids_of: &[&[u64]]) -> Result<(Vec<Run>, usize)> {
    let mut total = 0usize;
    for (&s, ids) in non_empty_blocks(unit, partition).iter().zip(ids_of) {
        let shard = &unit.shards[s];
        check_rows(&shard.shard_id, partition, ids, &shard.fragments)?;
        total += ids.len();
    }
    let mut runs = Vec::new();
    let mut heads = vec![0usize; ids_of.len()];
    loop {
        let mut best: Option<(usize, u64)> = None;
        let mut second = u64::MAX;
        for (r, ids) in ids_of.iter().enumerate() {
            let Some(&id) = ids.get(heads[r]) else {
                continue;
            };
            match best {
                Some((_, b)) if id >= b => second = second.min(id),
                Some((_, b)) => {
                    second = b;
                    best = Some((r, id));
                }
                None => best = Some((r, id)),
            }
        }
        let Some((r, first)) = best else { break };
        if first == second {
            return Err(IndexError::Finalize(format!(
                "row id {first} appears in more than one shard of segment {} (partition {partition})",
                unit.segment.segment_id
            )));
        }
        let ids = ids_of[r];
        let start = heads[r];
        let end = start + ids[start..].partition_point(|&id| id < second);
        runs.push(Run {
            block: r,
            start,
            end,
        });
        heads[r] = end;
    }
    Ok((runs, total))
}

/// Row ids of a shard block must ascend strictly and lie in the shard's fragments.
fn check_rows(
    shard_id: &str,
    partition: usize,
    ids: &[u64],
    fragments: &RoaringBitmap,
) -> Result<()> {
    // Branch-free over the whole block (the common case is that it holds), then
    // located only when it does not.
    let ascending = ids.windows(2).fold(true, |ok, w| ok & (w[0] < w[1]));
    if !ascending {
        let at = ids.windows(2).position(|w| w[0] >= w[1]).unwrap_or(0) + 1;
        return Err(IndexError::Finalize(format!(
            "shard {shard_id}, partition {partition}: row ids are not strictly ascending at row id {}",
            ids[at]
        )));
    }
    // Ascending ids group by fragment: one lookup per fragment, found by bisection.
    let mut rest = ids;
    while let Some(&id) = rest.first() {
        let f = fragment_of(id);
        if !fragments.contains(f) {
            return Err(IndexError::Finalize(format!(
                "shard {shard_id}, partition {partition}: row id {id} lies in fragment {f}, \
                 which is not among the shard's fragments"
            )));
        }
        rest = &rest[rest.partition_point(|&id| fragment_of(id) == f)..];
    }
    Ok(())
}
