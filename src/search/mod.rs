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

mod cache;
mod distance;
mod probe_exec;
mod probe_tasks;
mod scan_exec;
mod table;
pub(crate) mod topk;
mod topk_exec;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::SessionConfig;
use futures::{StreamExt, TryStreamExt};

use cache::{BlockKey, CachedTarget, Place};
pub use cache::{SearchCache, SearchCacheStats, DEFAULT_SEARCH_CACHE_BYTES};
pub(crate) use probe_exec::{Probe, VectorIndexProbeExec};
pub(crate) use scan_exec::{ScanBlocks, TaskRouting, VectorIndexScanExec};
pub(crate) use table::VectorSearchTable;
pub(crate) use topk_exec::{search_output_schema, MergeTopK, VectorIndexTopKExec};

use crate::catalog::{check_listed, list_versions, read_segment, read_version};
use crate::error::{IndexError, Result};
use crate::format::{IndexLocation, SegmentManifest, VersionManifest};
use crate::model::Model;

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

/// The committed state a search reads: the model and the segments of one version.
#[derive(Debug)]
pub(crate) struct SearchTarget {
    pub location: IndexLocation,
    pub model: Arc<Model>,
    pub version: u64,
    pub segments: Vec<SegmentManifest>,
    /// Per IVF partition, the blocks a scan reads for it (see [`HeldBlock`]):
    /// worked out once per target, not per search.
    pub(super) blocks_by_partition: Vec<Vec<HeldBlock>>,
    /// Per IVF partition, its rows over all segments (what scoring it costs).
    pub(super) rows_by_partition: Vec<u64>,
    /// Entry i: the rows of the i + 1 largest IVF partitions together, the most a
    /// query probing i + 1 partitions scores.
    largest_rows: Vec<u64>,
    /// PQ's query-independent table terms, when kept.
    pub(super) pq_terms: Option<Arc<distance::PqTerms>>,
}

/// What a scan reads and scores as one block of an IVF partition: for the HNSW types
/// one segment's rows and graph (graphs are searched per segment); for the others
/// the rows of every segment holding some, joined in segment order, so that an
/// index committed as many segments is scanned like one (one cache look-up and one
/// stretch of rows per probed partition, not one per segment).
#[derive(Debug)]
pub(super) struct HeldBlock {
    /// The segments joined (numbers in [`SearchTarget::segments`]), in order.
    pub segments: Vec<usize>,
    pub key: BlockKey,
}

/// A target and whether it came from a [`SearchCache`] (shown by `EXPLAIN ANALYZE`).
#[derive(Debug, Clone)]
pub(crate) struct LoadedTarget {
    pub target: Arc<SearchTarget>,
    pub cached: bool,
}

impl SearchTarget {
    /// Committed version `version` of `location` (the latest when `None`), from
    /// `cache` when it holds that very version (two small reads: the version list and
    /// the version's manifest).
    pub(crate) async fn load(
        location: &IndexLocation,
        version: Option<u64>,
        cache: Option<&SearchCache>,
    ) -> Result<LoadedTarget> {
        let versions = list_versions(location).await?;
        let Some(&latest) = versions.last() else {
            // No index at all is a different error from an index never finalized.
            Model::read_current(location).await?;
            return Err(IndexError::NotFound(format!(
                "index {} has no committed version yet; run finalize_vector_index first",
                location.url()
            )));
        };
        let wanted = version.unwrap_or(latest);
        check_listed(location, &versions, wanted)?;
        let manifest = read_version(location, wanted).await?;
        // The latest version's target is cached under the index's URL and an older
        // one's beside it, so that searching an old version does not evict the latest.
        let key = if wanted == latest {
            location.url().to_string()
        } else {
            format!("{}@{wanted}", location.url())
        };
        Self::of_manifest(location, manifest, None, cache, key).await
    }

    #[cfg(feature = "codec")]
    /// The target of a plan made elsewhere: `version`, searched with the model
    /// `fingerprint` (which must still be the index's).
    pub(crate) async fn load_version(
        location: &IndexLocation,
        version: u64,
        fingerprint: &str,
        cache: Option<&SearchCache>,
    ) -> Result<LoadedTarget> {
        let manifest = read_version(location, version).await?;
        let key = location.url().to_string();
        Self::of_manifest(location, manifest, Some(fingerprint), cache, key).await
    }

    /// The target `manifest` describes. With a cache: the cached target if it was
    /// built from this manifest, else one that reuses the cached model (same
    /// fingerprint) and the manifests of the segments both versions list; `key`
    /// names its place in the cache.
    async fn of_manifest(
        location: &IndexLocation,
        manifest: VersionManifest,
        fingerprint: Option<&str>,
        cache: Option<&SearchCache>,
        key: String,
    ) -> Result<LoadedTarget> {
        let previous = cache.and_then(|c| c.target(&key));
        if let Some(hit) = previous.as_ref().filter(|p| p.manifest == manifest) {
            if let Some(c) = cache {
                c.record_target(true);
            }
            return Self::checked(Arc::clone(&hit.target), fingerprint).map(|target| {
                LoadedTarget {
                    target,
                    cached: true,
                }
            });
        }
        let previous = previous.map(|p| Arc::clone(&p.target));
        let (model, pq_terms) = match previous
            .as_ref()
            .filter(|p| p.model.fingerprint() == manifest.model)
        {
            Some(p) => (Arc::clone(&p.model), p.pq_terms.clone()),
            None => {
                let model = Arc::new(Model::read_current(location).await?);
                let terms = distance::PqTerms::of(&model).map(Arc::new);
                (model, terms)
            }
        };
        let known: HashMap<&str, &SegmentManifest> = previous
            .iter()
            .flat_map(|p| p.segments.iter().map(|s| (s.segment_id.as_str(), s)))
            .collect();
        // Owned inputs: the future must be `Send` for any lifetime (`TableProvider::scan`).
        let wanted: Vec<(String, Option<SegmentManifest>)> = manifest
            .segments
            .iter()
            .map(|s| {
                let id = s.segment_id.clone();
                let known = known.get(id.as_str()).map(|m| (*m).clone());
                (id, known)
            })
            .collect();
        drop(known);
        let segments: Vec<SegmentManifest> = futures::stream::iter(wanted)
            .map(|(id, known)| {
                let location = location.clone();
                async move {
                    match known {
                        Some(m) => Ok(m),
                        None => read_segment(&location, &id).await,
                    }
                }
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
        let (blocks_by_partition, rows_by_partition) =
            Self::blocks_by_partition(location, &model, &segments)?;
        let largest_rows = largest_first(&rows_by_partition);
        let target = Arc::new(Self {
            location: location.clone(),
            model,
            version: manifest.version,
            segments,
            blocks_by_partition,
            rows_by_partition,
            largest_rows,
            pq_terms,
        });
        if let Some(c) = cache {
            c.record_target(false);
            c.put_target(
                &key,
                Arc::new(CachedTarget {
                    manifest,
                    target: Arc::clone(&target),
                }),
            );
        }
        Self::checked(target, fingerprint).map(|target| LoadedTarget {
            target,
            cached: false,
        })
    }

    /// Per IVF partition, the blocks a scan reads for it, and its rows.
    fn blocks_by_partition(
        location: &IndexLocation,
        model: &Model,
        segments: &[SegmentManifest],
    ) -> Result<(Vec<Vec<HeldBlock>>, Vec<u64>)> {
        let index: Arc<str> = location.url().to_string().into();
        let ids: Vec<Arc<str>> = segments
            .iter()
            .map(|s| s.segment_id.as_str().into())
            .collect();
        let join = !model.index_type().is_hnsw();
        (0..model.num_partitions() as u32)
            .map(|p| {
                let mut holding: Vec<(usize, Place)> = Vec::new();
                let mut rows = 0;
                for (s, seg) in segments.iter().enumerate() {
                    let Some((_, info)) = seg.block(p) else {
                        return Err(IndexError::corrupt(
                            format!("segment {}", seg.segment_id),
                            format!("has no block for partition {p}"),
                        ));
                    };
                    rows += info.rows;
                    if info.rows > 0 {
                        let place = Place {
                            segment_id: Arc::clone(&ids[s]),
                            offset: info.offset,
                            crc32: info.crc32,
                        };
                        holding.push((s, place));
                    }
                }
                let held = |of: Vec<(usize, Place)>| {
                    let (segments, places): (Vec<usize>, Vec<Place>) = of.into_iter().unzip();
                    HeldBlock {
                        segments,
                        key: BlockKey::new(Arc::clone(&index), p, places.into()),
                    }
                };
                let blocks = if join && !holding.is_empty() {
                    vec![held(holding)]
                } else {
                    holding.into_iter().map(|h| held(vec![h])).collect()
                };
                Ok((blocks, rows))
            })
            .collect::<Result<Vec<_>>>()
            .map(|all| all.into_iter().unzip())
    }

    /// `target`, if it is searched with the model `fingerprint` a plan names.
    fn checked(target: Arc<Self>, fingerprint: Option<&str>) -> Result<Arc<Self>> {
        match fingerprint {
            Some(f) if f != target.model.fingerprint() => Err(IndexError::Conflict(format!(
                "index {}: the search was planned with model {f}, but the index now has model {}; plan it again",
                target.location.url(),
                target.model.fingerprint()
            ))),
            _ => Ok(target),
        }
    }

    /// Bytes the target takes in memory, roughly (for the cache's budget).
    pub(crate) fn memory_size(&self) -> usize {
        let manifests: usize = self
            .segments
            .iter()
            .map(|s| {
                256 + s
                    .files
                    .iter()
                    .map(|f| 128 + 64 * f.partitions.len() * if f.graph.is_some() { 2 } else { 1 })
                    .sum::<usize>()
            })
            .sum();
        let keys: usize = self
            .blocks_by_partition
            .iter()
            .flatten()
            .map(|b| 96 + 40 * b.segments.len())
            .sum();
        let terms = self.pq_terms.as_ref().map_or(0, |t| t.memory_size());
        let rows = 16 * self.rows_by_partition.len();
        self.model.memory_size() + manifests + keys + rows + terms
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

/// Entry i: the sum of the i + 1 largest of `rows`.
fn largest_first(rows: &[u64]) -> Vec<u64> {
    let mut sums = rows.to_vec();
    sums.sort_unstable_by(|a, b| b.cmp(a));
    sums.iter_mut().fold(0u64, |sum, rows| {
        *rows = rows.saturating_add(sum);
        *rows
    });
    sums
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
    use super::*;
    use crate::model::{train_model, IndexType, TrainOptions};

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
