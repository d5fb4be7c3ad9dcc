//! Scoring stored rows against a query, per quantizer and metric.

use arrow::array::RecordBatch;

use super::topk::{Scored, TopK};
use crate::error::{IndexError, Result};
use crate::format::StoredRows;
use crate::model::distance::{dot, l2_sq};
use crate::model::pq::table_lookup;
use crate::model::sq::{sq_dot, sq_l2};
use crate::model::{Codec, Metric, Model};

/// A query prepared for one IVF partition.
pub enum Scorer {
    Flat {
        query: Vec<f32>,
        metric: Metric,
    },
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
    /// `distance = offset − Σ w·code` (dot), with `offset` folding in `1 −` for cosine.
    SqDot {
        weights: Vec<f32>,
        offset: f32,
        base: f32,
    },
}

impl Scorer {
    /// `query` must already be normalized for cosine.
    pub fn new(model: &Model, query: &[f32], partition: usize) -> Result<Self> {
        let metric = model.metric();
        let base = if metric == Metric::Cosine { 1.0 } else { 0.0 };
        Ok(match model.codec() {
            Codec::Flat => Self::Flat {
                query: query.to_vec(),
                metric,
            },
            Codec::Pq(pq) => {
                let c = model.centroid(partition);
                if metric == Metric::L2 {
                    let residual: Vec<f32> = query.iter().zip(c).map(|(q, c)| q - c).collect();
                    Self::Pq {
                        table: pq.distance_table(&residual, false),
                        offset: 0.0,
                        sign: 1.0,
                    }
                } else {
                    Self::Pq {
                        table: pq.distance_table(query, true),
                        offset: base - dot(query, c),
                        sign: -1.0,
                    }
                }
            }
            Codec::Sq(sq) => {
                if metric == Metric::L2 {
                    let (scaled, weights) = sq.query_l2(query);
                    Self::SqL2 { scaled, weights }
                } else {
                    let (weights, offset) = sq.query_dot(query);
                    Self::SqDot {
                        weights,
                        offset,
                        base,
                    }
                }
            }
        })
    }

    /// Distance of one row of PQ or SQ codes; `None` for a FLAT scorer.
    #[inline]
    pub fn score_codes(&self, codes: &[u8]) -> Option<f32> {
        Some(match self {
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
            Self::Flat { .. } => return None,
        })
    }

    /// Distance to row `i` of `rows`; `rows` must have passed [`Scorer::check`].
    #[inline]
    pub fn distance(&self, rows: &StoredRows, i: usize) -> f32 {
        match (self, rows.vectors) {
            (Self::Flat { query, metric }, Some((values, dim))) => {
                let v = &values[i * dim..(i + 1) * dim];
                match metric {
                    Metric::L2 => l2_sq(query, v),
                    Metric::Cosine => 1.0 - dot(query, v),
                    Metric::Dot => -dot(query, v),
                }
            }
            (_, None) => self
                .score_codes(&rows.bytes[i * rows.width..(i + 1) * rows.width])
                .unwrap_or(f32::INFINITY),
            _ => f32::INFINITY,
        }
    }

    /// Fails unless `rows` hold what this scorer reads (vectors for FLAT, codes otherwise).
    pub fn check(&self, rows: &StoredRows) -> Result<()> {
        let fits = match (self, rows.vectors) {
            (Self::Flat { query, .. }, Some((_, dim))) => query.len() == dim,
            (Self::Flat { .. }, None) | (_, Some(_)) => false,
            _ => true,
        };
        if fits {
            Ok(())
        } else {
            Err(IndexError::corrupt(
                "segment",
                "stored column does not match the index type",
            ))
        }
    }

    /// Scores every row of a storage batch into `top`.
    pub fn score_batch(&self, batch: &RecordBatch, top: &mut TopK) -> Result<()> {
        let rows = StoredRows::of(batch)?;
        self.check(&rows)?;
        for (i, &row_id) in rows.ids.iter().enumerate() {
            let distance = self.distance(&rows, i);
            if distance <= top.threshold() {
                top.push(Scored { distance, row_id });
            }
        }
        Ok(())
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
            let model = Arc::new(train_model(dim, data.clone(), &options).unwrap());
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
                let exact = match metric {
                    Metric::L2 => l2_sq(&q, &x),
                    Metric::Cosine => 1.0 - dot(&q, &x),
                    Metric::Dot => -dot(&q, &x),
                };
                let scorer = Scorer::new(&model, &q, p as usize).unwrap();
                let got = scorer.score_codes(code).expect("quantized scorer");
                assert!(
                    (got - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                    "{ty} {metric}: {got} vs {exact}"
                );
            }
        }
    }
}
