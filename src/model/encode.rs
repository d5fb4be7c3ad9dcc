//! Encoding vectors as the index stores them: assign a partition, then encode.
// Its `pub` items are what the `internals` feature shows `cargo bench --bench hnsw`.
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub))]

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use rayon::prelude::*;

use super::distance::{nearest_l2, normalize};
use super::{Metric, Model, ModelInfo};
use crate::error::{IndexError, Result};

pub(super) fn storage_schema(model: &ModelInfo) -> SchemaRef {
    crate::format::stored_rows_schema(
        model.index_type().quantizer(),
        model.dim(),
        model.code_width(),
    )
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
        let dim = m.info().dim();
        let width = m.code_width();
        if m.info().metric() == Metric::Cosine {
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

/// Decodes `codes` (rows of `code_width()` bytes, all from IVF partition
/// `partition`) back to vectors: exact for FLAT, the quantizer's reconstruction for
/// SQ and PQ. HNSW graphs are built on these, so graph distances agree with what
/// search scores.
pub fn decode_rows(model: &Model, partition: usize, codes: &[u8]) -> Result<Vec<f32>> {
    let dim = model.info().dim();
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
