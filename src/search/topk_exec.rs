//! `VectorIndexTopKExec`: the k nearest rows of each query.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::StreamExt;

use super::topk::{tops_to_batch, Scored, TopK};
use crate::exec::{compute_properties, primitive, single_child};

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
#[derive(Debug)]
pub(crate) struct VectorIndexTopKExec {
    input: Arc<dyn ExecutionPlan>,
    k: usize,
    properties: Arc<PlanProperties>,
}

impl VectorIndexTopKExec {
    #[cfg(feature = "codec")]
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    pub(crate) fn try_new(input: Arc<dyn ExecutionPlan>, k: usize) -> Result<Self> {
        Ok(Self {
            input,
            k,
            properties: compute_properties(search_output_schema(), 1, EmissionType::Final),
        })
    }
}

impl DisplayAs for VectorIndexTopKExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "VectorIndexTopKExec: k={}", self.k)
    }
}

impl ExecutionPlan for VectorIndexTopKExec {
    fn name(&self) -> &str {
        "VectorIndexTopKExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::try_new(
            single_child(self.name(), children)?,
            self.k,
        )?))
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return datafusion::common::exec_err!(
                "VectorIndexTopKExec has one partition, asked for {partition}"
            );
        }
        let mut input = self.input.execute(0, context)?;
        let k = self.k;
        let stream = futures::stream::once(async move {
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
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            search_output_schema(),
            stream,
        )))
    }
}
