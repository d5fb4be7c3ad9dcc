//! `Block`: a probed IVF partition as a scan scores it and the [`super::SearchCache`]
//! keeps it — its rows and, for the HNSW types, its graph — made of the pieces read
//! from each segment.

use super::SearchTarget;
use crate::error::IndexError;
use crate::format::{IndexType, StoredBuffers};
use crate::hnsw::HnswGraph;
use crate::model::pq_bound::{self, Columns};

/// A probed partition: its rows and, for HNSW types, its graph.
#[derive(Debug)]
pub(super) struct Block {
    /// Its rows' ids and stored values.
    pub stored: StoredBuffers,
    pub graph: Option<HnswGraph>,
    /// IVF_PQ, where the CPU bounds distances from them: the codes by columns
    /// (`pq_bound::columns`).
    pub columns: Option<Vec<u8>>,
}

impl Block {
    /// Bytes the block takes in memory (for the cache's budget).
    pub(super) fn memory_size(&self) -> usize {
        self.stored.ids.inner().len()
            + self.stored.values.len()
            + self.graph.as_ref().map_or(0, HnswGraph::memory_size)
            + self.columns.as_ref().map_or(0, Vec::len)
    }

    /// Rows `range` of the block's codes by columns, if it keeps them.
    pub(super) fn columns(&self, range: std::ops::Range<usize>) -> Option<Columns<'_>> {
        self.columns.as_deref().map(|codes| Columns {
            codes,
            stride: self.stored.num_rows(),
            start: range.start,
        })
    }
}

/// One segment's block of a partition, read and decoded.
pub(super) struct Piece {
    pub stored: StoredBuffers,
    pub graph: Option<HnswGraph>,
    /// Bytes read for it.
    pub bytes: usize,
}

impl Block {
    /// The block of partition `p` joining `pieces` (one per segment, in order).
    pub(super) fn of_pieces(
        target: &SearchTarget,
        p: u32,
        mut pieces: Vec<Piece>,
    ) -> crate::error::Result<Self> {
        let (stored, graph) = match pieces.len() {
            1 => pieces.pop().map(|piece| (piece.stored, piece.graph)),
            // Joined blocks are of types without graphs (`HeldBlock`).
            _ => StoredBuffers::join(
                &pieces
                    .into_iter()
                    .map(|piece| piece.stored)
                    .collect::<Vec<_>>(),
            )
            .map(|stored| (stored, None)),
        }
        .ok_or_else(|| {
            IndexError::Internal(format!("partition {p}: segments' blocks that do not join"))
        })?;
        let columns = (target.model.info().index_type() == IndexType::IvfPq
            && pq_bound::available())
        .then(|| pq_bound::columns(&stored.values, stored.width));
        Ok(Block {
            stored,
            graph,
            columns,
        })
    }
}
