//! An object store that fails on purpose: it counts every operation sent to the
//! store it wraps (parts of multipart uploads included), or only those on paths
//! within a scope, and fails the k-th, once or, as a crashed process would, from
//! the k-th on.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// How an armed fault behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Only operation k fails.
    Once,
    /// Operation k and every later one fail.
    Crash,
}

#[derive(Debug, Default)]
struct Counter {
    ops: AtomicU64,
    /// Operation that fails first, plus one; 0 when disarmed.
    fail_at: AtomicU64,
    crash: std::sync::atomic::AtomicBool,
}

impl Counter {
    /// Counts one operation and says whether it fails.
    fn fails(&self) -> bool {
        let op = self.ops.fetch_add(1, Ordering::SeqCst);
        let at = self.fail_at.load(Ordering::SeqCst);
        at != 0 && (op + 1 == at || (self.crash.load(Ordering::SeqCst) && op + 1 > at))
    }

    fn error(&self, what: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "faulty",
            source: format!("injected fault in {what}").into(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    counter: Arc<Counter>,
    /// A competing writer: the first create-if-absent of a path ending so finds
    /// these bytes written there first.
    competitor: Arc<std::sync::Mutex<Option<(String, Bytes)>>>,
    /// When set, only operations on paths containing it are counted (and fail).
    scope: Arc<std::sync::Mutex<Option<String>>>,
    /// How long each write (put, multipart upload) waits first: a slow disk.
    write_delay: Arc<std::sync::Mutex<std::time::Duration>>,
    /// The first create-if-absent of a path ending so is written, and then
    /// answered as this error: the store's answer lost on its way back.
    lost_ack: Arc<std::sync::Mutex<Option<(String, LostAck)>>>,
    /// Runs, once, before the first read of a path ending so: another process
    /// getting in between two steps of this one.
    before_read: Arc<std::sync::Mutex<Option<(String, Hook)>>>,
}

/// What a client sees of a create-if-absent that the store carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostAck {
    /// The connection broke before the answer came.
    Failure,
    /// The client retried, and the retry found its own first attempt's object.
    AlreadyExists,
}

/// Work run inside a store operation.
pub type Hook = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            counter: Arc::default(),
            competitor: Arc::default(),
            scope: Arc::default(),
            write_delay: Arc::default(),
            lost_ack: Arc::default(),
            before_read: Arc::default(),
        }
    }

    /// Writes the first create-if-absent of the path ending in `suffix`, then
    /// answers it as `ack` says.
    pub fn lose_create_ack(&self, suffix: &str, ack: LostAck) {
        *self.lost_ack.lock().unwrap() = Some((suffix.to_string(), ack));
    }

    /// Runs `hook` before the first read of a path ending in `suffix`.
    pub fn before_first_read(&self, suffix: &str, hook: Hook) {
        *self.before_read.lock().unwrap() = Some((suffix.to_string(), hook));
    }

    async fn run_hook(&self, location: &Path) {
        let hook = {
            let mut slot = self.before_read.lock().unwrap();
            match slot.as_ref() {
                Some((suffix, _)) if location.as_ref().ends_with(suffix.as_str()) => slot.take(),
                _ => None,
            }
        };
        if let Some((_, hook)) = hook {
            hook().await;
        }
    }

    /// Makes every write wait `delay` before it starts, as on a slow disk.
    pub fn delay_writes(&self, delay: std::time::Duration) {
        *self.write_delay.lock().unwrap() = delay;
    }

    async fn wait_to_write(&self) {
        let delay = *self.write_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts (and fails) only operations on paths containing `part`, such as
    /// `"segments/"` for what a merge writes.
    pub fn scope_to(&self, part: &str) {
        *self.scope.lock().unwrap() = Some(part.to_string());
    }

    fn in_scope(&self, path: Option<&Path>) -> bool {
        match (self.scope.lock().unwrap().as_deref(), path) {
            (None, _) => true,
            (Some(part), Some(path)) => path.as_ref().contains(part),
            (Some(_), None) => false,
        }
    }

    /// Operations counted since the last `arm` or `disarm`.
    pub fn ops(&self) -> u64 {
        self.counter.ops.load(Ordering::SeqCst)
    }

    /// Resets the count and fails operation `k` (0-based) as `fault` says.
    pub fn arm(&self, k: u64, fault: Fault) {
        self.counter.ops.store(0, Ordering::SeqCst);
        self.counter
            .crash
            .store(fault == Fault::Crash, Ordering::SeqCst);
        self.counter.fail_at.store(k + 1, Ordering::SeqCst);
    }

    /// Has a competitor write `bytes` to the path ending in `suffix` just before this
    /// store's first create-if-absent of it, as a racing process would.
    pub fn race_create(&self, suffix: &str, bytes: Bytes) {
        *self.competitor.lock().unwrap() = Some((suffix.to_string(), bytes));
    }

    /// Resets the count and fails nothing.
    pub fn disarm(&self) {
        self.counter.fail_at.store(0, Ordering::SeqCst);
        self.counter.ops.store(0, Ordering::SeqCst);
    }

    fn check(&self, what: &str, path: Option<&Path>) -> object_store::Result<()> {
        if self.in_scope(path) && self.counter.fails() {
            Err(self.counter.error(what))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check("put", Some(location))?;
        self.wait_to_write().await;
        if opts.mode == object_store::PutMode::Create {
            let racer = {
                let mut competitor = self.competitor.lock().unwrap();
                match competitor.as_ref() {
                    Some((suffix, _)) if location.as_ref().ends_with(suffix.as_str()) => {
                        competitor.take()
                    }
                    _ => None,
                }
            };
            if let Some((_, bytes)) = racer {
                self.inner.put(location, bytes.into()).await?;
            }
            let lost = {
                let mut slot = self.lost_ack.lock().unwrap();
                match slot.as_ref() {
                    Some((suffix, _)) if location.as_ref().ends_with(suffix.as_str()) => {
                        slot.take().map(|(_, ack)| ack)
                    }
                    _ => None,
                }
            };
            if let Some(ack) = lost {
                self.inner.put_opts(location, payload, opts).await?;
                return Err(match ack {
                    LostAck::Failure => object_store::Error::Generic {
                        store: "faulty",
                        source: "connection reset before the answer".into(),
                    },
                    LostAck::AlreadyExists => object_store::Error::AlreadyExists {
                        path: location.to_string(),
                        source: "the retried request found the object".into(),
                    },
                });
            }
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check("put_multipart", Some(location))?;
        self.wait_to_write().await;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        if !self.in_scope(Some(location)) {
            return Ok(inner);
        }
        Ok(Box::new(FaultyUpload {
            inner,
            counter: Arc::clone(&self.counter),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check("get", Some(location))?;
        self.run_hook(location).await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.check("get_ranges", Some(location))?;
        self.run_hook(location).await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        let inner = Arc::clone(&self.inner);
        locations
            .then(move |path| {
                let fails = match &path {
                    Ok(p) => this.check("delete", Some(p)),
                    Err(_) => Ok(()),
                };
                let inner = Arc::clone(&inner);
                async move {
                    fails?;
                    let path = path?;
                    let one = futures::stream::once(async move { Ok(path) }).boxed();
                    let mut done = inner.delete_stream(one);
                    done.next().await.unwrap_or_else(|| {
                        Err(object_store::Error::Generic {
                            store: "faulty",
                            source: "the inner store deleted nothing".into(),
                        })
                    })
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.check("list", prefix) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check("list_with_delimiter", prefix)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check("copy", Some(to))?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    counter: Arc<Counter>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if self.counter.fails() {
            let e = self.counter.error("put_part");
            return async move { Err(e) }.boxed();
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.counter.fails() {
            return Err(self.counter.error("complete"));
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        if self.counter.fails() {
            return Err(self.counter.error("abort"));
        }
        self.inner.abort().await
    }
}
