//! Product quantization: 8-bit codes, one codebook of 256 centroids per sub-vector,
//! trained on IVF residuals (vector minus its partition's centroid).

use rayon::prelude::*;

use super::distance::{dot, l2_sq, nearest_l2};
use super::kmeans::{kmeans, KMeansParams};
use crate::progress::Tracker;

pub(crate) const PQ_CODES: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProductQuantizer {
    pub num_sub_vectors: usize,
    pub sub_dim: usize,
    /// `num_sub_vectors × 256 × sub_dim`, row-major.
    pub codebook: Vec<f32>,
}

impl ProductQuantizer {
    /// Trains on `residuals` (n × dim); needs n ≥ 256.
    pub(crate) fn train(
        residuals: &[f32],
        dim: usize,
        num_sub_vectors: usize,
        iterations: usize,
        seed: u64,
        tracker: &Tracker,
    ) -> Self {
        let sub_dim = dim / num_sub_vectors;
        let n = residuals.len() / dim;
        let codebook: Vec<Vec<f32>> = (0..num_sub_vectors)
            .into_par_iter()
            .map(|m| {
                let mut sub = Vec::with_capacity(n * sub_dim);
                for v in residuals.chunks_exact(dim) {
                    sub.extend_from_slice(&v[m * sub_dim..(m + 1) * sub_dim]);
                }
                let params = KMeansParams {
                    k: PQ_CODES,
                    max_iterations: iterations,
                    seed: seed.wrapping_add(m as u64 + 1),
                };
                kmeans(&sub, sub_dim, params, tracker)
            })
            .collect();
        Self {
            num_sub_vectors,
            sub_dim,
            codebook: codebook.concat(),
        }
    }

    fn sub_codebook(&self, m: usize) -> &[f32] {
        let len = PQ_CODES * self.sub_dim;
        &self.codebook[m * len..(m + 1) * len]
    }

    pub(crate) fn encode(&self, residual: &[f32], out: &mut [u8]) {
        for (m, code) in out.iter_mut().enumerate() {
            let sub = &residual[m * self.sub_dim..(m + 1) * self.sub_dim];
            *code = nearest_l2(sub, self.sub_codebook(m), self.sub_dim).0 as u8;
        }
    }

    /// Asymmetric distance table (`num_sub_vectors × 256`): per sub-vector, the
    /// squared L2 distance (or the inner product when `inner_product`) from `target`.
    pub(crate) fn distance_table(&self, target: &[f32], inner_product: bool) -> Vec<f32> {
        let mut table = Vec::with_capacity(self.num_sub_vectors * PQ_CODES);
        for m in 0..self.num_sub_vectors {
            let sub = &target[m * self.sub_dim..(m + 1) * self.sub_dim];
            for c in self.sub_codebook(m).chunks_exact(self.sub_dim) {
                table.push(if inner_product {
                    dot(sub, c)
                } else {
                    l2_sq(sub, c)
                });
            }
        }
        table
    }
}

/// Sum of table entries picked by `codes`. Four running sums: one would make every
/// addition wait for the previous.
#[inline(always)]
pub(crate) fn table_lookup(table: &[f32], codes: &[u8]) -> f32 {
    // Rows of 256 entries: a code indexes one without a bounds check.
    let (rows, _) = table.as_chunks::<PQ_CODES>();
    let mut acc = [0f32; 4];
    let (quads, rest) = codes.as_chunks::<4>();
    let (row_quads, row_rest) = rows.as_chunks::<4>();
    for (c, r) in quads.iter().zip(row_quads) {
        for l in 0..4 {
            acc[l] += r[l][c[l] as usize];
        }
    }
    let tail: f32 = row_rest
        .iter()
        .zip(rest)
        .map(|(row, &c)| row[c as usize])
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// [`table_lookup`] of each row of `codes` (rows of `width` bytes), appended to
/// `out`, with `sign · sum + offset`.
pub(crate) fn table_lookup_rows(
    table: &[f32],
    codes: &[u8],
    width: usize,
    sign: f32,
    offset: f32,
    out: &mut Vec<f32>,
) {
    let start = out.len();
    out.resize(start + codes.len() / width.max(1), 0.0);
    for (o, row) in out[start..]
        .iter_mut()
        .zip(codes.chunks_exact(width.max(1)))
    {
        *o = sign * table_lookup(table, row) + offset;
    }
}
