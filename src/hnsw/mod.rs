//! HNSW graphs: one per IVF partition of a segment, built by finalize from the
//! merged rows and stored next to them (FORMAT.md, "Graph files").
//!
//! - [`build_graph`]: sequential insertion in row order with a seeded level per
//!   row, so a partition's graph depends only on its rows and the model.
//! - [`HnswGraph`]: the immutable, compact form that is stored and searched.
//!
//! Crate-private; its `pub` items are what the `internals` feature shows
//! `cargo bench --bench hnsw`.
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub))]

mod build;
mod graph;
mod search;

pub use build::build_graph;
pub(crate) use graph::graph_schema;
pub use graph::HnswGraph;
pub use search::Visited;

/// The seed of IVF partition `partition`'s graph under a model seeded `model_seed`.
pub fn partition_seed(model_seed: u64, partition: usize) -> u64 {
    crate::model::rng::SplitMix64::new(model_seed ^ (partition as u64).rotate_left(32)).next_u64()
}

/// Default search breadth when a query gives no `ef`.
pub(crate) const DEFAULT_EF: usize = 100;

/// Highest level a node can be given; keeps adversarial seeds from building tall graphs.
const MAX_LEVEL: u8 = 15;

#[cfg(test)]
mod tests {
    use super::search::Candidate;
    use super::*;
    use crate::format::{HnswParams, Metric};
    use crate::model::distance::l2_sq;
    use crate::model::rng::SplitMix64;

    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let centers: Vec<f32> = (0..8 * dim).map(|_| rng.normal() as f32 * 4.0).collect();
        (0..n)
            .flat_map(|_| {
                let c = rng.below(8);
                let center = centers[c * dim..(c + 1) * dim].to_vec();
                let noise: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
                center
                    .into_iter()
                    .zip(noise)
                    .map(|(c, e)| c + e)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn graph_search_finds_true_neighbors() {
        let (n, dim) = (3000, 32);
        let data = clustered(n, dim, 1);
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 3 + 7).collect();
        let params = HnswParams {
            m: 16,
            ef_construction: 100,
        };
        let graph = build_graph(&data, dim, &ids, Metric::L2, params, 42);
        assert_eq!(graph.num_nodes(), n);
        assert!(graph.num_levels() >= 2, "{} levels", graph.num_levels());
        let queries = clustered(50, dim, 2);
        let mut visited = Visited::default();
        let mut hits = 0;
        for q in queries.chunks_exact(dim) {
            let dist = |i: u32| l2_sq(q, &data[i as usize * dim..(i as usize + 1) * dim]);
            let mut exact: Vec<u32> = (0..n as u32).collect();
            exact.sort_by(|&a, &b| dist(a).total_cmp(&dist(b)));
            let found = graph.search(DEFAULT_EF, dist, &mut visited);
            assert!(found.windows(2).all(|w| w[0].distance <= w[1].distance));
            hits += found[..10]
                .iter()
                .filter(|c| exact[..10].contains(&c.node))
                .count();
        }
        let recall = hits as f64 / 500.0;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn graphs_are_deterministic_and_round_trip() {
        let (n, dim) = (500, 8);
        let data = clustered(n, dim, 3);
        let ids: Vec<u64> = (0..n as u64).collect();
        let params = HnswParams {
            m: 6,
            ef_construction: 40,
        };
        let a = build_graph(&data, dim, &ids, Metric::Cosine, params, 9);
        let b = build_graph(&data, dim, &ids, Metric::Cosine, params, 9);
        assert_eq!(a, b);
        for level in 0..a.num_levels() {
            let max = if level == 0 { 12 } else { 6 };
            for node in 0..n as u32 {
                let nb = a.neighbors_of(level, node);
                assert!(nb.len() <= max && !nb.contains(&node));
            }
        }
        let batch = a.to_batch().unwrap();
        assert_eq!(HnswGraph::from_batch("test", &batch, n).unwrap(), a);
        let err = HnswGraph::from_batch("segment s, partition 3", &batch, n - 1).unwrap_err();
        assert!(err.to_string().contains("segment s, partition 3"), "{err}");
        let c = build_graph(&data, dim, &ids, Metric::Cosine, params, 10);
        assert_ne!(a, c, "the seed must matter");
    }

    #[test]
    fn tiny_graphs() {
        let mut visited = Visited::default();
        let empty = build_graph(&[], 4, &[], Metric::L2, HnswParams::default(), 1);
        assert!(empty.search(10, |_| 0.0, &mut visited).is_empty());
        let back = HnswGraph::from_batch("t", &empty.to_batch().unwrap(), 0).unwrap();
        assert_eq!(back.num_nodes(), 0);
        let one = build_graph(&[1.0, 2.0], 2, &[5], Metric::L2, HnswParams::default(), 1);
        let found = one.search(10, |_| 1.5, &mut visited);
        assert_eq!(
            found,
            vec![Candidate {
                distance: 1.5,
                node: 0
            }]
        );
    }
}
