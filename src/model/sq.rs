//! Scalar quantization: 8 bits per dimension, per-dimension bounds trained once by
//! the coordinator and stored in the model, so every worker encodes alike.

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScalarQuantizer {
    pub lower: Vec<f32>,
    pub upper: Vec<f32>,
}

impl ScalarQuantizer {
    pub(crate) fn train(sample: &[f32], dim: usize) -> Self {
        let mut lower = vec![f32::INFINITY; dim];
        let mut upper = vec![f32::NEG_INFINITY; dim];
        for v in sample.chunks_exact(dim) {
            for d in 0..dim {
                lower[d] = lower[d].min(v[d]);
                upper[d] = upper[d].max(v[d]);
            }
        }
        Self { lower, upper }
    }

    fn scale(&self, d: usize) -> f32 {
        let w = self.upper[d] - self.lower[d];
        if w > 0.0 {
            w / 255.0
        } else {
            1.0
        }
    }

    pub(crate) fn encode(&self, v: &[f32], out: &mut [u8]) {
        for (d, (o, x)) in out.iter_mut().zip(v).enumerate() {
            *o = ((x - self.lower[d]) / self.scale(d))
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }

    pub(crate) fn decode(&self, codes: &[u8], out: &mut [f32]) {
        for (d, (o, &c)) in out.iter_mut().zip(codes).enumerate() {
            *o = self.lower[d] + c as f32 * self.scale(d);
        }
    }

    /// Precomputes what a query needs to score codes without decoding them:
    /// `(q' , w)` with `q'_d = (q_d - lower_d) / scale_d` and `w_d = scale_d²` for L2,
    /// or `(q_d · scale_d, offset = Σ q_d · lower_d)` for inner products.
    pub(crate) fn query_l2(&self, q: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let scaled = (0..q.len())
            .map(|d| (q[d] - self.lower[d]) / self.scale(d))
            .collect();
        let weights = (0..q.len())
            .map(|d| self.scale(d) * self.scale(d))
            .collect();
        (scaled, weights)
    }

    pub(crate) fn query_dot(&self, q: &[f32]) -> (Vec<f32>, f32) {
        let weights = (0..q.len()).map(|d| q[d] * self.scale(d)).collect();
        let offset = (0..q.len()).map(|d| q[d] * self.lower[d]).sum();
        (weights, offset)
    }
}

/// [`sq_l2`] of each row of `codes` (rows of `scaled_query.len()` bytes), appended
/// to `out`. The same arithmetic in the same order on every CPU, and for each row
/// as [`sq_l2`] alone.
pub(crate) fn sq_l2_rows(scaled_query: &[f32], weights: &[f32], codes: &[u8], out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { sq_l2_rows_avx2(scaled_query, weights, codes, out) };
    }
    sq_l2_rows_portable(scaled_query, weights, codes, out)
}

// A plain loop over a pre-sized slice: iterator adapters like `extend` are not
// inlined into the `target_feature` copy and would run without AVX2.
#[inline(always)]
fn sq_l2_rows_portable(scaled_query: &[f32], weights: &[f32], codes: &[u8], out: &mut Vec<f32>) {
    let width = scaled_query.len().max(1);
    let start = out.len();
    out.resize(start + codes.len() / width, 0.0);
    for (o, row) in out[start..].iter_mut().zip(codes.chunks_exact(width)) {
        *o = sq_l2(scaled_query, weights, row);
    }
}

/// Rows the AVX2 kernels score side by side. One row's sums are chains of dependent
/// additions, so a row alone waits on their latency; each row keeps its own sums, in
/// the same order as [`sq_l2`] and [`sq_dot`] alone, so its distance is the same.
#[cfg(target_arch = "x86_64")]
const ROWS_AT_ONCE: usize = 4;

/// [`sq_l2_rows`] with AVX2: `ROWS_AT_ONCE` rows at a time, 8 codes per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sq_l2_rows_avx2(scaled_query: &[f32], weights: &[f32], codes: &[u8], out: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    let width = scaled_query.len().max(1);
    let (qc, qr) = scaled_query.as_chunks::<8>();
    let (wc, wr) = weights.as_chunks::<8>();
    let chunks = qc.len().min(wc.len());
    let groups = codes.len() / width / ROWS_AT_ONCE;
    out.reserve(codes.len() / width);
    for group in codes.chunks_exact(width * ROWS_AT_ONCE).take(groups) {
        let mut acc = [_mm256_setzero_ps(); ROWS_AT_ONCE];
        for k in 0..chunks {
            // SAFETY: a chunk is 8 floats.
            let (q, w) = unsafe {
                (
                    _mm256_loadu_ps(qc[k].as_ptr()),
                    _mm256_loadu_ps(wc[k].as_ptr()),
                )
            };
            for (j, acc) in acc.iter_mut().enumerate() {
                let at = j * width + k * 8;
                // Codes `at..at + 8` are in row j of the group (k < chunks, and
                // 8 · chunks ≤ width).
                let d = _mm256_sub_ps(q, eight_codes(&group[at..at + 8]));
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_mul_ps(w, d), d));
            }
        }
        finish_group(&acc, group, width, chunks * 8, out, |lanes, rest| {
            sq_l2_finish(lanes, qr, wr, rest)
        });
    }
    let done = groups * ROWS_AT_ONCE * width;
    sq_l2_rows_portable(scaled_query, weights, &codes[done..], out)
}

/// The first eight codes of `codes` as floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn eight_codes(codes: &[u8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the load reads 8 bytes, and `codes[..8]` is checked to hold them.
    let c = unsafe { _mm_loadl_epi64(codes[..8].as_ptr().cast()) };
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c))
}

/// Appends the distances of a group's rows: each row's lane sums `acc[j]`, finished
/// by `finish` with the row's codes past the first `summed`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn finish_group(
    acc: &[std::arch::x86_64::__m256; ROWS_AT_ONCE],
    group: &[u8],
    width: usize,
    summed: usize,
    out: &mut Vec<f32>,
    finish: impl Fn(&[f32; 8], &[u8]) -> f32,
) {
    for (j, acc) in acc.iter().enumerate() {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 floats.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
        out.push(finish(&lanes, &group[j * width + summed..(j + 1) * width]));
    }
}

/// [`sq_dot`] of each row of `codes`, appended to `out`; see [`sq_l2_rows`].
pub(crate) fn sq_dot_rows(weights: &[f32], offset: f32, codes: &[u8], out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { sq_dot_rows_avx2(weights, offset, codes, out) };
    }
    sq_dot_rows_portable(weights, offset, codes, out)
}

#[inline(always)]
fn sq_dot_rows_portable(weights: &[f32], offset: f32, codes: &[u8], out: &mut Vec<f32>) {
    let width = weights.len().max(1);
    let start = out.len();
    out.resize(start + codes.len() / width, 0.0);
    for (o, row) in out[start..].iter_mut().zip(codes.chunks_exact(width)) {
        *o = sq_dot(weights, offset, row);
    }
}

/// [`sq_dot_rows`] with AVX2: `ROWS_AT_ONCE` rows at a time, 8 codes per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sq_dot_rows_avx2(weights: &[f32], offset: f32, codes: &[u8], out: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    let width = weights.len().max(1);
    let (wc, wr) = weights.as_chunks::<8>();
    let chunks = wc.len();
    let groups = codes.len() / width / ROWS_AT_ONCE;
    out.reserve(codes.len() / width);
    for group in codes.chunks_exact(width * ROWS_AT_ONCE).take(groups) {
        let mut acc = [_mm256_setzero_ps(); ROWS_AT_ONCE];
        for (k, w) in wc.iter().enumerate() {
            // SAFETY: a chunk is 8 floats.
            let w = unsafe { _mm256_loadu_ps(w.as_ptr()) };
            for (j, acc) in acc.iter_mut().enumerate() {
                let at = j * width + k * 8;
                // Codes `at..at + 8` are in row j of the group (8 · chunks ≤ width).
                let c = eight_codes(&group[at..at + 8]);
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(w, c));
            }
        }
        finish_group(&acc, group, width, chunks * 8, out, |lanes, rest| {
            sq_dot_finish(lanes, wr, rest, offset)
        });
    }
    let done = groups * ROWS_AT_ONCE * width;
    sq_dot_rows_portable(weights, offset, &codes[done..], out)
}

/// Σ w_d (q'_d − c_d)²: squared L2 between a prepared query and SQ codes.
#[inline(always)]
pub(crate) fn sq_l2(scaled_query: &[f32], weights: &[f32], codes: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let (qc, qr) = scaled_query.as_chunks::<8>();
    let (wc, wr) = weights.as_chunks::<8>();
    let (cc, cr) = codes.as_chunks::<8>();
    for ((q, w), c) in qc.iter().zip(wc).zip(cc) {
        for l in 0..8 {
            let d = q[l] - c[l] as f32;
            acc[l] += w[l] * d * d;
        }
    }
    sq_l2_finish(&acc, qr, wr, cr)
}

/// [`sq_l2`] from its lanes' sums and the codes after the last whole 8.
#[inline(always)]
fn sq_l2_finish(acc: &[f32; 8], qr: &[f32], wr: &[f32], cr: &[u8]) -> f32 {
    let tail: f32 = qr
        .iter()
        .zip(wr)
        .zip(cr)
        .map(|((q, w), &c)| w * (q - c as f32) * (q - c as f32))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Σ w_d c_d + offset: inner product between a prepared query and SQ codes.
#[inline(always)]
pub(crate) fn sq_dot(weights: &[f32], offset: f32, codes: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let (wc, wr) = weights.as_chunks::<8>();
    let (cc, cr) = codes.as_chunks::<8>();
    for (w, c) in wc.iter().zip(cc) {
        for l in 0..8 {
            acc[l] += w[l] * c[l] as f32;
        }
    }
    sq_dot_finish(&acc, wr, cr, offset)
}

/// [`sq_dot`] from its lanes' sums and the codes after the last whole 8.
#[inline(always)]
fn sq_dot_finish(acc: &[f32; 8], wr: &[f32], cr: &[u8], offset: f32) -> f32 {
    let tail: f32 = wr.iter().zip(cr).map(|(w, &c)| w * c as f32).sum();
    acc.iter().sum::<f32>() + tail + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A row's distance from the rows kernels (widened for the CPU) is bit for
        /// bit its distance alone, whatever the width and the number of rows.
        #[test]
        fn rows_kernels_score_each_row_as_alone(
            width in 1usize..40,
            rows in 0usize..11,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut rng = crate::model::rng::SplitMix64::new(seed);
            let mut floats = |n: usize| -> Vec<f32> {
                (0..n).map(|_| (rng.next_u64() % 2000) as f32 / 7.0 - 140.0).collect()
            };
            let (q, w) = (floats(width), floats(width));
            let codes: Vec<u8> = floats(width * rows + width / 2).iter().map(|f| *f as u8).collect();
            let mut l2 = vec![-1.0];
            sq_l2_rows(&q, &w, &codes, &mut l2);
            let mut ip = vec![-1.0];
            sq_dot_rows(&w, 0.25, &codes, &mut ip);
            proptest::prop_assert_eq!(l2.len(), rows + 1);
            proptest::prop_assert_eq!(ip.len(), rows + 1);
            for (r, row) in codes.chunks_exact(width).enumerate() {
                proptest::prop_assert_eq!(l2[r + 1].to_bits(), sq_l2(&q, &w, row).to_bits(), "row {}", r);
                proptest::prop_assert_eq!(ip[r + 1].to_bits(), sq_dot(&w, 0.25, row).to_bits(), "row {}", r);
            }
        }
    }

    #[test]
    fn prepared_scores_equal_decoded_distances() {
        let sample: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
        let sq = ScalarQuantizer::train(&sample, 10);
        let mut codes = [0u8; 10];
        sq.encode(&sample[10..20], &mut codes);
        let mut dec = [0f32; 10];
        sq.decode(&codes, &mut dec);
        let q: Vec<f32> = (0..10).map(|i| i as f32 * 0.1).collect();
        let l2: f32 = q.iter().zip(&dec).map(|(a, b)| (a - b) * (a - b)).sum();
        let (s, w) = sq.query_l2(&q);
        assert!((sq_l2(&s, &w, &codes) - l2).abs() < 1e-4);
        let ip: f32 = q.iter().zip(&dec).map(|(a, b)| a * b).sum();
        let (w, o) = sq.query_dot(&q);
        assert!((sq_dot(&w, o, &codes) - ip).abs() < 1e-4);
        for (a, b) in dec.iter().zip(&sample[10..20]) {
            assert!((a - b).abs() <= sq.scale(0).max(sq.scale(9)));
        }
    }
}
