//! Seeded synthetic data for examples, benchmarks and tests.

use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array};
use arrow::datatypes::{DataType, Field};

/// The seeded generator these functions draw from: the same numbers for a seed on
/// every platform (the model's training uses it too).
pub use crate::model::rng::SplitMix64;

/// `rows` vectors of `dim` floats from a Gaussian mixture: `clusters` centers drawn
/// uniformly in [-1, 1]^dim from `center_seed`, each row a random center plus
/// N(0, σ²) noise per dimension, drawn from `seed`. Calls with the same
/// `center_seed` share centers, so queries can come from the data's distribution.
pub fn gaussian_mixture(
    rows: usize,
    dim: usize,
    clusters: usize,
    sigma: f32,
    center_seed: u64,
    seed: u64,
) -> Vec<f32> {
    let mut rng = SplitMix64::new(center_seed);
    let centers: Vec<f32> = (0..clusters * dim)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect();
    let mut rng = SplitMix64::new(seed);
    let mut v = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let c = rng.below(clusters);
        v.extend(
            centers[c * dim..(c + 1) * dim]
                .iter()
                .map(|x| x + sigma * rng.normal() as f32),
        );
    }
    v
}

/// Rows of `dim` floats (row-major) as a `FixedSizeList<Float32>` column, the vector
/// type this crate stores. Panics if `values.len()` is not a multiple of `dim`.
pub fn vector_column(values: &[f32], dim: usize) -> ArrayRef {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Arc::new(Float32Array::from(values.to_vec()));
    Arc::new(
        FixedSizeListArray::try_new(item, dim as i32, values, None)
            .expect("whole rows of `dim` floats"),
    )
}
