//! Encoding vectors as the index stores them: assign a partition, then encode.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, RecordBatch,
    UInt64Array,
};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rayon::prelude::*;

use super::distance::{nearest_l2, normalize};
use super::{Metric, Model, ModelInfo, Quantizer};
use crate::error::{IndexError, Result};
use crate::format::ROW_ID_COLUMN;

/// Name of the stored column: `vector` for FLAT, `codes` for PQ and SQ.
pub fn stored_column(q: Quantizer) -> &'static str {
    match q {
        Quantizer::Flat => "vector",
        Quantizer::Pq | Quantizer::Sq => "codes",
    }
}

pub(super) fn storage_schema(model: &ModelInfo) -> SchemaRef {
    let q = model.index_type().quantizer();
    let stored = match q {
        Quantizer::Flat => DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, false)),
            model.dim() as i32,
        ),
        Quantizer::Pq | Quantizer::Sq => DataType::FixedSizeBinary(model.code_width() as i32),
    };
    Arc::new(Schema::new(vec![
        Field::new(ROW_ID_COLUMN, DataType::UInt64, false),
        Field::new(stored_column(q), stored, false),
    ]))
}

/// Assigns and encodes rows with one model. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Encoder {
    model: Arc<Model>,
}

impl Encoder {
    pub fn new(model: Arc<Model>) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// For each row of `vectors` (n × dim; normalized in place for cosine), its
    /// partition and its `code_width()` bytes appended to `codes`.
    pub fn encode(&self, vectors: &mut [f32], partitions: &mut Vec<u32>, codes: &mut Vec<u8>) {
        let m = &*self.model;
        let dim = m.dim();
        let width = m.code_width();
        if m.metric() == Metric::Cosine {
            vectors.par_chunks_exact_mut(dim).for_each(normalize);
        }
        let n = vectors.len() / dim;
        let start = codes.len();
        codes.resize(start + n * width, 0);
        let mut parts = vec![0u32; n];
        vectors
            .par_chunks_exact(dim)
            .zip(codes[start..].par_chunks_exact_mut(width))
            .zip(parts.par_iter_mut())
            .for_each_init(
                || vec![0f32; dim],
                |residual, ((v, out), part)| {
                    let (p, _) = nearest_l2(v, m.centroids(), dim);
                    *part = p as u32;
                    m.codec().encode(v, m.centroid(p), residual, out);
                },
            );
        partitions.extend(parts);
    }
}

/// Builds a storage batch from row ids and their packed codes.
/// `codes` should come from an aligned `MutableBuffer` (or `Buffer::from(&[u8])`).
pub fn rows_to_batch(schema: &SchemaRef, row_ids: Buffer, codes: Buffer) -> Result<RecordBatch> {
    let row_ids = UInt64Array::new(row_ids.into(), None);
    let n = row_ids.len();
    let stored: ArrayRef = match schema.field(1).data_type() {
        DataType::FixedSizeList(item, dim) => {
            let values = Float32Array::new(codes.into(), None);
            debug_assert_eq!(values.len(), n * *dim as usize);
            Arc::new(FixedSizeListArray::try_new(
                Arc::clone(item),
                *dim,
                Arc::new(values),
                None,
            )?)
        }
        DataType::FixedSizeBinary(w) => Arc::new(FixedSizeBinaryArray::try_new(*w, codes, None)?),
        other => {
            return Err(IndexError::corrupt(
                "storage schema",
                format!("unexpected stored type {other}"),
            ))
        }
    };
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(row_ids), stored],
    )?)
}

/// The row ids and the packed stored bytes of a storage batch (zero-copy views).
pub fn batch_rows(batch: &RecordBatch) -> Result<(&[u64], &[u8], usize)> {
    let bad = |why: &str| IndexError::corrupt("storage batch", why.to_string());
    if batch.num_columns() != 2 {
        return Err(bad("expected two columns"));
    }
    let ids = batch
        .column(0)
        .as_primitive_opt::<arrow::datatypes::UInt64Type>()
        .ok_or_else(|| bad("row_id is not UInt64"))?
        .values();
    let col = batch.column(1);
    let (bytes, width): (&[u8], usize) = match col.data_type() {
        DataType::FixedSizeList(_, dim) => {
            let l = col.as_fixed_size_list();
            let v = l
                .values()
                .as_primitive_opt::<arrow::datatypes::Float32Type>()
                .ok_or_else(|| bad("vector items are not Float32"))?;
            let d = *dim as usize;
            let start = l.offset() * d;
            let f = &v.values()[start..start + l.len() * d];
            (bytemuck_f32(f), d * 4)
        }
        DataType::FixedSizeBinary(w) => {
            let b = col.as_fixed_size_binary();
            let w = *w as usize;
            (
                &b.value_data()[b.offset() * w..(b.offset() + b.len()) * w],
                w,
            )
        }
        _ => return Err(bad("unexpected stored column type")),
    };
    Ok((ids, bytes, width))
}

/// A storage batch's row ids and stored values as buffers holding exactly its rows
/// (zero-copy slices of the batch's own memory), with the stored row width in bytes.
pub fn batch_buffers(batch: &RecordBatch) -> Result<(Buffer, Buffer, usize)> {
    let (_, _, width) = batch_rows(batch)?;
    let ids = batch
        .column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .values()
        .inner()
        .clone();
    let col = batch.column(1);
    let n = col.len();
    let values = match col.data_type() {
        DataType::FixedSizeList(..) => {
            let l = col.as_fixed_size_list();
            let v = l.values().as_primitive::<arrow::datatypes::Float32Type>();
            v.values()
                .inner()
                .slice_with_length(l.offset() * width, n * width)
        }
        _ => {
            let b = col.as_fixed_size_binary();
            b.values().slice_with_length(b.offset() * width, n * width)
        }
    };
    debug_assert_eq!(ids.len(), n * 8);
    Ok((ids, values, width))
}

fn bytemuck_f32(f: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(f.as_ptr().cast::<u8>(), std::mem::size_of_val(f)) }
}

/// Decodes `codes` (rows of `code_width()` bytes, all from IVF partition
/// `partition`) back to vectors: exact for FLAT, the quantizer's reconstruction for
/// SQ and PQ. HNSW graphs are built on these, so graph distances agree with what
/// search scores.
pub fn decode_rows(model: &Model, partition: usize, codes: &[u8]) -> Result<Vec<f32>> {
    let dim = model.dim();
    let width = model.code_width();
    if width == 0 || !codes.len().is_multiple_of(width) {
        return Err(IndexError::corrupt(
            format!("partition {partition}"),
            "stored bytes are not whole rows",
        ));
    }
    let n = codes.len() / width;
    let mut out = vec![0f32; n * dim];
    let centroid = model.centroid(partition);
    for (o, c) in out.chunks_exact_mut(dim).zip(codes.chunks_exact(width)) {
        model.codec().decode(c, centroid, o);
    }
    Ok(out)
}
