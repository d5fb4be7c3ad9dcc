//! Scalar quantization: 8 bits per dimension, per-dimension bounds trained once by
//! the coordinator and stored in the model, so every worker encodes alike.

use super::simd::{self, SimdLevel};

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

    /// What a query needs to score codes by L2 without decoding them: `(u, s)` with
    /// `u_d = q_d − lower_d` and `s_d = scale_d`, so that the distance to a row of
    /// codes `c` is `Σ (u_d − s_d · c_d)²` ([`sq_l2`]).
    pub(crate) fn query_l2(&self, q: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let shifted = (0..q.len()).map(|d| q[d] - self.lower[d]).collect();
        let scales = (0..q.len()).map(|d| self.scale(d)).collect();
        (shifted, scales)
    }

    /// What a query needs for inner products: `(w, offset)` with `w_d = q_d · scale_d`
    /// and `offset = Σ q_d · lower_d`, so that the product with a row of codes `c` is
    /// `Σ w_d · c_d + offset` ([`sq_dot`]).
    pub(crate) fn query_dot(&self, q: &[f32]) -> (Vec<f32>, f32) {
        let weights = (0..q.len()).map(|d| q[d] * self.scale(d)).collect();
        let offset = (0..q.len()).map(|d| q[d] * self.lower[d]).sum();
        (weights, offset)
    }
}

// Scoring codes. One order of arithmetic on every CPU, so a row's distance never
// depends on the machine: per dimension one fused multiply-add (two for L2), summed
// in 16 lanes over whole chunks of 16 codes, the lanes added as a tree (8 + 8, 4 + 4,
// 2 + 2, 1 + 1), then the codes after the last whole chunk in order. The AVX2 kernels
// keep a row's 16 lanes in two registers and the AVX-512 ones in one; both score
// `ROWS_AT_ONCE` rows side by side, as one row's sums are chains of dependent
// additions. A property test checks every level against [`sq_l2`] and [`sq_dot`]
// bit for bit. The portable kernels use `f32::mul_add`, which is slow on x86 CPUs
// without FMA: those also lack AVX2, are not what this crate is tuned for, and get
// the same distances.

/// Lanes of the sums: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

/// Rows the SIMD kernels score side by side.
#[cfg(target_arch = "x86_64")]
const ROWS_AT_ONCE: usize = 4;

/// `Σ (u_d − s_d · c_d)²`: squared L2 between a query prepared by
/// [`ScalarQuantizer::query_l2`] and a row of SQ codes.
pub(crate) fn sq_l2(shifted: &[f32], scales: &[f32], codes: &[u8]) -> f32 {
    sq_row_fused::<true>(shifted, scales, codes)
}

/// `Σ w_d · c_d + offset`: inner product between a query prepared by
/// [`ScalarQuantizer::query_dot`] and a row of SQ codes.
pub(crate) fn sq_dot(weights: &[f32], offset: f32, codes: &[u8]) -> f32 {
    sq_row_fused::<false>(weights, weights, codes) + offset
}

/// [`sq_row`] with the CPU's fused multiply-add instruction where
/// [`simd::simd_level`] allows it (without, `f32::mul_add` is a library call): the
/// HNSW types score one row at a time.
#[inline]
fn sq_row_fused<const L2: bool>(a: &[f32], b: &[f32], codes: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::simd_level() >= SimdLevel::Avx2 {
        #[target_feature(enable = "avx2,fma")]
        fn with_fma<const L2: bool>(a: &[f32], b: &[f32], codes: &[u8]) -> f32 {
            sq_row::<L2>(a, b, codes)
        }
        // SAFETY: the CPU has AVX2 and FMA (`simd::simd_level`).
        return unsafe { with_fma::<L2>(a, b, codes) };
    }
    sq_row::<L2>(a, b, codes)
}

/// [`sq_l2`] of each row of `codes` (rows of `shifted.len()` bytes), appended to
/// `out`, with the widest kernels [`simd::simd_level`] allows.
pub(crate) fn sq_l2_rows(shifted: &[f32], scales: &[f32], codes: &[u8], out: &mut Vec<f32>) {
    // SAFETY: `simd::simd_level` is at most the CPU's.
    unsafe { sq_rows_at::<true>(simd::simd_level(), shifted, scales, codes, out) }
}

/// [`sq_dot`] of each row of `codes`, appended to `out`; see [`sq_l2_rows`].
pub(crate) fn sq_dot_rows(weights: &[f32], offset: f32, codes: &[u8], out: &mut Vec<f32>) {
    let from = out.len();
    // SAFETY: `simd::simd_level` is at most the CPU's.
    unsafe { sq_rows_at::<false>(simd::simd_level(), weights, weights, codes, out) };
    for d in &mut out[from..] {
        *d += offset;
    }
}

/// One dimension's term added to `acc`: `(a − b·c)²` for L2, `a·c` for dot.
#[inline(always)]
fn term<const L2: bool>(acc: f32, a: f32, b: f32, c: u8) -> f32 {
    let c = c as f32;
    if L2 {
        let t = (-b).mul_add(c, a);
        t.mul_add(t, acc)
    } else {
        a.mul_add(c, acc)
    }
}

/// The reference every kernel reproduces: one row's L2 (`a` shifted, `b` scales) or
/// dot (`a` weights, `b` ignored) sum.
#[inline(always)]
fn sq_row<const L2: bool>(a: &[f32], b: &[f32], codes: &[u8]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, ar) = a.as_chunks::<LANES>();
    let (bc, br) = b.as_chunks::<LANES>();
    let (cc, cr) = codes.as_chunks::<LANES>();
    for ((a, b), c) in ac.iter().zip(bc).zip(cc) {
        for l in 0..LANES {
            acc[l] = term::<L2>(acc[l], a[l], b[l], c[l]);
        }
    }
    finish::<L2>(reduce(&acc), ar, br, cr)
}

/// The lanes' sums added as a tree: 8 + 8, 4 + 4, 2 + 2, 1 + 1.
#[inline(always)]
fn reduce(acc: &[f32; LANES]) -> f32 {
    let s8: [f32; 8] = std::array::from_fn(|i| acc[i] + acc[i + 8]);
    let s4: [f32; 4] = std::array::from_fn(|i| s8[i] + s8[i + 4]);
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// `sum` and the terms of the codes after the last whole chunk, in order.
#[inline(always)]
fn finish<const L2: bool>(mut sum: f32, ar: &[f32], br: &[f32], cr: &[u8]) -> f32 {
    for ((&a, &b), &c) in ar.iter().zip(br).zip(cr) {
        sum = term::<L2>(sum, a, b, c);
    }
    sum
}

/// [`sq_row`] of each row of `codes`, appended to `out`, with the kernels of `level`.
///
/// # Safety
/// The CPU must have the instructions of `level`.
unsafe fn sq_rows_at<const L2: bool>(
    level: SimdLevel,
    a: &[f32],
    b: &[f32],
    codes: &[u8],
    out: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: the caller vouches for the CPU.
        SimdLevel::Avx512 => return unsafe { sq_rows_avx512::<L2>(a, b, codes, out) },
        SimdLevel::Avx2 => return unsafe { sq_rows_avx2::<L2>(a, b, codes, out) },
        SimdLevel::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    sq_rows_portable::<L2>(a, b, codes, out)
}

// A plain loop over a pre-sized slice: iterator adapters like `extend` are not
// inlined into a `target_feature` copy and would run without its instructions.
#[inline(always)]
fn sq_rows_portable<const L2: bool>(a: &[f32], b: &[f32], codes: &[u8], out: &mut Vec<f32>) {
    let width = a.len().max(1);
    let start = out.len();
    out.resize(start + codes.len() / width, 0.0);
    for (o, row) in out[start..].iter_mut().zip(codes.chunks_exact(width)) {
        *o = sq_row::<L2>(a, b, row);
    }
}

/// A prepared query's whole chunks of [`LANES`] floats and the floats after them,
/// as the SIMD kernels read it.
#[cfg(target_arch = "x86_64")]
struct Split<'a> {
    /// Codes a row holds.
    width: usize,
    ac: &'a [[f32; LANES]],
    ar: &'a [f32],
    bc: &'a [[f32; LANES]],
    br: &'a [f32],
    /// Whole chunks of both `a` and `b`.
    chunks: usize,
}

#[cfg(target_arch = "x86_64")]
impl<'a> Split<'a> {
    fn of(a: &'a [f32], b: &'a [f32]) -> Self {
        let (ac, ar) = a.as_chunks::<LANES>();
        let (bc, br) = b.as_chunks::<LANES>();
        Self {
            width: a.len().max(1),
            chunks: ac.len().min(bc.len()),
            ac,
            ar,
            bc,
            br,
        }
    }
}

/// Eight codes at `p` as floats.
///
/// # Safety
/// `p` must point to 8 readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn eight_codes(p: *const u8) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller vouches for 8 bytes.
    let c = unsafe { _mm_loadl_epi64(p.cast()) };
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c))
}

/// [`term`] on 8 lanes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn term8<const L2: bool>(
    acc: std::arch::x86_64::__m256,
    a: std::arch::x86_64::__m256,
    b: std::arch::x86_64::__m256,
    c: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    if L2 {
        let t = _mm256_fnmadd_ps(b, c, a);
        _mm256_fmadd_ps(t, t, acc)
    } else {
        _mm256_fmadd_ps(a, c, acc)
    }
}

/// [`reduce`] of the 16 lanes `low` (lanes 0–7) and `high` (8–15).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn reduce8(low: std::arch::x86_64::__m256, high: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s8 = _mm256_add_ps(low, high);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
}

/// [`sq_rows_at`] with AVX2 and FMA: `ROWS_AT_ONCE` rows at a time, each row's 16
/// lanes in two registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sq_rows_avx2<const L2: bool>(a: &[f32], b: &[f32], codes: &[u8], out: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    let q = Split::of(a, b);
    let width = q.width;
    out.reserve(codes.len() / width);
    for group in codes.chunks_exact(width * ROWS_AT_ONCE) {
        let rows = group.as_ptr();
        // Named sums, not an array: an array of registers is kept in memory.
        let zero = _mm256_setzero_ps();
        let (mut l0, mut h0, mut l1, mut h1) = (zero, zero, zero, zero);
        let (mut l2, mut h2, mut l3, mut h3) = (zero, zero, zero, zero);
        for (k, (a, b)) in q.ac.iter().zip(q.bc).enumerate() {
            // SAFETY: a chunk is 16 floats.
            let (al, ah, bl, bh) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr()),
                    _mm256_loadu_ps(a.as_ptr().add(8)),
                    _mm256_loadu_ps(b.as_ptr()),
                    _mm256_loadu_ps(b.as_ptr().add(8)),
                )
            };
            let step = |low, high, j: usize| {
                let at = j * width + k * LANES;
                // SAFETY: codes `at..at + 16` are in row j of the group, as
                // 16 · (k + 1) ≤ 16 · chunks ≤ width.
                let (cl, ch) =
                    unsafe { (eight_codes(rows.add(at)), eight_codes(rows.add(at + 8))) };
                (term8::<L2>(low, al, bl, cl), term8::<L2>(high, ah, bh, ch))
            };
            (l0, h0) = step(l0, h0, 0);
            (l1, h1) = step(l1, h1, 1);
            (l2, h2) = step(l2, h2, 2);
            (l3, h3) = step(l3, h3, 3);
        }
        let summed = q.chunks * LANES;
        for (j, (low, high)) in [(l0, h0), (l1, h1), (l2, h2), (l3, h3)]
            .into_iter()
            .enumerate()
        {
            let rest = &group[j * width + summed..(j + 1) * width];
            out.push(finish::<L2>(reduce8(low, high), q.ar, q.br, rest));
        }
    }
    let done = codes.len() / (width * ROWS_AT_ONCE) * (width * ROWS_AT_ONCE);
    sq_rows_portable::<L2>(a, b, &codes[done..], out)
}

/// [`sq_rows_at`] with AVX-512: `ROWS_AT_ONCE` rows at a time, each row's 16 lanes
/// in one register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn sq_rows_avx512<const L2: bool>(a: &[f32], b: &[f32], codes: &[u8], out: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    let q = Split::of(a, b);
    let width = q.width;
    out.reserve(codes.len() / width);
    for group in codes.chunks_exact(width * ROWS_AT_ONCE) {
        let rows = group.as_ptr();
        // Named sums, not an array: an array of registers is kept in memory.
        let [mut s0, mut s1, mut s2, mut s3] = [_mm512_setzero_ps(); ROWS_AT_ONCE];
        for (k, (a, b)) in q.ac.iter().zip(q.bc).enumerate() {
            // SAFETY: a chunk is 16 floats.
            let (a, b) = unsafe { (_mm512_loadu_ps(a.as_ptr()), _mm512_loadu_ps(b.as_ptr())) };
            let step = |acc, j: usize| {
                let at = j * width + k * LANES;
                // SAFETY: codes `at..at + 16` are in row j of the group, as
                // 16 · (k + 1) ≤ 16 · chunks ≤ width.
                let c = unsafe { _mm_loadu_si128(rows.add(at).cast()) };
                let c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c));
                if L2 {
                    let t = _mm512_fnmadd_ps(b, c, a);
                    _mm512_fmadd_ps(t, t, acc)
                } else {
                    _mm512_fmadd_ps(a, c, acc)
                }
            };
            (s0, s1, s2, s3) = (step(s0, 0), step(s1, 1), step(s2, 2), step(s3, 3));
        }
        let summed = q.chunks * LANES;
        for (j, sum) in [s0, s1, s2, s3].into_iter().enumerate() {
            let lanes = reduce8(
                _mm512_castps512_ps256(sum),
                _mm512_extractf32x8_ps::<1>(sum),
            );
            let rest = &group[j * width + summed..(j + 1) * width];
            out.push(finish::<L2>(lanes, q.ar, q.br, rest));
        }
    }
    let done = codes.len() / (width * ROWS_AT_ONCE) * (width * ROWS_AT_ONCE);
    sq_rows_portable::<L2>(a, b, &codes[done..], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A row's distance from the rows kernels of every level the CPU has is bit
        /// for bit its distance alone, whatever the width and the number of rows.
        #[test]
        fn rows_kernels_score_each_row_as_alone(
            width in 1usize..70,
            rows in 0usize..12,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut rng = crate::model::rng::SplitMix64::new(seed);
            let mut floats = |n: usize| -> Vec<f32> {
                (0..n).map(|_| (rng.next_u64() % 2000) as f32 / 7.0 - 140.0).collect()
            };
            let (q, w) = (floats(width), floats(width));
            let codes: Vec<u8> = floats(width * rows + width / 2).iter().map(|f| *f as u8).collect();
            // One row at a time, as the HNSW types score: the same as the reference.
            for row in codes.chunks_exact(width) {
                proptest::prop_assert_eq!(sq_l2(&q, &w, row).to_bits(), sq_row::<true>(&q, &w, row).to_bits());
                proptest::prop_assert_eq!(sq_dot(&w, 0.0, row).to_bits(), sq_row::<false>(&w, &w, row).to_bits());
            }
            for level in simd::cpu_levels() {
                let (mut l2, mut ip) = (vec![-1.0], vec![-1.0]);
                // SAFETY: the CPU has every level `cpu_levels` gives.
                unsafe {
                    sq_rows_at::<true>(level, &q, &w, &codes, &mut l2);
                    sq_rows_at::<false>(level, &w, &w, &codes, &mut ip);
                }
                proptest::prop_assert_eq!(l2.len(), rows + 1);
                proptest::prop_assert_eq!(ip.len(), rows + 1);
                for (r, row) in codes.chunks_exact(width).enumerate() {
                    proptest::prop_assert_eq!(l2[r + 1].to_bits(), sq_row::<true>(&q, &w, row).to_bits(), "{:?}, row {}", level, r);
                    proptest::prop_assert_eq!(ip[r + 1].to_bits(), sq_row::<false>(&w, &w, row).to_bits(), "{:?}, row {}", level, r);
                }
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
