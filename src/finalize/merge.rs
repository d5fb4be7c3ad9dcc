//! Merging one work unit: for each IVF partition of the unit's range, the rows of
//! every shard of the segment are merged in row-id order and appended to one
//! segment data file. Codes are copied as bytes, never decoded — except that for
//! the HNSW types each merged partition is also decoded to build its graph, which
//! goes to a graph file next to the data file.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::MutableBuffer;
use arrow::datatypes::SchemaRef;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use roaring::RoaringBitmap;
use tokio::io::AsyncWriteExt;

use super::WorkUnit;
use crate::error::{IndexError, Result};
use crate::format::{decode_block, GraphFile, IndexLocation, IpcFileSink, SegmentFile};
use crate::hnsw::{build_graph, graph_schema, partition_seed};
use crate::model::{batch_rows, decode_rows, encode_rows, HnswParams, Model};
use crate::worker::fragment_of;
use futures::StreamExt;

/// Staged bytes read per request batch: one request per shard covers this much.
const READ_CHUNK_BYTES: u64 = 4 << 20;
/// Chunks fetched ahead of the one being merged, so reads overlap the merge and the writes.
const PREFETCH_CHUNKS: usize = 2;
/// Size of one multipart upload part of a segment file.
const WRITE_PART_BYTES: usize = 16 << 20;

/// Fragment sets of the shards a merge partition has seen, read once per shard.
#[derive(Default)]
pub struct FragmentCache {
    sets: HashMap<String, Arc<RoaringBitmap>>,
}

impl FragmentCache {
    async fn get(
        &mut self,
        location: &IndexLocation,
        shard_id: &str,
        dir: &str,
    ) -> Result<Arc<RoaringBitmap>> {
        if let Some(s) = self.sets.get(shard_id) {
            return Ok(Arc::clone(s));
        }
        let bytes = location
            .get(&Path::from(dir).join("fragments.roaring"))
            .await?;
        let set = Arc::new(RoaringBitmap::deserialize_from(&bytes[..]).map_err(|e| {
            IndexError::corrupt(
                format!("shard {shard_id}: fragments.roaring"),
                e.to_string(),
            )
        })?);
        self.sets.insert(shard_id.to_string(), Arc::clone(&set));
        Ok(set)
    }
}

/// Merges `unit` into `segments/<segment>/<file_name>` and describes the file written.
/// On error the partial upload is aborted; nothing else is touched.
pub async fn merge_unit(
    location: &IndexLocation,
    model: &Arc<Model>,
    unit: &WorkUnit,
    cache: &mut FragmentCache,
) -> Result<SegmentFile> {
    let mut fragments = Vec::with_capacity(unit.shards.len());
    for s in &unit.shards {
        fragments.push(cache.get(location, &s.shard_id, &s.dir).await?);
    }
    let dir = location.segment_dir(&unit.segment.segment_id);
    let writer = |name: &str| {
        BufWriter::with_capacity(
            Arc::clone(location.store()),
            dir.clone().join(name),
            WRITE_PART_BYTES,
        )
    };
    let mut out = writer(&unit.file_name);
    let mut graphs = match model.hnsw_params() {
        Some(params) => {
            let name = graph_file_name(&unit.file_name);
            Some(GraphSink {
                params,
                out: writer(&name),
                sink: Some(IpcFileSink::try_new(&graph_schema())?),
                name,
            })
        }
        None => None,
    };
    match write_file(location, model, unit, &fragments, &mut out, graphs.as_mut()).await {
        Ok(file) => Ok(file),
        Err(e) => {
            out.abort().await.ok();
            if let Some(g) = graphs.as_mut() {
                g.out.abort().await.ok();
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
    params: HnswParams,
    name: String,
    out: BufWriter,
    /// Taken by [`GraphSink::finish`].
    sink: Option<IpcFileSink>,
}

impl GraphSink {
    async fn write(&mut self, graph: &RecordBatch) -> Result<()> {
        let sink = self.sink.as_mut().ok_or_else(|| {
            IndexError::InvalidInput(format!("graph file {} already finished", self.name))
        })?;
        self.out.put(sink.write(graph)?).await?;
        Ok(())
    }

    async fn finish(&mut self) -> Result<GraphFile> {
        let sink = self.sink.take().ok_or_else(|| {
            IndexError::InvalidInput(format!("graph file {} already finished", self.name))
        })?;
        let (tail, blocks, size, _) = sink.finish()?;
        self.out.put(tail).await?;
        self.out.shutdown().await?;
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
        let (ids, codes, _) = batch_rows(&merged)?;
        let vectors = decode_rows(&model, partition, codes)?;
        let seed = partition_seed(model.params.seed, partition);
        build_graph(&vectors, model.dim(), ids, model.metric(), params, seed).to_batch()
    })
    .await
    .map_err(|e| {
        IndexError::InvalidInput(format!("graph build of partition {partition} failed: {e}"))
    })?
}

async fn write_file(
    location: &IndexLocation,
    model: &Arc<Model>,
    unit: &WorkUnit,
    fragments: &[Arc<RoaringBitmap>],
    out: &mut BufWriter,
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
        let chunk =
            joined.map_err(|e| IndexError::InvalidInput(format!("merge task failed: {e}")))??;
        for batches in chunk {
            let merged = merge_partition(schema, unit, partition, &batches, fragments)?;
            out.put(sink.write(&merged)?).await?;
            if let Some(g) = graphs.as_deref_mut() {
                let graph = partition_graph(model, g.params, partition, merged).await?;
                g.write(&graph).await?;
            }
            partition += 1;
        }
    }
    let (tail, blocks, size, _) = sink.finish()?;
    out.put(tail).await?;
    out.shutdown().await?;
    let graph = match graphs {
        Some(g) => Some(g.finish().await?),
        None => None,
    };
    Ok(SegmentFile {
        name: unit.file_name.clone(),
        size,
        partition_start: unit.partition_start,
        partition_end: unit.partition_end,
        partitions: blocks,
        graph,
    })
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
/// one request per shard, all shards concurrently; returns, per partition, the
/// batches of the shards holding rows there, in shard order.
async fn fetch_chunk(
    location: IndexLocation,
    schema: SchemaRef,
    unit: Arc<WorkUnit>,
    range: std::ops::Range<usize>,
) -> Result<Vec<Vec<RecordBatch>>> {
    let mut reads = Vec::with_capacity(unit.shards.len());
    for s in &unit.shards {
        let wanted: Vec<usize> = range.clone().filter(|&i| s.blocks[i].rows > 0).collect();
        if wanted.is_empty() {
            continue;
        }
        let ranges: Vec<_> = wanted.iter().map(|&i| s.blocks[i].range()).collect();
        let blocks: Vec<_> = wanted.iter().map(|&i| s.blocks[i]).collect();
        let base = unit.partition_start as usize;
        let first = base + wanted[0];
        let what = format!("shard {}: data.arrow", s.shard_id);
        let path = Path::from(s.dir.as_str()).join("data.arrow");
        let store = Arc::clone(location.store());
        let schema = Arc::clone(&schema);
        reads.push(async move {
            let bytes = match store.get_ranges(&path, &ranges).await {
                Ok(b) => b,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(IndexError::corrupt(what, "is missing"))
                }
                Err(e) => return Err(IndexError::corrupt(what, format!("partition {first}: {e}"))),
            };
            let decoded = blocks
                .iter()
                .zip(bytes)
                .zip(&wanted)
                .map(|((block, b), &i)| {
                    let what = format!("{what}, partition {}", base + i);
                    decode_block(&what, &schema, block, b).map(|batch| (i, batch))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, IndexError>(decoded)
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

/// k-way merge of sorted runs by row id, copying the longest possible run at a time.
fn merge_partition(
    schema: &SchemaRef,
    unit: &WorkUnit,
    partition: usize,
    batches: &[RecordBatch],
    fragments: &[Arc<RoaringBitmap>],
) -> Result<RecordBatch> {
    let shards: Vec<usize> = (0..unit.shards.len())
        .filter(|&s| unit.shards[s].blocks[partition - unit.partition_start as usize].rows > 0)
        .collect();
    let mut runs = Vec::with_capacity(batches.len());
    let mut total = 0usize;
    let mut width = 0usize;
    for (&s, batch) in shards.iter().zip(batches) {
        let (ids, codes, w) = batch_rows(batch)?;
        check_rows(&unit.shards[s].shard_id, partition, ids, &fragments[s])?;
        total += ids.len();
        width = w;
        runs.push((s, ids, codes));
    }
    let mut out_ids = MutableBuffer::with_capacity(total * 8);
    let mut out_codes = MutableBuffer::with_capacity(total * width);
    let mut heads = vec![0usize; runs.len()];
    loop {
        let mut best: Option<(usize, u64)> = None;
        let mut second = u64::MAX;
        for (r, (_, ids, _)) in runs.iter().enumerate() {
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
        let (_, ids, codes) = &runs[r];
        let start = heads[r];
        let end = start + ids[start..].partition_point(|&id| id < second);
        out_ids.extend_from_slice(&ids[start..end]);
        out_codes.extend_from_slice(&codes[start * width..end * width]);
        heads[r] = end;
    }
    encode_rows(schema, out_ids.into(), out_codes.into())
}

/// Row ids of a shard block must ascend strictly and lie in the shard's fragments.
fn check_rows(
    shard_id: &str,
    partition: usize,
    ids: &[u64],
    fragments: &RoaringBitmap,
) -> Result<()> {
    let mut last_fragment = None;
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 && ids[i - 1] >= id {
            return Err(IndexError::Finalize(format!(
                "shard {shard_id}, partition {partition}: row ids are not strictly ascending at row id {id}"
            )));
        }
        let f = fragment_of(id);
        if last_fragment != Some(f) {
            if !fragments.contains(f) {
                return Err(IndexError::Finalize(format!(
                    "shard {shard_id}, partition {partition}: row id {id} lies in fragment {f}, \
                     which is not among the shard's fragments"
                )));
            }
            last_fragment = Some(f);
        }
    }
    Ok(())
}
