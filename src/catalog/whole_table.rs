//! A table of committed state read whole when scanned: the catalog's small tables
//! (`vector_index_segments`, `vector_index_versions`) are one batch of manifests'
//! fields, so each is written as its schema and its read, not as a provider.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

/// What a [`WholeTable`] reads.
#[async_trait]
pub(crate) trait ReadWhole: std::fmt::Debug + Send + Sync {
    fn schema(&self) -> SchemaRef;
    /// Every row, read from the store when the table is scanned.
    async fn read_batch(&self) -> crate::error::Result<RecordBatch>;
}

/// A [`ReadWhole`] as a DataFusion table: one in-memory partition, read at scan.
#[derive(Debug)]
pub(crate) struct WholeTable<T>(pub T);

#[async_trait]
impl<T: ReadWhole + 'static> TableProvider for WholeTable<T> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.0.read_batch().await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.0.schema(),
            projection.cloned(),
        )?)
    }
}
