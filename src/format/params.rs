//! The format's vocabulary: the index types, metrics and model parameters that the
//! manifests record. The model (`crate::model`) gives them behaviour — training,
//! encoding, distances — and builds on this, never the other way round.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::IndexError;

/// The six index types. HNSW types store exactly what their twin stores; the
/// graphs are built at finalize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum IndexType {
    #[serde(rename = "IVF_FLAT")]
    IvfFlat,
    #[serde(rename = "IVF_PQ")]
    IvfPq,
    #[serde(rename = "IVF_SQ")]
    IvfSq,
    #[serde(rename = "IVF_HNSW_FLAT")]
    IvfHnswFlat,
    #[serde(rename = "IVF_HNSW_PQ")]
    IvfHnswPq,
    #[serde(rename = "IVF_HNSW_SQ")]
    IvfHnswSq,
}

/// What a row stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quantizer {
    Flat,
    Pq,
    Sq,
}

impl IndexType {
    pub const ALL: [IndexType; 6] = [
        Self::IvfFlat,
        Self::IvfPq,
        Self::IvfSq,
        Self::IvfHnswFlat,
        Self::IvfHnswPq,
        Self::IvfHnswSq,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::IvfFlat => "IVF_FLAT",
            Self::IvfPq => "IVF_PQ",
            Self::IvfSq => "IVF_SQ",
            Self::IvfHnswFlat => "IVF_HNSW_FLAT",
            Self::IvfHnswPq => "IVF_HNSW_PQ",
            Self::IvfHnswSq => "IVF_HNSW_SQ",
        }
    }

    pub(crate) fn quantizer(self) -> Quantizer {
        match self {
            Self::IvfFlat | Self::IvfHnswFlat => Quantizer::Flat,
            Self::IvfPq | Self::IvfHnswPq => Quantizer::Pq,
            Self::IvfSq | Self::IvfHnswSq => Quantizer::Sq,
        }
    }

    pub fn is_hnsw(self) -> bool {
        matches!(self, Self::IvfHnswFlat | Self::IvfHnswPq | Self::IvfHnswSq)
    }
}

impl fmt::Display for IndexType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for IndexType {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|t| t.name()).collect();
                IndexError::invalid_argument(
                    "type",
                    format!(
                        "unknown index type '{s}'; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Distance metric. `cosine` vectors are normalized before they are stored, so
/// cosine distance is `1 − q·x`; `dot` distance is `−q·x` (smaller is nearer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Metric {
    L2,
    Cosine,
    Dot,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Self::L2 => "l2",
            Self::Cosine => "cosine",
            Self::Dot => "dot",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" => Ok(Self::L2),
            "cosine" => Ok(Self::Cosine),
            "dot" => Ok(Self::Dot),
            _ => Err(IndexError::invalid_argument(
                "metric",
                format!("unknown metric '{s}'; expected one of l2, cosine, dot"),
            )),
        }
    }
}

/// HNSW graph parameters, fixed in the model so every segment is built alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    pub m: u32,
    pub ef_construction: u32,
}

impl HnswParams {
    /// Largest `m`: level-0 lists hold `2·m` links, and larger values only cost memory.
    pub const MAX_M: u32 = 128;

    /// Rejects parameters no graph can be built with.
    pub fn check(&self) -> crate::error::Result<()> {
        if !(2..=Self::MAX_M).contains(&self.m) {
            return Err(IndexError::invalid_argument(
                "hnsw_m",
                format!("must be between 2 and {}, got {}", Self::MAX_M, self.m),
            ));
        }
        crate::limits::check_count(
            "hnsw_ef_construction",
            self.ef_construction,
            1,
            crate::limits::MAX_EF_CONSTRUCTION,
        )
    }
}

/// Defaults `m` = 24, `ef_construction` = 40: a graph's build time follows
/// `ef_construction`, and a wider level 0 (`2·m` links) lets the narrower build
/// search find the neighbours `m` = 16, `ef_construction` = 64 found, at the same
/// recall (BENCHMARKS.md, "Graph parameters").
impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 24,
            ef_construction: 40,
        }
    }
}

/// Everything about a model but its tensors; stored as JSON in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelParams {
    pub format_version: u32,
    pub index_type: IndexType,
    pub metric: Metric,
    pub dim: u32,
    pub num_partitions: u32,
    /// PQ only: sub-vectors per vector (one 8-bit code each).
    pub num_sub_vectors: Option<u32>,
    /// HNSW types only.
    pub hnsw: Option<HnswParams>,
    pub seed: u64,
    pub sample_rows: u64,
    pub max_iterations: u32,
}

impl ModelParams {
    /// Rejects parameters no model can have (the tensors are checked against them on
    /// a full read); for those a model can have, the bytes of one stored row.
    pub(crate) fn check(&self, what: &str) -> crate::error::Result<usize> {
        super::check_version(what, self.format_version)?;
        self.row_width(what)
    }

    /// Bytes of one stored row, or an error when no model has these parameters.
    pub(crate) fn row_width(&self, what: &str) -> crate::error::Result<usize> {
        let dim = self.dim as usize;
        let width = match (self.index_type.quantizer(), self.num_sub_vectors) {
            _ if dim == 0 || self.num_partitions == 0 => None,
            (Quantizer::Flat, None) => Some(dim * 4),
            (Quantizer::Sq, None) => Some(dim),
            (Quantizer::Pq, Some(m)) if m > 0 && dim.is_multiple_of(m as usize) => Some(m as usize),
            _ => None,
        };
        width.ok_or_else(|| {
            IndexError::corrupt(
                what,
                format!(
                    "parameters do not describe a model: dim {dim}, {} partitions, num_sub_vectors {:?}",
                    self.num_partitions, self.num_sub_vectors
                ),
            )
        })
    }
}
