//! A real S3 server on 127.0.0.1 for the tests: the `s3s` protocol layer (request
//! parsing, SigV4 authentication) over `s3s-fs`'s file-backed store, in this
//! process, on a thread of its own so that it outlives each test's runtime.
//!
//! Two things are added around `s3s-fs`:
//! - Conditional writes (`If-None-Match: *`) are made atomic, as S3 guarantees:
//!   `s3s-fs` checks for the object and then writes it, so two racing creates could
//!   both succeed there. The commit protocol relies on exactly this guarantee
//!   (FORMAT.md, "What the store must guarantee").
//! - Requests are counted, so tests can check what a search reads.
//! - A request to a bucket that does not exist fails with `NoSuchBucket`, as on S3
//!   (`s3s-fs` would create the folder on a write).
//! - Buckets named `lax-…` ignore `If-None-Match`, as some S3-compatible stores do.
//! - A test can hold the `shard.json` writes of a bucket (to kill a worker between
//!   its data and its manifest), then fail them.
//! - A test can slow down the writes of some keys of a bucket (to kill a process
//!   in the middle of its work).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};

pub const ACCESS_KEY: &str = "dvi-test-access";
pub const SECRET_KEY: &str = "dvi-test-secret-do-not-print";
pub const REGION: &str = "us-east-1";

/// Requests the server has answered, by bucket and operation (`GetObject` with a
/// `Range` header counts as `GetObject(range)`).
#[derive(Default)]
pub struct Requests {
    counts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Requests {
    fn count(&self, bucket: &str, op: &'static str) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry((bucket.to_string(), op))
            .or_default() += 1;
    }

    pub fn get(&self, bucket: &str, op: &str) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((b, o), _)| b == bucket && *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every count for `bucket`, by operation.
    pub fn of(&self, bucket: &str) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((b, _), _)| b == bucket)
            .map(|((_, op), n)| (*op, *n))
            .collect()
    }
}

pub struct S3Server {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    root: PathBuf,
    pub requests: Arc<Requests>,
    holds: Arc<Holds>,
    next_bucket: AtomicU64,
}

/// The server of this test process, started on first use; the `AWS_*` variables
/// of the process point at it, so sessions build their S3 store from the
/// environment as they would against AWS.
pub fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = start();
        for (key, value) in server.env() {
            std::env::set_var(key, value);
        }
        server
    })
}

impl S3Server {
    /// The variables a process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// A new, empty bucket.
    pub fn bucket(&self) -> String {
        let n = self.next_bucket.fetch_add(1, Ordering::Relaxed);
        let name = format!("bucket-{}-{n}", std::process::id());
        std::fs::create_dir_all(self.root.join(&name)).unwrap();
        name
    }

    /// From now on, writes of `shard.json` objects in `bucket` wait (see
    /// [`S3Server::manifest_waiting`]) until [`S3Server::fail_held_manifests`].
    pub fn hold_manifests(&self, bucket: &str) {
        self.holds
            .buckets
            .lock()
            .unwrap()
            .insert(bucket.to_string());
    }

    /// Whether a `shard.json` write in `bucket` is waiting.
    pub fn manifest_waiting(&self, bucket: &str) -> bool {
        self.holds.waiting.lock().unwrap().contains(bucket)
    }

    /// Ends the hold: the waiting writes fail (503), as if the server had died.
    pub fn fail_held_manifests(&self, bucket: &str) {
        self.holds.buckets.lock().unwrap().remove(bucket);
    }

    /// From now on, each write (a put or a multipart part) of a key in `bucket`
    /// that contains `key_part` waits `delay` first.
    pub fn slow_writes(&self, bucket: &str, key_part: &str, delay: std::time::Duration) {
        self.holds
            .slow
            .lock()
            .unwrap()
            .insert(bucket.to_string(), (key_part.to_string(), delay));
    }

    /// How many slowed writes of `bucket` have begun.
    pub fn slow_writes_begun(&self, bucket: &str) -> u64 {
        self.holds
            .slow_begun
            .lock()
            .unwrap()
            .get(bucket)
            .copied()
            .unwrap_or(0)
    }

    /// A new, empty bucket that ignores conditional writes.
    pub fn lax_bucket(&self) -> String {
        let name = format!("lax-{}", self.bucket());
        std::fs::create_dir_all(self.root.join(&name)).unwrap();
        name
    }

    /// The folder holding `bucket`'s objects (to inspect or damage them).
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }
}

/// Buckets whose `shard.json` writes are held, and those with one waiting; buckets
/// whose writes of some keys are slowed, and how many of those have begun.
#[derive(Default)]
struct Holds {
    buckets: Mutex<std::collections::BTreeSet<String>>,
    waiting: Mutex<std::collections::BTreeSet<String>>,
    slow: Mutex<BTreeMap<String, (String, std::time::Duration)>>,
    slow_begun: Mutex<BTreeMap<String, u64>>,
}

impl Holds {
    /// Waits as [`S3Server::slow_writes`] says for a write of `key` in `bucket`.
    async fn slow_down(&self, bucket: &str, key: &str) {
        let delay = match self.slow.lock().unwrap().get(bucket) {
            Some((part, delay)) if key.contains(part.as_str()) => *delay,
            _ => return,
        };
        *self
            .slow_begun
            .lock()
            .unwrap()
            .entry(bucket.to_string())
            .or_default() += 1;
        tokio::time::sleep(delay).await;
    }
}

fn start() -> S3Server {
    let root = tempfile::tempdir().unwrap().keep();
    let requests = Arc::new(Requests::default());
    let holds = Arc::new(Holds::default());
    let fs = s3s_fs::FileSystem::new(&root).unwrap();
    let store = CountedFs {
        fs,
        root: root.clone(),
        holds: Arc::clone(&holds),
        creates: tokio::sync::Mutex::new(()),
        requests: Arc::clone(&requests),
    };
    let service = {
        let mut builder = s3s::service::S3ServiceBuilder::new(store);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        builder.build()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("s3-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let http = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let conn = http
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            })
        })
        .unwrap();
    let addr = rx.recv().unwrap();
    S3Server {
        endpoint: format!("http://{addr}"),
        root,
        requests,
        holds,
        next_bucket: AtomicU64::new(0),
    }
}

/// `s3s-fs` with atomic conditional creates and counted requests.
struct CountedFs {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    holds: Arc<Holds>,
    /// Held by every write that carries `If-None-Match`, from its check to its write.
    creates: tokio::sync::Mutex<()>,
    requests: Arc<Requests>,
}

impl CountedFs {
    fn bucket(&self, bucket: &str) -> S3Result<()> {
        if self.root.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(s3s::s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ))
        }
    }
}

#[async_trait::async_trait]
impl S3 for CountedFs {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.requests.count(&req.input.bucket, "PutObject");
        self.bucket(&req.input.bucket)?;
        self.holds
            .slow_down(&req.input.bucket, &req.input.key)
            .await;
        let bucket = req.input.bucket.clone();
        if req.input.key.ends_with("shard.json")
            && self.holds.buckets.lock().unwrap().contains(&bucket)
        {
            self.holds.waiting.lock().unwrap().insert(bucket.clone());
            while self.holds.buckets.lock().unwrap().contains(&bucket) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            self.holds.waiting.lock().unwrap().remove(&bucket);
            return Err(s3s::s3_error!(
                ServiceUnavailable,
                "held by the test, then failed"
            ));
        }
        let mut req = req;
        if req.input.bucket.starts_with("lax-") {
            req.input.if_none_match = None;
        }
        if req.input.if_none_match.is_some() {
            let _one_at_a_time = self.creates.lock().await;
            return self.fs.put_object(req).await;
        }
        self.fs.put_object(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.requests
            .count(&req.input.bucket, "CompleteMultipartUpload");
        self.bucket(&req.input.bucket)?;
        if req.input.if_none_match.is_some() {
            let _one_at_a_time = self.creates.lock().await;
            return self.fs.complete_multipart_upload(req).await;
        }
        self.fs.complete_multipart_upload(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.requests.count(&req.input.bucket, "GetObject");
        self.bucket(&req.input.bucket)?;
        if req.input.range.is_some() {
            self.requests.count(&req.input.bucket, "GetObject(range)");
        }
        self.fs.get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.requests.count(&req.input.bucket, "HeadObject");
        self.bucket(&req.input.bucket)?;
        self.fs.head_object(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.requests.count(&req.input.bucket, "HeadBucket");
        self.bucket(&req.input.bucket)?;
        self.fs.head_bucket(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.requests.count(&req.input.bucket, "ListObjectsV2");
        self.bucket(&req.input.bucket)?;
        self.fs.list_objects_v2(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.requests.count(&req.input.bucket, "DeleteObject");
        self.bucket(&req.input.bucket)?;
        self.fs.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.requests.count(&req.input.bucket, "DeleteObjects");
        self.bucket(&req.input.bucket)?;
        self.fs.delete_objects(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.requests.count(&req.input.bucket, "CopyObject");
        self.bucket(&req.input.bucket)?;
        self.fs.copy_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.requests
            .count(&req.input.bucket, "CreateMultipartUpload");
        self.bucket(&req.input.bucket)?;
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.requests.count(&req.input.bucket, "UploadPart");
        self.bucket(&req.input.bucket)?;
        self.holds
            .slow_down(&req.input.bucket, &req.input.key)
            .await;
        self.fs.upload_part(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.requests
            .count(&req.input.bucket, "AbortMultipartUpload");
        self.bucket(&req.input.bucket)?;
        self.fs.abort_multipart_upload(req).await
    }
}
