//! Keeping the k nearest rows.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use arrow::array::{Float32Array, RecordBatch, UInt32Array, UInt64Array};

/// A scored row; ordered by distance, then row id, so ties resolve the same way everywhere.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub distance: f32,
    pub row_id: u64,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.row_id.cmp(&other.row_id))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The k smallest [`Scored`] values seen.
#[derive(Debug, Clone)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// The distance a row must beat to enter, once k rows are held.
    #[inline]
    pub(crate) fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::INFINITY
        } else {
            self.heap.peek().map_or(f32::INFINITY, |s| s.distance)
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, s: Scored) {
        if self.heap.len() < self.k {
            self.heap.push(s);
        } else if let Some(top) = self.heap.peek() {
            if s < *top {
                self.heap.pop();
                self.heap.push(s);
            }
        }
    }

    /// [`TopK::push`] behind the cheap test most rows of a scan fail.
    #[inline]
    pub(crate) fn offer(&mut self, distance: f32, row_id: u64) {
        if distance <= self.threshold() {
            self.push(Scored { distance, row_id });
        }
    }

    /// [`TopK::offer`] of each row (distance and row id side by side), with the
    /// threshold read again only after a row entered: most rows of a scan do not.
    #[inline]
    pub(crate) fn offer_all(&mut self, distances: &[f32], row_ids: &[u64]) {
        let mut threshold = self.threshold();
        for (&distance, &row_id) in distances.iter().zip(row_ids) {
            if distance <= threshold {
                self.push(Scored { distance, row_id });
                threshold = self.threshold();
            }
        }
    }

    pub(crate) fn into_sorted(self) -> Vec<Scored> {
        self.heap.into_sorted_vec()
    }
}

/// Each query's rows, ordered by query, then distance, then row id.
pub(crate) fn tops_to_batch(tops: BTreeMap<u32, TopK>) -> arrow::error::Result<RecordBatch> {
    let (mut q, mut r, mut d) = (vec![], vec![], vec![]);
    for (query, top) in tops {
        for s in top.into_sorted() {
            q.push(query);
            r.push(s.row_id);
            d.push(s.distance);
        }
    }
    RecordBatch::try_new(
        super::search_output_schema(),
        vec![
            Arc::new(UInt32Array::from(q)),
            Arc::new(UInt64Array::from(r)),
            Arc::new(Float32Array::from(d)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `offer_all` keeps what offering each row in turn keeps, ties included.
        #[test]
        fn offer_all_is_offer_of_each(
            k in 1usize..12,
            rows in proptest::collection::vec((0u8..20, 0u64..50), 0..200),
        ) {
            let distances: Vec<f32> = rows.iter().map(|r| f32::from(r.0) / 4.0).collect();
            let ids: Vec<u64> = rows.iter().map(|r| r.1).collect();
            let (mut one, mut all) = (TopK::new(k), TopK::new(k));
            for (&d, &id) in distances.iter().zip(&ids) {
                one.offer(d, id);
            }
            all.offer_all(&distances, &ids);
            proptest::prop_assert_eq!(one.into_sorted(), all.into_sorted());
        }
    }
}
