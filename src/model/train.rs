//! Training the shared model on a sample.

use std::collections::BinaryHeap;

use rayon::prelude::*;

use super::distance::{nearest_l2, normalize};
use super::kmeans::{kmeans, KMeansParams};
use super::pq::PQ_CODES;
use super::{
    Codec, HnswParams, IndexType, Metric, Model, ModelParams, ProductQuantizer, Quantizer,
    ScalarQuantizer,
};
use crate::error::{IndexError, Result};
use crate::format::FORMAT_VERSION;
use crate::progress::{ProgressStep, Tracker};

/// What to train. `Default` gives IVF_FLAT, l2, 256 partitions.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TrainOptions {
    pub index_type: IndexType,
    pub metric: Metric,
    pub num_partitions: usize,
    /// PQ: sub-vectors per vector; default `dim / 8` (rounded down to a divisor of dim).
    pub num_sub_vectors: Option<usize>,
    /// Rows sampled for training; default `max(256 × num_partitions, 16384)`.
    pub sample_rows: Option<usize>,
    pub max_iterations: usize,
    pub seed: u64,
    pub hnsw: HnswParams,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            index_type: IndexType::IvfFlat,
            metric: Metric::L2,
            num_partitions: 256,
            num_sub_vectors: None,
            sample_rows: None,
            max_iterations: 25,
            seed: 42,
            hnsw: HnswParams::default(),
        }
    }
}

/// Builders, one per field: the struct is `#[non_exhaustive]` (it will grow), so
/// code outside this crate starts from `TrainOptions::default()`.
impl TrainOptions {
    /// Sets `index_type` (default: IVF_FLAT).
    pub fn with_index_type(mut self, index_type: IndexType) -> Self {
        self.index_type = index_type;
        self
    }

    /// Sets `metric` (default: l2).
    pub fn with_metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Sets `num_partitions` (default: 256).
    pub fn with_num_partitions(mut self, num_partitions: usize) -> Self {
        self.num_partitions = num_partitions;
        self
    }

    /// Sets `num_sub_vectors` (PQ; default `dim / 8`, rounded down to a divisor of dim).
    pub fn with_num_sub_vectors(mut self, num_sub_vectors: usize) -> Self {
        self.num_sub_vectors = Some(num_sub_vectors);
        self
    }

    /// Sets `sample_rows` (default `max(256 × num_partitions, 16384)`).
    pub fn with_sample_rows(mut self, sample_rows: usize) -> Self {
        self.sample_rows = Some(sample_rows);
        self
    }

    /// Sets `max_iterations` (default: 25).
    pub fn with_max_iterations(mut self, max_iterations: usize) -> Self {
        self.max_iterations = max_iterations;
        self
    }

    /// Sets `seed` (default: 42).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets `hnsw` (HNSW types; default `HnswParams::default()`).
    pub fn with_hnsw(mut self, hnsw: HnswParams) -> Self {
        self.hnsw = hnsw;
        self
    }
}

impl TrainOptions {
    /// Refuses counts outside [`crate::limits`] and graph parameters no graph can
    /// have; the checks that need the data (rows, dimension) come with training.
    pub fn check(&self) -> Result<()> {
        use crate::limits::*;
        check_count("num_partitions", self.num_partitions, 1, MAX_PARTITIONS)?;
        if let Some(rows) = self.sample_rows {
            check_count("sample_rows", rows, 1, MAX_SAMPLE_ROWS)?;
        }
        check_count("max_iterations", self.max_iterations, 1, MAX_ITERATIONS)?;
        if let Some(m) = self.num_sub_vectors {
            check_count("num_sub_vectors", m, 1, u32::MAX as usize)?;
        }
        if self.index_type.is_hnsw() {
            self.hnsw.check()?;
        }
        Ok(())
    }

    pub fn sample_rows(&self) -> usize {
        self.sample_rows
            .unwrap_or((256 * self.num_partitions).max(16_384))
    }

    fn num_sub_vectors(&self, dim: usize) -> Result<usize> {
        match self.num_sub_vectors {
            Some(m) if m == 0 || !dim.is_multiple_of(m) => Err(IndexError::invalid_argument(
                "num_sub_vectors",
                format!("{m} does not divide the dimension {dim}"),
            )),
            Some(m) => Ok(m),
            None => Ok((1..=(dim / 8).max(1))
                .rev()
                .find(|&m| dim.is_multiple_of(m))
                .unwrap_or(1)),
        }
    }
}

/// Keeps a uniform sample of bounded size from a stream of vectors, independent
/// of the order in which rows arrive: each row gets a key hashed from the seed
/// and its contents, and the rows with the smallest keys are kept.
pub(crate) struct SampleCollector {
    dim: usize,
    capacity: usize,
    seed: u64,
    heap: BinaryHeap<(u64, usize)>,
    slots: Vec<f32>,
}

impl SampleCollector {
    pub(crate) fn new(dim: usize, capacity: usize, seed: u64) -> Self {
        Self {
            dim,
            capacity,
            seed,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
        }
    }

    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    fn key(&self, v: &[f32]) -> u64 {
        let mut h = self.seed ^ 0xcbf2_9ce4_8422_2325;
        for x in v {
            h = (h ^ x.to_bits() as u64).wrapping_mul(0x0100_0000_01b3);
        }
        super::rng::SplitMix64::new(h).next_u64()
    }

    pub(crate) fn push_rows(&mut self, rows: &[f32]) {
        for v in rows.chunks_exact(self.dim) {
            let key = self.key(v);
            if self.heap.len() < self.capacity {
                let slot = self.heap.len();
                self.slots.extend_from_slice(v);
                self.heap.push((key, slot));
            } else if let Some(&(top, slot)) = self.heap.peek() {
                if key < top {
                    self.heap.pop();
                    self.slots[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(v);
                    self.heap.push((key, slot));
                }
            }
        }
    }

    /// The sample, ordered by key (so the result does not depend on arrival order).
    pub(crate) fn finish(self) -> Vec<f32> {
        let mut keyed = self.heap.into_vec();
        keyed.sort_unstable();
        let mut out = Vec::with_capacity(keyed.len() * self.dim);
        for (_, slot) in keyed {
            out.extend_from_slice(&self.slots[slot * self.dim..(slot + 1) * self.dim]);
        }
        out
    }
}

/// Trains a model on `sample` (rows of `dim` floats).
/// Counts k-means iterations on `tracker` (ProgressStep::Training).
pub(crate) fn train_model(
    dim: usize,
    mut sample: Vec<f32>,
    opts: &TrainOptions,
    tracker: &Tracker,
) -> Result<Model> {
    if dim == 0 {
        return Err(IndexError::InvalidInput("vectors have dimension 0".into()));
    }
    opts.check()?;
    let n = sample.len() / dim;
    if n < opts.num_partitions {
        return Err(IndexError::invalid_argument(
            "num_partitions",
            format!(
                "{} partitions need at least as many training rows; the sample has {n}",
                opts.num_partitions
            ),
        ));
    }
    let quantizer = opts.index_type.quantizer();
    let num_sub_vectors = match quantizer {
        Quantizer::Pq => {
            if n < PQ_CODES {
                return Err(IndexError::InvalidInput(format!(
                    "PQ training needs at least {PQ_CODES} rows; the sample has {n}"
                )));
            }
            Some(opts.num_sub_vectors(dim)?)
        }
        _ => None,
    };
    if opts.metric == Metric::Cosine {
        sample.par_chunks_exact_mut(dim).for_each(normalize);
    }
    let kmeans_runs = 1 + num_sub_vectors.unwrap_or(0) as u64;
    tracker.start(
        ProgressStep::Training,
        Some(kmeans_runs * opts.max_iterations as u64),
    );
    let centroids = kmeans(
        &sample,
        dim,
        KMeansParams {
            k: opts.num_partitions,
            max_iterations: opts.max_iterations,
            seed: opts.seed,
        },
        tracker,
    );
    let pq = num_sub_vectors.map(|m| {
        let residuals: Vec<f32> = sample
            .par_chunks_exact(dim)
            .flat_map_iter(|v| {
                let (p, _) = nearest_l2(v, &centroids, dim);
                let c = &centroids[p * dim..(p + 1) * dim];
                v.iter().zip(c).map(|(x, y)| x - y).collect::<Vec<_>>()
            })
            .collect();
        ProductQuantizer::train(&residuals, dim, m, opts.max_iterations, opts.seed, tracker)
    });
    let codec = match (quantizer, pq) {
        (Quantizer::Pq, Some(pq)) => Codec::Pq(pq),
        (Quantizer::Sq, _) => Codec::Sq(ScalarQuantizer::train(&sample, dim)),
        _ => Codec::Flat,
    };
    let params = ModelParams {
        format_version: FORMAT_VERSION,
        index_type: opts.index_type,
        metric: opts.metric,
        dim: dim as u32,
        num_partitions: opts.num_partitions as u32,
        num_sub_vectors: num_sub_vectors.map(|m| m as u32),
        hnsw: opts.index_type.is_hnsw().then_some(opts.hnsw),
        seed: opts.seed,
        sample_rows: n as u64,
        max_iterations: opts.max_iterations as u32,
    };
    Model::try_new(params, centroids, codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_does_not_depend_on_arrival_order() {
        let rows: Vec<f32> = (0..400).map(|i| (i as f32 * 1.3).sin()).collect();
        let mut a = SampleCollector::new(4, 10, 3);
        a.push_rows(&rows);
        let mut b = SampleCollector::new(4, 10, 3);
        for chunk in rows.chunks(4).rev() {
            b.push_rows(chunk);
        }
        assert_eq!(a.finish(), b.finish());
    }
}
