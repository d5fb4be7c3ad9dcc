//! Lower bounds on PQ distances from an 8-bit copy of a query's table, 64 rows at a
//! time, so that a top-k scan skips the rows that cannot enter it.
//!
//! A PQ distance is `sign · Σ_j table[j][code_j] + offset`. Each table row `j` is
//! shifted by its least entry and counted in whole steps of `range / 255`, rounded
//! down, into a byte: the sum of a row's bytes (at most `255 · M`, which fits 16 bits)
//! times the step, plus the shifts and the offset, is then never more than the
//! distance. AVX-512 VBMI looks up 64 rows' bytes per sub-vector with two byte
//! permutes (the 256 entries sit in four registers), so the bounds cost a fraction
//! of the float lookups they spare. Only rows whose bound is within the current
//! k-th distance (plus a margin for the float sum's rounding) are scored, by the
//! same float lookup as always: the hits are exactly those of scoring every row.

use super::pq::PQ_CODES;

/// The most rows one [`PqBound::candidates`] call bounds.
pub(crate) const BOUND_ROWS: usize = 64;

/// Whether this CPU has the byte permutes the bounds need (AVX-512 F, BW, VBMI), and
/// [`super::simd::simd_level`] allows them.
pub(crate) fn available() -> bool {
    super::simd::has_avx512_vbmi()
}

/// A block's codes column by column (`width` columns): code `j` of row `r` at
/// `j · rows + r`, so 64 rows' codes for one sub-vector are one load.
pub(crate) fn columns(codes: &[u8], width: usize) -> Vec<u8> {
    let width = width.max(1);
    let rows = codes.len() / width;
    let mut out = vec![0; rows * width];
    for (r, row) in codes.chunks_exact(width).enumerate() {
        for (j, &c) in row.iter().enumerate() {
            out[j * rows + r] = c;
        }
    }
    out
}

/// Rows `start..` of a block whose codes are stored by [`columns`] (`stride` rows).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Columns<'a> {
    pub codes: &'a [u8],
    pub stride: usize,
    pub start: usize,
}

/// One query's table for one partition, in steps (see the module docs).
#[derive(Debug)]
pub(crate) struct PqBound {
    /// Per sub-vector, `(sign · entry − least) / step`, rounded down.
    steps: Vec<[u8; PQ_CODES]>,
    /// The distance of a row whose steps sum to zero, at least.
    base: f64,
    step: f64,
    /// How far the scorer's float sum may round below the exact one.
    margin: f64,
}

impl PqBound {
    /// For `distance = sign · Σ_j table[j][code_j] + offset`; `None` when the table
    /// has non-finite entries, more than 256 sub-vectors, or no spread at all (then
    /// no row can be told apart without scoring it).
    pub(crate) fn new(table: &[f32], sign: f32, offset: f32) -> Option<Self> {
        let (rows, rest) = table.as_chunks::<PQ_CODES>();
        if rows.is_empty() || rows.len() > 256 || !rest.is_empty() || !offset.is_finite() {
            return None;
        }
        let mut least = Vec::with_capacity(rows.len());
        let (mut range, mut magnitude) = (0f32, f64::from(offset).abs());
        for row in rows {
            let (lo, hi) = extremes(row, sign)?;
            least.push(lo);
            range = range.max(hi - lo);
            magnitude += f64::from(lo.abs().max(hi.abs()));
        }
        let per_step = 255.0 / range;
        if !(range > 0.0 && per_step.is_finite()) {
            return None;
        }
        let steps = rows
            .iter()
            .zip(&least)
            .map(|(row, &lo)| in_steps(row, sign, lo, per_step))
            .collect();
        Some(Self {
            steps,
            base: least.iter().map(|&lo| f64::from(lo)).sum::<f64>() + f64::from(offset),
            step: 1.0 / f64::from(per_step),
            // The scorer adds M + 1 floats: each addition may round by half an ulp of
            // the running sum, which is at most `magnitude`. Twice that, to spare.
            margin: (rows.len() + 4) as f64 * f64::from(f32::EPSILON) * magnitude,
        })
    }

    /// The largest sum of steps a row may have and still score at most `threshold`;
    /// `None` when every row may (an infinite threshold, or one beyond any row).
    pub(crate) fn cutoff(&self, threshold: f32) -> Option<u16> {
        if !threshold.is_finite() {
            return None;
        }
        // A row with more steps than this scores above `threshold + step − margin`
        // exactly, so above `threshold` after the scorer's rounding; the one step
        // spares the rounding in working out the steps (far less than a step for
        // at most 256 sub-vectors).
        let most = ((f64::from(threshold) - self.base + self.margin) / self.step).floor() + 1.0;
        let max = (self.steps.len() * 255) as f64;
        (most < max).then(|| most.max(0.0) as u16)
    }

    /// Of the `count` (at most 64) rows `row..row + count` of `columns`, those whose
    /// steps sum to at most `cutoff` (bit `i` for row `row + i`); `None` when the CPU
    /// lacks the kernel or `columns` does not hold those rows of every sub-vector.
    pub(crate) fn candidates(
        &self,
        columns: Columns<'_>,
        row: usize,
        count: usize,
        cutoff: u16,
    ) -> Option<u64> {
        let first = columns.start.checked_add(row)?;
        if count > BOUND_ROWS
            || first.checked_add(count)? > columns.stride
            || columns.codes.len() < columns.stride.checked_mul(self.steps.len())?
            || !available()
        {
            return None;
        }
        let rows = u64::MAX
            .checked_shr((BOUND_ROWS - count) as u32)
            .unwrap_or(0);
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the CPU has AVX-512 F, BW and VBMI (`available`), and every
            // column holds the rows of `rows` from `first` on (checked above).
            Some(unsafe {
                candidates_vbmi(
                    &self.steps,
                    columns.codes,
                    columns.stride,
                    first,
                    rows,
                    cutoff,
                )
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (cutoff, rows);
            None
        }
    }

    /// Row `i` of `columns`' sum of steps: what [`PqBound::candidates`] compares,
    /// one row at a time (for tests).
    #[cfg(test)]
    fn sum_of(&self, columns: Columns<'_>, i: usize) -> u32 {
        self.steps
            .iter()
            .enumerate()
            .map(|(j, s)| {
                u32::from(s[columns.codes[j * columns.stride + columns.start + i] as usize])
            })
            .sum()
    }
}

/// The least and greatest of `sign · t` over `row`; `None` if any is not finite.
fn extremes(row: &[f32; PQ_CODES], sign: f32) -> Option<(f32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512 F (`available`).
        return unsafe { extremes_avx512(row, sign) };
    }
    extremes_portable(row, sign)
}

fn extremes_portable(row: &[f32; PQ_CODES], sign: f32) -> Option<(f32, f32)> {
    let (lo, hi) = row
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &t| {
            (lo.min(sign * t), hi.max(sign * t))
        });
    (lo.is_finite() && hi.is_finite() && !row.iter().any(|t| t.is_nan())).then_some((lo, hi))
}

/// `(sign · t − lo) · per_step` of each entry, rounded down into a byte.
fn in_steps(row: &[f32; PQ_CODES], sign: f32, lo: f32, per_step: f32) -> [u8; PQ_CODES] {
    #[cfg(target_arch = "x86_64")]
    if available() {
        let mut out = [0u8; PQ_CODES];
        // SAFETY: the CPU has AVX-512 F (`available`).
        unsafe { in_steps_avx512(row, sign, lo, per_step, &mut out) };
        return out;
    }
    in_steps_portable(row, sign, lo, per_step)
}

fn in_steps_portable(row: &[f32; PQ_CODES], sign: f32, lo: f32, per_step: f32) -> [u8; PQ_CODES] {
    let mut out = [0u8; PQ_CODES];
    // Truncation rounds these non-negative values down; `as` saturates at 255.
    for (o, &t) in out.iter_mut().zip(row) {
        *o = ((sign * t - lo) * per_step) as u8;
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn extremes_avx512(row: &[f32; PQ_CODES], sign: f32) -> Option<(f32, f32)> {
    use std::arch::x86_64::*;
    let s = _mm512_set1_ps(sign);
    let (mut lo, mut hi) = (
        _mm512_set1_ps(f32::INFINITY),
        _mm512_set1_ps(f32::NEG_INFINITY),
    );
    let mut nan: __mmask16 = 0;
    for chunk in row.as_chunks::<16>().0 {
        // SAFETY: a chunk is 16 floats.
        let v = _mm512_mul_ps(s, unsafe { _mm512_loadu_ps(chunk.as_ptr()) });
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
    }
    let (lo, hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
    (nan == 0 && lo.is_finite() && hi.is_finite()).then_some((lo, hi))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn in_steps_avx512(
    row: &[f32; PQ_CODES],
    sign: f32,
    lo: f32,
    per_step: f32,
    out: &mut [u8; PQ_CODES],
) {
    use std::arch::x86_64::*;
    let (s, lo, per) = (
        _mm512_set1_ps(sign),
        _mm512_set1_ps(lo),
        _mm512_set1_ps(per_step),
    );
    let (zero, most) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    for (chunk, o) in row
        .as_chunks::<16>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<16>().0)
    {
        // SAFETY: a chunk is 16 floats.
        let v = _mm512_mul_ps(s, unsafe { _mm512_loadu_ps(chunk.as_ptr()) });
        let x = _mm512_mul_ps(_mm512_sub_ps(v, lo), per);
        let x = _mm512_min_ps(_mm512_max_ps(x, zero), most);
        // Truncation rounds down; the bytes of the 16 integers, packed.
        let bytes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(x));
        // SAFETY: `o` is 16 bytes.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), bytes) };
    }
}

/// `candidates` for the rows `first + i` of every column whose bit `i` is set in
/// `rows` (the others are neither read nor returned).
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VBMI, and `codes` must hold `steps.len()`
/// columns of `stride` rows, `stride` greater than `first` plus the highest bit set.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn candidates_vbmi(
    steps: &[[u8; PQ_CODES]],
    codes: &[u8],
    stride: usize,
    first: usize,
    rows: u64,
    cutoff: u16,
) -> u64 {
    use std::arch::x86_64::*;
    // Sums of the even rows' steps in the low bytes of 16-bit lanes, of the odd rows'
    // in the high bytes: a mask and a shift, where widening each row's byte would
    // compete with the permutes for the one port that shuffles.
    let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let low_bytes = _mm512_set1_epi16(0x00ff);
    for (j, table) in steps.iter().enumerate() {
        let t = table.as_ptr().cast::<__m512i>();
        // SAFETY: a table is 256 bytes, four registers; column j holds the rows
        // of `rows` (the caller's contract), and a masked load touches no others.
        let (t0, t1, t2, t3, c) = unsafe {
            (
                _mm512_loadu_si512(t),
                _mm512_loadu_si512(t.add(1)),
                _mm512_loadu_si512(t.add(2)),
                _mm512_loadu_si512(t.add(3)),
                _mm512_maskz_loadu_epi8(rows, codes.as_ptr().add(j * stride + first).cast()),
            )
        };
        // Codes below 128 index the first two registers, the others the last two.
        let below = _mm512_permutex2var_epi8(t0, c, t1);
        let above = _mm512_permutex2var_epi8(t2, c, t3);
        let v = _mm512_mask_blend_epi8(_mm512_movepi8_mask(c), below, above);
        even = _mm512_add_epi16(even, _mm512_and_si512(v, low_bytes));
        odd = _mm512_add_epi16(odd, _mm512_srli_epi16::<8>(v));
    }
    let limit = _mm512_set1_epi16(cutoff as i16);
    let even = _mm512_cmple_epu16_mask(even, limit);
    let odd = _mm512_cmple_epu16_mask(odd, limit);
    (spread_bits(even) | spread_bits(odd) << 1) & rows
}

/// Bit `i` of `x` at bit `2i`.
#[cfg(target_arch = "x86_64")]
fn spread_bits(x: u32) -> u64 {
    let mut x = u64::from(x);
    x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    x = (x | x << 2) & 0x3333_3333_3333_3333;
    (x | x << 1) & 0x5555_5555_5555_5555
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pq::table_lookup;
    use crate::model::rng::SplitMix64;
    use proptest::prelude::*;

    #[test]
    fn columns_hold_each_code_of_each_row() {
        let codes: Vec<u8> = (0..5 * 3).map(|i| i as u8).collect();
        let cols = columns(&codes, 3);
        for r in 0..5 {
            for j in 0..3 {
                assert_eq!(cols[j * 5 + r], codes[r * 3 + j]);
            }
        }
    }

    #[test]
    fn tables_without_spread_or_with_non_finite_entries_give_no_bound() {
        assert!(PqBound::new(&[1.0; 2 * PQ_CODES], 1.0, 0.0).is_none());
        let mut table = vec![0.5; PQ_CODES];
        table[7] = f32::NAN;
        assert!(PqBound::new(&table, 1.0, 0.0).is_none());
        table[7] = 2.0;
        assert!(PqBound::new(&table, 1.0, f32::INFINITY).is_none());
        assert!(PqBound::new(&table, 1.0, 0.0).is_some());
        assert!(PqBound::new(&table[..10], 1.0, 0.0).is_none());
        let bound = PqBound::new(&table, 1.0, 0.0).unwrap();
        assert_eq!(bound.cutoff(f32::INFINITY), None);
        assert_eq!(bound.cutoff(1e9), None, "beyond every row: nothing to skip");
        assert_eq!(bound.cutoff(-1e9), Some(0));
    }

    fn case(m: usize, rows: usize, seed: u64, levels: u32) -> (Vec<f32>, Vec<u8>, Vec<u8>) {
        let mut rng = SplitMix64::new(seed);
        // Few distinct levels make ties (equal distances) common.
        let table: Vec<f32> = (0..m * PQ_CODES)
            .map(|_| (rng.next_u64() % u64::from(levels)) as f32 * 0.37 - 20.0)
            .collect();
        let codes: Vec<u8> = (0..rows * m).map(|_| rng.next_u64() as u8).collect();
        let cols = columns(&codes, m);
        (table, codes, cols)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A row the bound leaves out scores above the threshold, whatever the
        /// table, sign, offset and threshold; and the kernel's choice is the
        /// sums of steps compared with the cutoff.
        #[test]
        fn rows_left_out_score_above_the_threshold(
            m in prop::sample::select(vec![1usize, 4, 8, 16, 32, 64]),
            chunks in 1usize..4,
            start in 0usize..3,
            seed in any::<u64>(),
            levels in prop::sample::select(vec![2u32, 5, 1000, 1 << 20]),
            negative in any::<bool>(),
            offset in -50f32..50.0,
            quantile in 0f64..1.0,
        ) {
            let rows = start + chunks * BOUND_ROWS;
            let (table, codes, cols) = case(m, rows, seed, levels);
            let sign = if negative { -1.0 } else { 1.0 };
            let Some(bound) = PqBound::new(&table, sign, offset) else {
                return Ok(());
            };
            let scores: Vec<f32> = codes
                .chunks_exact(m)
                .map(|c| sign * table_lookup(&table, c) + offset)
                .collect();
            let mut sorted = scores.clone();
            sorted.sort_by(f32::total_cmp);
            let threshold = sorted[((rows - 1) as f64 * quantile) as usize];
            let columns = Columns { codes: &cols, stride: rows, start };
            let Some(cutoff) = bound.cutoff(threshold) else {
                return Ok(());
            };
            for chunk in 0..chunks {
                for i in 0..BOUND_ROWS {
                    let r = chunk * BOUND_ROWS + i;
                    let sum = bound.sum_of(columns, r);
                    if sum > u32::from(cutoff) {
                        prop_assert!(
                            scores[start + r] > threshold,
                            "row {} left out with {} ≤ {threshold}", start + r, scores[start + r]
                        );
                    }
                }
                for count in [BOUND_ROWS, 1, 37] {
                    if let Some(mask) = bound.candidates(columns, chunk * BOUND_ROWS, count, cutoff) {
                        for i in 0..BOUND_ROWS {
                            let sum = bound.sum_of(columns, chunk * BOUND_ROWS + i);
                            let want = i < count && sum <= u32::from(cutoff);
                            prop_assert_eq!(mask >> i & 1 == 1, want, "row {}", i);
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn spread_bits_puts_bit_i_at_2i() {
        for x in [0u32, 1, 0b1011, 0x8000_0001, u32::MAX, 0xdead_beef] {
            let want = (0..32).fold(0u64, |acc, i| acc | u64::from(x >> i & 1) << (2 * i));
            assert_eq!(spread_bits(x), want, "{x:#x}");
        }
    }

    #[test]
    fn rows_outside_the_columns_are_not_bounded() {
        let (table, _, cols) = case(16, BOUND_ROWS + 3, 7, 1000);
        let bound = PqBound::new(&table, 1.0, 0.0).unwrap();
        let columns = Columns {
            codes: &cols,
            stride: BOUND_ROWS + 3,
            start: 0,
        };
        assert!(bound.candidates(columns, 4, BOUND_ROWS, 100).is_none());
        assert!(bound.candidates(columns, 0, BOUND_ROWS + 1, 100).is_none());
        let short = Columns {
            codes: &cols[..cols.len() - 1],
            ..columns
        };
        assert!(bound.candidates(short, 0, BOUND_ROWS, 100).is_none());
        assert_eq!(
            bound.candidates(columns, 3, BOUND_ROWS, 100).is_some(),
            available()
        );
        assert_eq!(bound.candidates(columns, 60, 7, 100).is_some(), available());
        assert_eq!(
            bound.candidates(columns, 3, 0, u16::MAX),
            available().then_some(0)
        );
    }

    /// The vector kernels that make the steps agree with the portable loops.
    #[test]
    fn steps_are_the_same_on_every_cpu() {
        let mut rng = SplitMix64::new(3);
        for sign in [1.0, -1.0] {
            let row: [f32; PQ_CODES] =
                std::array::from_fn(|_| (rng.next_u64() % 100_000) as f32 * 0.013 - 600.0);
            let (lo, hi) = extremes_portable(&row, sign).unwrap();
            assert_eq!(extremes(&row, sign), Some((lo, hi)));
            let per_step = 255.0 / (hi - lo);
            assert_eq!(
                in_steps(&row, sign, lo, per_step),
                in_steps_portable(&row, sign, lo, per_step)
            );
            let mut bad = row;
            bad[200] = f32::NAN;
            assert_eq!(
                (extremes(&bad, sign), extremes_portable(&bad, sign)),
                (None, None)
            );
            bad[200] = f32::NEG_INFINITY;
            assert_eq!(
                (extremes(&bad, sign), extremes_portable(&bad, sign)),
                (None, None)
            );
        }
    }
}
