//! The distributed shard build: `VectorIndexShardWriteExec` writes one shard's
//! pieces per partition, `VectorIndexShardPublishExec` completes them all once every
//! writer has succeeded.
//!
//! ```text
//! VectorIndexShardPublishExec    1 partition: writes each shard.json, after all writers
//!   CoalescePartitionsExec
//!     VectorIndexShardWriteExec  N partitions: data.arrow + fragments.roaring per partition
//!       RepartitionExec          hash of row_id >> 32: whole fragments per partition
//!         <the table's scan>
//! ```

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{col, lit, BinaryExpr, CastExpr};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{DisplayFormatType, Distribution};
use futures::StreamExt;

use super::shard_writer::publish;
use super::{write_rows, ShardWriter};
use crate::exec::{index_detail, strings, Partitions, Work, WorkExec, WorkStream};
use crate::format::{IndexLocation, ShardManifest};
use crate::model::Model;
use crate::progress::{ProgressStep, Tracker};

/// Schema of the rows both operators emit, one per shard: its id, rows and
/// fragments, and its `shard.json` (written by the publish step).
pub(crate) fn staged_shard_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SHARD_ID, DataType::Utf8, false),
        Field::new(col::ROWS, DataType::UInt64, false),
        Field::new(col::NUM_FRAGMENTS, DataType::UInt64, false),
        Field::new(col::MANIFEST, DataType::Utf8, false),
    ]))
}

/// Column names of [`staged_shard_schema`].
mod col {
    pub(super) const SHARD_ID: &str = "shard_id";
    pub(super) const ROWS: &str = "rows";
    pub(super) const NUM_FRAGMENTS: &str = "num_fragments";
    pub(super) const MANIFEST: &str = "manifest";
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

/// A shard as the shard build reports it (a row of [`staged_shard_schema`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StagedShardRow {
    pub manifest: ShardManifest,
}

impl StagedShardRow {
    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        let manifests = rows
            .iter()
            .map(|r| Ok(String::from_utf8_lossy(&r.manifest.to_json()?).into_owned()))
            .collect::<crate::error::Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(
            staged_shard_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.manifest.shard_id.as_str()),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter().map(|r| r.manifest.rows),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter().map(|r| r.manifest.num_fragments),
                )),
                Arc::new(StringArray::from(manifests)),
            ],
        )?)
    }

    pub(crate) fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let ids = strings(batch, col::SHARD_ID)?;
        let manifests = strings(batch, col::MANIFEST)?;
        (0..batch.num_rows())
            .map(|i| {
                let manifest =
                    ShardManifest::from_json(ids.value(i), manifests.value(i).as_bytes())?;
                Ok(Self { manifest })
            })
            .collect()
    }
}

/// Encodes the rows of each input partition with the index's model and writes them
/// as the pieces of one partial shard (`data.arrow`, `fragments.roaring`);
/// [`VectorIndexShardPublishExec`] writes its `shard.json`.
///
/// Partitioning: one output partition per input partition. The input (`row_id`,
/// vector) must hold whole fragments per partition — the plan hash-partitions it
/// on `row_id >> 32` — so that no fragment is split over two shards. A partition
/// with no rows writes nothing; every other emits one row (schema:
/// [`staged_shard_schema`]) once its pieces are written. Each attempt writes under
/// a new shard id, so a failed or retried task leaves at most an incomplete shard
/// (no `shard.json`), which finalize never merges: a task that fails while writing
/// removes its pieces (best effort), a crashed one's wait for vacuum.
pub(crate) type VectorIndexShardWriteExec = WorkExec<WriteShards>;

/// The work of [`VectorIndexShardWriteExec`].
#[derive(Debug)]
pub(crate) struct WriteShards {
    pub(crate) location: IndexLocation,
    pub(crate) model: Arc<Model>,
    /// Names of the input's columns.
    pub(crate) row_id: String,
    pub(crate) column: String,
}

impl Work for WriteShards {
    const NAME: &'static str = "VectorIndexShardWriteExec";
    const PARTITIONS: Partitions = Partitions::PerInput;

    fn schema(&self) -> SchemaRef {
        staged_shard_schema()
    }

    /// Whole fragments per partition ([`fragment_key`]); the scheduler of a cluster
    /// cuts a stage at the hash exchange, so the writers run as tasks on its executors.
    fn input_distribution(&self, input: &SchemaRef) -> Result<Distribution> {
        Ok(Distribution::KeyPartitioned(vec![fragment_key(
            input,
            &self.row_id,
        )?]))
    }

    fn benefits_from_input_partitioning(&self, _: &Distribution) -> bool {
        false
    }

    fn details(&self, format: DisplayFormatType, partitions: usize) -> Vec<(&'static str, String)> {
        let mut details = index_detail(format, &self.location);
        details.extend([
            ("model", self.model.info().fingerprint().to_string()),
            ("row_id", self.row_id.clone()),
            ("column", self.column.clone()),
            ("shards", format!("one per partition ({partitions})")),
        ]);
        details
    }

    fn run(
        self: Arc<Self>,
        _partition: usize,
        mut input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> Result<WorkStream> {
        let tracker = Tracker::of_task(&context);
        let mut writer = ShardWriter::new(self.location.clone(), Arc::clone(&self.model));
        Ok(futures::stream::once(async move {
            let mut rows = 0u64;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                write_rows(&mut writer, &batch, &self.row_id, &self.column)?;
                rows += batch.num_rows() as u64;
                tracker.add(ProgressStep::Encoding, batch.num_rows() as u64);
            }
            if rows == 0 {
                return Ok(RecordBatch::new_empty(staged_shard_schema()));
            }
            let shard_id = writer.shard_id().to_string();
            match writer.write_pieces().await {
                Ok(manifest) => StagedShardRow::to_batch(&[StagedShardRow { manifest }]),
                Err(e) => {
                    // Best effort: without `shard.json` the shard was never complete,
                    // so nothing can have merged it; a retry writes another.
                    let location = &self.location;
                    let _ = location.delete_dir(&location.shard_dir(&shard_id)).await;
                    Err(e.into())
                }
            }
        })
        .boxed())
    }
}

/// Completes the shards whose pieces the writers below wrote: once every writer has
/// succeeded, writes each `shard.json`, so that a failed build leaves no complete
/// shard behind and can simply be run again.
///
/// Partitioning: requires a single input partition (the writers' rows, coalesced)
/// and emits a single partition: the input's rows, after their shards are
/// complete. When a writer fails, removes (best effort) the pieces of the shards it
/// had received and publishes none.
pub(crate) type VectorIndexShardPublishExec = WorkExec<PublishShards>;

/// The work of [`VectorIndexShardPublishExec`].
#[derive(Debug)]
pub(crate) struct PublishShards {
    pub(crate) location: IndexLocation,
}

impl Work for PublishShards {
    const NAME: &'static str = "VectorIndexShardPublishExec";
    const PARTITIONS: Partitions = Partitions::One;

    fn schema(&self) -> SchemaRef {
        staged_shard_schema()
    }

    fn details(&self, format: DisplayFormatType, _: usize) -> Vec<(&'static str, String)> {
        let mut details = index_detail(format, &self.location);
        details.extend([(
            "writes",
            "shard.json of each shard once all are written".to_string(),
        )]);
        details
    }

    fn run(
        self: Arc<Self>,
        _partition: usize,
        mut input: SendableRecordBatchStream,
        _context: Arc<TaskContext>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> Result<WorkStream> {
        Ok(futures::stream::once(async move {
            let location = &self.location;
            let mut written = Vec::new();
            let mut failure = None;
            while let Some(batch) = input.next().await {
                match batch.and_then(|b| StagedShardRow::from_batch(&b)) {
                    Ok(rows) => written.extend(rows),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failure {
                for row in &written {
                    let dir = location.shard_dir(&row.manifest.shard_id);
                    let _ = location.delete_dir(&dir).await;
                }
                return Err(e);
            }
            for some in written.chunks(16) {
                let writes = some.iter().map(|row| publish(location, &row.manifest));
                futures::future::try_join_all(writes).await?;
            }
            StagedShardRow::to_batch(&written)
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{gaussian_mixture, vector_column};
    use crate::model::TrainOptions;

    #[tokio::test]
    async fn staged_shard_rows_round_trip_through_a_batch() {
        let data = gaussian_mixture(64, 4, 2, 0.1, 7, 8);
        let options = TrainOptions::default().with_num_partitions(2);
        let model = Arc::new(Model::train(4, data.clone(), &options).unwrap());
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let memory = url::Url::parse("memory://").unwrap();
        let store = Arc::new(object_store::memory::InMemory::new());
        runtime.register_object_store(&memory, store);
        let location = IndexLocation::from_url("memory:///shards", &runtime).unwrap();
        let mut rows = Vec::new();
        for fragment in 0..2u64 {
            let mut writer = ShardWriter::new(location.clone(), Arc::clone(&model));
            let ids: Vec<u64> = (0..32).map(|i| (fragment << 32) + i).collect();
            let part = &data[fragment as usize * 128..(fragment as usize + 1) * 128];
            writer.write(&ids, &vector_column(part, 4), "vec").unwrap();
            rows.push(StagedShardRow {
                manifest: writer.write_pieces().await.unwrap(),
            });
        }
        let batch = StagedShardRow::to_batch(&rows).unwrap();
        assert_eq!(batch.schema(), staged_shard_schema());
        assert_eq!(StagedShardRow::from_batch(&batch).unwrap(), rows);
        let without = batch.project(&[0, 1, 2]).unwrap();
        let err = StagedShardRow::from_batch(&without)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lack column 'manifest'"), "{err}");
    }
}
