//! Merging one work unit: for each IVF partition of the unit's range, the rows of
//! every shard of the segment are merged in row-id order and appended to one
//! segment data file. Codes are copied as bytes, never decoded.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::MutableBuffer;
use arrow::datatypes::SchemaRef;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use roaring::RoaringBitmap;
use tokio::io::AsyncWriteExt;

use super::WorkUnit;
use crate::error::{IndexError, Result};
use crate::format::{decode_block, IndexLocation, IpcFileSink, SegmentFile};
use crate::model::{batch_rows, encode_rows};
use crate::worker::fragment_of;
use futures::StreamExt;

/// Partitions fetched ahead of the one being merged, so reads overlap the merge and the writes.
const PREFETCH_PARTITIONS: usize = 3;
/// Size of one multipart upload part of a segment file.
const WRITE_PART_BYTES: usize = 16 << 20;

/// Fragment sets of the shards a merge partition has seen, read once per shard.
#[derive(Default)]
pub struct FragmentCache {
    sets: HashMap<String, Arc<RoaringBitmap>>,
}

impl FragmentCache {
    async fn get(&mut self, location: &IndexLocation, shard_id: &str, dir: &str) -> Result<Arc<RoaringBitmap>> {
        if let Some(s) = self.sets.get(shard_id) {
            return Ok(Arc::clone(s));
        }
        let bytes = location.get(&Path::from(dir).join("fragments.roaring")).await?;
        let set = Arc::new(RoaringBitmap::deserialize_from(&bytes[..]).map_err(|e| {
            IndexError::corrupt(format!("shard {shard_id}: fragments.roaring"), e.to_string())
        })?);
        self.sets.insert(shard_id.to_string(), Arc::clone(&set));
        Ok(set)
    }
}

/// Merges `unit` into `segments/<segment>/<file_name>` and describes the file written.
/// On error the partial upload is aborted; nothing else is touched.
pub async fn merge_unit(
    location: &IndexLocation,
    schema: &SchemaRef,
    unit: &WorkUnit,
    cache: &mut FragmentCache,
) -> Result<SegmentFile> {
    let mut fragments = Vec::with_capacity(unit.shards.len());
    for s in &unit.shards {
        fragments.push(cache.get(location, &s.shard_id, &s.dir).await?);
    }
    let path = location.segment_dir(&unit.segment.segment_id).join(unit.file_name.as_str());
    let mut out = BufWriter::with_capacity(Arc::clone(location.store()), path, WRITE_PART_BYTES);
    match write_file(location, schema, unit, &fragments, &mut out).await {
        Ok(file) => Ok(file),
        Err(e) => {
            out.abort().await.ok();
            Err(e)
        }
    }
}

async fn write_file(
    location: &IndexLocation,
    schema: &SchemaRef,
    unit: &WorkUnit,
    fragments: &[Arc<RoaringBitmap>],
    out: &mut BufWriter,
) -> Result<SegmentFile> {
    let n = (unit.partition_end - unit.partition_start) as usize;
    let shared = Arc::new(unit.clone());
    let mut partitions = futures::stream::iter(0..n)
        .map(|i| tokio::spawn(fetch_partition(location.clone(), Arc::clone(schema), Arc::clone(&shared), i)))
        .buffered(PREFETCH_PARTITIONS);
    let mut sink = IpcFileSink::try_new(schema)?;
    let mut i = 0usize;
    while let Some(joined) = partitions.next().await {
        let batches = joined.map_err(|e| IndexError::InvalidInput(format!("merge task failed: {e}")))??;
        let partition = unit.partition_start as usize + i;
        let merged = merge_partition(schema, unit, partition, &batches, fragments)?;
        out.put(sink.write(&merged)?).await?;
        i += 1;
    }
    let (tail, blocks, size, _) = sink.finish()?;
    out.put(tail).await?;
    out.shutdown().await?;
    Ok(SegmentFile {
        name: unit.file_name.clone(),
        size,
        partition_start: unit.partition_start,
        partition_end: unit.partition_end,
        partitions: blocks,
    })
}

/// Reads partition `i` of the unit's range from every shard, concurrently.
async fn fetch_partition(location: IndexLocation, schema: SchemaRef, unit: Arc<WorkUnit>, i: usize) -> Result<Vec<RecordBatch>> {
    let partition = unit.partition_start as usize + i;
    let mut reads = Vec::with_capacity(unit.shards.len());
    for s in unit.shards.iter().filter(|s| s.blocks[i].rows > 0) {
        let block = s.blocks[i];
        let what = format!("shard {}: data.arrow, partition {partition}", s.shard_id);
        let path = Path::from(s.dir.as_str()).join("data.arrow");
        let store = Arc::clone(location.store());
        let schema = Arc::clone(&schema);
        reads.push(async move {
            let bytes = match store.get_range(&path, block.range()).await {
                Ok(b) => b,
                Err(object_store::Error::NotFound { .. }) => return Err(IndexError::corrupt(what, "data.arrow is missing")),
                Err(e) => return Err(IndexError::corrupt(what, e.to_string())),
            };
            decode_block(&what, &schema, &block, bytes)
        });
    }
    futures::future::try_join_all(reads).await
}

/// k-way merge of sorted runs by row id, copying the longest possible run at a time.
fn merge_partition(
    schema: &SchemaRef,
    unit: &WorkUnit,
    partition: usize,
    batches: &[RecordBatch],
    fragments: &[Arc<RoaringBitmap>],
) -> Result<RecordBatch> {
    let shards: Vec<usize> = (0..unit.shards.len()).filter(|&s| unit.shards[s].blocks[partition - unit.partition_start as usize].rows > 0).collect();
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
            let Some(&id) = ids.get(heads[r]) else { continue };
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
fn check_rows(shard_id: &str, partition: usize, ids: &[u64], fragments: &RoaringBitmap) -> Result<()> {
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
