//! Searching the committed segments, as a DataFusion plan.
//!
//! ```text
//! VectorIndexTopKExec        1 partition: the k nearest rows of each query
//!   CoalescePartitionsExec
//!     VectorIndexScanExec    N partitions: scores every segment's block of probed partitions
//!       RepartitionExec      hash of the slot the probe balanced each task onto
//!         VectorIndexProbeExec  ranks partitions once per query, emits probe tasks
//!           DataSourceExec   the queries (MemorySourceConfig)
//! ```

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
use futures::{StreamExt, TryStreamExt};

use cache::{BlockKey, CachedTarget};
pub use cache::{SearchCache, SearchCacheStats, DEFAULT_SEARCH_CACHE_BYTES};
pub(crate) use probe_exec::VectorIndexProbeExec;
pub(crate) use scan_exec::VectorIndexScanExec;
pub(crate) use table::VectorSearchTable;
pub(crate) use topk_exec::{search_output_schema, VectorIndexTopKExec};

use crate::catalog::{list_versions, read_segment, read_version};
use crate::error::{IndexError, Result};
use crate::format::{IndexLocation, SegmentManifest, VersionManifest};
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

/// The committed state a search reads: the model and the segments of one version.
#[derive(Debug)]
pub(crate) struct SearchTarget {
    pub location: IndexLocation,
    pub model: Arc<Model>,
    pub version: u64,
    pub segments: Vec<SegmentManifest>,
    /// Per IVF partition, the segments holding rows in it (segment number and the
    /// block's cache key), in segment order: worked out once per target, not per
    /// search.
    pub(super) blocks_by_partition: Vec<Holding>,
    /// Per IVF partition, its rows over all segments (what scoring it costs).
    pub(super) rows_by_partition: Vec<u64>,
    /// PQ's query-independent table terms, when kept.
    pub(super) pq_terms: Option<Arc<distance::PqTerms>>,
}

/// The blocks holding rows in one IVF partition: (segment number, cache key).
type Holding = Vec<(usize, BlockKey)>;

/// A target and whether it came from a [`SearchCache`] (shown by `EXPLAIN ANALYZE`).
#[derive(Debug, Clone)]
pub(crate) struct LoadedTarget {
    pub target: Arc<SearchTarget>,
    pub cached: bool,
}

impl SearchTarget {
    /// The latest committed version of `location`, from `cache` when it holds that
    /// very version (two small reads: the version list and the latest manifest).
    pub(crate) async fn load(
        location: &IndexLocation,
        cache: Option<&SearchCache>,
    ) -> Result<LoadedTarget> {
        let Some(&latest) = list_versions(location).await?.last() else {
            // No index at all is a different error from an index never finalized.
            Model::read_current(location).await?;
            return Err(IndexError::NotFound(format!(
                "index {} has no committed version yet; run finalize_vector_index first",
                location.url()
            )));
        };
        let manifest = read_version(location, latest).await?;
        Self::of_manifest(location, manifest, None, cache).await
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
        Self::of_manifest(location, manifest, Some(fingerprint), cache).await
    }

    /// The target `manifest` describes. With a cache: the cached target if it was
    /// built from this manifest, else one that reuses the cached model (same
    /// fingerprint) and the manifests of the segments both versions list.
    async fn of_manifest(
        location: &IndexLocation,
        manifest: VersionManifest,
        fingerprint: Option<&str>,
        cache: Option<&SearchCache>,
    ) -> Result<LoadedTarget> {
        let key = location.url().to_string();
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
        let target = Arc::new(Self {
            location: location.clone(),
            model,
            version: manifest.version,
            segments,
            blocks_by_partition,
            rows_by_partition,
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

    /// Per IVF partition, the segments' blocks holding rows in it, and its rows.
    fn blocks_by_partition(
        location: &IndexLocation,
        model: &Model,
        segments: &[SegmentManifest],
    ) -> Result<(Vec<Holding>, Vec<u64>)> {
        let index: Arc<str> = location.url().to_string().into();
        let ids: Vec<Arc<str>> = segments
            .iter()
            .map(|s| s.segment_id.as_str().into())
            .collect();
        (0..model.num_partitions() as u32)
            .map(|p| {
                let mut holding = Vec::new();
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
                        holding.push((
                            s,
                            BlockKey {
                                index: Arc::clone(&index),
                                segment_id: Arc::clone(&ids[s]),
                                partition: p,
                                offset: info.offset,
                                crc32: info.crc32,
                            },
                        ));
                    }
                }
                Ok((holding, rows))
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
            .map(|b| 32 + 48 * b.len())
            .sum();
        let terms = self.pq_terms.as_ref().map_or(0, |t| t.memory_size());
        self.model.memory_size() + manifests + keys + terms
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
    let partitions = state.config().target_partitions().max(1);
    let probe = Arc::new(VectorIndexProbeExec::try_new(
        leaf,
        Arc::clone(&target),
        options,
        loaded.cached,
        partitions,
    )?);
    // Hash, not round robin: the probe balanced its tasks over the scan partitions
    // and chose keys the hash sends there (a partition's block is read by one scan
    // partition for all its queries unless it was split), and a distributed
    // scheduler cuts a stage here instead of dropping the exchange.
    let key = probe_tasks::probe_task_key(&probe.schema())?;
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
