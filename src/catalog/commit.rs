//! The commit protocol: new segments become part of the index in one new version.
//!
//! A [`Transaction`] collects the segments a finalize merged, checks that each is
//! whole (its files cover every IVF partition, with graphs for the HNSW types),
//! writes each segment's `fragments.roaring` and `segment.json` (both create-only:
//! segment ids are fresh), then `_versions/<N+1>.json` with put-if-absent. When
//! another writer committed first, it re-reads the latest version, re-checks that no
//! shard it consumed was consumed meanwhile and that its fragments stay disjoint
//! from the committed segments' (or, in `replace` mode, replaces those it
//! overlaps, each only if the new segments cover all of its fragments), and retries
//! up to its attempt budget. A create-only write whose outcome is unknown is read
//! back ([`put_version`]). Nothing that a committed version references is written
//! or removed here; consumed shards are removed only after the commit, by
//! [`remove_consumed`].

use std::collections::HashMap;
use std::sync::Arc;

use object_store::path::Path;
use roaring::RoaringBitmap;

use super::{latest_version, read_segment, read_segment_fragments};
use crate::error::{IndexError, Result};
use crate::format::{
    FileInfo, IndexLocation, SegmentFile, SegmentManifest, SegmentRef, VersionManifest,
    FORMAT_VERSION,
};
use crate::model::ModelInfo;

/// What happens to committed segments that new segments overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum CommitMode {
    /// Overlap with a committed segment is an error.
    #[default]
    Append,
    /// The committed segments whose fragments the new segments overlap are replaced.
    Replace,
}

impl std::str::FromStr for CommitMode {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "append" => Ok(Self::Append),
            "replace" => Ok(Self::Replace),
            _ => Err(IndexError::invalid_argument(
                "mode",
                format!("'{s}' is not one of append, replace"),
            )),
        }
    }
}

impl std::fmt::Display for CommitMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append => "append",
            Self::Replace => "replace",
        })
    }
}

/// A merged segment, not yet committed: what its manifest will say.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewSegment {
    pub segment_id: String,
    /// The staged shards merged into it.
    pub consumed_shards: Vec<String>,
    pub rows: u64,
    pub num_fragments: u64,
    pub min_fragment: Option<u32>,
    pub max_fragment: Option<u32>,
    /// Its data files, in partition order.
    pub files: Vec<SegmentFile>,
    /// The fragments it covers, as portable Roaring bytes.
    pub fragments: Vec<u8>,
}

/// The outcome of a commit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Committed {
    pub version: u64,
    /// The new segments, as the version lists them.
    pub segments: Vec<SegmentRef>,
    /// Segments of the previous version the new one dropped (`replace` mode).
    pub replaced: Vec<String>,
}

/// New segments on their way into one new version; see the module docs.
#[derive(Debug)]
pub(crate) struct Transaction {
    location: IndexLocation,
    model: Arc<ModelInfo>,
    mode: CommitMode,
    max_attempts: usize,
    segments: Vec<NewSegment>,
}

impl Transaction {
    pub(crate) fn new(
        location: IndexLocation,
        model: Arc<ModelInfo>,
        mode: CommitMode,
        max_attempts: usize,
    ) -> Self {
        Self {
            location,
            model,
            mode,
            max_attempts: max_attempts.max(1),
            segments: Vec::new(),
        }
    }

    /// Adds a segment whose `files` (in any order) must cover partitions
    /// `0..num_partitions` of the model exactly, each with its graphs for the HNSW
    /// types, in `expected_files` files.
    pub(crate) fn add(&mut self, mut segment: NewSegment, expected_files: usize) -> Result<()> {
        let id = segment.segment_id.clone();
        // In one process this cannot happen; on a cluster, it is a merge task's
        // output the engine lost (an executor gone), so the remedy is a re-run.
        let incomplete = |why: String| {
            IndexError::Finalize(format!(
                "segment {id}: the merged files {why}: a merge task's output is missing (was \
                 an executor lost?); nothing was committed, run the finalize again"
            ))
        };
        segment.files.sort_by_key(|f| f.partition_start);
        let mut next = 0;
        for f in &segment.files {
            if f.partition_start != next {
                return Err(incomplete(format!("do not cover partition {next}")));
            }
            let graphs = f.graph.as_ref().map(|g| g.partitions.len());
            if self.model.index_type().is_hnsw() && graphs != Some(f.partitions.len()) {
                return Err(incomplete(format!(
                    "lack the HNSW graphs of their partitions ({})",
                    f.name
                )));
            }
            next = f.partition_end;
        }
        if next as usize != self.model.num_partitions() || segment.files.len() != expected_files {
            return Err(incomplete(format!(
                "are {} of {expected_files}, covering partitions 0..{next} of {}",
                segment.files.len(),
                self.model.num_partitions()
            )));
        }
        if self.segments.iter().any(|s| s.segment_id == id) {
            return Err(IndexError::Internal(format!("segment {id} added twice")));
        }
        self.segments.push(segment);
        Ok(())
    }

    /// Writes the segments' manifests and commits a version listing them.
    pub(crate) async fn commit(mut self) -> Result<Committed> {
        let segments = std::mem::take(&mut self.segments);
        let location = &self.location;
        let mut refs = Vec::new();
        let mut new_fragments: Vec<(String, RoaringBitmap)> = Vec::new();
        for s in segments {
            let bitmap = RoaringBitmap::deserialize_from(&s.fragments[..]).map_err(|e| {
                IndexError::Internal(format!("segment {}: fragment set: {e}", s.segment_id))
            })?;
            let (manifest, fragments) = self.manifest_of(s);
            let dir = location.segment_dir(&manifest.segment_id);
            let fragments_written = put_new(
                location,
                &dir.clone().join("fragments.roaring"),
                fragments.into(),
            )
            .await?;
            if !(fragments_written
                && put_new(
                    location,
                    &dir.join("segment.json"),
                    manifest.to_json()?.into(),
                )
                .await?)
            {
                return Err(IndexError::Conflict(format!(
                    "segment {} already exists",
                    manifest.segment_id
                )));
            }
            refs.push(SegmentRef {
                segment_id: manifest.segment_id.clone(),
                rows: manifest.rows,
                num_fragments: manifest.num_fragments,
                min_fragment: manifest.min_fragment,
                max_fragment: manifest.max_fragment,
                bytes: manifest.bytes(),
                consumed_shards: manifest.consumed_shards,
            });
            new_fragments.push((manifest.segment_id, bitmap));
        }

        let mut all_new = RoaringBitmap::new();
        for (_, f) in &new_fragments {
            all_new |= f;
        }
        let mut committed_fragments: HashMap<String, RoaringBitmap> = HashMap::new();
        for _ in 0..self.max_attempts {
            let latest = latest_version(location).await?;
            let base = latest
                .as_ref()
                .map(|v| v.segments.clone())
                .unwrap_or_default();
            let mut replaced = Vec::new();
            for seg in &base {
                if let Some(shard) = refs
                    .iter()
                    .flat_map(|r| &r.consumed_shards)
                    .find(|s| seg.consumed_shards.contains(s))
                {
                    return Err(IndexError::Conflict(format!(
                        "shard {shard} was merged into segment {} by a concurrent finalize (version {}); \
                         nothing was committed here, and vacuum_vector_index removes this run's segment files",
                        seg.segment_id,
                        latest.as_ref().map_or(0, |v| v.version)
                    )));
                }
                if !committed_fragments.contains_key(&seg.segment_id) {
                    let manifest = read_segment(location, &seg.segment_id).await?;
                    committed_fragments.insert(
                        seg.segment_id.clone(),
                        read_segment_fragments(location, &manifest).await?,
                    );
                }
                let theirs = &committed_fragments[&seg.segment_id];
                if let Some((id, _)) = new_fragments.iter().find(|(_, f)| !f.is_disjoint(theirs)) {
                    match self.mode {
                        CommitMode::Append => {
                            return Err(IndexError::Conflict(format!(
                                "new segment {id} overlaps committed segment {} (committed concurrently); nothing was committed",
                                seg.segment_id
                            )))
                        }
                        CommitMode::Replace => {
                            if let Some(dropped) = replace_would_drop(&seg.segment_id, seg.rows, theirs, &all_new) {
                                return Err(IndexError::Conflict(format!(
                                    "{dropped} (committed concurrently); nothing was committed"
                                )));
                            }
                            replaced.push(seg.segment_id.clone())
                        }
                    }
                }
            }
            let version = latest.as_ref().map_or(1, |v| v.version + 1);
            let mut segments: Vec<SegmentRef> = base
                .into_iter()
                .filter(|s| !replaced.contains(&s.segment_id))
                .collect();
            segments.extend(refs.iter().cloned());
            let manifest = VersionManifest {
                format_version: FORMAT_VERSION,
                version,
                model: self.model.fingerprint().to_string(),
                segments,
                replaced_segments: replaced.clone(),
                restored_from: None,
            };
            if put_version(location, &manifest).await? {
                return Ok(Committed {
                    version,
                    segments: refs,
                    replaced,
                });
            }
        }
        Err(IndexError::Conflict(format!(
            "version could not be committed after {} attempts: other writers kept committing first",
            self.max_attempts
        )))
    }

    /// The manifest of `s`, and its fragment set's bytes (which the manifest describes).
    fn manifest_of(&self, s: NewSegment) -> (SegmentManifest, Vec<u8>) {
        let model = &self.model;
        let fragments_file = FileInfo {
            name: "fragments.roaring".into(),
            size: s.fragments.len() as u64,
            crc32: crc32fast::hash(&s.fragments),
        };
        let manifest = SegmentManifest {
            format_version: FORMAT_VERSION,
            segment_id: s.segment_id,
            model: model.fingerprint().to_string(),
            index_type: model.index_type(),
            metric: model.metric(),
            dim: model.dim() as u32,
            num_partitions: model.num_partitions() as u32,
            rows: s.rows,
            num_fragments: s.num_fragments,
            min_fragment: s.min_fragment,
            max_fragment: s.max_fragment,
            files: s.files,
            fragments_file,
            consumed_shards: s.consumed_shards,
        };
        (manifest, s.fragments)
    }
}

/// Why replacing committed segment `segment_id` (`rows` rows over `theirs`) with new
/// segments over `new` would drop rows, or `None` when `new` covers all of it:
/// `replace` takes the place of whole segments, so fragments no new segment covers
/// would silently leave the index.
pub(crate) fn replace_would_drop(
    segment_id: &str,
    rows: u64,
    theirs: &RoaringBitmap,
    new: &RoaringBitmap,
) -> Option<String> {
    let dropped = theirs - new;
    (!dropped.is_empty()).then(|| {
        format!(
            "replacing committed segment {segment_id} ({rows} rows, {} fragments) would drop the rows \
             of its {} fragments that no staged shard covers ({}); stage shards for those fragments \
             too, or discard the staged shard with CALL discard_vector_index_shard(index => ..., shard => ...)",
            theirs.len(),
            dropped.len(),
            fragment_sample(&dropped)
        )
    })
}

/// Up to five members of `b`, and how many more there are.
pub(crate) fn fragment_sample(b: &RoaringBitmap) -> String {
    let shown: Vec<String> = b.iter().take(5).map(|f| f.to_string()).collect();
    let more = b.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Writes `manifest` as its version's file, only if absent: `true` when it is now
/// committed, `false` when another writer's version is there.
pub(crate) async fn put_version(
    location: &IndexLocation,
    manifest: &VersionManifest,
) -> Result<bool> {
    let path = location.version_file(manifest.version);
    put_new(location, &path, bytes::Bytes::from(manifest.to_json()?)).await
}

/// Writes `bytes` at `path` only if nothing is there: `true` when `path` now holds
/// them, `false` when it holds another writer's bytes.
///
/// The outcome of a create-only PUT can be lost on its way back: the store wrote the
/// object, and the client saw a failure (or, when it retried the request, the
/// store's answer to the retry: "already exists"). So whenever the put does not
/// plainly succeed, the object is read back, and it is ours when it holds our bytes.
async fn put_new(location: &IndexLocation, path: &Path, bytes: bytes::Bytes) -> Result<bool> {
    let failure = match location.put_if_absent(path, bytes.clone()).await {
        Ok(true) => return Ok(true),
        Ok(false) => None,
        Err(e) => Some(e),
    };
    match (location.get_opt(path).await, failure) {
        (Ok(Some(found)), _) => Ok(found == bytes),
        (Ok(None), Some(e)) => Err(e),
        (Ok(None), None) => Err(IndexError::Conflict(format!(
            "the store reported {} as existing, but it cannot be read",
            location.object_url(path)
        ))),
        (Err(read), Some(IndexError::Store { what, source })) => Err(IndexError::Store {
            what: format!(
                "{what}; reading it back failed too ({read}), so it may or may not have been \
                 written: look with SELECT * FROM vector_index_versions('{}') before running again",
                location.url()
            ),
            source,
        }),
        (Err(_), Some(e)) | (Err(e), None) => Err(e),
    }
}

/// Shard folders removed at once after a commit.
const CLEANUP_CONCURRENCY: usize = 8;

/// Removes the shards a commit consumed, best effort: what fails here is left for
/// `vacuum_vector_index`, and a re-run of finalize skips it because the committed
/// segments name it as consumed.
///
/// On a local filesystem each shard folder is moved to `_trash/` (one rename), and
/// a background thread unlinks the files, which takes about as long as writing them:
/// the caller does not wait for it. A process that ends first leaves the rest in
/// `_trash/`, which holds nothing but consumed shards and which vacuum empties.
/// Other stores have no rename: their objects are deleted before this returns.
pub(crate) async fn remove_consumed(location: &IndexLocation, committed: &Committed) {
    use futures::StreamExt;
    let shards: Vec<String> = committed
        .segments
        .iter()
        .flat_map(|r| r.consumed_shards.iter().cloned())
        .collect();
    let moves: Option<Vec<_>> = shards
        .iter()
        .map(|shard| {
            let from = location.local_file(&location.shard_dir(shard))?;
            let to = location.local_file(&location.trashed_shard_dir(shard))?;
            Some((from, to))
        })
        .collect();
    if let Some(moves) = moves {
        let _ = tokio::task::spawn_blocking(move || trash_and_delete(moves)).await;
        return;
    }
    // Concurrently: deleting objects is one request each.
    futures::stream::iter(&shards)
        .for_each_concurrent(CLEANUP_CONCURRENCY, |shard| async move {
            let _ = location.delete_dir(&location.shard_dir(shard)).await;
        })
        .await;
}

/// Moves each (shard folder, place in `_trash/`) and deletes the moved folders on a
/// background thread (here, if no thread can be started).
fn trash_and_delete(moves: Vec<(std::path::PathBuf, std::path::PathBuf)>) {
    let moved: Vec<std::path::PathBuf> = moves
        .into_iter()
        .filter_map(|(from, to)| {
            std::fs::create_dir_all(to.parent()?).ok()?;
            std::fs::rename(&from, &to).ok().map(|()| to)
        })
        .collect();
    if moved.is_empty() {
        return;
    }
    let delete = |dirs: &[std::path::PathBuf]| {
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    let background = std::thread::Builder::new()
        .name("consumed-shards".into())
        .spawn({
            let dirs = moved.clone();
            move || delete(&dirs)
        });
    if background.is_err() {
        delete(&moved);
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use bytes::Bytes;
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    use super::*;
    use crate::format::BlockInfo;
    use crate::format::{HnswParams, IndexType, Metric, ModelParams};
    use crate::model::Model;

    /// The objects a competitor writes, and the path suffix whose create they precede.
    type Race = Option<(String, Vec<(Path, Bytes)>)>;

    /// A store where another writer gets in first: before the first create-only
    /// put of a path ending in `trigger`, the competitor's objects are written.
    #[derive(Debug)]
    struct Racing {
        inner: InMemory,
        competitor: Mutex<Race>,
    }

    impl fmt::Display for Racing {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Racing")
        }
    }

    #[async_trait]
    impl ObjectStore for Racing {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            let racer = match &mut *self.competitor.lock().unwrap() {
                slot @ Some(_)
                    if opts.mode == PutMode::Create
                        && slot
                            .as_ref()
                            .is_some_and(|(t, _)| location.as_ref().ends_with(t.as_str())) =>
                {
                    slot.take()
                }
                _ => None,
            };
            for (path, bytes) in racer.map(|(_, o)| o).unwrap_or_default() {
                self.inner.put(&path, bytes.into()).await?;
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    const PARTITIONS: u32 = 2;

    fn model(index_type: IndexType) -> Arc<ModelInfo> {
        let params = ModelParams {
            format_version: FORMAT_VERSION,
            index_type,
            metric: Metric::L2,
            dim: 2,
            num_partitions: PARTITIONS,
            num_sub_vectors: None,
            hnsw: index_type.is_hnsw().then(HnswParams::default),
            seed: 1,
            sample_rows: 10,
            max_iterations: 1,
        };
        let centroids = vec![0.0; 2 * PARTITIONS as usize];
        let codec = match index_type.quantizer() {
            crate::format::Quantizer::Sq => {
                crate::model::Codec::Sq(crate::model::ScalarQuantizer {
                    lower: vec![0.0; 2],
                    upper: vec![1.0; 2],
                })
            }
            _ => crate::model::Codec::Flat,
        };
        Arc::new(
            Model::try_new(params, centroids, codec)
                .unwrap()
                .info()
                .clone(),
        )
    }

    fn location(store: Arc<dyn ObjectStore>) -> IndexLocation {
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        runtime.register_object_store(&url::Url::parse("race://t").unwrap(), store);
        IndexLocation::from_url("race://t/idx", &runtime).unwrap()
    }

    /// A segment of one row per partition in one file, over `fragments`, from `shard`.
    fn segment(id: &str, shard: &str, fragments: &[u32]) -> NewSegment {
        let block = |i: u64| BlockInfo {
            rows: 1,
            offset: 8 + 16 * i,
            meta_len: 8,
            length: 16,
            crc32: 0,
        };
        let set: RoaringBitmap = fragments.iter().copied().collect();
        let mut bytes = Vec::new();
        set.serialize_into(&mut bytes).unwrap();
        NewSegment {
            segment_id: id.into(),
            consumed_shards: vec![shard.into()],
            rows: u64::from(PARTITIONS),
            num_fragments: set.len(),
            min_fragment: set.min(),
            max_fragment: set.max(),
            files: vec![SegmentFile {
                name: "part-0.arrow".into(),
                size: 8 + 16 * u64::from(PARTITIONS),
                partition_start: 0,
                partition_end: PARTITIONS,
                partitions: (0..u64::from(PARTITIONS)).map(block).collect(),
                graph: None,
            }],
            fragments: bytes,
        }
    }

    async fn commit_one(
        location: &IndexLocation,
        seg: NewSegment,
        mode: CommitMode,
        attempts: usize,
    ) -> Result<Committed> {
        let mut t = Transaction::new(location.clone(), model(IndexType::IvfFlat), mode, attempts);
        t.add(seg, 1)?;
        t.commit().await
    }

    /// The objects a competing finalize would write to commit `seg` as version 1.
    async fn competitor(seg: NewSegment) -> Vec<(Path, Bytes)> {
        let elsewhere = Arc::new(InMemory::new());
        let other = location(Arc::clone(&elsewhere) as Arc<dyn ObjectStore>);
        commit_one(&other, seg, CommitMode::Append, 1)
            .await
            .unwrap();
        let mut objects = Vec::new();
        for m in elsewhere.list(None).collect::<Vec<_>>().await {
            let path = m.unwrap().location;
            let bytes = elsewhere.get(&path).await.unwrap().bytes().await.unwrap();
            objects.push((path, bytes));
        }
        objects
    }

    /// A location whose first commit of `_versions/1.json` loses to `objects`.
    fn racing(objects: Vec<(Path, Bytes)>) -> IndexLocation {
        location(Arc::new(Racing {
            inner: InMemory::new(),
            competitor: Mutex::new(Some(("_versions/1.json".into(), objects))),
        }))
    }

    use futures::StreamExt;

    #[tokio::test]
    async fn a_lost_race_is_retried_on_the_new_version() {
        let loc = racing(competitor(segment("theirs", "s1", &[0, 1])).await);
        let ours = commit_one(&loc, segment("ours", "s2", &[2]), CommitMode::Append, 2)
            .await
            .unwrap();
        assert_eq!(ours.version, 2);
        let v2 = latest_version(&loc).await.unwrap().unwrap();
        let ids: Vec<_> = v2.segments.iter().map(|s| s.segment_id.as_str()).collect();
        assert_eq!(ids, ["theirs", "ours"]);
    }

    #[tokio::test]
    async fn attempts_run_out_as_a_conflict() {
        let loc = racing(competitor(segment("theirs", "s1", &[0, 1])).await);
        let err = commit_one(&loc, segment("ours", "s2", &[2]), CommitMode::Append, 1)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IndexError::Conflict(m) if m.contains("after 1 attempts")),
            "{err:?}"
        );
        assert_eq!(crate::catalog::list_versions(&loc).await.unwrap(), [1]);
    }

    #[tokio::test]
    async fn an_overlap_found_while_racing_fails_or_replaces() {
        let theirs = || segment("theirs", "s1", &[0, 1]);
        let loc = racing(competitor(theirs()).await);
        let err = commit_one(&loc, segment("ours", "s2", &[1, 2]), CommitMode::Append, 3)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IndexError::Conflict(m) if m.contains("overlaps committed segment theirs")),
            "{err:?}"
        );
        // Replacing `theirs` with rows of fragments 1 and 2 would drop fragment 0.
        let loc = racing(competitor(theirs()).await);
        let err = commit_one(&loc, segment("ours", "s2", &[1, 2]), CommitMode::Replace, 3)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IndexError::Conflict(m) if m.contains("replacing committed segment theirs")
                && m.contains("its 1 fragments that no staged shard covers (0)")),
            "{err:?}"
        );
        assert_eq!(crate::catalog::list_versions(&loc).await.unwrap(), [1]);
        let loc = racing(competitor(theirs()).await);
        let ours = commit_one(
            &loc,
            segment("ours", "s2", &[0, 1, 2]),
            CommitMode::Replace,
            3,
        )
        .await
        .unwrap();
        assert_eq!(
            (ours.version, ours.replaced),
            (2, vec!["theirs".to_string()])
        );
        let v2 = latest_version(&loc).await.unwrap().unwrap();
        assert_eq!(v2.segments.len(), 1);
    }

    #[tokio::test]
    async fn a_shard_merged_by_a_racing_finalize_is_a_conflict() {
        let loc = racing(competitor(segment("theirs", "s1", &[0])).await);
        let err = commit_one(&loc, segment("ours", "s1", &[0]), CommitMode::Replace, 3)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IndexError::Conflict(m) if m.contains("shard s1 was merged into segment theirs")),
            "{err:?}"
        );
    }

    #[test]
    fn incomplete_merged_files_are_refused() {
        let loc = location(Arc::new(InMemory::new()));
        let mut t = Transaction::new(
            loc.clone(),
            model(IndexType::IvfFlat),
            CommitMode::Append,
            1,
        );
        let mut half = segment("a", "s", &[0]);
        half.files[0].partition_end = 1;
        half.files[0].partitions.truncate(1);
        let err = t.add(half, 1).unwrap_err().to_string();
        assert!(err.contains("covering partitions 0..1 of 2"), "{err}");
        let err = t.add(segment("b", "s", &[0]), 2).unwrap_err().to_string();
        assert!(err.contains("are 1 of 2"), "{err}");

        let mut hnsw = Transaction::new(loc, model(IndexType::IvfHnswSq), CommitMode::Append, 1);
        let err = hnsw
            .add(segment("c", "s", &[0]), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lack the HNSW graphs"), "{err}");
    }
}
