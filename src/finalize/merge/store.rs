//! The merge of a work unit through the object-store API: ranged reads covering
//! several partitions of every shard at once, prefetched, and a multipart upload of
//! the segment file whose pieces are slices of the blocks read.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::{Buffer, MutableBuffer};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::path::Path;

use super::{described, merge_runs, Run};
use crate::error::{IndexError, Result};
use crate::finalize::WorkUnit;
use crate::format::HnswParams;
use crate::format::{
    arrow_bytes, decode_block, stored_rows_batch, write_gathered, GraphFile, IndexLocation,
    IpcFileSink, SegmentFile, StoredBuffers, Upload,
};
use crate::hnsw::{build_graph, graph_schema, partition_seed};
use crate::model::{decode_rows, Model, ModelInfo};
use futures::StreamExt;

/// Staged bytes read per request batch: one request per shard covers this much.
const READ_CHUNK_BYTES: u64 = 4 << 20;
/// Chunks fetched ahead of the one being merged, so reads overlap the merge and the writes.
const PREFETCH_CHUNKS: usize = 2;
/// Size of one multipart upload part of a segment file.
const WRITE_PART_BYTES: usize = 16 << 20;

/// Merges `unit` into `segments/<segment>/<file_name>` through the object-store API
/// and describes the file written; with `graph_model` (HNSW types), builds the graphs
/// of the merged partitions too. On error the partial upload is aborted; nothing else
/// is touched.
pub(super) async fn merge_unit(
    location: &IndexLocation,
    model: &ModelInfo,
    graph_model: Option<Arc<Model>>,
    unit: &WorkUnit,
) -> Result<SegmentFile> {
    let dir = location.segment_dir(&unit.segment.segment_id);
    let writer = |name: &str| {
        Upload::new(
            Arc::clone(location.store()),
            dir.clone().join(name),
            WRITE_PART_BYTES,
        )
    };
    let mut out = writer(&unit.file_name);
    let with_params = graph_model.and_then(|m| m.info().hnsw_params().map(|params| (m, params)));
    let mut graphs = match with_params {
        Some((model, params)) => {
            let name = graph_file_name(&unit.file_name);
            Some(GraphSink {
                model,
                params,
                out: writer(&name),
                sink: Some(IpcFileSink::try_new(&graph_schema())?),
                name,
            })
        }
        None => None,
    };
    match write_file(location, model, unit, &mut out, graphs.as_mut()).await {
        Ok(file) => Ok(file),
        Err(e) => {
            out.abort().await;
            if let Some(g) = graphs.as_mut() {
                g.out.abort().await;
            }
            Err(e)
        }
    }
}

/// `part-00000-00064.arrow` → `part-00000-00064.hnsw.arrow`.
fn graph_file_name(data_file: &str) -> String {
    let stem = data_file.strip_suffix(".arrow").unwrap_or(data_file);
    format!("{stem}.hnsw.arrow")
}

/// Where a work unit's graphs go.
struct GraphSink {
    /// Decodes the merged rows the graphs are built on.
    model: Arc<Model>,
    params: HnswParams,
    name: String,
    out: Upload,
    /// Taken by [`GraphSink::finish`].
    sink: Option<IpcFileSink>,
}

impl GraphSink {
    async fn write(&mut self, graph: &RecordBatch) -> Result<()> {
        let sink = self.sink.as_mut().ok_or_else(|| {
            IndexError::Internal(format!("graph file {} already finished", self.name))
        })?;
        for piece in sink.write(graph)? {
            self.out.put(piece).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<GraphFile> {
        let sink = self.sink.take().ok_or_else(|| {
            IndexError::Internal(format!("graph file {} already finished", self.name))
        })?;
        let (tail, blocks, size, _) = sink.finish()?;
        self.out.put(tail).await?;
        self.out.finish().await?;
        Ok(GraphFile {
            name: self.name.clone(),
            size,
            partitions: blocks,
        })
    }
}

/// Builds the graph of one merged partition on a blocking thread, so the merge
/// partition's reads keep flowing while it runs.
async fn partition_graph(
    model: &Arc<Model>,
    params: HnswParams,
    partition: usize,
    merged: RecordBatch,
) -> Result<RecordBatch> {
    let model = Arc::clone(model);
    tokio::task::spawn_blocking(move || {
        let stored = StoredBuffers::of(&merged)?;
        let rows = stored.all();
        let vectors = decode_rows(&model, partition, rows.bytes)?;
        let seed = partition_seed(model.info().params().seed, partition);
        build_graph(
            &vectors,
            model.info().dim(),
            rows.ids,
            model.info().metric(),
            params,
            seed,
        )
        .to_batch()
    })
    .await
    .map_err(|e| IndexError::task_failed(&format!("the graph build of partition {partition}"), e))?
}

async fn write_file(
    location: &IndexLocation,
    model: &ModelInfo,
    unit: &WorkUnit,
    out: &mut Upload,
    mut graphs: Option<&mut GraphSink>,
) -> Result<SegmentFile> {
    let schema = &model.storage_schema();
    let shared = Arc::new(unit.clone());
    let mut chunks = futures::stream::iter(read_chunks(unit))
        .map(|range| {
            tokio::spawn(fetch_chunk(
                location.clone(),
                Arc::clone(schema),
                Arc::clone(&shared),
                range,
            ))
        })
        .buffered(PREFETCH_CHUNKS);
    let mut sink = IpcFileSink::try_new(schema)?;
    let mut partition = unit.partition_start as usize;
    while let Some(joined) = chunks.next().await {
        let chunk = joined.map_err(|e| IndexError::task_failed("a staged-block read", e))??;
        for batches in chunk {
            let columns = batches
                .iter()
                .map(StoredBuffers::of)
                .collect::<Result<Vec<_>>>()?;
            let ids: Vec<&[u64]> = columns.iter().map(|c| &c.ids[..]).collect();
            let (runs, rows) = merge_runs(unit, partition, &ids)?;
            for piece in gather_partition(&mut sink, &columns, &runs, rows)? {
                out.put(piece).await?;
            }
            if let Some(g) = graphs.as_deref_mut() {
                let merged = concat_runs(schema, &columns, &runs, rows)?;
                let graph = partition_graph(&g.model, g.params, partition, merged).await?;
                g.write(&graph).await?;
            }
            partition += 1;
        }
    }
    let (tail, blocks, size, _) = sink.finish()?;
    out.put(tail).await?;
    out.finish().await?;
    let graph = match graphs {
        Some(g) => Some(g.finish().await?),
        None => None,
    };
    Ok(described(unit, size, blocks, graph))
}

/// Splits the unit's partitions (relative indices) into runs of about
/// `READ_CHUNK_BYTES` of staged blocks, read with one request per shard.
fn read_chunks(unit: &WorkUnit) -> Vec<std::ops::Range<usize>> {
    let n = (unit.partition_end - unit.partition_start) as usize;
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for i in 0..n {
        bytes += unit.shards.iter().map(|s| s.blocks[i].length).sum::<u64>();
        if bytes >= READ_CHUNK_BYTES || i + 1 == n {
            chunks.push(start..i + 1);
            start = i + 1;
            bytes = 0;
        }
    }
    chunks
}

/// Reads the blocks of partitions `range` (relative to the unit) from every shard,
/// one ranged read per shard (a shard's blocks for consecutive partitions are
/// contiguous), all shards concurrently; returns, per partition, the batches of the
/// shards holding rows there, in shard order.
async fn fetch_chunk(
    location: IndexLocation,
    schema: SchemaRef,
    unit: Arc<WorkUnit>,
    range: std::ops::Range<usize>,
) -> Result<Vec<Vec<RecordBatch>>> {
    let mut reads = Vec::with_capacity(unit.shards.len());
    for (shard, s) in unit.shards.iter().enumerate() {
        let wanted: Vec<usize> = range.clone().filter(|&i| s.blocks[i].rows > 0).collect();
        let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else {
            continue;
        };
        let span = s.blocks[first].offset..s.blocks[last].range().end;
        let base = unit.partition_start as usize;
        let what = format!("shard {}: data.arrow", s.shard_id);
        let path = Path::from(s.dir.as_str()).join("data.arrow");
        let location = location.clone();
        let schema = Arc::clone(&schema);
        let unit = Arc::clone(&unit);
        reads.push(async move {
            let range_what = format!("{what}, partitions {}..{}", base + first, base + last + 1);
            let bytes = location
                .get_described_range(&path, span.clone(), &range_what)
                .await?;
            wanted
                .iter()
                .map(|&i| {
                    let block = &unit.shards[shard].blocks[i];
                    let what = format!("{what}, partition {}", base + i);
                    let at = block.offset.checked_sub(span.start);
                    let end = at.and_then(|at| at.checked_add(block.length));
                    let piece = match (at, end) {
                        (Some(at), Some(end)) if end <= bytes.len() as u64 => {
                            bytes.slice(at as usize..end as usize)
                        }
                        // Blocks out of file order, or a short read: decode_block names it.
                        _ => Bytes::new(),
                    };
                    decode_block(&what, &schema, block, piece).map(|batch| (i, batch))
                })
                .collect::<Result<Vec<_>>>()
        });
    }
    let per_shard = futures::future::try_join_all(reads).await?;
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new(); range.len()];
    for decoded in per_shard {
        for (i, batch) in decoded {
            out[i - range.start].push(batch);
        }
    }
    Ok(out)
}

/// Appends the merged partition to the data file: its bytes go out as slices of the
/// blocks read, without a copy into a merged buffer.
fn gather_partition(
    sink: &mut IpcFileSink,
    columns: &[StoredBuffers],
    runs: &[Run],
    rows: usize,
) -> Result<Vec<Bytes>> {
    let slice = |buffer: &Buffer, run: &Run, width: usize| {
        arrow_bytes(buffer.slice_with_length(run.start * width, (run.end - run.start) * width))
    };
    let ids = runs
        .iter()
        .map(|run| slice(columns[run.block].ids.inner(), run, 8))
        .collect();
    let values = runs
        .iter()
        .map(|run| {
            let block = &columns[run.block];
            slice(&block.values, run, block.width)
        })
        .collect();
    write_gathered(sink, rows, ids, values)
}

/// The merged partition as one batch (a copy), for building its graph.
fn concat_runs(
    schema: &SchemaRef,
    columns: &[StoredBuffers],
    runs: &[Run],
    rows: usize,
) -> Result<RecordBatch> {
    let width = columns.first().map_or(0, |c| c.width);
    let mut out_ids = MutableBuffer::with_capacity(rows * 8);
    let mut out_values = MutableBuffer::with_capacity(rows * width);
    for run in runs {
        let block = &columns[run.block];
        out_ids.extend_from_slice(&block.ids[run.start..run.end]);
        out_values.extend_from_slice(&block.values[run.start * width..run.end * width]);
    }
    stored_rows_batch(schema, out_ids.into(), out_values.into())
}
