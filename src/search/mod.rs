//! Searching the committed segments, as a DataFusion plan.
//!
//! ```text
//! VectorIndexTopKExec        1 partition: the k nearest rows of each query
//!   CoalescePartitionsExec
//!     VectorIndexScanExec    N partitions: scores probed partitions' rows in every segment
//!       RepartitionExec      hash of the slot the probe balanced each task onto
//!         VectorIndexProbeExec  ranks partitions once per query, emits probe tasks
//!           DataSourceExec   the queries (MemorySourceConfig)
//! ```
//!
//! A search that reads little (see [`scan_partitions`]) is planned without the
//! exchange: `VectorIndexTopKExec` over one `VectorIndexScanExec` partition over the
//! probe, all polled by the task that runs the plan.

mod block;
mod cache;
mod probe_exec;
mod probe_tasks;
mod scan_exec;
mod scorer;
mod table;
mod target;
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
use datafusion::prelude::SessionConfig;

pub use cache::{SearchCache, SearchCacheStats, DEFAULT_SEARCH_CACHE_BYTES};
pub(crate) use probe_exec::{Probe, VectorIndexProbeExec};
pub(crate) use scan_exec::{ScanBlocks, TaskRouting, VectorIndexScanExec};
pub(crate) use table::VectorSearchTable;
pub(crate) use target::{HeldBlock, LoadedTarget, SearchTarget};
pub(crate) use topk_exec::{search_output_schema, MergeTopK, VectorIndexTopKExec};

use crate::error::{IndexError, Result};

/// Search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct SearchOptions {
    pub k: usize,
    /// IVF partitions probed per query; default 20 (at most the number of partitions).
    pub nprobes: usize,
    /// HNSW search breadth per probed partition (HNSW types; the others ignore it); default
    /// 100, never less than `k`.
    pub ef: Option<usize>,
    /// The committed version to search; default the latest.
    #[serde(default)]
    pub version: Option<u64>,
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

/// Builders, one per field: the struct is `#[non_exhaustive]` (it will grow), so
/// code outside this crate starts from `SearchOptions::default()`.
impl SearchOptions {
    /// Sets `k` (default: 10).
    pub fn with_k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }

    /// Sets `nprobes` (default: 20).
    pub fn with_nprobes(mut self, nprobes: usize) -> Self {
        self.nprobes = nprobes;
        self
    }

    /// Sets `ef` (default: 100, never less than `k`).
    pub fn with_ef(mut self, ef: usize) -> Self {
        self.ef = Some(ef);
        self
    }

    /// Sets `version` (default: the latest version).
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            k: 10,
            nprobes: 20,
            ef: None,
            version: None,
        }
    }
}

/// Schema of the query leaf: `query_id`, `query` (`FixedSizeList<Float32>`).
pub(crate) fn queries_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::UInt32, false),
        query_field(dim),
    ]))
}

/// The `query` column of the operators' rows: `dim` floats.
fn query_field(dim: usize) -> Field {
    Field::new(
        "query",
        DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, false)),
            dim as i32,
        ),
        false,
    )
}

/// Builds the search plan for `queries` (n × dim, row-major). Output: `query_id`,
/// `row_id`, `distance`, ordered by query then distance.
pub(crate) fn search_plan(
    state: &dyn Session,
    loaded: LoadedTarget,
    queries: Vec<f32>,
    options: SearchOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    let target = loaded.target;
    let dim = target.model.info().dim();
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
    let partitions = scan_partitions(&target, n, options, state.config());
    let probe = Arc::new(VectorIndexProbeExec::try_new(
        leaf,
        Probe::new(Arc::clone(&target), options, loaded.cached, partitions),
    )?);
    let top_k = MergeTopK { k: options.k };
    if partitions == 1 {
        let scan = ScanBlocks {
            target,
            options,
            routing: TaskRouting::Single,
        };
        let scan = VectorIndexScanExec::try_new(probe, scan)?;
        return Ok(Arc::new(VectorIndexTopKExec::try_new(
            Arc::new(scan),
            top_k,
        )?));
    }
    // Hash, not round robin: the probe balanced its tasks over the scan partitions
    // and chose keys the hash sends there (a partition's block is read by one scan
    // partition for all its queries unless it was split), and a distributed
    // scheduler cuts a stage here instead of dropping the exchange.
    let key = probe_tasks::probe_task_key(&probe.schema())?;
    let spread = Arc::new(RepartitionExec::try_new(
        probe,
        Partitioning::Hash(key, partitions),
    )?);
    let scan = ScanBlocks {
        target,
        options,
        routing: TaskRouting::BySlot,
    };
    let scan = Arc::new(VectorIndexScanExec::try_new(spread, scan)?);
    let topk = VectorIndexTopKExec::try_new(Arc::new(CoalescePartitionsExec::new(scan)), top_k)?;
    Ok(Arc::new(topk))
}

datafusion::common::extensions_options! {
    /// Settings of this crate's plans, under `vector_index.` (`SET
    /// vector_index.parallel_search_min_bytes = 0`). A [`crate::VectorIndexSession`]
    /// registers them; a session without them plans with the defaults.
    pub struct VectorIndexConfig {
        /// A search whose probed partitions may hold fewer bytes of codes than this
        /// — each query's `nprobes` largest partitions — runs in one partition,
        /// without an exchange; larger ones over `target_partitions`. Handing tasks
        /// between threads costs more than a second core saves on so little work
        /// (BENCHMARKS.md, "Search"), as DataFusion leaves file scans below
        /// `datafusion.optimizer.repartition_file_min_size` whole.
        pub parallel_search_min_bytes: usize, default = 4 * 1024 * 1024
    }
}

impl datafusion::common::config::ConfigExtension for VectorIndexConfig {
    const PREFIX: &'static str = "vector_index";
}

/// Scan partitions for a search of `queries` queries: the session's
/// `target_partitions`, or one below
/// [`VectorIndexConfig::parallel_search_min_bytes`].
fn scan_partitions(
    target: &SearchTarget,
    queries: usize,
    options: SearchOptions,
    config: &SessionConfig,
) -> usize {
    let most = config.target_partitions().max(1);
    let probed = options.nprobes.min(target.largest_rows.len());
    let rows = probed
        .checked_sub(1)
        .map_or(0, |last| target.largest_rows[last]);
    let bytes = rows
        .saturating_mul(queries as u64)
        .saturating_mul(target.model.code_width() as u64);
    let least = config
        .options()
        .extensions
        .get::<VectorIndexConfig>()
        .cloned()
        .unwrap_or_default()
        .parallel_search_min_bytes as u64;
    if bytes < least {
        1
    } else {
        most
    }
}

#[cfg(test)]
mod tests {
    use super::target::largest_first;
    use super::*;
    use crate::format::{IndexLocation, IndexType};
    use crate::model::{train_model, TrainOptions};

    #[test]
    fn searches_reading_less_than_the_threshold_get_one_partition() {
        assert_eq!(
            largest_first(&[100, 400, 50, 250]),
            vec![400, 650, 750, 800]
        );
        assert_eq!(largest_first(&[u64::MAX, 1]), vec![u64::MAX, u64::MAX]);
        let dim = 8;
        let data: Vec<f32> = (0..400 * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let options = TrainOptions {
            index_type: IndexType::IvfFlat,
            num_partitions: 4,
            max_iterations: 2,
            ..Default::default()
        };
        let model = Arc::new(train_model(dim, data, &options, &Default::default()).unwrap());
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let rows = vec![100, 400, 50, 250];
        let target = SearchTarget {
            location: IndexLocation::from_url("file:///t", &runtime).unwrap(),
            model,
            version: 1,
            segments: vec![],
            blocks_by_partition: (0..4).map(|_| Vec::new()).collect(),
            largest_rows: largest_first(&rows),
            rows_by_partition: rows,
            pq_terms: None,
        };
        let config = |min_size: usize| {
            SessionConfig::new()
                .with_target_partitions(6)
                .with_option_extension(VectorIndexConfig {
                    parallel_search_min_bytes: min_size,
                })
        };
        let parts = |queries, nprobes, min_size| {
            let options = SearchOptions {
                k: 10,
                nprobes,
                ef: None,
                ..Default::default()
            };
            scan_partitions(&target, queries, options, &config(min_size))
        };
        // One query probing 2 partitions scores at most 650 rows of 32 bytes.
        assert_eq!(parts(1, 2, 650 * 32), 6);
        assert_eq!(parts(1, 2, 650 * 32 + 1), 1);
        // nprobes beyond the partitions counts them all; queries multiply.
        assert_eq!(parts(1, 99, 800 * 32 + 1), 1);
        assert_eq!(parts(3, 99, 800 * 32 + 1), 6);
        assert_eq!(parts(3, 1, 3 * 400 * 32), 6);
        assert_eq!(parts(3, 1, 3 * 400 * 32 + 1), 1);
        assert_eq!(parts(usize::MAX, 4, usize::MAX), 6);
        // Without the settings: the default.
        let default = VectorIndexConfig::default().parallel_search_min_bytes;
        let plain = SessionConfig::new().with_target_partitions(6);
        let one = |nprobes| SearchOptions {
            k: 10,
            nprobes,
            ef: None,
            ..Default::default()
        };
        assert_eq!(default, 4 << 20);
        assert_eq!(scan_partitions(&target, 1, one(4), &plain), 1);
        assert_eq!(
            scan_partitions(&target, default / (800 * 32) + 1, one(4), &plain),
            6
        );
    }
}
