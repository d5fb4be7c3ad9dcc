//! `VectorIndexScanExec`: scores probed blocks and keeps each query's local top k.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder};
use datafusion::physical_plan::{DisplayFormatType, Distribution};
use futures::{StreamExt, TryStreamExt};

use super::block::{Block, Piece};
use super::cache::{BlockKey, SearchCache};
use super::probe_tasks::TaskRows;
use super::scorer::Preparer;
use super::topk::{tops_to_batch, Scored, TopK};
use super::topk_exec::search_output_schema;
use super::{HeldBlock, SearchOptions, SearchTarget};
use crate::error::IndexError;
use crate::exec::{Partitions, Work, WorkExec, WorkStream};
use crate::format::{decode_block, BlockInfo, SegmentFile, SegmentManifest, StoredBuffers};
use crate::hnsw::{graph_schema, HnswGraph, Visited};
use crate::progress::{ProgressStep, Tracker};

/// How probe tasks reach the scan's partitions; chosen when the search is planned
/// (the optimizer may rewire the scan's input, and the requirement must survive it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum TaskRouting {
    /// All in one partition, with no exchange: a search that reads little.
    Single,
    /// Hash-partitioned on the slots the probe balanced them onto.
    BySlot,
}

/// Read requests in flight at once for one scan partition.
const READ_CONCURRENCY: usize = 8;

/// The most blocks of one file one read request asks for: few enough that a search
/// of one segment still keeps several requests in flight.
const BLOCKS_PER_READ: usize = 32;

/// Reads every segment's block of each probed partition — a byte range checked
/// against its CRC-32; the blocks of one file are asked for in one request — and
/// joins them into one block (the HNSW types keep one per segment: see
/// [`HeldBlock`]) — or takes it decoded from the session's
/// [`SearchCache`] (`block_cache_hits` / `block_cache_misses` in `EXPLAIN ANALYZE`)
/// — scores it for every query that probes it, and keeps each query's k nearest
/// rows. For the HNSW types the partition's graph block is read alongside (graphs
/// are loaded lazily, only for probed partitions) and searched with breadth `ef`
/// instead of scoring every row.
///
/// Partitioning: one output partition per input partition of probe tasks, which
/// arrive as its [`TaskRouting`] says; emits, when its input ends, each query's local
/// top k (`query_id`, `row_id`, `distance`).
pub(crate) type VectorIndexScanExec = WorkExec<ScanBlocks>;

/// The work of [`VectorIndexScanExec`].
#[derive(Debug)]
pub(crate) struct ScanBlocks {
    pub(crate) target: Arc<SearchTarget>,
    pub(crate) options: SearchOptions,
    pub(crate) routing: TaskRouting,
}

impl Work for ScanBlocks {
    const NAME: &'static str = "VectorIndexScanExec";
    const PARTITIONS: Partitions = Partitions::PerInput;
    /// `block_cache_hits` / `block_cache_misses`, `bytes_read`,
    /// `pq_rows_skipped_by_bound`.
    const METRICS: bool = true;

    fn schema(&self) -> SchemaRef {
        search_output_schema()
    }

    /// Each probed block goes to one partition with all the queries that probe it,
    /// and a distributed scheduler cuts a stage at the hash exchange this asks for.
    fn input_distribution(&self, input: &SchemaRef) -> Result<Distribution> {
        Ok(match self.routing {
            TaskRouting::Single => Distribution::SinglePartition,
            TaskRouting::BySlot => {
                Distribution::KeyPartitioned(super::probe_tasks::probe_task_key(input)?)
            }
        })
    }

    fn details(&self, _: DisplayFormatType, _: usize) -> Vec<(&'static str, String)> {
        let index_type = self.target.model.info().index_type();
        let mut details = vec![
            ("type", index_type.to_string()),
            ("k", self.options.k.to_string()),
        ];
        if index_type.is_hnsw() {
            details.push(("ef", self.options.effective_ef().to_string()));
        }
        details.push(("read_concurrency", READ_CONCURRENCY.to_string()));
        details
    }

    fn run(
        self: Arc<Self>,
        partition: usize,
        mut input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<WorkStream> {
        let tracker = Tracker::of_task(&context);
        let blocks = Blocks {
            target: Arc::clone(&self.target),
            cache: SearchCache::of(context.session_config()),
            hits: MetricBuilder::new(metrics).counter("block_cache_hits", partition),
            misses: MetricBuilder::new(metrics).counter("block_cache_misses", partition),
            bytes_read: MetricBuilder::new(metrics).counter("bytes_read", partition),
            rows_skipped: MetricBuilder::new(metrics)
                .counter("pq_rows_skipped_by_bound", partition),
        };
        let options = self.options;
        Ok(futures::stream::once(async move {
            let mut tops: BTreeMap<u32, TopK> = BTreeMap::new();
            let mut preparer = Preparer::new(Arc::clone(&blocks.target));
            let mut visited = Visited::default();
            let mut distances = Vec::new();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                scan_tasks(
                    &blocks,
                    &batch,
                    options,
                    &mut preparer,
                    &mut tops,
                    &mut visited,
                    &mut distances,
                )
                .await?;
                tracker.add(ProgressStep::Probes, batch.num_rows() as u64);
            }
            Ok(tops_to_batch(tops)?)
        })
        .boxed())
    }
}

/// Where one scan partition gets its blocks: the session's cache, else the store.
struct Blocks {
    target: Arc<SearchTarget>,
    cache: Option<Arc<SearchCache>>,
    hits: Count,
    misses: Count,
    bytes_read: Count,
    /// PQ rows left unscored because their distance bound could not enter the top k.
    rows_skipped: Count,
}

impl Blocks {
    /// The blocks of each partition in `probed` (see [`HeldBlock`]), in segment
    /// order: one pass through the cache, then the segments' blocks the misses join
    /// read concurrently.
    async fn of_partitions(
        &self,
        probed: &[u32],
    ) -> crate::error::Result<HashMap<u32, Vec<Arc<Block>>>> {
        let wanted: Vec<&HeldBlock> = probed
            .iter()
            .flat_map(|&p| {
                self.target
                    .blocks_by_partition
                    .get(p as usize)
                    .into_iter()
                    .flatten()
            })
            .collect();
        let keys: Vec<&BlockKey> = wanted.iter().map(|held| &held.key).collect();
        let mut all = match &self.cache {
            Some(cache) => cache.blocks(&keys),
            None => vec![None; wanted.len()],
        };
        let misses: Vec<usize> = (0..wanted.len()).filter(|&i| all[i].is_none()).collect();
        self.hits.add(wanted.len() - misses.len());
        self.misses.add(misses.len());
        let target = &self.target;
        // Every segment's block the misses join, numbered in order, as requests: the
        // blocks of one file, at most `BLOCKS_PER_READ` of them, so that a search
        // reads each file it probes with one request rather than one per block.
        let mut by_file: BTreeMap<(usize, usize), Vec<BlockRead>> = BTreeMap::new();
        let mut order = 0;
        for &i in &misses {
            let p = wanted[i].key.partition;
            for &s in &wanted[i].segments {
                let seg = &target.segments[s];
                let (f, block) = seg.block(p).ok_or_else(|| {
                    IndexError::corrupt(
                        format!("segment {}, partition {p}", seg.segment_id),
                        "no such partition",
                    )
                })?;
                by_file.entry((s, f)).or_default().push(BlockRead {
                    order,
                    partition: p,
                    block: *block,
                });
                order += 1;
            }
        }
        // Owned, for the futures below to be `Send` for any lifetime.
        let requests: Vec<(usize, usize, Vec<BlockRead>)> = by_file
            .into_iter()
            .flat_map(|((s, f), blocks)| {
                blocks
                    .chunks(BLOCKS_PER_READ)
                    .map(|c| (s, f, c.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let read: Vec<Vec<(usize, Piece)>> = futures::stream::iter(requests)
            .map(|(s, f, blocks)| async move {
                let seg = &target.segments[s];
                let pieces = read_pieces(target, seg, &seg.files[f], &blocks).await?;
                self.bytes_read
                    .add(pieces.iter().map(|piece| piece.bytes).sum());
                let numbers = blocks.iter().map(|b| b.order);
                Ok::<_, IndexError>(numbers.zip(pieces).collect())
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut read: Vec<(usize, Piece)> = read.into_iter().flatten().collect();
        read.sort_unstable_by_key(|(order, _)| *order);
        let mut read = read.into_iter().map(|(_, piece)| piece);
        for i in misses {
            let pieces: Vec<Piece> = read.by_ref().take(wanted[i].segments.len()).collect();
            let block = Arc::new(Block::of_pieces(target, wanted[i].key.partition, pieces)?);
            if let Some(cache) = &self.cache {
                cache.put_block(wanted[i].key.clone(), Arc::clone(&block));
            }
            all[i] = Some(block);
        }
        let mut of_partition: HashMap<u32, Vec<Arc<Block>>> = HashMap::new();
        for (held, block) in wanted.iter().zip(all) {
            let block = block
                .ok_or_else(|| IndexError::Internal("a block neither cached nor read".into()))?;
            of_partition
                .entry(held.key.partition)
                .or_default()
                .push(block);
        }
        Ok(of_partition)
    }
}

/// A segment's block a scan reads: its partition and place in the manifest, numbered
/// in the order the scan joins blocks.
#[derive(Debug, Clone, Copy)]
struct BlockRead {
    order: usize,
    partition: u32,
    block: BlockInfo,
}

/// Reads and decodes segment `seg`'s `blocks`, all in its data file `file`, with their graphs for the
/// HNSW types: one request for the rows, one for the graphs.
async fn read_pieces(
    target: &SearchTarget,
    seg: &SegmentManifest,
    file: &SegmentFile,
    blocks: &[BlockRead],
) -> crate::error::Result<Vec<Piece>> {
    let what = |p: u32| format!("segment {}, partition {p}", seg.segment_id);
    let partitions: Vec<u32> = blocks.iter().map(|b| b.partition).collect();
    let location = &target.location;
    let dir = location.segment_dir(&seg.segment_id);
    let ranges: Vec<_> = blocks.iter().map(|b| b.block.range()).collect();
    let data_path = dir.clone().join(file.name.as_str());
    let data = location.get_described_ranges(&data_path, &ranges, |i| what(partitions[i]));
    let graphs = async {
        let mut graphs = vec![None; partitions.len()];
        let graph = match &file.graph {
            Some(graph) if target.model.info().index_type().is_hnsw() => graph,
            _ => return Ok(graphs),
        };
        let held: Vec<(usize, BlockInfo)> = partitions
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| {
                let at = p.checked_sub(file.partition_start)?;
                graph.partitions.get(at as usize).map(|b| (i, *b))
            })
            .collect();
        let what = |k: usize| format!("{}, graph", what(partitions[held[k].0]));
        let ranges: Vec<_> = held.iter().map(|(_, b)| b.range()).collect();
        let bytes = location
            .get_described_ranges(&dir.clone().join(graph.name.as_str()), &ranges, what)
            .await?;
        for (k, ((i, block), bytes)) in held.iter().zip(bytes).enumerate() {
            let what = what(k);
            let len = bytes.len();
            graphs[*i] = Some((
                len,
                decode_block(&what, &graph_schema(), block, bytes)?,
                what,
            ));
        }
        Ok::<_, IndexError>(graphs)
    };
    let (data, graphs) = futures::try_join!(data, graphs)?;
    let schema = target.model.storage_schema();
    blocks
        .iter()
        .zip(data.into_iter().zip(graphs))
        .map(|(read, (data, graph))| {
            let what = what(read.partition);
            let mut bytes = data.len();
            let stored = StoredBuffers::of(&decode_block(&what, &schema, &read.block, data)?)?;
            let graph = match graph {
                Some((len, batch, what)) => {
                    bytes += len;
                    Some(HnswGraph::from_batch(&what, &batch, stored.num_rows())?)
                }
                None => None,
            };
            Ok(Piece {
                stored,
                graph,
                bytes,
            })
        })
        .collect()
}

async fn scan_tasks(
    blocks: &Blocks,
    batch: &RecordBatch,
    options: SearchOptions,
    preparer: &mut Preparer,
    tops: &mut BTreeMap<u32, TopK>,
    visited: &mut Visited,
    distances: &mut Vec<f32>,
) -> Result<()> {
    let tasks = TaskRows::of(batch)?;
    let mut probed: Vec<u32> = (0..tasks.len()).map(|i| tasks.partition(i)).collect();
    probed.sort_unstable();
    probed.dedup();
    let of_partition = blocks.of_partitions(&probed).await?;
    // Runs of tasks of one partition and part (the probe step orders them so): their
    // queries are prepared once, and each block's rows are bound once for all of them.
    let n = tasks.len();
    let mut first = 0;
    while first < n {
        let (p, part) = (tasks.partition(first), tasks.part(first)?);
        let mut end = first + 1;
        while end < n && tasks.partition(end) == p && tasks.part(end)? == part {
            end += 1;
        }
        let scorers = (first..end)
            .map(|i| {
                let scorer = preparer.scorer(tasks.query_id(i), tasks.query(i), p as usize)?;
                Ok((tasks.query_id(i), scorer))
            })
            .collect::<crate::error::Result<Vec<_>>>()?;
        for block in of_partition.get(&p).into_iter().flatten() {
            let range = part.rows(block.stored.num_rows());
            if block.graph.is_some() && !part.is_whole() {
                return Err(IndexError::Internal(format!(
                    "a probe task asks for part of HNSW partition {p}, whose graph is searched whole"
                ))
                .into());
            }
            let rows = block.stored.rows(range.clone());
            let columns = block.columns(range);
            for (query_id, scorer) in &scorers {
                let top = tops
                    .entry(*query_id)
                    .or_insert_with(|| TopK::new(options.k));
                let bound = scorer.bind(&rows, columns)?;
                match &block.graph {
                    Some(graph) => {
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
                    None => blocks
                        .rows_skipped
                        .add(bound.score_into(rows.ids, distances, top)),
                }
            }
        }
        first = end;
    }
    Ok(())
}
