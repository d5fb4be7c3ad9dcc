//! `VectorIndexTopKExec`: the k nearest rows of each query.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::DisplayFormatType;
use futures::StreamExt;

use super::topk::{tops_to_batch, Scored, TopK};
use crate::exec::{primitive, Partitions, Work, WorkExec, WorkStream};

static OUTPUT: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::UInt32, false),
        Field::new("row_id", DataType::UInt64, false),
        Field::new("distance", DataType::Float32, false),
    ]))
});

/// `query_id`, `row_id`, `distance`.
pub(crate) fn search_output_schema() -> SchemaRef {
    Arc::clone(&OUTPUT)
}

/// Merges local top-k lists into each query's global k nearest rows.
///
/// Partitioning: requires a single input partition and emits a single partition,
/// ordered by `query_id`, then `distance`, then `row_id`.
pub(crate) type VectorIndexTopKExec = WorkExec<MergeTopK>;

/// The work of [`VectorIndexTopKExec`].
#[derive(Debug)]
pub(crate) struct MergeTopK {
    pub(crate) k: usize,
}

impl Work for MergeTopK {
    const NAME: &'static str = "VectorIndexTopKExec";
    const PARTITIONS: Partitions = Partitions::One;

    fn schema(&self) -> SchemaRef {
        search_output_schema()
    }

    fn details(&self, _: DisplayFormatType, _: usize) -> Vec<(&'static str, String)> {
        vec![("k", self.k.to_string())]
    }

    fn run(
        self: Arc<Self>,
        _partition: usize,
        mut input: SendableRecordBatchStream,
        _context: Arc<TaskContext>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> Result<WorkStream> {
        let k = self.k;
        Ok(futures::stream::once(async move {
            let mut tops: BTreeMap<u32, TopK> = BTreeMap::new();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let q = primitive::<UInt32Type>(&batch, "query_id")?;
                let r = primitive::<UInt64Type>(&batch, "row_id")?;
                let d = primitive::<Float32Type>(&batch, "distance")?;
                for i in 0..batch.num_rows() {
                    tops.entry(q.value(i))
                        .or_insert_with(|| TopK::new(k))
                        .push(Scored {
                            distance: d.value(i),
                            row_id: r.value(i),
                        });
                }
            }
            Ok(tops_to_batch(tops)?)
        })
        .boxed())
    }
}
