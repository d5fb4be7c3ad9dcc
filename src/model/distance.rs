//! Distance kernels. Written as fixed-width lane loops so the compiler vectorizes them.

use super::simd::{self, SimdLevel};

const LANES: usize = 8;

/// `metric`'s distance ([`crate::format::Metric::distance`], the same arithmetic in the same
/// order) from `query` to each row of `values` (rows of `query.len()` floats),
/// appended to `out`, with the widest kernels [`simd::simd_level`] allows.
pub(crate) fn distance_rows(
    metric: crate::format::Metric,
    query: &[f32],
    values: &[f32],
    out: &mut Vec<f32>,
) {
    // SAFETY: `simd::simd_level` is at most the CPU's.
    unsafe { distance_rows_at(simd::simd_level(), metric, query, values, out) }
}

/// [`distance_rows`] with the kernels of `level`.
///
/// # Safety
/// The CPU must have the instructions of `level`.
unsafe fn distance_rows_at(
    level: SimdLevel,
    metric: crate::format::Metric,
    query: &[f32],
    values: &[f32],
    out: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        // With AVX the compiler widens the portable loop to 8 floats per instruction.
        // SAFETY: the caller vouches for the CPU.
        return unsafe { distance_rows_avx(metric, query, values, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    distance_rows_portable(metric, query, values, out)
}

// A plain loop over a pre-sized slice: iterator adapters like `extend` are not
// inlined into the `target_feature` copy and would run without AVX.
#[inline(always)]
fn distance_rows_portable(
    metric: crate::format::Metric,
    query: &[f32],
    values: &[f32],
    out: &mut Vec<f32>,
) {
    let dim = query.len().max(1);
    let start = out.len();
    out.resize(start + values.len() / dim, 0.0);
    for (o, row) in out[start..].iter_mut().zip(values.chunks_exact(dim)) {
        *o = metric.distance_with::<Exact>(query, row);
    }
}

// No hand-written kernel for whole vectors: a scan of them is bound by memory, and
// the variants tried measured slower (BENCHMARKS.md, "Search", run J).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn distance_rows_avx(
    metric: crate::format::Metric,
    query: &[f32],
    values: &[f32],
    out: &mut Vec<f32>,
) {
    distance_rows_portable(metric, query, values, out)
}

/// A row's distance from its lanes' sums and the floats after the last whole 8, as
/// [`l2_sq`] and [`dot`] finish.
#[inline(always)]
fn finish<const L2: bool>(acc: &[f32; LANES], ra: &[f32], rb: &[f32]) -> f32 {
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += if L2 { (x - y) * (x - y) } else { x * y };
    }
    s
}

/// Squared Euclidean distance.
#[inline(always)]
pub(crate) fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    finish::<true>(&acc, ra, rb)
}

/// Inner product.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    finish::<false>(&acc, ra, rb)
}

/// Squared Euclidean distance with four independent 8-lane accumulators and a tree
/// reduction: about 1.5 × faster than [`l2_sq`] on 128 dimensions with AVX, for the
/// HNSW graph builder's millions of row-to-row distances. Bit-identical with and
/// without AVX (same additions in the same order), so graphs do not depend on the CPU.
#[inline]
pub(crate) fn l2_sq_wide(a: &[f32], b: &[f32]) -> f32 {
    wide::<true>(a, b)
}

/// Inner product, computed like [`l2_sq_wide`].
#[inline]
pub(crate) fn dot_wide(a: &[f32], b: &[f32]) -> f32 {
    wide::<false>(a, b)
}

/// A pair of kernels a [`crate::format::Metric`] turns into a distance: the exact ones
/// search scores with, or the wide ones the HNSW graph builder uses.
pub(crate) trait Kernels {
    fn l2_sq(a: &[f32], b: &[f32]) -> f32;
    fn dot(a: &[f32], b: &[f32]) -> f32;
}

/// [`l2_sq`] and [`dot`]: what search scores with.
pub(crate) struct Exact;

impl Kernels for Exact {
    #[inline]
    fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
        l2_sq(a, b)
    }
    #[inline]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }
}

/// [`l2_sq_wide`] and [`dot_wide`]: what the HNSW graph builder uses.
pub(crate) struct Wide;

impl Kernels for Wide {
    #[inline]
    fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
        l2_sq_wide(a, b)
    }
    #[inline]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot_wide(a, b)
    }
}

#[inline(always)]
fn wide_term<const L2: bool>(x: f32, y: f32) -> f32 {
    if L2 {
        (x - y) * (x - y)
    } else {
        x * y
    }
}

#[inline]
fn wide<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if simd::simd_level() >= SimdLevel::Avx2 {
        // SAFETY: the CPU has AVX (`simd::simd_level`).
        return unsafe { wide_avx::<L2>(a, b) };
    }
    wide_portable::<L2>(a, b)
}

/// The reference order of additions that [`wide_avx`] reproduces.
fn wide_portable<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [[0f32; LANES]; 4];
    let mut off = 0;
    while off + 4 * LANES <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            for (i, lane) in acc.iter_mut().enumerate() {
                let j = off + k * LANES + i;
                *lane += wide_term::<L2>(a[j], b[j]);
            }
        }
        off += 4 * LANES;
    }
    while off + LANES <= n {
        for (i, lane) in acc[0].iter_mut().enumerate() {
            *lane += wide_term::<L2>(a[off + i], b[off + i]);
        }
        off += LANES;
    }
    let s: [f32; LANES] =
        std::array::from_fn(|i| (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]));
    let x: [f32; 4] = std::array::from_fn(|i| s[i] + s[i + 4]);
    let mut t = (x[0] + x[2]) + (x[1] + x[3]);
    for j in off..n {
        t += wide_term::<L2>(a[j], b[j]);
    }
    t
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn wide_avx<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    // A nested fn rather than a closure: closures do not inherit `target_feature`.
    #[inline]
    #[target_feature(enable = "avx")]
    fn step<const L2: bool>(acc: __m256, a: &[f32], b: &[f32], off: usize) -> __m256 {
        // SAFETY: callers keep `off + 8` within both slices.
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(off)),
                _mm256_loadu_ps(b.as_ptr().add(off)),
            )
        };
        let t = if L2 {
            let d = _mm256_sub_ps(x, y);
            _mm256_mul_ps(d, d)
        } else {
            _mm256_mul_ps(x, y)
        };
        _mm256_add_ps(acc, t)
    }
    let n = a.len().min(b.len());
    let (mut acc0, mut acc1, mut acc2, mut acc3) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let mut off = 0;
    while off + 4 * LANES <= n {
        acc0 = step::<L2>(acc0, a, b, off);
        acc1 = step::<L2>(acc1, a, b, off + LANES);
        acc2 = step::<L2>(acc2, a, b, off + 2 * LANES);
        acc3 = step::<L2>(acc3, a, b, off + 3 * LANES);
        off += 4 * LANES;
    }
    while off + LANES <= n {
        acc0 = step::<L2>(acc0, a, b, off);
        off += LANES;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_shuffle_ps::<1>(x, x));
    let mut t = _mm_cvtss_f32(x);
    for j in off..n {
        t += wide_term::<L2>(a[j], b[j]);
    }
    t
}

/// Scales `v` to unit length in place; a zero vector stays zero.
pub(crate) fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Index and distance of the row of `rows` (row-major, `dim` wide) nearest to `v` in L2.
#[inline]
pub(crate) fn nearest_l2(v: &[f32], rows: &[f32], dim: usize) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (i, c) in rows.chunks_exact(dim).enumerate() {
        let d = l2_sq(v, c);
        if d < best.1 {
            best = (i, d);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_kernels_are_bit_identical_with_and_without_avx() {
        let a: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let b: Vec<f32> = (0..200).map(|i| (i as f32 * 0.11).cos()).collect();
        for n in [0, 3, 8, 16, 19, 32, 45, 128, 200] {
            let (x, y) = (&a[..n], &b[..n]);
            let l2: f32 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum();
            let ip: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            assert!((l2_sq_wide(x, y) - l2).abs() < 1e-3 * (1.0 + l2), "{n}");
            assert!((dot_wide(x, y) - ip).abs() < 1e-3 * (1.0 + ip.abs()), "{n}");
            assert_eq!(
                l2_sq_wide(x, y).to_bits(),
                wide_portable::<true>(x, y).to_bits()
            );
            assert_eq!(
                dot_wide(x, y).to_bits(),
                wide_portable::<false>(x, y).to_bits()
            );
        }
    }

    proptest::proptest! {
        /// The rows kernel of every level the CPU has gives each row, bit for bit,
        /// the metric's distance alone, whatever the dimension and the row count.
        #[test]
        fn rows_kernels_score_each_row_as_alone(
            dim in 1usize..40,
            rows in 0usize..30,
            seed in proptest::prelude::any::<u64>(),
        ) {
            use crate::format::Metric;
            let mut rng = crate::model::rng::SplitMix64::new(seed);
            let q: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
            let values: Vec<f32> = (0..dim * rows + dim / 2).map(|_| rng.normal() as f32).collect();
            for level in simd::cpu_levels() {
                for metric in [Metric::L2, Metric::Cosine, Metric::Dot] {
                    let mut out = vec![-1.0];
                    // SAFETY: the CPU has every level `cpu_levels` gives.
                    unsafe { distance_rows_at(level, metric, &q, &values, &mut out) };
                    proptest::prop_assert_eq!(out.len(), rows + 1);
                    for (r, row) in values.chunks_exact(dim).enumerate() {
                        proptest::prop_assert_eq!(
                            out[r + 1].to_bits(),
                            metric.distance(&q, row).to_bits(),
                            "{:?} {}, row {}", level, metric, r
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_match_naive_sums() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 3.0 - i as f32).collect();
        let l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        let ip: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((l2_sq(&a, &b) - l2).abs() < 1e-3);
        assert!((dot(&a, &b) - ip).abs() < 1e-3);
    }
}
