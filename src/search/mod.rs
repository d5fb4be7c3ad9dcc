//! Searching the committed segments, as a DataFusion plan.
//!
//! ```text
//! VectorIndexTopKExec        1 partition: the k nearest rows of each query
//!   CoalescePartitionsExec
//!     VectorIndexScanExec    N partitions: scores probed (segment, partition) blocks
//!       RepartitionExec      hash of (segment, partition)
//!         VectorIndexProbeExec  ranks partitions once per query, emits probe tasks
//!           DataSourceExec   the queries (MemorySourceConfig)
//! ```

mod distance;
mod probe_exec;
mod scan_exec;
mod table;
pub(crate) mod topk;
mod topk_exec;

use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use futures::{StreamExt, TryStreamExt};

pub(crate) use probe_exec::VectorIndexProbeExec;
pub(crate) use scan_exec::VectorIndexScanExec;
pub(crate) use table::VectorSearchTable;
pub(crate) use topk_exec::{search_output_schema, VectorIndexTopKExec};

use crate::catalog::{latest_version, read_segment};
use crate::error::{IndexError, Result};
use crate::format::{IndexLocation, SegmentManifest};
use crate::model::Model;

/// Search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchOptions {
    pub k: usize,
    /// IVF partitions probed per query; default 20 (at most the number of partitions).
    pub nprobes: usize,
    /// HNSW search breadth per probed partition (HNSW types; the others ignore it); default
    /// 100, never less than `k`.
    pub ef: Option<usize>,
}

impl SearchOptions {
    /// Refuses counts outside [`crate::limits`].
    pub fn check(&self) -> Result<()> {
        use crate::limits::*;
        check_count("k", self.k, 1, MAX_K)?;
        check_count("nprobes", self.nprobes, 1, MAX_PARTITIONS)?;
        if let Some(ef) = self.ef {
            check_count("ef", ef, 1, MAX_EF)?;
        }
        Ok(())
    }

    /// The breadth HNSW searches use.
    pub fn effective_ef(&self) -> usize {
        self.ef.unwrap_or(crate::hnsw::DEFAULT_EF).max(self.k)
    }
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            k: 10,
            nprobes: 20,
            ef: None,
        }
    }
}

/// The committed state a search reads: the model and the segments of the latest version.
#[derive(Debug)]
pub(crate) struct SearchTarget {
    pub location: IndexLocation,
    pub model: Arc<Model>,
    pub version: u64,
    pub segments: Vec<SegmentManifest>,
}

impl SearchTarget {
    pub(crate) async fn load(location: &IndexLocation) -> Result<Arc<Self>> {
        let model = Arc::new(Model::read_current(location).await?);
        let version = latest_version(location).await?.ok_or_else(|| {
            IndexError::NotFound(format!(
                "index {} has no committed version yet; run finalize_vector_index first",
                location.url()
            ))
        })?;
        Self::with_version(location, model, version).await
    }

    #[cfg(feature = "codec")]
    /// The target of a plan made elsewhere: `version`, searched with the model
    /// `fingerprint` (which must still be the index's).
    pub(crate) async fn load_version(
        location: &IndexLocation,
        version: u64,
        fingerprint: &str,
    ) -> Result<Arc<Self>> {
        let (model, version) = futures::try_join!(
            Model::read_current(location),
            crate::catalog::read_version(location, version)
        )?;
        if model.fingerprint() != fingerprint {
            return Err(IndexError::Conflict(format!(
                "index {}: the search was planned with model {fingerprint}, but the index now has model {}; plan it again",
                location.url(),
                model.fingerprint()
            )));
        }
        Self::with_version(location, Arc::new(model), version).await
    }

    async fn with_version(
        location: &IndexLocation,
        model: Arc<Model>,
        version: crate::format::VersionManifest,
    ) -> Result<Arc<Self>> {
        let ids: Vec<String> = version
            .segments
            .iter()
            .map(|s| s.segment_id.clone())
            .collect();
        let segments: Vec<SegmentManifest> = futures::stream::iter(ids)
            .map(|id| {
                let location = location.clone();
                async move { read_segment(&location, &id).await }
            })
            .buffered(16)
            .try_collect()
            .await?;
        if let Some(s) = segments.iter().find(|s| s.model != model.fingerprint()) {
            return Err(IndexError::corrupt(
                format!("segment {}", s.segment_id),
                "built with another model",
            ));
        }
        Ok(Arc::new(Self {
            location: location.clone(),
            model,
            version: version.version,
            segments,
        }))
    }
}

/// Schema of the query leaf: `query_id`, `query` (`FixedSizeList<Float32>`).
pub(crate) fn queries_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::UInt32, false),
        Field::new(
            "query",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                dim as i32,
            ),
            false,
        ),
    ]))
}

/// Builds the search plan for `queries` (n × dim, row-major). Output: `query_id`,
/// `row_id`, `distance`, ordered by query then distance.
pub(crate) fn search_plan(
    state: &dyn Session,
    target: Arc<SearchTarget>,
    queries: Vec<f32>,
    options: SearchOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    let dim = target.model.dim();
    options.check()?;
    if queries.is_empty() || !queries.len().is_multiple_of(dim) {
        return Err(IndexError::invalid_argument(
            "query",
            format!(
                "query vectors must have dimension {dim}, got {} values",
                queries.len()
            ),
        ));
    }
    if queries.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::invalid_argument(
            "query",
            "contains NaN or infinity",
        ));
    }
    let n = queries.len() / dim;
    let schema = queries_schema(dim);
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = FixedSizeListArray::try_new(
        item,
        dim as i32,
        Arc::new(Float32Array::from(queries)),
        None,
    )?;
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(UInt32Array::from_iter_values(0..n as u32)),
            Arc::new(list),
        ],
    )?;
    let leaf = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?;
    let probe = Arc::new(VectorIndexProbeExec::try_new(
        leaf,
        Arc::clone(&target),
        options,
    )?);
    let partitions = state.config().target_partitions().max(1);
    // Hash, not round robin: each probed block is read by one scan partition for all
    // its queries, and a distributed scheduler cuts a stage here instead of
    // dropping the exchange.
    let key = probe_exec::probe_task_key(&probe.schema())?;
    let spread = Arc::new(RepartitionExec::try_new(
        probe,
        Partitioning::Hash(key, partitions),
    )?);
    let scan = Arc::new(VectorIndexScanExec::try_new(
        spread,
        Arc::clone(&target),
        options,
    )?);
    let topk =
        VectorIndexTopKExec::try_new(Arc::new(CoalescePartitionsExec::new(scan)), options.k)?;
    Ok(Arc::new(topk))
}
