//! A `FileSource` that turns one staged shard into one row of the shards table.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileOpenFuture, FileOpener, FileScanConfig, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::DisplayFormatType;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::table::shards_schema;
use crate::format::ShardManifest;

/// Reads `shard.json` and the `fragments.roaring` sidecar of each shard,
/// concurrently, and emits one row per shard (schema: [`shards_schema`]).
/// A file that is not a `shard.json` stands for an incomplete shard.
#[derive(Debug, Clone)]
pub struct ShardManifestSource {
    table_schema: TableSchema,
    projection: SplitProjection,
    metrics: ExecutionPlanMetricsSet,
}

impl Default for ShardManifestSource {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardManifestSource {
    pub fn new() -> Self {
        let table_schema = TableSchema::from(shards_schema());
        Self {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl FileSource for ShardManifestSource {
    fn create_file_opener(
        &self,
        object_store: Arc<dyn ObjectStore>,
        _base_config: &FileScanConfig,
        _partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        let inner: Arc<dyn FileOpener> = Arc::new(ShardOpener {
            store: object_store,
            file_indices: self.projection.file_indices.clone(),
        });
        ProjectionOpener::try_new(
            self.projection.clone(),
            inner,
            self.table_schema.file_schema(),
        )
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    fn with_batch_size(&self, _batch_size: usize) -> Arc<dyn FileSource> {
        Arc::new(self.clone())
    }

    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> Result<Option<Arc<dyn FileSource>>> {
        let mut source = self.clone();
        let merged = self.projection.source.try_merge(projection)?;
        source.projection = SplitProjection::new(self.table_schema.file_schema(), &merged);
        Ok(Some(Arc::new(source)))
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        Some(&self.projection.source)
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn file_type(&self) -> &str {
        "vector_index_shard"
    }

    fn fmt_extra(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, ", reads=shard.json+fragments.roaring")
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(self.projection.source.iter(), f)
    }
}

struct ShardOpener {
    store: Arc<dyn ObjectStore>,
    file_indices: Vec<usize>,
}

impl FileOpener for ShardOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let store = Arc::clone(&self.store);
        let indices = self.file_indices.clone();
        Ok(async move {
            let row = read_shard_row(store.as_ref(), &file.object_meta.location).await;
            let batch = row.into_batch()?.project(&indices)?;
            Ok(futures::stream::once(async move { Ok(batch) }).boxed())
        }
        .boxed())
    }
}

/// What the table shows of one shard.
#[derive(Debug, Default)]
pub(crate) struct ShardRow {
    pub shard_id: String,
    pub path: String,
    pub manifest: Option<ShardManifest>,
    pub problem: Option<String>,
}

impl ShardRow {
    fn into_batch(self) -> Result<RecordBatch> {
        let m = self.manifest.as_ref();
        let complete = m.is_some() && self.problem.is_none();
        let bytes = m.map(|m| m.data_file.size + m.fragments_file.size);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some(self.shard_id.as_str())])),
            Arc::new(StringArray::from(vec![m.map(|m| m.model.as_str())])),
            Arc::new(StringArray::from(vec![m.map(|m| m.index_type.name())])),
            Arc::new(StringArray::from(vec![m.map(|m| m.metric.name())])),
            Arc::new(UInt32Array::from(vec![m.map(|m| m.dim)])),
            Arc::new(UInt64Array::from(vec![m.map(|m| m.rows)])),
            Arc::new(UInt64Array::from(vec![bytes])),
            Arc::new(UInt64Array::from(vec![m.map(|m| m.num_fragments)])),
            Arc::new(UInt32Array::from(vec![m.and_then(|m| m.min_fragment)])),
            Arc::new(UInt32Array::from(vec![m.and_then(|m| m.max_fragment)])),
            Arc::new(BooleanArray::from(vec![complete])),
            Arc::new(StringArray::from(vec![self.problem.as_deref()])),
            Arc::new(StringArray::from(vec![Some(self.path.as_str())])),
        ];
        Ok(RecordBatch::try_new(shards_schema(), cols)?)
    }
}

/// Reads a shard's manifest and sidecar; problems become the row's `problem`, not errors,
/// so one bad shard never hides the others.
pub(crate) async fn read_shard_row(store: &dyn ObjectStore, file: &Path) -> ShardRow {
    let dir: Path = file
        .parts()
        .take(file.parts().count().saturating_sub(1))
        .collect();
    let dir_name = dir.filename().unwrap_or_default().to_string();
    let shard_id = dir_name
        .strip_prefix("partial_")
        .unwrap_or(&dir_name)
        .to_string();
    let mut row = ShardRow {
        shard_id: shard_id.clone(),
        path: dir.to_string(),
        ..Default::default()
    };
    if file.filename() != Some("shard.json") {
        row.problem = Some("incomplete: shard.json is missing (the worker did not finish)".into());
        return row;
    }
    let sidecar = dir.clone().join("fragments.roaring");
    let (manifest, sidecar) = futures::join!(store.get(file), store.get(&sidecar));
    let manifest = match manifest {
        Ok(r) => r.bytes().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
    .and_then(|b| ShardManifest::from_json(&shard_id, &b).map_err(|e| e.to_string()));
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => {
            row.problem = Some(e);
            return row;
        }
    };
    if manifest.shard_id != shard_id {
        row.problem = Some(format!(
            "shard.json names shard {}, but its folder is {dir_name}",
            manifest.shard_id
        ));
    }
    let sidecar = match sidecar {
        Ok(r) => r.bytes().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sidecar {
        Err(e) => row.problem = Some(format!("fragments.roaring unreadable: {e}")),
        Ok(b)
            if b.len() as u64 != manifest.fragments_file.size
                || crc32fast::hash(&b) != manifest.fragments_file.crc32 =>
        {
            row.problem =
                Some("fragments.roaring does not match the size and checksum in shard.json".into())
        }
        Ok(_) => {}
    }
    row.manifest = Some(manifest);
    row
}
