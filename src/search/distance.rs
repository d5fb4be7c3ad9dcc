//! Scoring stored rows against a query, per quantizer and metric.

use super::topk::{Scored, TopK};
use crate::error::{IndexError, Result};
use crate::format::StoredRows;
use crate::model::distance::{distance_rows, dot};
use crate::model::pq::{table_lookup, table_lookup_rows};
use crate::model::sq::{sq_dot, sq_dot_rows, sq_l2, sq_l2_rows};
use crate::model::{Codec, Metric, Model};

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
    },
    SqL2 {
        scaled: Vec<f32>,
        weights: Vec<f32>,
    },
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
    },
}

impl Scorer {
    /// `query` must already be normalized for cosine.
    pub(super) fn new(model: &Model, query: &[f32], partition: usize) -> Result<Self> {
        let metric = model.metric();
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
                    CodeScorer::Pq {
                        table: pq.distance_table(&residual, false),
                        offset: 0.0,
                        sign: 1.0,
                    }
                } else {
                    CodeScorer::Pq {
                        table: pq.distance_table(query, true),
                        offset: base - dot(query, c),
                        sign: -1.0,
                    }
                })
            }
            Codec::Sq(sq) => Self::Codes(if metric == Metric::L2 {
                let (scaled, weights) = sq.query_l2(query);
                CodeScorer::SqL2 { scaled, weights }
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

    /// This scorer over `rows`, or an error naming the mismatch when they do not hold
    /// what it reads (vectors of the query's length for FLAT, codes otherwise).
    pub(super) fn bind<'a>(&'a self, rows: &StoredRows<'a>) -> Result<BoundScorer<'a>> {
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
            }),
            _ => Err(IndexError::corrupt(
                "segment",
                "stored column does not match the index type",
            )),
        }
    }
}

impl CodeScorer {
    /// Distance of one row of codes.
    #[inline]
    pub(super) fn score(&self, codes: &[u8]) -> f32 {
        match self {
            Self::Pq {
                table,
                offset,
                sign,
            } => sign * table_lookup(table, codes) + offset,
            Self::SqL2 { scaled, weights } => sq_l2(scaled, weights, codes),
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
    /// scratch space.
    pub(super) fn score_into(&self, ids: &[u64], distances: &mut Vec<f32>, top: &mut TopK) {
        distances.clear();
        self.distances(distances);
        for (&distance, &row_id) in distances.iter().zip(ids) {
            if distance <= top.threshold() {
                top.push(Scored { distance, row_id });
            }
        }
    }

    /// The distances of all the bound rows, appended to `out`, a block at a time
    /// (kernels the CPU's widest vectors run).
    fn distances(&self, out: &mut Vec<f32>) {
        match self {
            Self::Codes {
                scorer: CodeScorer::SqL2 { scaled, weights },
                bytes,
                ..
            } => sq_l2_rows(scaled, weights, bytes, out),
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
                    },
                bytes,
                width,
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
            } => scorer.score(&bytes[i * width..(i + 1) * width]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rng::SplitMix64;
    use crate::model::{decode_rows, train_model, Encoder, IndexType, TrainOptions};
    use std::sync::Arc;

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
            let options = TrainOptions {
                index_type: ty,
                metric,
                num_partitions: 4,
                num_sub_vectors: Some(4),
                max_iterations: 5,
                ..Default::default()
            };
            let model =
                Arc::new(train_model(dim, data.clone(), &options, &Default::default()).unwrap());
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
}
