//! Where an index lives: an object store and a prefix, and the layout below it.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{IndexError, Result};

/// Recognizes object_store's `LocalFileSystem`, which displays as
/// `LocalFileSystem(<root url>)`, and rebuilds it to map paths the way it does.
/// `ObjectStore` offers no downcast, and its name is the only trace a store leaves;
/// any other store, wrappers of a local one included, keeps the object-store path.
fn local_filesystem(store: &dyn ObjectStore) -> Option<Arc<LocalFileSystem>> {
    let shown = store.to_string();
    let root = shown.strip_prefix("LocalFileSystem(")?.strip_suffix(')')?;
    let root = url::Url::parse(root).ok()?.to_file_path().ok()?;
    LocalFileSystem::new_with_prefix(root).ok().map(Arc::new)
}

/// One index: an object-store prefix holding models, staged shards, segments
/// and versions (see FORMAT.md for the layout).
#[derive(Clone)]
pub struct IndexLocation {
    url: String,
    store_url: ObjectStoreUrl,
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// Set when `store` is object_store's local filesystem, to map paths to files.
    local: Option<Arc<LocalFileSystem>>,
}

impl fmt::Debug for IndexLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl IndexLocation {
    /// Resolves `url` (`file:///…`, `memory:///…`, `s3://bucket/…`, …) through the
    /// object stores registered with DataFusion's runtime. A cloud URL without one gets
    /// a store built from the environment, registered for the next use
    /// ([`super::cloud`]).
    pub(crate) fn from_url(url: &str, runtime: &RuntimeEnv) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| {
            IndexError::invalid_argument("index", format!("'{url}' is not a URL: {e}"))
        })?;
        // Credentials in a URL would be echoed by every error and EXPLAIN that names it.
        if parsed.password().is_some() || parsed.query().is_some() {
            return Err(IndexError::invalid_argument(
                "index",
                "the index URL carries a password or a query string; pass credentials \
                 through the environment (docs/object-stores.md) instead",
            ));
        }
        let store_url = ObjectStoreUrl::parse(&parsed[..url::Position::BeforePath])
            .map_err(|e| IndexError::invalid_argument("index", e.to_string()))?;
        let store = match runtime.object_store(&store_url) {
            Ok(store) => store,
            Err(_) => {
                match super::cloud::store_for(&parsed, &super::cloud::StoreEnv::from_process())? {
                    Some(store) => {
                        runtime.register_object_store(store_url.as_ref(), Arc::clone(&store));
                        store
                    }
                    None => {
                        let remedy = match super::cloud::feature_of(parsed.scheme()) {
                        Some(feature) => format!(
                            "this build has no `{feature}` feature; build with --features {feature}, or register a store with the session (SessionContext::register_object_store)"
                        ),
                        None => "register one with the session (SessionContext::register_object_store)".to_string(),
                    };
                        return Err(IndexError::invalid_argument(
                            "index",
                            format!(
                                "no object store for '{url}': none is registered for {}; {remedy}",
                                store_url.as_str()
                            ),
                        ));
                    }
                }
            }
        };
        let root = Path::from_url_path(parsed.path())
            .map_err(|e| IndexError::invalid_argument("index", e.to_string()))?;
        let local = local_filesystem(store.as_ref());
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            store_url,
            store,
            root,
            local,
        })
    }

    /// The file behind `path` when the index lives on a local filesystem, so that
    /// bulk work (the merge) can use positional file I/O instead of the object-store
    /// API; `None` for any other store.
    pub(crate) fn local_file(&self, path: &Path) -> Option<std::path::PathBuf> {
        self.local.as_ref()?.path_to_filesystem(path).ok()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store_url(&self) -> &ObjectStoreUrl {
        &self.store_url
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub(crate) fn path(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    pub(crate) fn index_manifest(&self) -> Path {
        self.path("index.json")
    }

    pub(crate) fn model_file(&self, fingerprint: &str) -> Path {
        self.path(&format!("models/{fingerprint}.arrow"))
    }

    pub(crate) fn staging_dir(&self) -> Path {
        self.path("_staging")
    }

    pub(crate) fn shard_dir(&self, shard_id: &str) -> Path {
        self.path(&format!("_staging/partial_{shard_id}"))
    }

    /// Consumed shard folders moved aside after a commit, until they are deleted.
    pub(crate) fn trash_dir(&self) -> Path {
        self.path("_trash")
    }

    pub(crate) fn trashed_shard_dir(&self, shard_id: &str) -> Path {
        self.path(&format!("_trash/partial_{shard_id}"))
    }

    pub(crate) fn segments_dir(&self) -> Path {
        self.path("segments")
    }

    pub(crate) fn segment_dir(&self, segment_id: &str) -> Path {
        self.path(&format!("segments/{segment_id}"))
    }

    pub(crate) fn versions_dir(&self) -> Path {
        self.path("_versions")
    }

    pub(crate) fn version_file(&self, version: u64) -> Path {
        self.path(&format!("_versions/{version}.json"))
    }

    /// The object's full URL (`s3://bucket/idx/index.json`), for errors.
    pub(crate) fn object_url(&self, path: &Path) -> String {
        format!("{}{path}", self.store_url.as_str())
    }

    /// A store failure on `path`, naming the operation and the object's URL.
    fn failed(&self, operation: &str, path: &Path, e: object_store::Error) -> IndexError {
        IndexError::store(format!("{operation} {}", self.object_url(path)), e)
    }

    /// A whole small object: manifests and models (blocks and shards have their own
    /// ranged and positional reads).
    pub(crate) async fn get(&self, path: &Path) -> Result<Bytes> {
        let read = async {
            match self.read_local(path) {
                Some(read) => read,
                None => self.store.get(path).await?.bytes().await,
            }
        };
        read.await.map_err(|e| self.failed("reading", path, e))
    }

    /// [`Self::get`], `None` when the object does not exist.
    pub(crate) async fn get_opt(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.get(path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(IndexError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// On a local filesystem, reads `path` on the calling thread: the object store
    /// would open and read it on blocking threads, two hand-offs that cost more than
    /// reading a small manifest, and a search reads one every time it runs.
    fn read_local(&self, path: &Path) -> Option<object_store::Result<Bytes>> {
        let file = self.local_file(path)?;
        Some(std::fs::read(&file).map(Bytes::from).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                object_store::Error::NotFound {
                    path: path.to_string(),
                    source: Box::new(e),
                }
            } else {
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                }
            }
        }))
    }

    /// On a local filesystem, lists `dir` on the calling thread, as the object store
    /// would: files (links followed) but not the store's unfinished uploads
    /// (`name#digits`); nothing for a missing folder.
    fn list_local(&self, dir: &Path) -> Option<object_store::Result<Vec<(String, u64)>>> {
        let folder = self.local_file(dir)?;
        let failed = |e: std::io::Error| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        };
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Ok(Vec::new())),
            Err(e) => return Some(Err(failed(e))),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(failed(e))),
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let unfinished = name
                .split_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            match std::fs::metadata(entry.path()) {
                Ok(meta) if meta.is_file() && !unfinished => files.push((name, meta.len())),
                Ok(_) => {}
                // Gone since the listing (a vacuum), as the store would skip it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Some(Err(failed(e))),
            }
        }
        Some(Ok(files))
    }

    /// Bytes `range` of a file a manifest describes, `what` naming it in errors: a
    /// missing file or one shorter than the manifest says is damage (`Corrupt`), any
    /// other failure the store's (`Store`).
    pub(crate) async fn get_described_range(
        &self,
        path: &Path,
        range: std::ops::Range<u64>,
        what: &str,
    ) -> Result<Bytes> {
        let remedy =
            "the index is damaged; restore the file, or re-stage and re-finalize what it holds";
        match self.store.get_range(path, range.clone()).await {
            Ok(bytes) => Ok(bytes),
            Err(object_store::Error::NotFound { .. }) => Err(IndexError::corrupt(
                what,
                format!("{path} is missing; {remedy}"),
            )),
            Err(e) => match self.store.head(path).await {
                Ok(meta) if meta.size < range.end => Err(IndexError::corrupt(
                    what,
                    format!(
                        "{path} is {} bytes, shorter than its manifest says (bytes {}..{}); {remedy}",
                        meta.size, range.start, range.end
                    ),
                )),
                _ => Err(IndexError::store(
                    format!("reading {what} (bytes {}..{} of {path})", range.start, range.end),
                    e,
                )),
            },
        }
    }

    /// Bytes `ranges` of a file a manifest describes, in one request (an object
    /// store fetches nearby ranges together; a local file is opened once). When
    /// that fails, each range is read alone so that the error names the one that
    /// fails, `what(i)` naming range `i`, as [`Self::get_described_range`] does.
    pub(crate) async fn get_described_ranges(
        &self,
        path: &Path,
        ranges: &[std::ops::Range<u64>],
        what: impl Fn(usize) -> String,
    ) -> Result<Vec<Bytes>> {
        match self.store.get_ranges(path, ranges).await {
            Ok(bytes) if bytes.len() == ranges.len() => Ok(match self.local {
                Some(_) => bytes,
                // Other stores hand back slices of one fetch of nearby ranges: each
                // range gets its own memory, so that what keeps a block (the search
                // cache) keeps only its bytes, as its size says.
                None => bytes.iter().map(|b| Bytes::copy_from_slice(b)).collect(),
            }),
            _ => {
                let mut bytes = Vec::with_capacity(ranges.len());
                for (i, range) in ranges.iter().enumerate() {
                    bytes.push(
                        self.get_described_range(path, range.clone(), &what(i))
                            .await?,
                    );
                }
                Ok(bytes)
            }
        }
    }

    pub(crate) async fn put(&self, path: &Path, bytes: impl Into<PutPayload>) -> Result<()> {
        self.store
            .put(path, bytes.into())
            .await
            .map_err(|e| self.failed("writing", path, e))?;
        Ok(())
    }

    /// Writes `path` only if nothing is there; `false` when something already was.
    pub(crate) async fn put_if_absent(
        &self,
        path: &Path,
        bytes: impl Into<PutPayload>,
    ) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(path, bytes.into(), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e @ object_store::Error::NotImplemented { .. }) => Err(IndexError::store(
                format!(
                    "creating {} only if absent, which the commit protocol needs: the store does not support conditional writes (FORMAT.md, \"What the store must guarantee\"); for S3-compatible stores, do not set AWS_CONDITIONAL_PUT=disabled",
                    self.object_url(path)
                ),
                e,
            )),
            Err(e) => Err(self.failed("creating", path, e)),
        }
    }

    /// Names of the immediate sub-folders of `dir`, sorted.
    pub(crate) async fn list_dirs(&self, dir: &Path) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(dir))
            .await
            .map_err(|e| self.failed("listing", dir, e))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Files directly in `dir`: (name, size), sorted by name.
    pub(crate) async fn list_files(&self, dir: &Path) -> Result<Vec<(String, u64)>> {
        let listed = match self.list_local(dir) {
            Some(listed) => listed,
            None => self.store.list_with_delimiter(Some(dir)).await.map(|l| {
                l.objects
                    .iter()
                    .filter_map(|o| o.location.filename().map(|n| (n.to_string(), o.size)))
                    .collect()
            }),
        };
        let mut files = listed.map_err(|e| self.failed("listing", dir, e))?;
        files.sort();
        Ok(files)
    }

    /// Deletes everything below `dir`.
    pub(crate) async fn delete_dir(&self, dir: &Path) -> Result<usize> {
        let paths: Vec<Path> = self
            .store
            .list(Some(dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.failed("listing", dir, e))?;
        let n = paths.len();
        for p in paths {
            self.delete(&p).await?;
        }
        Ok(n)
    }

    /// Deletes `path`; one already gone is not an error.
    pub(crate) async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("deleting", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::limit::LimitStore;
    use object_store::memory::InMemory;

    fn location(url: &str, runtime: &RuntimeEnv) -> IndexLocation {
        IndexLocation::from_url(url, runtime).unwrap()
    }

    /// The merge's local-file path is taken exactly when the store is the local
    /// filesystem itself, and maps paths the way the store does.
    #[test]
    fn local_files_only_for_the_local_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeEnv::default();
        let local = location(&format!("file://{}/idx", dir.path().display()), &runtime);
        let shard = local.shard_dir("s1").join("data.arrow");
        assert_eq!(
            local.local_file(&shard),
            Some(dir.path().join("idx/_staging/partial_s1/data.arrow"))
        );

        let prefixed = url::Url::parse("rooted://t").unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        runtime.register_object_store(&prefixed, Arc::new(store));
        let rooted = location("rooted://t/idx", &runtime);
        assert_eq!(
            rooted.local_file(&rooted.path("index.json")),
            Some(dir.path().canonicalize().unwrap().join("idx/index.json"))
        );

        let wrapped = url::Url::parse("wrapped://t").unwrap();
        let store = LimitStore::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap(), 4);
        runtime.register_object_store(&wrapped, Arc::new(store));
        let wrapped = location("wrapped://t/idx", &runtime);
        assert_eq!(wrapped.local_file(&wrapped.path("index.json")), None);

        let memory = url::Url::parse("memory://").unwrap();
        runtime.register_object_store(&memory, Arc::new(InMemory::new()));
        let memory = location("memory:///idx", &runtime);
        assert_eq!(memory.local_file(&memory.path("index.json")), None);
    }

    /// Listing and reading a local index on the calling thread answers as the
    /// object store does: the same files and sizes (links followed, no folders, no
    /// unfinished uploads), the same bytes, `NotFound` for what is missing.
    #[tokio::test]
    async fn local_reads_answer_as_the_store_does() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeEnv::default();
        let local = location(&format!("file://{}/idx", dir.path().display()), &runtime);
        let versions = dir.path().join("idx/_versions");
        std::fs::create_dir_all(versions.join("sub")).unwrap();
        std::fs::write(versions.join("1.json"), b"one").unwrap();
        std::fs::write(versions.join("2.json"), b"two!").unwrap();
        std::fs::write(versions.join("3.json#17"), b"unfinished").unwrap();
        std::fs::write(versions.join("4.json#x"), b"a name").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(versions.join("2.json"), versions.join("5.json")).unwrap();
        let dir_path = local.versions_dir();
        let listed = local.list_files(&dir_path).await.unwrap();
        let store = local
            .store()
            .list_with_delimiter(Some(&dir_path))
            .await
            .unwrap();
        let mut expected: Vec<(String, u64)> = store
            .objects
            .iter()
            .map(|o| (o.location.filename().unwrap().to_string(), o.size))
            .collect();
        expected.sort();
        assert_eq!(listed, expected);
        assert!(listed.contains(&("4.json#x".to_string(), 6)), "{listed:?}");
        assert!(!listed.iter().any(|(n, _)| n == "3.json#17" || n == "sub"));
        assert!(local
            .list_files(&local.segments_dir())
            .await
            .unwrap()
            .is_empty());

        let one = local.version_file(1);
        assert_eq!(&local.get(&one).await.unwrap()[..], b"one");
        assert_eq!(
            local.get(&one).await.unwrap(),
            local
                .store()
                .get(&one)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        );
        assert_eq!(local.get_opt(&local.version_file(9)).await.unwrap(), None);
        let missing = local.get(&local.version_file(9)).await.unwrap_err();
        assert!(
            matches!(
                &missing,
                IndexError::Store {
                    source: object_store::Error::NotFound { .. },
                    ..
                }
            ),
            "{missing:?}"
        );
        assert!(
            missing.to_string().contains("_versions/9.json"),
            "{missing}"
        );
    }
}
