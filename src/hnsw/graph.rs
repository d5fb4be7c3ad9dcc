//! The stored form of a graph and searching it.

use std::sync::Arc;

use arrow::array::{AsArray, ListArray, RecordBatch, UInt32Array, UInt8Array};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt8Type};

use super::search::{search_layer, Candidate, Layers, Target, Visited};
use crate::error::{IndexError, Result};

/// Schema of a stored graph block: one row per (level, node) with its neighbors,
/// level 0 first with every node in row order, then each upper level with its
/// nodes ascending. Node numbers are row positions within the partition's data block.
pub(crate) fn graph_schema() -> SchemaRef {
    Arc::clone(&GRAPH_SCHEMA)
}

// Built once: search decodes a graph block per probed partition.
static GRAPH_SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("level", DataType::UInt8, false),
        Field::new("node", DataType::UInt32, false),
        Field::new(
            "neighbors",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))),
            false,
        ),
    ]))
});

/// One layer in compressed-row form. Level 0 lists every node, so `nodes` is empty there.
#[derive(Debug, Clone, PartialEq)]
struct Layer {
    nodes: Vec<u32>,
    offsets: Vec<u32>,
    neighbors: Vec<u32>,
}

/// An immutable HNSW graph over the `n` rows of one partition. The entry point is
/// the first node of the top level.
#[derive(Debug, Clone, PartialEq)]
pub struct HnswGraph {
    num_nodes: usize,
    layers: Vec<Layer>,
}

impl Layers for HnswGraph {
    fn num_nodes(&self) -> usize {
        self.num_nodes
    }

    fn neighbors(&self, level: usize, node: u32) -> &[u32] {
        let Some(layer) = self.layers.get(level) else {
            return &[];
        };
        let index = if level == 0 {
            node as usize
        } else {
            match layer.nodes.binary_search(&node) {
                Ok(i) => i,
                Err(_) => return &[],
            }
        };
        match (layer.offsets.get(index), layer.offsets.get(index + 1)) {
            (Some(&s), Some(&e)) => &layer.neighbors[s as usize..e as usize],
            _ => &[],
        }
    }
}

impl HnswGraph {
    /// `layers[l] = (nodes, offsets, neighbors)`; `nodes` is ignored for level 0.
    pub(super) fn from_layers(
        num_nodes: usize,
        layers: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)>,
    ) -> Self {
        Self {
            num_nodes,
            layers: layers
                .into_iter()
                .map(|(nodes, offsets, neighbors)| Layer {
                    nodes,
                    offsets,
                    neighbors,
                })
                .collect(),
        }
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn num_nodes(&self) -> usize {
        self.num_nodes
    }

    /// Number of levels, 0 for an empty graph.
    #[cfg(any(test, feature = "internals"))]
    pub fn num_levels(&self) -> usize {
        if self.num_nodes == 0 {
            0
        } else {
            self.layers.len()
        }
    }

    fn entry(&self) -> Option<u32> {
        if self.num_nodes == 0 {
            return None;
        }
        match self.layers.last() {
            Some(top) if self.layers.len() > 1 => top.nodes.first().copied(),
            _ => Some(0),
        }
    }

    /// Neighbors of `node` on `level` (empty when the node is not on it).
    #[cfg(any(test, feature = "internals"))]
    pub fn neighbors_of(&self, level: usize, node: u32) -> &[u32] {
        self.neighbors(level, node)
    }

    /// The `ef` nodes nearest to `target` (a closure scoring a node will do), ascending.
    pub fn search(
        &self,
        ef: usize,
        mut target: impl Target,
        visited: &mut Visited,
    ) -> Vec<Candidate> {
        let Some(entry) = self.entry() else {
            return Vec::new();
        };
        let mut entries = vec![Candidate {
            distance: target.distance(entry),
            node: entry,
        }];
        for level in (1..self.layers.len()).rev() {
            entries = search_layer(self, level, &entries, 1, &mut target, visited);
        }
        search_layer(self, 0, &entries, ef, &mut target, visited)
    }

    /// The stored form (schema: [`graph_schema`]).
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let rows: usize = self.num_nodes
            + self.layers[1..]
                .iter()
                .map(|l| l.nodes.len())
                .sum::<usize>();
        let (mut levels, mut nodes) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let mut offsets: Vec<i32> = Vec::with_capacity(rows + 1);
        let mut values = Vec::new();
        offsets.push(0);
        for (level, layer) in self.layers.iter().enumerate() {
            let count = if level == 0 {
                self.num_nodes
            } else {
                layer.nodes.len()
            };
            for i in 0..count {
                levels.push(level as u8);
                nodes.push(if level == 0 { i as u32 } else { layer.nodes[i] });
                let (s, e) = (layer.offsets[i] as usize, layer.offsets[i + 1] as usize);
                values.extend_from_slice(&layer.neighbors[s..e]);
                let end = i32::try_from(values.len()).map_err(|_| {
                    IndexError::InvalidInput("graph too large for one block".into())
                })?;
                offsets.push(end);
            }
        }
        let item = Arc::new(Field::new("item", DataType::UInt32, false));
        let neighbors = ListArray::try_new(
            item,
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(UInt32Array::from(values)),
            None,
        )?;
        Ok(RecordBatch::try_new(
            graph_schema(),
            vec![
                Arc::new(UInt8Array::from(levels)),
                Arc::new(UInt32Array::from(nodes)),
                Arc::new(neighbors),
            ],
        )?)
    }

    /// Reads a stored graph of a partition holding `num_nodes` rows, checking that
    /// it is well formed; `what` names the block in errors.
    /// Bytes the graph takes in memory.
    pub(crate) fn memory_size(&self) -> usize {
        self.layers
            .iter()
            .map(|l| 4 * (l.nodes.len() + l.offsets.len() + l.neighbors.len()))
            .sum()
    }

    pub fn from_batch(what: &str, batch: &RecordBatch, num_nodes: usize) -> Result<Self> {
        let bad = |why: String| IndexError::corrupt(what, why);
        if batch.schema().fields() != graph_schema().fields() {
            return Err(bad("graph block does not have the graph schema".into()));
        }
        let levels = batch.column(0).as_primitive::<UInt8Type>();
        let nodes = batch.column(1).as_primitive::<UInt32Type>();
        let lists = batch.column(2).as_list::<i32>();
        let values = lists.values().as_primitive::<UInt32Type>();
        let mut layers: Vec<Layer> = Vec::new();
        for row in 0..batch.num_rows() {
            let (level, node) = (levels.value(row) as usize, nodes.value(row));
            if level == layers.len() {
                if level > 0 && layers[level - 1].offsets.len() <= 1 {
                    return Err(bad(format!("level {} is empty", level - 1)));
                }
                layers.push(Layer {
                    nodes: Vec::new(),
                    offsets: vec![0],
                    neighbors: Vec::new(),
                });
            } else if level + 1 != layers.len() {
                return Err(bad(format!("row {row}: level {level} out of order")));
            }
            let layer = &mut layers[level];
            let index = layer.offsets.len() - 1;
            if node as usize >= num_nodes
                || (level == 0 && node as usize != index)
                || (level > 0 && layer.nodes.last().is_some_and(|&last| last >= node))
            {
                return Err(bad(format!(
                    "row {row}: node {node} out of order or out of range"
                )));
            }
            if level > 0 {
                layer.nodes.push(node);
            }
            let (s, e) = (
                lists.value_offsets()[row] as usize,
                lists.value_offsets()[row + 1] as usize,
            );
            for &next in &values.values()[s..e] {
                if next as usize >= num_nodes {
                    return Err(bad(format!("row {row}: neighbor {next} out of range")));
                }
                layer.neighbors.push(next);
            }
            layer.offsets.push(layer.neighbors.len() as u32);
        }
        let level0 = layers.first().map_or(0, |l| l.offsets.len() - 1);
        if level0 != num_nodes {
            return Err(bad(format!(
                "graph has {level0} nodes but the partition has {num_nodes} rows"
            )));
        }
        if layers.is_empty() {
            layers.push(Layer {
                nodes: Vec::new(),
                offsets: vec![0],
                neighbors: Vec::new(),
            });
        }
        Ok(Self { num_nodes, layers })
    }
}
