//! Building one partition's graph.

use std::collections::HashMap;

use super::graph::HnswGraph;
use super::search::{prefetch_bytes, search_layer, Candidate, Layers, Target, Visited};
use super::MAX_LEVEL;
use crate::format::{HnswParams, Metric};
use crate::model::distance::Wide;
use crate::model::rng::SplitMix64;

/// Builds the graph of `n = row_ids.len()` rows whose (decoded) vectors are
/// `vectors` (n × dim, row-major; normalized for cosine).
///
/// Rows are inserted in order, each on a level drawn from `seed` and its row id
/// alone, so the graph depends only on the rows, `params` and `seed` — not on
/// how the rows were spread over workers or threads.
pub fn build_graph(
    vectors: &[f32],
    dim: usize,
    row_ids: &[u64],
    metric: Metric,
    params: HnswParams,
    seed: u64,
) -> HnswGraph {
    let n = row_ids.len();
    debug_assert_eq!(vectors.len(), n * dim);
    let m = (params.m as usize).max(2);
    let level_scale = 1.0 / (m as f64).ln();
    let levels: Vec<u8> = row_ids
        .iter()
        .map(|&id| {
            // Uniform in (0, 1], so the logarithm is finite.
            let u =
                ((SplitMix64::new(seed ^ id).next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            ((-u.ln() * level_scale) as u64).min(MAX_LEVEL as u64) as u8
        })
        .collect();
    let mut builder = Builder {
        vectors,
        dim,
        metric,
        m,
        m0: 2 * m,
        ef_construction: (params.ef_construction as usize).max(m),
        level0: vec![0; n * 2 * m],
        level0_len: vec![0; n],
        upper: Vec::new(),
        levels,
        entry: None,
        visited: Visited::default(),
    };
    for node in 0..n as u32 {
        builder.insert(node);
    }
    builder.finish()
}

#[inline]
fn metric_distance(metric: Metric, x: &[f32], y: &[f32]) -> f32 {
    metric.distance_with::<Wide>(x, y)
}

/// One row as the search target, scored against the others.
struct RowTarget<'a> {
    vectors: &'a [f32],
    dim: usize,
    metric: Metric,
    query: &'a [f32],
}

impl Target for RowTarget<'_> {
    #[inline]
    fn distance(&mut self, node: u32) -> f32 {
        let start = node as usize * self.dim;
        metric_distance(
            self.metric,
            self.query,
            &self.vectors[start..start + self.dim],
        )
    }

    #[inline]
    fn prefetch(&self, node: u32) {
        let start = node as usize * self.dim;
        let row = &self.vectors[start..start + self.dim];
        // SAFETY: viewing initialized f32s as bytes.
        prefetch_bytes(unsafe {
            std::slice::from_raw_parts(row.as_ptr().cast::<u8>(), std::mem::size_of_val(row))
        });
    }
}

struct Builder<'a> {
    vectors: &'a [f32],
    dim: usize,
    metric: Metric,
    m: usize,
    m0: usize,
    ef_construction: usize,
    /// Level-0 neighbor lists, `m0` slots per node.
    level0: Vec<u32>,
    level0_len: Vec<u16>,
    /// `upper[l - 1]`: neighbor lists of the nodes on level `l`.
    upper: Vec<HashMap<u32, Vec<u32>>>,
    levels: Vec<u8>,
    entry: Option<u32>,
    visited: Visited,
}

impl Layers for Builder<'_> {
    fn num_nodes(&self) -> usize {
        self.levels.len()
    }

    fn neighbors(&self, level: usize, node: u32) -> &[u32] {
        if level == 0 {
            let start = node as usize * self.m0;
            &self.level0[start..start + self.level0_len[node as usize] as usize]
        } else {
            self.upper[level - 1]
                .get(&node)
                .map_or(&[][..], |v| v.as_slice())
        }
    }
}

impl Builder<'_> {
    #[inline]
    fn vector(&self, node: u32) -> &[f32] {
        let start = node as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    #[inline]
    fn distance(&self, a: u32, b: u32) -> f32 {
        metric_distance(self.metric, self.vector(a), self.vector(b))
    }

    /// Scores nodes against the row of `node`.
    fn target(&self, node: u32) -> RowTarget<'_> {
        RowTarget {
            vectors: self.vectors,
            dim: self.dim,
            metric: self.metric,
            query: self.vector(node),
        }
    }

    fn insert(&mut self, node: u32) {
        let level = self.levels[node as usize] as usize;
        while self.upper.len() < level {
            self.upper.push(HashMap::new());
        }
        let Some(entry) = self.entry else {
            self.entry = Some(node);
            for l in 1..=level {
                self.upper[l - 1].insert(node, Vec::new());
            }
            return;
        };
        let top = self.levels[entry as usize] as usize;
        let mut visited = std::mem::take(&mut self.visited);
        let mut entries = vec![Candidate {
            distance: self.distance(node, entry),
            node: entry,
        }];
        for l in (level + 1..=top).rev() {
            entries = search_layer(&*self, l, &entries, 1, &mut self.target(node), &mut visited);
        }
        for l in (0..=level.min(top)).rev() {
            let found = search_layer(
                &*self,
                l,
                &entries,
                self.ef_construction,
                &mut self.target(node),
                &mut visited,
            );
            let chosen = self.select(&found, self.m);
            self.set_neighbors(l, node, chosen.iter().map(|c| c.node).collect());
            for c in &chosen {
                self.link(l, c.node, node);
            }
            entries = found;
        }
        for l in top + 1..=level {
            self.upper[l - 1].insert(node, Vec::new());
        }
        self.visited = visited;
        if level > top {
            self.entry = Some(node);
        }
    }

    /// Malkov's neighbor heuristic: keep a candidate only if it is closer to the
    /// base than to every candidate already kept, which keeps links spread out
    /// across clusters instead of all pointing into the nearest one.
    fn select(&self, sorted: &[Candidate], max: usize) -> Vec<Candidate> {
        let mut kept: Vec<Candidate> = Vec::with_capacity(max);
        for c in sorted {
            if kept.len() == max {
                break;
            }
            if kept
                .iter()
                .all(|k| self.distance(c.node, k.node) >= c.distance)
            {
                kept.push(*c);
            }
        }
        kept
    }

    fn set_neighbors(&mut self, level: usize, node: u32, neighbors: Vec<u32>) {
        if level == 0 {
            let start = node as usize * self.m0;
            self.level0[start..start + neighbors.len()].copy_from_slice(&neighbors);
            self.level0_len[node as usize] = neighbors.len() as u16;
        } else {
            self.upper[level - 1].insert(node, neighbors);
        }
    }

    /// Adds the back link `from → to`, re-selecting `from`'s links when full.
    fn link(&mut self, level: usize, from: u32, to: u32) {
        let max = if level == 0 { self.m0 } else { self.m };
        let current = self.neighbors(level, from);
        if current.len() < max {
            if level == 0 {
                let len = self.level0_len[from as usize] as usize;
                self.level0[from as usize * self.m0 + len] = to;
                self.level0_len[from as usize] += 1;
            } else if let Some(list) = self.upper[level - 1].get_mut(&from) {
                list.push(to);
            }
            return;
        }
        let mut candidates: Vec<Candidate> = current
            .iter()
            .chain(std::iter::once(&to))
            .map(|&other| Candidate {
                distance: self.distance(from, other),
                node: other,
            })
            .collect();
        candidates.sort_unstable();
        let kept = self.select(&candidates, max);
        self.set_neighbors(level, from, kept.iter().map(|c| c.node).collect());
    }

    fn finish(self) -> HnswGraph {
        let n = self.levels.len();
        let mut layers = Vec::with_capacity(self.upper.len() + 1);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut neighbors = Vec::with_capacity(n * self.m);
        offsets.push(0u32);
        for node in 0..n as u32 {
            neighbors.extend_from_slice(self.neighbors(0, node));
            offsets.push(neighbors.len() as u32);
        }
        layers.push((Vec::new(), offsets, neighbors));
        for level in &self.upper {
            let mut nodes: Vec<u32> = level.keys().copied().collect();
            nodes.sort_unstable();
            let mut offsets = Vec::with_capacity(nodes.len() + 1);
            let mut neighbors = Vec::new();
            offsets.push(0u32);
            for node in &nodes {
                neighbors.extend_from_slice(&level[node]);
                offsets.push(neighbors.len() as u32);
            }
            layers.push((nodes, offsets, neighbors));
        }
        HnswGraph::from_layers(n, layers)
    }
}
