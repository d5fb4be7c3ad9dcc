//! `VectorSearchTable`: a search as a table (`row_id`, `distance`), so it joins like any table.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;

use super::{search_plan, SearchCache, SearchOptions, SearchTarget};
use crate::error::IndexError;
use crate::format::IndexLocation;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::UInt64, false),
        Field::new("distance", DataType::Float32, false),
    ]))
});

/// One query's k nearest rows in the latest committed version.
#[derive(Debug, Clone)]
pub(crate) struct VectorSearchTable {
    location: IndexLocation,
    query: Vec<f32>,
    options: SearchOptions,
}

impl VectorSearchTable {
    pub(crate) fn new(location: IndexLocation, query: Vec<f32>, options: SearchOptions) -> Self {
        Self {
            location,
            query,
            options,
        }
    }
}

#[async_trait]
impl TableProvider for VectorSearchTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&SCHEMA)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let cache = SearchCache::of(state.config());
        let loaded =
            SearchTarget::load(&self.location, self.options.version, cache.as_deref()).await?;
        let target = &loaded.target;
        // One query: exactly one vector of the index's dimension (the Rust API takes
        // several queries in one slice; SQL does not).
        let dim = target.model.info().dim();
        if self.query.len() != dim {
            return Err(IndexError::invalid_argument(
                "query",
                format!(
                    "has {} values, but the vectors of index {} have dimension {dim}",
                    self.query.len(),
                    self.location.url()
                ),
            )
            .into());
        }
        let plan = search_plan(state, loaded, self.query.clone(), self.options)?;
        let all = vec![0, 1];
        let exprs = projection.unwrap_or(&all).iter().map(|&i| {
            let name = SCHEMA.field(i).name();
            // Output column i of the table is column i + 1 of the plan (after query_id).
            (Arc::new(Column::new(name, i + 1)) as _, name.to_string())
        });
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}
