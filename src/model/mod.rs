//! The shared model: IVF centroids, the metric and the quantizer, trained once by
//! the coordinator and used by every worker, finalize and search.

pub(crate) mod distance;
mod encode;
pub(crate) mod input;
mod io;
pub(crate) mod kmeans;
pub(crate) mod pq;
pub(crate) mod pq_bound;
pub(crate) mod rng;
pub(crate) mod simd;
pub(crate) mod sq;
mod train;

use crate::error::IndexError;
use crate::format::{HnswParams, IndexType, Metric, ModelParams, Quantizer};
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub use encode::{decode_rows, Encoder};
pub(crate) use io::check_before_training;
pub(crate) use pq::ProductQuantizer;
pub use simd::{simd_level, SimdLevel, SIMD_ENV};
pub(crate) use sq::ScalarQuantizer;
pub use train::TrainOptions;
pub(crate) use train::{train_model, SampleCollector};

/// Behaviour of the format's metric: the distance search ranks by.
impl Metric {
    /// The distance search ranks by, between two vectors as stored (for cosine:
    /// normalized; see [`Metric::prepare`]). Smaller is nearer.
    #[inline]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        self.distance_with::<distance::Exact>(a, b)
    }

    /// Turns a vector into its stored form in place: cosine normalizes it to unit
    /// length (a zero vector stays zero); L2 and dot leave it as it is.
    pub fn prepare(self, v: &mut [f32]) {
        if self == Self::Cosine {
            distance::normalize(v);
        }
    }

    /// The one metric → distance mapping, over either set of kernels (search's exact
    /// ones or the graph builder's wide ones).
    #[inline(always)]
    pub(crate) fn distance_with<K: distance::Kernels>(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Self::L2 => K::l2_sq(a, b),
            Self::Cosine => 1.0 - K::dot(a, b),
            Self::Dot => -K::dot(a, b),
        }
    }
}

/// A model's identity and parameters without its tensors: all that finalize needs,
/// since it copies stored rows and never decodes them (but for the HNSW types).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    params: ModelParams,
    fingerprint: String,
    /// Bytes of one stored row, derived from checked parameters.
    code_width: usize,
}

impl ModelInfo {
    /// The identity of a model with checked parameters (`what` names them in errors).
    pub(crate) fn try_new(
        params: ModelParams,
        fingerprint: String,
        what: &str,
    ) -> crate::error::Result<Self> {
        let code_width = params.row_width(what)?;
        Ok(Self {
            params,
            fingerprint,
            code_width,
        })
    }

    pub fn params(&self) -> &ModelParams {
        &self.params
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn dim(&self) -> usize {
        self.params.dim as usize
    }

    pub fn num_partitions(&self) -> usize {
        self.params.num_partitions as usize
    }

    pub fn index_type(&self) -> IndexType {
        self.params.index_type
    }

    /// The graph parameters, for the HNSW types only.
    pub fn hnsw_params(&self) -> Option<HnswParams> {
        self.params.hnsw.filter(|_| self.index_type().is_hnsw())
    }

    pub fn metric(&self) -> Metric {
        self.params.metric
    }

    /// Bytes one stored row takes besides its row id.
    pub(crate) fn code_width(&self) -> usize {
        self.code_width
    }

    /// The Arrow schema of the stored rows (shards and segments alike).
    pub(crate) fn storage_schema(&self) -> arrow::datatypes::SchemaRef {
        encode::storage_schema(self)
    }

    /// The fingerprint and parameters of the model named by the index's `index.json`,
    /// read from `index.json` alone: the model file is neither read nor fingerprinted
    /// ([`Model::read_current`] does both).
    pub async fn read_current(
        location: &crate::format::IndexLocation,
    ) -> crate::error::Result<Self> {
        io::read_current_model_info(location).await
    }
}

/// A trained model. Immutable; identified by the fingerprint of its canonical bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    info: ModelInfo,
    /// `num_partitions × dim`, row-major.
    centroids: Vec<f32>,
    codec: Codec,
}

/// A model's quantizer with the data it was trained to: how a vector becomes the
/// stored bytes of a row, and back. One variant per [`Quantizer`], so a PQ or SQ
/// model without its codebook or bounds cannot be represented.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Codec {
    /// The vector itself, as little-endian `f32`.
    Flat,
    /// One 8-bit code per sub-vector of the residual (vector minus its centroid).
    Pq(ProductQuantizer),
    /// One 8-bit code per dimension, between per-dimension bounds.
    Sq(ScalarQuantizer),
}

impl Codec {
    pub(crate) fn quantizer(&self) -> Quantizer {
        match self {
            Self::Flat => Quantizer::Flat,
            Self::Pq(_) => Quantizer::Pq,
            Self::Sq(_) => Quantizer::Sq,
        }
    }

    /// Encodes `v` (of IVF partition with centroid `centroid`) into `out`, one
    /// stored row; `residual` is scratch of the vector's dimension.
    #[inline]
    pub(crate) fn encode(&self, v: &[f32], centroid: &[f32], residual: &mut [f32], out: &mut [u8]) {
        match self {
            Self::Flat => {
                for (o, x) in out.chunks_exact_mut(4).zip(v) {
                    o.copy_from_slice(&x.to_le_bytes());
                }
            }
            Self::Pq(pq) => {
                for ((r, x), c) in residual.iter_mut().zip(v).zip(centroid) {
                    *r = x - c;
                }
                pq.encode(residual, out);
            }
            Self::Sq(sq) => sq.encode(v, out),
        }
    }

    /// Decodes one stored row of IVF partition with centroid `centroid` into `out`:
    /// exact for FLAT, the quantizer's reconstruction for PQ and SQ.
    #[inline]
    pub(crate) fn decode(&self, codes: &[u8], centroid: &[f32], out: &mut [f32]) {
        match self {
            Self::Flat => {
                for (o, b) in out.iter_mut().zip(codes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Self::Sq(sq) => sq.decode(codes, out),
            Self::Pq(pq) => {
                let d = pq.sub_dim;
                for (m, &code) in codes.iter().enumerate() {
                    let sub = &pq.codebook[(m * pq::PQ_CODES + code as usize) * d..][..d];
                    out[m * d..(m + 1) * d].copy_from_slice(sub);
                }
                out.iter_mut().zip(centroid).for_each(|(x, c)| *x += c);
            }
        }
    }
}

impl Model {
    /// A model from its parameters and tensors, checked against each other: the
    /// codec is the index type's, and every tensor has the size the parameters say.
    pub(crate) fn try_new(
        params: ModelParams,
        centroids: Vec<f32>,
        codec: Codec,
    ) -> crate::error::Result<Self> {
        let dim = params.dim as usize;
        let bad = |why: String| IndexError::invalid_argument("model", why);
        if codec.quantizer() != params.index_type.quantizer() {
            return Err(bad(format!(
                "a {:?} codec for index type {}",
                codec.quantizer(),
                params.index_type
            )));
        }
        if centroids.len() != dim * params.num_partitions as usize {
            return Err(bad(format!(
                "{} centroid values for {} partitions of dimension {dim}",
                centroids.len(),
                params.num_partitions
            )));
        }
        match &codec {
            Codec::Pq(pq) => {
                let m = pq.num_sub_vectors;
                if params.num_sub_vectors != Some(m as u32)
                    || m == 0
                    || m * pq.sub_dim != dim
                    || pq.codebook.len() != m * pq::PQ_CODES * pq.sub_dim
                {
                    return Err(bad(
                        "PQ codebook does not match num_sub_vectors and dim".into()
                    ));
                }
            }
            Codec::Sq(sq) if sq.lower.len() != dim || sq.upper.len() != dim => {
                return Err(bad("SQ bounds do not match dim".into()));
            }
            _ => {}
        }
        let mut model = Self {
            info: ModelInfo::try_new(params, String::new(), "model")?,
            centroids,
            codec,
        };
        model.info.fingerprint = io::fingerprint(&model);
        Ok(model)
    }

    /// `num_partitions × dim` centroids, row-major.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    pub(crate) fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The model's identity and parameters (its fingerprint, type, metric, dimension…).
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Bytes the model takes in memory, roughly (centroids and quantizer data).
    pub(crate) fn memory_size(&self) -> usize {
        let codec = match &self.codec {
            Codec::Flat => 0,
            Codec::Pq(pq) => pq.codebook.len(),
            Codec::Sq(sq) => sq.lower.len() + sq.upper.len(),
        };
        4 * (self.centroids.len() + codec) + 1024
    }

    pub(crate) fn centroid(&self, p: usize) -> &[f32] {
        &self.centroids[p * self.info().dim()..(p + 1) * self.info().dim()]
    }

    /// Bytes one stored row takes besides its row id.
    pub(crate) fn code_width(&self) -> usize {
        self.info.code_width()
    }

    /// Partitions ranked by distance from `query` (already normalized for cosine).
    pub(crate) fn rank_partitions(&self, query: &[f32], nprobes: usize) -> Vec<usize> {
        let mut d: Vec<(f32, usize)> = self
            .centroids
            .chunks_exact(self.info().dim())
            .enumerate()
            .map(|(i, c)| (distance::l2_sq(query, c), i))
            .collect();
        let n = nprobes.min(d.len());
        if n < d.len() {
            d.select_nth_unstable_by(n, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            d.truncate(n);
        }
        d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        d.into_iter().map(|(_, i)| i).collect()
    }

    /// The Arrow schema of the stored rows (shards and segments alike).
    pub(crate) fn storage_schema(&self) -> arrow::datatypes::SchemaRef {
        self.info.storage_schema()
    }

    /// Trains a model on `sample`, rows of `dim` floats (row-major), the in-memory
    /// counterpart of [`crate::VectorIndex::create`], which samples a table first.
    pub fn train(
        dim: usize,
        sample: Vec<f32>,
        options: &TrainOptions,
    ) -> crate::error::Result<Self> {
        train_model(dim, sample, options, &crate::progress::Tracker::default())
    }

    /// Writes the model file and `index.json` at `location`: what
    /// [`crate::VectorIndex::create`] does once it has trained the model.
    pub async fn write(&self, location: &crate::format::IndexLocation) -> crate::error::Result<()> {
        io::write_model(self, location).await
    }

    /// The model named by the index's `index.json`.
    pub async fn read_current(
        location: &crate::format::IndexLocation,
    ) -> crate::error::Result<Self> {
        io::read_current_model(location).await
    }
}
