//! Best-first search within one layer, shared by graph building and querying.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A node and its distance to whatever is being searched for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub distance: f32,
    pub node: u32,
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.node.cmp(&other.node))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Visited marks with generation stamps, so clearing is O(1) between searches.
#[derive(Debug, Default)]
pub struct Visited {
    marks: Vec<u32>,
    stamp: u32,
}

impl Visited {
    /// Starts a new search over `n` nodes.
    pub fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
    }

    /// Marks `node`; false if it was already marked in this search.
    #[inline]
    pub fn insert(&mut self, node: u32) -> bool {
        let m = &mut self.marks[node as usize];
        if *m == self.stamp {
            false
        } else {
            *m = self.stamp;
            true
        }
    }
}

/// What a search scores nodes against.
pub trait Target {
    fn distance(&mut self, node: u32) -> f32;
    /// Hints that `node` will be scored soon, so its row can be fetched early.
    fn prefetch(&self, _node: u32) {}
}

impl<F: FnMut(u32) -> f32> Target for F {
    fn distance(&mut self, node: u32) -> f32 {
        self(node)
    }
}

/// Asks the CPU to start loading `bytes` into cache.
#[inline(always)]
pub(super) fn prefetch_bytes(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: prefetching has no side effects and `line` is a valid address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Read access to a graph's layers.
pub(super) trait Layers {
    fn num_nodes(&self) -> usize;
    /// Neighbors of `node` on `level`; empty if the node is not on that level.
    fn neighbors(&self, level: usize, node: u32) -> &[u32];
}

/// The `ef` nodes closest to the target reachable from `entries` on `level`, in
/// ascending order of distance.
pub(super) fn search_layer<L: Layers + ?Sized>(
    layers: &L,
    level: usize,
    entries: &[Candidate],
    ef: usize,
    target: &mut impl Target,
    visited: &mut Visited,
) -> Vec<Candidate> {
    let ef = ef.max(1);
    visited.reset(layers.num_nodes());
    let mut frontier: BinaryHeap<Reverse<Candidate>> = BinaryHeap::with_capacity(ef * 2);
    let mut best: BinaryHeap<Candidate> = BinaryHeap::with_capacity(ef + 1);
    for &e in entries {
        if visited.insert(e.node) {
            frontier.push(Reverse(e));
            best.push(e);
        }
    }
    while best.len() > ef {
        best.pop();
    }
    let mut fresh: Vec<u32> = Vec::with_capacity(64);
    while let Some(Reverse(current)) = frontier.pop() {
        let worst = best.peek().map_or(f32::INFINITY, |c| c.distance);
        if best.len() >= ef && current.distance > worst {
            break;
        }
        // Rows of unvisited neighbors are fetched together, then scored: the loads
        // overlap instead of each distance waiting on its own cache misses.
        fresh.clear();
        for &next in layers.neighbors(level, current.node) {
            if visited.insert(next) {
                target.prefetch(next);
                fresh.push(next);
            }
        }
        for &next in &fresh {
            let d = target.distance(next);
            let worst = best.peek().map_or(f32::INFINITY, |c| c.distance);
            if best.len() < ef || d < worst {
                let c = Candidate {
                    distance: d,
                    node: next,
                };
                frontier.push(Reverse(c));
                best.push(c);
                if best.len() > ef {
                    best.pop();
                }
            }
        }
    }
    best.into_sorted_vec()
}
