//! Scoring stored rows against a query, per quantizer and metric.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::topk::TopK;
use super::SearchTarget;
use crate::error::{IndexError, Result};
use crate::format::Metric;
use crate::format::StoredRows;
use crate::model::distance::{distance_rows, dot, l2_sq};
use crate::model::pq::{table_lookup, table_lookup_rows, PQ_CODES};
use crate::model::pq_bound::{Columns, PqBound, BOUND_ROWS};
use crate::model::sq::{sq_dot, sq_dot_rows, sq_l2, sq_l2_rows};
use crate::model::ProductQuantizer;
use crate::model::{Codec, Model};

/// A query prepared for one IVF partition.
pub(super) enum Scorer {
    /// FLAT rows are whole vectors, scored with the metric's distance.
    Flat { query: Vec<f32>, metric: Metric },
    /// PQ and SQ rows are codes, scored without decoding them.
    Codes(CodeScorer),
}

/// A query's scoring of PQ or SQ codes in one partition.
pub(super) enum CodeScorer {
    /// `distance = sign · Σ table[code] + offset`.
    Pq {
        table: Vec<f32>,
        offset: f32,
        sign: f32,
        /// The table in steps, made on the first scan of rows stored by columns.
        bound: OnceCell<Option<PqBound>>,
    },
    /// `distance = Σ (shifted − scale·code)²`.
    SqL2 { shifted: Vec<f32>, scales: Vec<f32> },
    /// `distance = base − (offset + Σ w·code)`: the metric's distance of a dot product
    /// (`base` is 1 for cosine, 0 for dot).
    SqDot {
        weights: Vec<f32>,
        offset: f32,
        base: f32,
    },
}

/// A scorer bound to rows that hold what it reads; made by [`Scorer::bind`].
pub(super) enum BoundScorer<'a> {
    Flat {
        query: &'a [f32],
        metric: Metric,
        values: &'a [f32],
    },
    Codes {
        scorer: &'a CodeScorer,
        bytes: &'a [u8],
        width: usize,
        /// The same rows' codes by columns, when the block keeps them (PQ).
        columns: Option<Columns<'a>>,
    },
}

impl Scorer {
    /// `query` must already be normalized for cosine.
    pub(super) fn new(model: &Model, query: &[f32], partition: usize) -> Result<Self> {
        let metric = model.info().metric();
        let base = if metric == Metric::Cosine { 1.0 } else { 0.0 };
        Ok(match model.codec() {
            Codec::Flat => Self::Flat {
                query: query.to_vec(),
                metric,
            },
            Codec::Pq(pq) => {
                let c = model.centroid(partition);
                Self::Codes(if metric == Metric::L2 {
                    let residual: Vec<f32> = query.iter().zip(c).map(|(q, c)| q - c).collect();
                    CodeScorer::pq(pq.distance_table(&residual, false), 0.0, 1.0)
                } else {
                    CodeScorer::pq(pq.distance_table(query, true), base - dot(query, c), -1.0)
                })
            }
            Codec::Sq(sq) => Self::Codes(if metric == Metric::L2 {
                let (shifted, scales) = sq.query_l2(query);
                CodeScorer::SqL2 { shifted, scales }
            } else {
                let (weights, offset) = sq.query_dot(query);
                CodeScorer::SqDot {
                    weights,
                    offset,
                    base,
                }
            }),
        })
    }

    /// This scorer over `rows` (whose codes `columns` may hold by columns too), or an
    /// error naming the mismatch when they do not hold what it reads (vectors of the
    /// query's length for FLAT, codes otherwise).
    pub(super) fn bind<'a>(
        &'a self,
        rows: &StoredRows<'a>,
        columns: Option<Columns<'a>>,
    ) -> Result<BoundScorer<'a>> {
        match (self, rows.vectors) {
            (Self::Flat { query, metric }, Some((values, dim))) if query.len() == dim => {
                Ok(BoundScorer::Flat {
                    query,
                    metric: *metric,
                    values,
                })
            }
            (Self::Codes(scorer), None) => Ok(BoundScorer::Codes {
                scorer,
                bytes: rows.bytes,
                width: rows.width,
                columns,
            }),
            _ => Err(IndexError::corrupt(
                "segment",
                "stored column does not match the index type",
            )),
        }
    }
}

/// The most a target keeps of PQ's query-independent table terms ([`PqTerms`]);
/// indexes with more partitions compute whole tables.
const MAX_PQ_TERMS_BYTES: usize = 64 << 20;
/// The most a scan keeps of its queries' shared PQ terms.
const MAX_QUERY_TERMS_BYTES: usize = 64 << 20;

/// For a PQ index searched with L2, each partition's query-independent table terms
/// (`ProductQuantizer::residual_terms`), worked out the first time a search probes
/// the partition: a query's table for it is then one addition per entry instead of a
/// distance per entry. Kept with the search target, so with a [`super::SearchCache`]
/// they outlive the search.
#[derive(Debug)]
pub(crate) struct PqTerms {
    norms: Vec<f32>,
    partitions: Vec<OnceLock<Box<[f32]>>>,
    bytes: usize,
}

impl PqTerms {
    /// `None` for other indexes, or when all partitions' terms would take more than
    /// `MAX_PQ_TERMS_BYTES`.
    pub(super) fn of(model: &Model) -> Option<Self> {
        let Codec::Pq(pq) = model.codec() else {
            return None;
        };
        let bytes = model.info().num_partitions() * pq.num_sub_vectors * PQ_CODES * 4;
        (model.info().metric() == Metric::L2 && bytes <= MAX_PQ_TERMS_BYTES).then(|| Self {
            norms: pq.codeword_norms(),
            partitions: (0..model.info().num_partitions())
                .map(|_| OnceLock::new())
                .collect(),
            bytes,
        })
    }

    /// Bytes the terms take once every partition was probed.
    pub(super) fn memory_size(&self) -> usize {
        self.bytes + self.norms.len() * 4
    }

    fn of_partition(&self, model: &Model, pq: &ProductQuantizer, p: usize) -> Option<&[f32]> {
        let terms = self
            .partitions
            .get(p)?
            .get_or_init(|| pq.residual_terms(model.centroid(p), &self.norms).into());
        Some(terms)
    }
}

/// Prepares a scan's queries for the partitions they probe, keeping per query what
/// all its partitions share — for PQ, the query–codeword products — so a query
/// probing 20 partitions computes them once, not 20 times.
pub(super) struct Preparer {
    target: Arc<SearchTarget>,
    shared: SharedTerms,
}

/// Per query, the PQ terms all its partitions share, up to `MAX_QUERY_TERMS_BYTES`.
#[derive(Default)]
struct SharedTerms {
    by_query: HashMap<u32, Arc<[f32]>>,
    bytes: usize,
}

impl SharedTerms {
    fn get_or_make(&mut self, query_id: u32, make: impl FnOnce() -> Vec<f32>) -> Arc<[f32]> {
        if let Some(terms) = self.by_query.get(&query_id) {
            return Arc::clone(terms);
        }
        let terms: Arc<[f32]> = make().into();
        if self.bytes + terms.len() * 4 <= MAX_QUERY_TERMS_BYTES {
            self.bytes += terms.len() * 4;
            self.by_query.insert(query_id, Arc::clone(&terms));
        }
        terms
    }
}

impl Preparer {
    pub(super) fn new(target: Arc<SearchTarget>) -> Self {
        Self {
            target,
            shared: SharedTerms::default(),
        }
    }

    /// Query `query_id` (`query`, normalized for cosine) prepared for `partition`;
    /// the same distances as [`Scorer::new`], up to rounding.
    pub(super) fn scorer(
        &mut self,
        query_id: u32,
        query: &[f32],
        partition: usize,
    ) -> Result<Scorer> {
        let model = &self.target.model;
        let Codec::Pq(pq) = model.codec() else {
            return Scorer::new(model, query, partition);
        };
        let c = model.centroid(partition);
        let own = self
            .target
            .pq_terms
            .as_ref()
            .and_then(|t| t.of_partition(model, pq, partition));
        Ok(Scorer::Codes(match (model.info().metric(), own) {
            (Metric::L2, Some(own)) => {
                let shared = self.shared.get_or_make(query_id, || pq.query_terms(query));
                CodeScorer::pq(
                    own.iter().zip(shared.iter()).map(|(a, b)| a + b).collect(),
                    l2_sq(query, c),
                    1.0,
                )
            }
            (Metric::L2, None) => return Scorer::new(model, query, partition),
            (metric, _) => CodeScorer::pq(
                self.shared
                    .get_or_make(query_id, || pq.distance_table(query, true))
                    .to_vec(),
                if metric == Metric::Cosine { 1.0 } else { 0.0 } - dot(query, c),
                -1.0,
            ),
        }))
    }
}

impl CodeScorer {
    fn pq(table: Vec<f32>, offset: f32, sign: f32) -> Self {
        Self::Pq {
            table,
            offset,
            sign,
            bound: OnceCell::new(),
        }
    }

    /// Distance of one row of codes.
    #[inline]
    pub(super) fn score(&self, codes: &[u8]) -> f32 {
        match self {
            Self::Pq {
                table,
                offset,
                sign,
                ..
            } => sign * table_lookup(table, codes) + offset,
            Self::SqL2 { shifted, scales } => sq_l2(shifted, scales, codes),
            Self::SqDot {
                weights,
                offset,
                base,
            } => base - sq_dot(weights, *offset, codes),
        }
    }
}

impl BoundScorer<'_> {
    /// Scores every bound row (whose row ids are `ids`) into `top`; `distances` is
    /// scratch space. Returns how many rows bounds showed could not enter `top`
    /// and were left unscored.
    pub(super) fn score_into(
        &self,
        ids: &[u64],
        distances: &mut Vec<f32>,
        top: &mut TopK,
    ) -> usize {
        if let Self::Codes {
            scorer:
                scorer @ CodeScorer::Pq {
                    table,
                    offset,
                    sign,
                    bound,
                },
            bytes,
            width,
            columns: Some(columns),
        } = self
        {
            let bound = bound.get_or_init(|| PqBound::new(table, *sign, *offset));
            if let Some(bound) = bound {
                return score_bounded(scorer, bound, *columns, bytes, *width, ids, distances, top);
            }
        }
        distances.clear();
        self.distances(distances);
        top.offer_all(distances, ids);
        0
    }

    /// The distances of all the bound rows, appended to `out`, a block at a time
    /// (kernels the CPU's widest vectors run).
    fn distances(&self, out: &mut Vec<f32>) {
        match self {
            Self::Codes {
                scorer: CodeScorer::SqL2 { shifted, scales },
                bytes,
                ..
            } => sq_l2_rows(shifted, scales, bytes, out),
            Self::Codes {
                scorer:
                    CodeScorer::SqDot {
                        weights,
                        offset,
                        base,
                    },
                bytes,
                ..
            } => {
                let from = out.len();
                sq_dot_rows(weights, *offset, bytes, out);
                for d in &mut out[from..] {
                    *d = base - *d;
                }
            }
            Self::Codes {
                scorer:
                    CodeScorer::Pq {
                        table,
                        offset,
                        sign,
                        ..
                    },
                bytes,
                width,
                ..
            } => table_lookup_rows(table, bytes, *width, *sign, *offset, out),
            Self::Flat {
                query,
                metric,
                values,
            } => distance_rows(*metric, query, values, out),
        }
    }

    /// Distance to row `i` of the bound rows.
    #[inline]
    pub(super) fn distance(&self, i: usize) -> f32 {
        match self {
            Self::Flat {
                query,
                metric,
                values,
            } => {
                let dim = query.len();
                metric.distance(query, &values[i * dim..(i + 1) * dim])
            }
            Self::Codes {
                scorer,
                bytes,
                width,
                ..
            } => scorer.score(&bytes[i * width..(i + 1) * width]),
        }
    }
}

/// [`BoundScorer::score_into`] for PQ rows kept by columns too: 64 rows at a time,
/// only those whose bound is within the current k-th distance are scored (by the
/// same lookup as every other row), so the hits are the same as scoring them all.
/// Returns how many rows were left unscored.
#[allow(clippy::too_many_arguments)]
fn score_bounded(
    scorer: &CodeScorer,
    bound: &PqBound,
    columns: Columns<'_>,
    bytes: &[u8],
    width: usize,
    ids: &[u64],
    distances: &mut Vec<f32>,
    top: &mut TopK,
) -> usize {
    let CodeScorer::Pq {
        table,
        offset,
        sign,
        ..
    } = scorer
    else {
        return 0;
    };
    let n = ids.len().min(bytes.len() / width.max(1));
    let (mut first, mut scored) = (0, 0);
    while first < n {
        let end = (first + BOUND_ROWS).min(n);
        let candidates = bound
            .cutoff(top.threshold())
            .and_then(|cutoff| bound.candidates(columns, first, end - first, cutoff));
        let Some(mut candidates) = candidates else {
            // Nothing to bound by yet (fewer than k rows seen): score them all.
            distances.clear();
            table_lookup_rows(
                table,
                &bytes[first * width..end * width],
                width,
                *sign,
                *offset,
                distances,
            );
            top.offer_all(distances, &ids[first..end]);
            scored += end - first;
            first = end;
            continue;
        };
        scored += candidates.count_ones() as usize;
        while candidates != 0 {
            let i = first + candidates.trailing_zeros() as usize;
            let distance = sign * table_lookup(table, &bytes[i * width..(i + 1) * width]) + offset;
            top.offer(distance, ids[i]);
            candidates &= candidates - 1;
        }
        first = end;
    }
    n - scored
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::IndexType;
    use crate::model::pq_bound;
    use crate::model::rng::SplitMix64;
    use crate::model::{decode_rows, train_model, Encoder, TrainOptions};
    use std::sync::Arc;

    /// A model of 4 partitions (and 4 PQ sub-vectors) trained on `data`.
    fn small_model(ty: IndexType, metric: Metric, dim: usize, data: &[f32]) -> Arc<Model> {
        let options = TrainOptions {
            index_type: ty,
            metric,
            num_partitions: 4,
            num_sub_vectors: Some(4),
            max_iterations: 5,
            ..Default::default()
        };
        Arc::new(train_model(dim, data.to_vec(), &options, &Default::default()).unwrap())
    }

    /// A scan's prepared PQ scorers (shared query terms, and for L2 the target's
    /// residual terms) score as the direct ones do, for every metric.
    #[test]
    fn prepared_pq_scores_equal_direct_ones() {
        let dim = 16;
        let mut rng = SplitMix64::new(6);
        let data: Vec<f32> = (0..2000 * dim).map(|_| rng.normal() as f32).collect();
        for metric in [Metric::L2, Metric::Dot, Metric::Cosine] {
            let model = small_model(IndexType::IvfPq, metric, dim, &data);
            let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
            let target = Arc::new(SearchTarget {
                location: crate::format::IndexLocation::from_url("file:///t", &runtime).unwrap(),
                model: Arc::clone(&model),
                version: 1,
                segments: vec![],
                blocks_by_partition: vec![],
                rows_by_partition: vec![],
                largest_rows: vec![],
                pq_terms: PqTerms::of(&model).map(Arc::new),
            });
            assert_eq!(target.pq_terms.is_some(), metric == Metric::L2);
            let mut preparer = Preparer::new(target);
            let codes: Vec<u8> = (0..4 * 30).map(|_| rng.next_u64() as u8).collect();
            for query_id in 0..3 {
                let mut q: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
                if metric == Metric::Cosine {
                    crate::model::distance::normalize(&mut q);
                }
                for p in 0..4 {
                    let (Scorer::Codes(direct), Scorer::Codes(prepared)) = (
                        Scorer::new(&model, &q, p).unwrap(),
                        preparer.scorer(query_id, &q, p).unwrap(),
                    ) else {
                        panic!("PQ scores codes");
                    };
                    for row in codes.chunks(4) {
                        let (a, b) = (direct.score(row), prepared.score(row));
                        assert!(
                            (a - b).abs() < 1e-4 * (1.0 + a.abs()),
                            "{metric}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// Asymmetric PQ and SQ scores equal the exact distance to the decoded vector
    /// (`decode_rows`, which the HNSW builder uses).
    #[test]
    fn quantized_scores_are_distances_to_the_reconstruction() {
        let dim = 16;
        let mut rng = SplitMix64::new(5);
        let data: Vec<f32> = (0..2000 * dim).map(|_| rng.normal() as f32).collect();
        for (ty, metric) in [
            (IndexType::IvfPq, Metric::L2),
            (IndexType::IvfPq, Metric::Dot),
            (IndexType::IvfPq, Metric::Cosine),
            (IndexType::IvfSq, Metric::L2),
            (IndexType::IvfSq, Metric::Dot),
            (IndexType::IvfSq, Metric::Cosine),
        ] {
            let model = small_model(ty, metric, dim, &data);
            let mut rows = data[..20 * dim].to_vec();
            let (mut parts, mut codes) = (Vec::new(), Vec::new());
            Encoder::new(Arc::clone(&model)).encode(&mut rows, &mut parts, &mut codes);
            let mut q: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
            if metric == Metric::Cosine {
                crate::model::distance::normalize(&mut q);
            }
            let w = model.code_width();
            for (r, &p) in parts.iter().enumerate() {
                let code = &codes[r * w..(r + 1) * w];
                // The quantizer's reconstruction, as finalize decodes rows for graphs.
                let x = decode_rows(&model, p as usize, code).unwrap();
                let exact = metric.distance(&q, &x);
                let Scorer::Codes(scorer) = Scorer::new(&model, &q, p as usize).unwrap() else {
                    panic!("{ty} scores codes");
                };
                let got = scorer.score(code);
                assert!(
                    (got - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                    "{ty} {metric}: {got} vs {exact}"
                );
            }
        }
    }

    /// Scanning PQ rows with their codes by columns (bounds skip rows) finds the
    /// same k nearest rows as scoring every row, for each metric, k, row count and
    /// part of a block, ties included.
    #[test]
    fn bounded_pq_scans_find_what_full_scans_find() {
        let dim = 16;
        let mut rng = SplitMix64::new(11);
        let data: Vec<f32> = (0..3000 * dim).map(|_| rng.normal() as f32).collect();
        for metric in [Metric::L2, Metric::Dot, Metric::Cosine] {
            let model = small_model(IndexType::IvfPq, metric, dim, &data);
            let w = model.code_width();
            // Duplicated rows make equal distances, which ties must break by row id.
            let mut rows = [&data[..1000 * dim], &data[..300 * dim]].concat();
            let (mut parts, mut codes) = (Vec::new(), Vec::new());
            Encoder::new(Arc::clone(&model)).encode(&mut rows, &mut parts, &mut codes);
            let n = parts.len();
            let ids: Vec<u64> = (0..n as u64).map(|i| (i * 7919) % 10007).collect();
            let columns = pq_bound::columns(&codes, w);
            for query in 0..4 {
                let mut q: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
                if metric == Metric::Cosine {
                    crate::model::distance::normalize(&mut q);
                }
                let Scorer::Codes(scorer) = Scorer::new(&model, &q, query % 4).unwrap() else {
                    panic!("PQ scores codes");
                };
                for (k, range) in [(1, 0..n), (10, 0..n), (100, 5..n - 3), (10, 17..17 + 64)] {
                    let top_of = |columns: Option<Columns>| {
                        let bound = BoundScorer::Codes {
                            scorer: &scorer,
                            bytes: &codes[range.start * w..range.end * w],
                            width: w,
                            columns,
                        };
                        let mut top = TopK::new(k);
                        let skipped =
                            bound.score_into(&ids[range.clone()], &mut Vec::new(), &mut top);
                        (top.into_sorted(), skipped)
                    };
                    let bounded = Columns {
                        codes: &columns,
                        stride: n,
                        start: range.start,
                    };
                    let ((found, skipped), (all, none)) = (top_of(Some(bounded)), top_of(None));
                    assert_eq!(found, all, "{metric}, k {k}, rows {range:?}");
                    assert_eq!(none, 0);
                    if k == 1 && pq_bound::available() {
                        // Most rows cannot beat the best of the first 64.
                        assert!(skipped > n / 2, "{metric}: {skipped} of {n} rows skipped");
                    }
                }
            }
        }
    }
}
