//! `SearchTarget`: what a search reads — the model and the segments of one committed
//! version — loaded once (or taken from the [`SearchCache`]) and shared by the
//! operators of every search of that version.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::cache::{BlockKey, CachedTarget, Place};
use super::scorer;
use super::SearchCache;
use crate::catalog::{check_listed, list_versions, read_segment, read_version};
use crate::error::{IndexError, Result};
use crate::format::{IndexLocation, SegmentManifest, VersionManifest};
use crate::model::Model;

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
    pub(super) largest_rows: Vec<u64>,
    /// PQ's query-independent table terms, when kept.
    pub(super) pq_terms: Option<Arc<scorer::PqTerms>>,
}

/// What a scan reads and scores as one block of an IVF partition: for the HNSW types
/// one segment's rows and graph (graphs are searched per segment); for the others
/// the rows of every segment holding some, joined in segment order, so that an
/// index committed as many segments is scanned like one (one cache look-up and one
/// stretch of rows per probed partition, not one per segment).
#[derive(Debug)]
pub(crate) struct HeldBlock {
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
            .filter(|p| p.model.info().fingerprint() == manifest.model)
        {
            Some(p) => (Arc::clone(&p.model), p.pq_terms.clone()),
            None => {
                let model = Arc::new(Model::read_current(location).await?);
                let terms = scorer::PqTerms::of(&model).map(Arc::new);
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
        if let Some(s) = segments
            .iter()
            .find(|s| s.model != model.info().fingerprint())
        {
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
        let join = !model.info().index_type().is_hnsw();
        (0..model.info().num_partitions() as u32)
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
            Some(f) if f != target.model.info().fingerprint() => Err(IndexError::Conflict(format!(
                "index {}: the search was planned with model {f}, but the index now has model {}; plan it again",
                target.location.url(),
                target.model.info().fingerprint()
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

/// Entry i: the sum of the i + 1 largest of `rows`.
pub(super) fn largest_first(rows: &[u64]) -> Vec<u64> {
    let mut sums = rows.to_vec();
    sums.sort_unstable_by(|a, b| b.cmp(a));
    sums.iter_mut().fold(0u64, |sum, rows| {
        *rows = rows.saturating_add(sum);
        *rows
    });
    sums
}
