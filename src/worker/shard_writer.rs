//! Writing a partial shard (layout in FORMAT.md).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::buffer::MutableBuffer;
use bytes::Bytes;
use roaring::{RoaringBitmap, RoaringTreemap};

use super::fragment_of;
use crate::error::{IndexError, Result};
use crate::format::{FileInfo, IndexLocation, IpcFileSink, ShardManifest, Upload, FORMAT_VERSION};
use crate::model::input::append_vectors;
use crate::model::{Encoder, Model};

/// Rows of one IVF partition, held until the shard is finished.
#[derive(Default)]
struct PartitionRows {
    row_ids: Vec<u64>,
    codes: Vec<u8>,
}

/// Streams (row id, vector) batches into one partial shard.
///
/// Memory: the writer holds every row it was given, encoded (8 bytes of row id
/// plus `Model::code_width()` bytes), grouped by IVF partition, because each
/// partition is written as one batch sorted by row id; at `finish` it adds one
/// partition's sort permutation and output batch. It never holds the raw input
/// beyond the batch being encoded.
pub struct ShardWriter {
    location: IndexLocation,
    encoder: Encoder,
    shard_id: String,
    partitions: Vec<PartitionRows>,
    fragments: RoaringBitmap,
    seen_row_ids: RoaringTreemap,
    rows: u64,
    scratch: Vec<f32>,
    assigned: Vec<u32>,
    codes: Vec<u8>,
}

impl ShardWriter {
    pub fn new(location: IndexLocation, model: Arc<Model>) -> Self {
        let partitions = (0..model.info().num_partitions())
            .map(|_| PartitionRows::default())
            .collect();
        Self {
            location,
            encoder: Encoder::new(model),
            shard_id: uuid::Uuid::new_v4().to_string(),
            partitions,
            fragments: RoaringBitmap::new(),
            seen_row_ids: RoaringTreemap::new(),
            rows: 0,
            scratch: Vec::new(),
            assigned: Vec::new(),
            codes: Vec::new(),
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Adds rows: `row_ids[i]` identifies `vectors[i]` (FixedSizeList or List of
    /// Float32/Float64). `column` names the vector column in errors.
    pub fn write(&mut self, row_ids: &[u64], vectors: &ArrayRef, column: &str) -> Result<()> {
        if row_ids.len() != vectors.len() {
            return Err(IndexError::InvalidInput(format!(
                "{} row ids for {} vectors",
                row_ids.len(),
                vectors.len()
            )));
        }
        if let Some(dup) = row_ids.iter().find(|&&id| self.seen_row_ids.contains(id)) {
            return Err(IndexError::InvalidInput(format!(
                "shard {}: row id {dup} was written twice",
                self.shard_id
            )));
        }
        // Every check of the batch comes before the writer changes, so that an error
        // leaves it as it was.
        let mut batch_ids = RoaringTreemap::new();
        if let Some(dup) = row_ids.iter().find(|&&id| !batch_ids.insert(id)) {
            return Err(IndexError::InvalidInput(format!(
                "shard {}: row id {dup} appears twice in one batch",
                self.shard_id
            )));
        }
        let model = Arc::clone(self.encoder.model());
        let dim = model.info().dim();
        self.scratch.clear();
        append_vectors(
            vectors,
            dim,
            column,
            &|i| format!("row id {}", row_ids[i]),
            &mut self.scratch,
        )?;
        self.assigned.clear();
        self.codes.clear();
        self.encoder
            .encode(&mut self.scratch, &mut self.assigned, &mut self.codes);
        let width = model.code_width();
        for (i, (&row_id, &p)) in row_ids.iter().zip(&self.assigned).enumerate() {
            let part = &mut self.partitions[p as usize];
            part.row_ids.push(row_id);
            part.codes
                .extend_from_slice(&self.codes[i * width..(i + 1) * width]);
            self.fragments.insert(fragment_of(row_id));
        }
        self.seen_row_ids |= batch_ids;
        self.rows += row_ids.len() as u64;
        Ok(())
    }

    /// Writes `data.arrow`, then `fragments.roaring`, then `shard.json`; the shard
    /// is complete only once `shard.json` exists.
    ///
    /// A writer that was given no rows stages nothing: an empty shard would cover no
    /// fragment and commit an empty segment.
    pub async fn finish(self) -> Result<ShardManifest> {
        if self.rows == 0 {
            return Err(IndexError::InvalidInput(format!(
                "shard {}: no rows were written, so nothing was staged",
                self.shard_id
            )));
        }
        let location = self.location.clone();
        let manifest = self.write_pieces().await?;
        publish(&location, &manifest).await?;
        Ok(manifest)
    }

    /// Writes `data.arrow` and `fragments.roaring` and returns the manifest that
    /// [`publish`] will write: until then the shard is incomplete.
    pub(crate) async fn write_pieces(self) -> Result<ShardManifest> {
        let model = Arc::clone(self.encoder.model());
        let schema = model.storage_schema();
        let width = model.code_width();
        let dir = self.location.shard_dir(&self.shard_id);

        let mut sink = IpcFileSink::try_new(&schema)?;
        let mut out = Upload::new(
            Arc::clone(self.location.store()),
            dir.clone().join("data.arrow"),
            8 << 20,
        );
        let mut pending = Vec::<Bytes>::new();
        for part in self.partitions {
            let mut order: Vec<u32> = (0..part.row_ids.len() as u32).collect();
            order.sort_unstable_by_key(|&i| part.row_ids[i as usize]);
            let mut ids = MutableBuffer::with_capacity(order.len() * 8);
            let mut codes = MutableBuffer::with_capacity(order.len() * width);
            for &i in &order {
                ids.push(part.row_ids[i as usize]);
                codes.extend_from_slice(&part.codes[i as usize * width..(i as usize + 1) * width]);
            }
            drop(part);
            let batch: RecordBatch =
                crate::format::stored_rows_batch(&schema, ids.into(), codes.into())?;
            pending.extend(sink.write(&batch)?);
            for b in pending.drain(..) {
                out.put(b).await?;
            }
        }
        let (tail, blocks, data_size, data_crc) = sink.finish()?;
        out.put(tail).await?;
        out.finish().await?;

        let mut fragments_bytes = Vec::with_capacity(self.fragments.serialized_size());
        self.fragments.serialize_into(&mut fragments_bytes)?;
        let fragments_file = FileInfo {
            name: "fragments.roaring".into(),
            size: fragments_bytes.len() as u64,
            crc32: crc32fast::hash(&fragments_bytes),
        };
        self.location
            .put(&dir.clone().join("fragments.roaring"), fragments_bytes)
            .await?;

        let manifest = ShardManifest {
            format_version: FORMAT_VERSION,
            shard_id: self.shard_id.clone(),
            model: model.info().fingerprint().to_string(),
            index_type: model.info().index_type(),
            metric: model.info().metric(),
            dim: model.info().dim() as u32,
            num_partitions: model.info().num_partitions() as u32,
            rows: self.rows,
            num_fragments: self.fragments.len(),
            min_fragment: self.fragments.min(),
            max_fragment: self.fragments.max(),
            data_file: FileInfo {
                name: "data.arrow".into(),
                size: data_size,
                crc32: data_crc,
            },
            fragments_file,
            partitions: blocks,
        };
        Ok(manifest)
    }
}

/// Writes `shard.json`, which completes a shard whose pieces are written.
pub(crate) async fn publish(location: &IndexLocation, manifest: &ShardManifest) -> Result<()> {
    let dir = location.shard_dir(&manifest.shard_id);
    location
        .put(&dir.join("shard.json"), manifest.to_json()?)
        .await
}
