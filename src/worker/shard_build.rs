//! `VectorIndexShardWriteExec`: a distributed shard build, one shard per partition.

use std::fmt;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{col, lit, BinaryExpr, CastExpr};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::StreamExt;

use super::{write_rows, ShardWriter};
use crate::exec::{compute_properties, single_child, strings};
use crate::format::IndexLocation;
use crate::model::Model;
use crate::progress::{ProgressStep, Tracker};

/// Schema of the rows [`VectorIndexShardWriteExec`] emits: one per staged shard.
pub(crate) fn staged_shard_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard_id", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("num_fragments", DataType::UInt64, false),
    ]))
}

/// A row's fragment, `row_id >> 32`, as an expression over `schema` (whose column
/// `row_id` holds integer row ids): the key a shard build hash-partitions rows on,
/// so that a fragment never spans two shards.
pub(crate) fn fragment_key(schema: &SchemaRef, row_id: &str) -> Result<Arc<dyn PhysicalExpr>> {
    let id = col(row_id, schema)?;
    let id = if id.data_type(schema)? == DataType::UInt64 {
        id
    } else {
        // A negative row id fails this cast, with the value in the error.
        Arc::new(CastExpr::new(id, DataType::UInt64, None))
    };
    Ok(Arc::new(BinaryExpr::new(
        id,
        Operator::BitwiseShiftRight,
        lit(ScalarValue::UInt64(Some(32))),
    )))
}

/// A staged shard as the shard build reports it (a row of [`staged_shard_schema`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StagedShardRow {
    pub shard_id: String,
    pub rows: u64,
    pub num_fragments: u64,
}

impl StagedShardRow {
    fn to_batch(&self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            staged_shard_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.shard_id.as_str()])),
                Arc::new(UInt64Array::from(vec![self.rows])),
                Arc::new(UInt64Array::from(vec![self.num_fragments])),
            ],
        )?)
    }

    pub(crate) fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let ids = strings(batch, "shard_id")?;
        let rows = crate::exec::primitive::<arrow::datatypes::UInt64Type>(batch, "rows")?;
        let fragments =
            crate::exec::primitive::<arrow::datatypes::UInt64Type>(batch, "num_fragments")?;
        Ok((0..batch.num_rows())
            .map(|i| Self {
                shard_id: ids.value(i).to_string(),
                rows: rows.value(i),
                num_fragments: fragments.value(i),
            })
            .collect())
    }
}

/// Encodes the rows of each input partition with the index's model and stages them
/// as one partial shard (`data.arrow`, `fragments.roaring`, then `shard.json`).
///
/// Partitioning: one output partition per input partition. The input (`row_id`,
/// vector) must hold whole fragments per partition — the plan hash-partitions it
/// on `row_id >> 32` — so that no fragment is split over two shards. A partition
/// with no rows stages nothing; every other emits one row (schema:
/// [`staged_shard_schema`]) once its shard is complete. Each attempt writes under a
/// new shard id, so a failed or retried task leaves at most an incomplete shard
/// (no `shard.json`), which finalize never merges and vacuum removes.
#[derive(Debug)]
pub(crate) struct VectorIndexShardWriteExec {
    input: Arc<dyn ExecutionPlan>,
    location: IndexLocation,
    model: Arc<Model>,
    /// Names of the input's columns, for errors.
    row_id: String,
    column: String,
    /// What the input must be hash-partitioned on ([`fragment_key`]).
    key: Arc<dyn PhysicalExpr>,
    properties: Arc<PlanProperties>,
}

impl VectorIndexShardWriteExec {
    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        location: IndexLocation,
        model: Arc<Model>,
        row_id: String,
        column: String,
    ) -> Result<Self> {
        let partitions = input.output_partitioning().partition_count();
        Ok(Self {
            key: fragment_key(&input.schema(), &row_id)?,
            input,
            location,
            model,
            row_id,
            column,
            properties: compute_properties(staged_shard_schema(), partitions, EmissionType::Final),
        })
    }

    #[cfg(feature = "codec")]
    pub(crate) fn location(&self) -> &IndexLocation {
        &self.location
    }

    #[cfg(feature = "codec")]
    pub(crate) fn model(&self) -> &Arc<Model> {
        &self.model
    }

    #[cfg(feature = "codec")]
    pub(crate) fn columns(&self) -> (&str, &str) {
        (&self.row_id, &self.column)
    }
}

impl DisplayAs for VectorIndexShardWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VectorIndexShardWriteExec: index={}, model={}, row_id={}, column={}, shards=one per partition ({})",
            self.location.url(),
            self.model.fingerprint(),
            self.row_id,
            self.column,
            self.properties.partitioning.partition_count()
        )
    }
}

impl ExecutionPlan for VectorIndexShardWriteExec {
    fn name(&self) -> &str {
        "VectorIndexShardWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// Whole fragments per partition; the scheduler of a cluster cuts a stage at the
    /// hash exchange, so the writers run as tasks on its executors.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::KeyPartitioned(vec![Arc::clone(&self.key)])]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::try_new(
            single_child(self.name(), children)?,
            self.location.clone(),
            Arc::clone(&self.model),
            self.row_id.clone(),
            self.column.clone(),
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
        let tracker = Tracker::of_task(&context);
        let mut input = self.input.execute(partition, context)?;
        let mut writer = ShardWriter::new(self.location.clone(), Arc::clone(&self.model));
        let (row_id, column) = (self.row_id.clone(), self.column.clone());
        let stream = futures::stream::once(async move {
            let mut rows = 0u64;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                write_rows(&mut writer, &batch, &row_id, &column)?;
                rows += batch.num_rows() as u64;
                tracker.add(ProgressStep::Encoding, batch.num_rows() as u64);
            }
            if rows == 0 {
                return Ok(RecordBatch::new_empty(staged_shard_schema()));
            }
            let shard = writer.finish().await?;
            StagedShardRow {
                shard_id: shard.shard_id,
                rows: shard.rows,
                num_fragments: shard.num_fragments,
            }
            .to_batch()
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            staged_shard_schema(),
            stream,
        )))
    }
}
