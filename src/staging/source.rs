//! A `FileSource` that turns one staged shard into one row of the shards table.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
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
use roaring::RoaringBitmap;

use super::rows::shards_schema;
use crate::format::{IndexLocation, ShardManifest};

/// Reads `shard.json` and the `fragments.roaring` sidecar of each shard and the
/// length of its `data.arrow`, concurrently, and emits one row per shard (schema:
/// [`shards_schema`]).
/// A file that is not a `shard.json` stands for an incomplete shard.
#[derive(Debug, Clone)]
pub(crate) struct ShardManifestSource {
    table_schema: TableSchema,
    projection: SplitProjection,
    metrics: ExecutionPlanMetricsSet,
    /// Where complete shards are kept for later operators of the plan, if anywhere.
    scanned: Option<ScannedShards>,
    /// The index whose shards these are, if known (see [`read_shard_row`]).
    index: Option<IndexLocation>,
}

impl Default for ShardManifestSource {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardManifestSource {
    #[cfg(feature = "codec")]
    /// The index whose local files it reads directly, if any.
    pub(crate) fn index(&self) -> Option<&IndexLocation> {
        self.index.as_ref()
    }

    pub(crate) fn new() -> Self {
        let table_schema = TableSchema::from(shards_schema());
        Self {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
            scanned: None,
            index: None,
        }
    }

    /// Reads the shards of `location` with plain file I/O when it is on a local
    /// filesystem.
    pub(crate) fn reading_local_files_of(mut self, location: &IndexLocation) -> Self {
        self.index = Some(location.clone());
        self
    }

    /// Also keeps each complete shard it reads in `scanned`.
    pub(crate) fn keeping_shards_in(mut self, scanned: ScannedShards) -> Self {
        self.scanned = Some(scanned);
        self
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
            scanned: self.scanned.clone(),
            index: self.index.clone(),
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

    /// A manifest is one unit: split into byte ranges, each range's opener would read
    /// the whole shard, and the shard would be listed (and finalized) once per range.
    fn supports_repartitioning(&self) -> bool {
        false
    }

    fn fmt_extra(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            ", reads=shard.json+fragments.roaring, checks=data.arrow size"
        )?;
        if self.scanned.is_some() {
            write!(f, ", keeps=complete shards")?;
        }
        Ok(())
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
    scanned: Option<ScannedShards>,
    index: Option<IndexLocation>,
}

impl FileOpener for ShardOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let store = Arc::clone(&self.store);
        let indices = self.file_indices.clone();
        let scanned = self.scanned.clone();
        let index = self.index.clone();
        Ok(async move {
            let row =
                read_shard_row(store.as_ref(), index.as_ref(), &file.object_meta.location).await;
            let batch = row.to_batch()?.project(&indices)?;
            if let Some(scanned) = scanned {
                let dir = row.path.clone();
                if let Ok(shard) = row.complete() {
                    scanned.insert(dir, shard);
                }
            }
            Ok(futures::stream::once(async move { Ok(batch) }).boxed())
        }
        .boxed())
    }
}

/// Whether a staged shard can be finalized, and if not, whose move it is: the
/// `status` column of the staging table, which the plan operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardStatus {
    /// Its files are all there and agree with `shard.json`.
    Complete,
    /// No `shard.json` (yet): its worker has not finished, or died.
    Incomplete,
    /// Its files contradict each other or the format: the shard is damaged.
    Invalid,
    /// The store failed to read one of its files: it may be fine on a retry.
    Unreadable,
}

impl ShardStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Incomplete => "incomplete",
            Self::Invalid => "invalid",
            Self::Unreadable => "unreadable",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            Self::Complete,
            Self::Incomplete,
            Self::Invalid,
            Self::Unreadable,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// Why a shard is not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub status: ShardStatus,
    pub reason: String,
}

impl Problem {
    fn new(status: ShardStatus, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// The error a finalize reports for a shard with this problem.
    pub(crate) fn into_error(self, shard_id: &str) -> crate::error::IndexError {
        use crate::error::IndexError;
        match self.status {
            ShardStatus::Unreadable => IndexError::store(
                format!("reading shard {shard_id}"),
                object_store::Error::Generic {
                    store: "staging",
                    source: self.reason.into(),
                },
            ),
            _ => IndexError::Finalize(format!("shard {shard_id}: {}", self.reason)),
        }
    }
}

/// What the table shows of one shard.
#[derive(Debug, Default)]
pub(crate) struct ShardRow {
    pub shard_id: String,
    pub path: String,
    pub manifest: Option<ShardManifest>,
    /// The shard's fragment set, when the shard is complete.
    pub fragments: Option<RoaringBitmap>,
    pub problem: Option<Problem>,
}

impl ShardRow {
    pub(super) fn status(&self) -> ShardStatus {
        match (&self.problem, &self.manifest) {
            (Some(p), _) => p.status,
            (None, Some(_)) => ShardStatus::Complete,
            (None, None) => ShardStatus::Incomplete,
        }
    }

    /// The checked shard when it is complete, else what is wrong with it.
    pub(crate) fn complete(self) -> std::result::Result<ScannedShard, Problem> {
        match (self.problem, self.manifest, self.fragments) {
            (None, Some(manifest), Some(fragments)) => Ok(ScannedShard {
                manifest,
                fragments,
            }),
            (Some(problem), _, _) => Err(problem),
            (None, _, _) => Err(Problem::new(ShardStatus::Incomplete, "incomplete")),
        }
    }
}

/// Reads a shard's manifest and sidecar and the length of its data file, all at
/// once, and checks them against each other: problems become the row's `problem`,
/// not errors, so one bad shard never hides the others. These are all the checks a
/// shard gets before its blocks are merged (each block's CRC is checked then).
///
/// When `index` is on a local filesystem the three files are read by one blocking
/// task with plain file I/O, rather than by several object-store requests each
/// handed to a blocking thread of its own.
pub(crate) async fn read_shard_row(
    store: &dyn ObjectStore,
    index: Option<&IndexLocation>,
    file: &Path,
) -> ShardRow {
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
        row.problem = Some(Problem::new(
            ShardStatus::Incomplete,
            "incomplete: shard.json is missing (the worker did not finish)",
        ));
        return row;
    }
    let local_dir = index.and_then(|l| l.local_file(&dir));
    let files = match local_dir {
        Some(dir) => {
            match tokio::task::spawn_blocking(move || ShardFiles::read_local(&dir)).await {
                Ok(files) => files,
                Err(e) => {
                    row.problem = Some(Problem::new(
                        ShardStatus::Unreadable,
                        format!("reading the shard failed: {e}"),
                    ));
                    return row;
                }
            }
        }
        None => ShardFiles::read(store, &dir).await,
    };
    let manifest = match files.manifest {
        Fetched::Got(bytes) => ShardManifest::from_json(&shard_id, &bytes)
            .map_err(|e| Problem::new(ShardStatus::Invalid, e.to_string())),
        Fetched::Missing => Err(Problem::new(
            ShardStatus::Incomplete,
            "incomplete: shard.json is missing",
        )),
        Fetched::Failed(e) => Err(Problem::new(
            ShardStatus::Unreadable,
            format!("shard.json unreadable: {e}"),
        )),
    };
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => {
            row.problem = Some(e);
            return row;
        }
    };
    row.problem = match check_shard(
        &shard_id,
        &dir_name,
        &manifest,
        files.sidecar,
        files.data_len,
    ) {
        Ok(fragments) => {
            row.fragments = Some(fragments);
            None
        }
        Err(problem) => Some(problem),
    };
    row.manifest = Some(manifest);
    row
}

/// A shard's data file and sidecar, as FORMAT.md names them.
const DATA_FILE: &str = "data.arrow";
const SIDECAR: &str = "fragments.roaring";

/// What reading one file gave.
enum Fetched<T> {
    Got(T),
    Missing,
    Failed(String),
}

impl<T> From<object_store::Result<T>> for Fetched<T> {
    fn from(r: object_store::Result<T>) -> Self {
        match r {
            Ok(v) => Self::Got(v),
            Err(object_store::Error::NotFound { .. }) => Self::Missing,
            Err(e) => Self::Failed(e.to_string()),
        }
    }
}

impl<T> From<std::io::Result<T>> for Fetched<T> {
    fn from(r: std::io::Result<T>) -> Self {
        match r {
            Ok(v) => Self::Got(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::Missing,
            Err(e) => Self::Failed(e.to_string()),
        }
    }
}

/// What the checks of a shard need of its files.
struct ShardFiles {
    manifest: Fetched<Bytes>,
    sidecar: Fetched<Bytes>,
    data_len: Fetched<u64>,
}

impl ShardFiles {
    async fn read(store: &dyn ObjectStore, dir: &Path) -> Self {
        let read = |path: Path| async move { store.get(&path).await?.bytes().await };
        let data_file = dir.clone().join(DATA_FILE);
        let (manifest, sidecar, data) = futures::join!(
            read(dir.clone().join("shard.json")),
            read(dir.clone().join(SIDECAR)),
            store.head(&data_file)
        );
        Self {
            manifest: manifest.into(),
            sidecar: sidecar.into(),
            data_len: data.map(|m| m.size).into(),
        }
    }

    fn read_local(dir: &std::path::Path) -> Self {
        let read = |name: &str| std::fs::read(dir.join(name)).map(Bytes::from);
        Self {
            manifest: read("shard.json").into(),
            sidecar: read(SIDECAR).into(),
            data_len: std::fs::metadata(dir.join(DATA_FILE))
                .map(|m| m.len())
                .into(),
        }
    }
}

/// Checks a shard's files against its manifest; returns its fragment set, or what is
/// wrong.
fn check_shard(
    shard_id: &str,
    dir_name: &str,
    manifest: &ShardManifest,
    sidecar: Fetched<Bytes>,
    data_len: Fetched<u64>,
) -> std::result::Result<RoaringBitmap, Problem> {
    let invalid = |reason: String| Problem::new(ShardStatus::Invalid, reason);
    let unreadable = |reason: String| Problem::new(ShardStatus::Unreadable, reason);
    if manifest.shard_id != shard_id {
        return Err(invalid(format!(
            "shard.json names shard {}, but its folder is {dir_name}",
            manifest.shard_id
        )));
    }
    if manifest.data_file.name != DATA_FILE || manifest.fragments_file.name != SIDECAR {
        return Err(invalid(format!(
            "shard.json lists files {} and {}; a shard's files are {DATA_FILE} and {SIDECAR}",
            manifest.data_file.name, manifest.fragments_file.name
        )));
    }
    match data_len {
        Fetched::Got(len) if len == manifest.data_file.size => {}
        Fetched::Got(len) => {
            return Err(invalid(format!(
                "{DATA_FILE} is {len} bytes, shard.json says {} (truncated or rewritten)",
                manifest.data_file.size
            )))
        }
        Fetched::Missing => return Err(invalid(format!("{DATA_FILE} is missing"))),
        Fetched::Failed(e) => return Err(unreadable(format!("{DATA_FILE} unreadable: {e}"))),
    }
    let sidecar = match sidecar {
        Fetched::Got(b) => b,
        Fetched::Missing => return Err(invalid(format!("{SIDECAR} is missing"))),
        Fetched::Failed(e) => return Err(unreadable(format!("{SIDECAR} unreadable: {e}"))),
    };
    if sidecar.len() as u64 != manifest.fragments_file.size
        || crc32fast::hash(&sidecar) != manifest.fragments_file.crc32
    {
        return Err(invalid(format!(
            "{SIDECAR} does not match the size and checksum in shard.json"
        )));
    }
    let fragments = RoaringBitmap::deserialize_from(&sidecar[..])
        .map_err(|e| invalid(format!("{SIDECAR} is not a roaring bitmap: {e}")))?;
    if fragments.len() != manifest.num_fragments {
        return Err(invalid(format!(
            "{SIDECAR} holds {} fragments, shard.json says {}",
            fragments.len(),
            manifest.num_fragments
        )));
    }
    Ok(fragments)
}

/// A complete shard as a staging scan read and checked it.
#[derive(Debug)]
pub(crate) struct ScannedShard {
    pub manifest: ShardManifest,
    pub fragments: RoaringBitmap,
}

/// The complete shards a staging scan has read, by shard folder, for the operators of
/// the same plan that need them whole: the finalize's plan operator takes them from
/// here instead of reading every `shard.json` and sidecar a second time. Sound
/// because a staged shard's files never change once its `shard.json` exists
/// (FORMAT.md). Shared like DataFusion's dynamic filters: created with the plan,
/// handed to the scan that fills it and to the operator that reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScannedShards(Arc<Mutex<HashMap<String, Arc<ScannedShard>>>>);

impl ScannedShards {
    pub(crate) fn get(&self, dir: &str) -> Option<Arc<ScannedShard>> {
        self.lock().get(dir).cloned()
    }

    fn insert(&self, dir: String, shard: ScannedShard) {
        self.lock().insert(dir, Arc::new(shard));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ScannedShard>>> {
        // The map is only ever inserted into; a panic elsewhere cannot leave it torn.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
