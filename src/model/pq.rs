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

    /// For L2 over the residual codes of the partition with centroid `centroid`, the
    /// part of a query's distance table that does not depend on the query:
    /// `‖y‖² + 2⟨c_m, y⟩` per sub-vector m and codeword y. With
    /// [`Self::query_terms`] it gives the table, since
    /// `‖q_m − c_m − y‖² = ‖q_m − c_m‖² + (‖y‖² + 2⟨c_m, y⟩) − 2⟨q_m, y⟩`
    /// and the first terms sum to `‖q − c‖²` over m.
    /// `norms` are [`Self::codeword_norms`].
    pub(crate) fn residual_terms(&self, centroid: &[f32], norms: &[f32]) -> Vec<f32> {
        let mut terms = Vec::with_capacity(self.num_sub_vectors * PQ_CODES);
        for m in 0..self.num_sub_vectors {
            let c = &centroid[m * self.sub_dim..(m + 1) * self.sub_dim];
            for y in self.sub_codebook(m).chunks_exact(self.sub_dim) {
                terms.push(norms[terms.len()] + 2.0 * dot(c, y));
            }
        }
        terms
    }

    /// `‖y‖²` per sub-vector and codeword.
    pub(crate) fn codeword_norms(&self) -> Vec<f32> {
        self.codebook
            .chunks_exact(self.sub_dim)
            .map(|y| dot(y, y))
            .collect()
    }

    /// The query's part of every partition's L2 table: `−2⟨q_m, y⟩` per sub-vector m
    /// and codeword y (see [`Self::residual_terms`]).
    pub(crate) fn query_terms(&self, query: &[f32]) -> Vec<f32> {
        let mut terms = self.distance_table(query, true);
        for t in &mut terms {
            *t *= -2.0;
        }
        terms
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
    match width {
        8 => lookup_rows_of::<8>(table, codes, sign, offset, out),
        16 => lookup_rows_of::<16>(table, codes, sign, offset, out),
        32 => lookup_rows_of::<32>(table, codes, sign, offset, out),
        64 => lookup_rows_of::<64>(table, codes, sign, offset, out),
        _ => lookup_rows_any(table, codes, width, sign, offset, out),
    }
}

fn lookup_rows_any(
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

/// [`lookup_rows_any`] for codes of `M` bytes (a multiple of 4): the row loop fully
/// unrolled, with the same sums in the same order as [`table_lookup`].
#[inline(always)]
fn lookup_rows_of<const M: usize>(
    table: &[f32],
    codes: &[u8],
    sign: f32,
    offset: f32,
    out: &mut Vec<f32>,
) {
    let (rows, _) = table.as_chunks::<PQ_CODES>();
    let Some(rows) = rows
        .get(..M)
        .and_then(|r| <&[[f32; PQ_CODES]; M]>::try_from(r).ok())
    else {
        return lookup_rows_any(table, codes, M, sign, offset, out);
    };
    let start = out.len();
    out.resize(start + codes.len() / M, 0.0);
    let (code_rows, _) = codes.as_chunks::<M>();
    for (o, c) in out[start..].iter_mut().zip(code_rows) {
        let mut acc = [0f32; 4];
        for q in 0..M / 4 {
            for l in 0..4 {
                acc[l] += rows[4 * q + l][c[4 * q + l] as usize];
            }
        }
        *o = sign * ((acc[0] + acc[1]) + (acc[2] + acc[3])) + offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rng::SplitMix64;

    fn quantizer(m: usize, sub_dim: usize, rng: &mut SplitMix64) -> ProductQuantizer {
        ProductQuantizer {
            num_sub_vectors: m,
            sub_dim,
            codebook: (0..m * PQ_CODES * sub_dim)
                .map(|_| rng.normal() as f32)
                .collect(),
        }
    }

    /// The unrolled lookups give the very sums of the general one, for every width.
    #[test]
    fn unrolled_lookups_equal_the_general_one() {
        let mut rng = SplitMix64::new(3);
        for m in [4, 8, 12, 16, 32, 64] {
            let table: Vec<f32> = (0..m * PQ_CODES).map(|_| rng.normal() as f32).collect();
            let codes: Vec<u8> = (0..m * 37).map(|_| rng.next_u64() as u8).collect();
            let (mut a, mut b) = (vec![1.5], vec![1.5]);
            table_lookup_rows(&table, &codes, m, -1.0, 0.25, &mut a);
            lookup_rows_any(&table, &codes, m, -1.0, 0.25, &mut b);
            assert_eq!(a.len(), 38);
            assert_eq!(a, b, "width {m}");
        }
        // A table too short for the width falls back instead of reading past it.
        let (mut a, mut b) = (vec![], vec![]);
        table_lookup_rows(&[0.5; 8 * PQ_CODES], &[1; 32], 16, 1.0, 0.0, &mut a);
        lookup_rows_any(&[0.5; 8 * PQ_CODES], &[1; 32], 16, 1.0, 0.0, &mut b);
        assert_eq!(a, b);
    }

    /// `‖q − c‖²` plus the residual and query terms is the table of the residual.
    #[test]
    fn residual_and_query_terms_add_up_to_the_residual_table() {
        let mut rng = SplitMix64::new(4);
        let (m, sub_dim) = (8, 4);
        let pq = quantizer(m, sub_dim, &mut rng);
        let dim = m * sub_dim;
        let q: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        let c: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        let residual: Vec<f32> = q.iter().zip(&c).map(|(q, c)| q - c).collect();
        let direct = pq.distance_table(&residual, false);
        let (terms, query) = (
            pq.residual_terms(&c, &pq.codeword_norms()),
            pq.query_terms(&q),
        );
        let codes: Vec<u8> = (0..m * 50).map(|_| rng.next_u64() as u8).collect();
        let table: Vec<f32> = terms.iter().zip(&query).map(|(a, b)| a + b).collect();
        let (mut want, mut got) = (vec![], vec![]);
        table_lookup_rows(&direct, &codes, m, 1.0, 0.0, &mut want);
        table_lookup_rows(&table, &codes, m, 1.0, l2_sq(&q, &c), &mut got);
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() < 1e-4 * (1.0 + w.abs()), "{w} vs {g}");
        }
    }
}
