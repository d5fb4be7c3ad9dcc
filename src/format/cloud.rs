//! Object stores for cloud URLs (`s3://`, `gs://`, `az://`, `abfss://`), created
//! from the environment the first time a session meets one, behind the `s3`, `gcs`
//! and `azure` features. A store the embedding application registered for the URL
//! is never replaced.
//!
//! The settings are the variables `object_store`'s builders read (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`). Before a store is built they are checked for what would
//! otherwise fail late or hang (no credentials, so the client would wait on an
//! instance-metadata endpoint; a plain-http endpoint it would refuse), and the
//! errors name the URL and the variable to set, never a variable's value.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;

use crate::error::{IndexError, Result};

/// The cloud-store variables of an environment (values never shown).
#[derive(Clone, Default)]
pub(crate) struct StoreEnv {
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for StoreEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl StoreEnv {
    /// The `AWS_*`, `GOOGLE_*`, `AZURE_*` and `VECTOR_INDEX_*` variables of this process.
    pub(crate) fn from_process() -> Self {
        Self::from_vars(std::env::vars())
    }

    pub(crate) fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            vars: vars
                .into_iter()
                .filter(|(k, _)| {
                    ["AWS_", "GOOGLE_", "AZURE_", "VECTOR_INDEX_"]
                        .iter()
                        .any(|p| k.starts_with(p))
                })
                .collect(),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn any(&self, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.get(k).is_some())
    }

    fn is_true(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
    }

    /// `(lowercase key, value)` of the variables starting with `prefix`.
    #[allow(dead_code)] // unused when no cloud feature is on
    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, &'a str)> {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
    }
}

/// The variable that sets [`StoreTimeout`] (`dvi --timeout` sets it too).
pub const STORE_TIMEOUT_VAR: &str = "VECTOR_INDEX_STORE_TIMEOUT";

/// How long one operation on a cloud store may take, retries included, before it
/// fails: object_store's own default lets a store that stopped answering hang a
/// call for three minutes, too long for anyone waiting at a terminal.
///
/// Each request may take half of it (its connection five seconds at most), so a
/// request that never gets an answer is tried twice; failures that end sooner
/// are retried, with backoff, until the time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreTimeout(std::time::Duration);

#[cfg_attr(
    not(any(feature = "s3", feature = "gcs", feature = "azure")),
    allow(dead_code) // used by the cloud stores only
)]
impl StoreTimeout {
    /// The default: a minute.
    pub(crate) const DEFAULT: Self = Self(std::time::Duration::from_secs(60));

    /// From [`STORE_TIMEOUT_VAR`] (whole seconds, at least 1), or the default.
    pub(crate) fn from_env(env: &StoreEnv) -> Result<Self> {
        let Some(value) = env.get(STORE_TIMEOUT_VAR) else {
            return Ok(Self::DEFAULT);
        };
        match value.trim().parse::<u64>() {
            Ok(secs) if (1..=86_400).contains(&secs) => {
                Ok(Self(std::time::Duration::from_secs(secs)))
            }
            _ => Err(IndexError::invalid_argument(
                STORE_TIMEOUT_VAR,
                format!("'{value}' is not a number of seconds between 1 and 86400"),
            )),
        }
    }

    pub(crate) fn seconds(self) -> u64 {
        self.0.as_secs()
    }

    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    fn client_options(self) -> object_store::ClientOptions {
        let request = self.0 / 2;
        object_store::ClientOptions::new()
            .with_timeout(request)
            .with_connect_timeout(request.min(std::time::Duration::from_secs(5)))
    }

    /// Retries start until three quarters of the time are gone: a request that
    /// hangs for half of it is tried once more, and the last ends near the limit.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    fn retry(self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            retry_timeout: self.0 * 3 / 4,
            ..Default::default()
        }
    }
}

/// A cloud store whose failures say how long the operation waited when that was
/// long (a store that stopped answering), and how to give it more time.
#[derive(Debug)]
struct Timed {
    inner: Arc<dyn ObjectStore>,
    timeout: StoreTimeout,
}

impl std::fmt::Display for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// Failures after this long are told with the time they took.
const SLOW_FAILURE: std::time::Duration = std::time::Duration::from_secs(1);

impl Timed {
    #[allow(dead_code)] // unused when no cloud feature is on
    fn wrap(inner: Arc<dyn ObjectStore>, timeout: StoreTimeout) -> Arc<dyn ObjectStore> {
        Arc::new(Self { inner, timeout })
    }

    fn told(&self, e: object_store::Error, started: std::time::Instant) -> object_store::Error {
        self.timeout.told(e, started)
    }
}

impl StoreTimeout {
    /// `e`, told with how long it took, when it took long; kinds that callers act
    /// on (not found, already exists, …) are kept as they are.
    fn told(self, e: object_store::Error, started: std::time::Instant) -> object_store::Error {
        let waited = started.elapsed();
        if waited < SLOW_FAILURE || !matches!(e, object_store::Error::Generic { .. }) {
            return e;
        }
        object_store::Error::Generic {
            store: "object store",
            source: format!(
                "{e} (gave up after {:.1} s; an operation may take {} s: set {STORE_TIMEOUT_VAR} \
                 or dvi --timeout to change it)",
                waited.as_secs_f64(),
                self.seconds()
            )
            .into(),
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Timed {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let started = std::time::Instant::now();
        (self.inner.put_opts(location, payload, opts).await).map_err(|e| self.told(e, started))
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        let started = std::time::Instant::now();
        (self.inner.put_multipart_opts(location, opts).await).map_err(|e| self.told(e, started))
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let started = std::time::Instant::now();
        (self.inner.get_opts(location, options).await).map_err(|e| self.told(e, started))
    }

    async fn get_ranges(
        &self,
        location: &object_store::path::Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        let started = std::time::Instant::now();
        (self.inner.get_ranges(location, ranges).await).map_err(|e| self.told(e, started))
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        let (started, timeout) = (std::time::Instant::now(), self.timeout);
        futures::StreamExt::boxed(futures::StreamExt::map(
            self.inner.delete_stream(locations),
            move |r| r.map_err(|e| timeout.told(e, started)),
        ))
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        let (started, timeout) = (std::time::Instant::now(), self.timeout);
        futures::StreamExt::boxed(futures::StreamExt::map(self.inner.list(prefix), move |r| {
            r.map_err(|e| timeout.told(e, started))
        }))
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        let started = std::time::Instant::now();
        (self.inner.list_with_delimiter(prefix).await).map_err(|e| self.told(e, started))
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        let started = std::time::Instant::now();
        (self.inner.copy_opts(from, to, options).await).map_err(|e| self.told(e, started))
    }
}

/// `builder` with the variables of `env` starting with `prefix` that name one of
/// its typed config keys (others, like `AWS_PROFILE`, are not settings of a store).
#[allow(unused_macros)] // unused when no cloud feature is on
macro_rules! configure {
    ($builder:expr, $key:ty, $env:expr, $prefix:literal) => {{
        let mut builder = $builder;
        for (key, value) in $env.with_prefix($prefix) {
            if let Ok(key) = key.parse::<$key>() {
                builder = builder.with_config(key, value);
            }
        }
        builder
    }};
}

/// The store for `url`'s bucket or container, built from `env`; `Ok(None)` when the
/// scheme is not a cloud one (or its feature is off: the caller's error says so).
pub(crate) fn store_for(url: &url::Url, env: &StoreEnv) -> Result<Option<Arc<dyn ObjectStore>>> {
    match url.scheme() {
        "s3" | "s3a" => s3(url, env),
        "gs" => gcs(url, env),
        "az" | "azure" | "abfs" | "abfss" => azure(url, env),
        _ => Ok(None),
    }
}

/// The feature a cloud scheme needs, for the error when it is off.
pub(crate) fn feature_of(scheme: &str) -> Option<&'static str> {
    match scheme {
        "s3" | "s3a" => Some("s3"),
        "gs" => Some("gcs"),
        "az" | "azure" | "abfs" | "abfss" => Some("azure"),
        _ => None,
    }
}

/// The bucket or container part of `url`, as shown in errors.
fn bucket_url(url: &url::Url) -> String {
    format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
}

fn misconfigured(url: &url::Url, reason: impl std::fmt::Display) -> IndexError {
    IndexError::invalid_argument("url", format!("{}: {reason}", bucket_url(url)))
}

/// An object-store registry that builds the store of a cloud URL (`s3://`, `gs://`,
/// `az://`, …) from the environment the first time anything asks for it — an index
/// URL, a table's `LOCATION`, a `COPY … TO` target, a scan on an executor — and
/// registers it for the next time. It wraps another registry, which is asked first,
/// so a store registered by the application always wins.
///
/// `VectorIndexSession` installs one; an engine of its own installs it with
/// `RuntimeEnvBuilder::with_object_store_registry`, on every process that meets the
/// URLs (a cluster's scheduler and executors too).
#[derive(Debug)]
pub struct EnvObjectStoreRegistry {
    inner: Arc<dyn ObjectStoreRegistry>,
    /// Whole seconds one store operation may take, in place of the environment's.
    timeout: Option<u64>,
}

impl Default for EnvObjectStoreRegistry {
    /// Over DataFusion's default registry (`file://` only).
    fn default() -> Self {
        Self::new(Arc::new(DefaultObjectStoreRegistry::new()))
    }
}

impl EnvObjectStoreRegistry {
    /// Stores come from `inner` first, and from the environment where it has none.
    pub fn new(inner: Arc<dyn ObjectStoreRegistry>) -> Self {
        Self {
            inner,
            timeout: None,
        }
    }

    /// The stores it builds give up on an operation after `timeout` (retries
    /// included; whole seconds, 1 to 86,400) instead of what
    /// `VECTOR_INDEX_STORE_TIMEOUT` says (default 60 s).
    pub fn with_store_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout.as_secs().clamp(1, 86_400));
        self
    }

    /// The environment the stores are built from.
    fn env(&self) -> StoreEnv {
        let mut env = StoreEnv::from_process();
        if let Some(secs) = self.timeout {
            env.vars
                .insert(STORE_TIMEOUT_VAR.to_string(), secs.to_string());
        }
        env
    }

    /// Whether `registry` is one of these (so that it is not wrapped twice).
    /// `ObjectStoreRegistry` offers no downcast; its `Debug` names the type.
    pub(crate) fn is_one(registry: &dyn ObjectStoreRegistry) -> bool {
        format!("{registry:?}").starts_with("EnvObjectStoreRegistry")
    }
}

impl ObjectStoreRegistry for EnvObjectStoreRegistry {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &url::Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &url::Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        let missing = match self.inner.get_store(url) {
            Ok(store) => return Ok(store),
            Err(e) => e,
        };
        match store_for(url, &self.env())? {
            Some(store) => {
                self.inner.register_store(url, Arc::clone(&store));
                Ok(store)
            }
            None => match feature_of(url.scheme()) {
                Some(feature) => Err(IndexError::invalid_argument(
                    "url",
                    format!(
                        "{}: this build has no `{feature}` feature; build with --features {feature}, \
                         or register a store with the session (SessionContext::register_object_store)",
                        bucket_url(url)
                    ),
                )
                .into()),
                None => Err(missing),
            },
        }
    }
}

/// Checks the S3 settings for what would fail late or hang.
fn check_s3(url: &url::Url, env: &StoreEnv) -> Result<()> {
    if url.host_str().unwrap_or_default().is_empty() {
        return Err(misconfigured(
            url,
            "no bucket in the URL (s3://<bucket>/<prefix>)",
        ));
    }
    if env.get("AWS_ACCESS_KEY_ID").is_some() {
        if env.get("AWS_SECRET_ACCESS_KEY").is_none() {
            return Err(misconfigured(
                url,
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
            ));
        }
    } else if !(env.any(&[
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]) || env.is_true("AWS_SKIP_SIGNATURE")
        || env.get("AWS_EC2_METADATA_DISABLED") == Some("false"))
    {
        return Err(misconfigured(
            url,
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
             AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, \
             AWS_SKIP_SIGNATURE=true for a public bucket, or AWS_EC2_METADATA_DISABLED=false \
             to use the instance profile)",
        ));
    }
    for key in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"] {
        if let Some(endpoint) = env.get(key) {
            if endpoint.starts_with("http://") && !env.is_true("AWS_ALLOW_HTTP") {
                return Err(misconfigured(
                    url,
                    format!("{key} {endpoint} is plain http: set AWS_ALLOW_HTTP=true to allow it"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(feature = "s3")]
fn s3(url: &url::Url, env: &StoreEnv) -> Result<Option<Arc<dyn ObjectStore>>> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    check_s3(url, env)?;
    let timeout = StoreTimeout::from_env(env)?;
    let builder = AmazonS3Builder::new()
        .with_client_options(timeout.client_options())
        .with_retry(timeout.retry());
    let builder = configure!(builder, AmazonS3ConfigKey, env, "AWS_");
    let store = builder
        .with_url(bucket_url(url))
        .build()
        .map_err(|e| misconfigured(url, e))?;
    Ok(Some(Timed::wrap(Arc::new(store), timeout)))
}

#[cfg(not(feature = "s3"))]
fn s3(url: &url::Url, env: &StoreEnv) -> Result<Option<Arc<dyn ObjectStore>>> {
    check_s3(url, env).map(|_| None)
}

/// Checks the Google Cloud Storage settings for what would fail late or hang.
fn check_gcs(url: &url::Url, env: &StoreEnv) -> Result<()> {
    if url.host_str().unwrap_or_default().is_empty() {
        return Err(misconfigured(
            url,
            "no bucket in the URL (gs://<bucket>/<prefix>)",
        ));
    }
    let default_credentials = std::env::var_os("HOME").is_some_and(|home| {
        std::path::Path::new(&home)
            .join(".config/gcloud/application_default_credentials.json")
            .exists()
    });
    if !(env.any(&[
        "GOOGLE_SERVICE_ACCOUNT",
        "GOOGLE_SERVICE_ACCOUNT_PATH",
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ]) || env.is_true("GOOGLE_SKIP_SIGNATURE")
        || default_credentials)
    {
        return Err(misconfigured(
            url,
            "no credentials: set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT, \
             GOOGLE_SERVICE_ACCOUNT_KEY, GOOGLE_SKIP_SIGNATURE=true for a public bucket), or \
             run `gcloud auth application-default login`",
        ));
    }
    Ok(())
}

#[cfg(feature = "gcs")]
fn gcs(url: &url::Url, env: &StoreEnv) -> Result<Option<Arc<dyn ObjectStore>>> {
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    check_gcs(url, env)?;
    let timeout = StoreTimeout::from_env(env)?;
    let builder = GoogleCloudStorageBuilder::new()
        .with_client_options(timeout.client_options())
        .with_retry(timeout.retry());
    let builder = configure!(builder, GoogleConfigKey, env, "GOOGLE_");
    let store = builder
        .with_url(bucket_url(url))
        .build()
        .map_err(|e| misconfigured(url, e))?;
    Ok(Some(Timed::wrap(Arc::new(store), timeout)))
}

#[cfg(not(feature = "gcs"))]
fn gcs(url: &url::Url, env: &StoreEnv) -> Result<Option<Arc<dyn ObjectStore>>> {
    check_gcs(url, env).map(|_| None)
}

/// Checks the Azure settings for what would fail late or hang.
fn check_azure(url: &url::Url, env: &StoreEnv) -> Result<()> {
    let account_in_url = url
        .host_str()
        .is_some_and(|h| h.contains(".core.windows.net"));
    if !account_in_url
        && env.get("AZURE_STORAGE_ACCOUNT_NAME").is_none()
        && !env.is_true("AZURE_STORAGE_USE_EMULATOR")
    {
        return Err(misconfigured(
            url,
            "no storage account: set AZURE_STORAGE_ACCOUNT_NAME (or use \
             abfss://<container>@<account>.dfs.core.windows.net/<prefix>)",
        ));
    }
    let client_secret = env.any(&["AZURE_CLIENT_ID", "AZURE_STORAGE_CLIENT_ID"])
        && env.any(&["AZURE_CLIENT_SECRET", "AZURE_STORAGE_CLIENT_SECRET"])
        && env.any(&[
            "AZURE_TENANT_ID",
            "AZURE_STORAGE_TENANT_ID",
            "AZURE_AUTHORITY_ID",
        ]);
    if !(client_secret
        || env.any(&[
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCESS_KEY",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_STORAGE_SAS_TOKEN",
            "AZURE_STORAGE_TOKEN",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_MSI_ENDPOINT",
        ])
        || env.is_true("AZURE_USE_AZURE_CLI")
        || env.is_true("AZURE_STORAGE_USE_EMULATOR")
        || env.is_true("AZURE_SKIP_SIGNATURE"))
    {
        return Err(misconfigured(
            url,
            "no credentials: set AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY (or \
             AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID; \
             AZURE_FEDERATED_TOKEN_FILE; AZURE_MSI_ENDPOINT for a managed identity; \
             AZURE_USE_AZURE_CLI=true)",
        ));
    }
    Ok(())
}

#[cfg(feature = "azure")]
fn azure(url: &url::Url, env: &StoreEnv) -> Result<Option<Arc<dyn ObjectStore>>> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    check_azure(url, env)?;
    let timeout = StoreTimeout::from_env(env)?;
    let builder = MicrosoftAzureBuilder::new()
        .with_client_options(timeout.client_options())
        .with_retry(timeout.retry());
    let builder = configure!(builder, AzureConfigKey, env, "AZURE_");
    let container = &url[..url::Position::BeforePath];
    let store = builder
        .with_url(container)
        .build()
        .map_err(|e| misconfigured(url, e))?;
    Ok(Some(Timed::wrap(Arc::new(store), timeout)))
}

#[cfg(not(feature = "azure"))]
fn azure(url: &url::Url, env: &StoreEnv) -> Result<Option<Arc<dyn ObjectStore>>> {
    check_azure(url, env).map(|_| None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> StoreEnv {
        StoreEnv::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn error(url: &str, vars: &[(&str, &str)]) -> String {
        let url = url::Url::parse(url).unwrap();
        match store_for(&url, &env(vars)) {
            Ok(_) => panic!("{url} accepted"),
            Err(e) => e.to_string(),
        }
    }

    const KEYS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "very-secret-value"),
    ];

    #[test]
    fn s3_without_credentials_is_refused_naming_the_bucket_and_the_variables() {
        let err = error("s3://bucket/idx", &[("AWS_REGION", "eu-west-1")]);
        assert!(
            err.contains("s3://bucket")
                && err.contains("no credentials")
                && err.contains("AWS_ACCESS_KEY_ID"),
            "{err}"
        );
        let err = error("s3://bucket/idx", &[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")]);
        assert!(err.contains("AWS_SECRET_ACCESS_KEY is not"), "{err}");
        assert!(!err.contains("AKIDEXAMPLE"), "{err}");
    }

    #[test]
    fn a_plain_http_endpoint_needs_allow_http_and_no_secret_is_shown() {
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"));
        let err = error("s3://bucket/idx", &vars);
        assert!(
            err.contains("http://127.0.0.1:9000") && err.contains("AWS_ALLOW_HTTP=true"),
            "{err}"
        );
        assert!(!err.contains("very-secret-value"), "{err}");
        vars.push(("AWS_ALLOW_HTTP", "true"));
        let url = url::Url::parse("s3://bucket/idx").unwrap();
        let store = store_for(&url, &env(&vars));
        if cfg!(feature = "s3") {
            let store = store.unwrap().expect("an S3 store");
            assert!(!format!("{store} {store:?}").contains("very-secret-value"));
        } else {
            assert!(store.unwrap().is_none());
        }
    }

    #[test]
    fn a_url_without_a_bucket_is_refused() {
        let err = error("s3:///idx", &KEYS);
        assert!(err.contains("no bucket"), "{err}");
    }

    #[test]
    fn gcs_and_azure_without_credentials_are_refused() {
        let gcloud_login = std::env::var_os("HOME").is_some_and(|home| {
            std::path::Path::new(&home)
                .join(".config/gcloud/application_default_credentials.json")
                .exists()
        });
        if !gcloud_login {
            let err = error("gs://bucket/idx", &[]);
            assert!(
                err.contains("gs://bucket") && err.contains("GOOGLE_APPLICATION_CREDENTIALS"),
                "{err}"
            );
        }
        let err = error("az://container/idx", &[]);
        assert!(err.contains("AZURE_STORAGE_ACCOUNT_NAME"), "{err}");
        let err = error("abfss://container@account.dfs.core.windows.net/idx", &[]);
        assert!(
            err.contains("no credentials") && err.contains("AZURE_STORAGE_ACCOUNT_KEY"),
            "{err}"
        );
    }

    #[test]
    fn the_store_timeout_comes_from_the_environment_within_bounds() {
        assert_eq!(
            StoreTimeout::from_env(&env(&[])).unwrap(),
            StoreTimeout::DEFAULT
        );
        let five = StoreTimeout::from_env(&env(&[(STORE_TIMEOUT_VAR, "5")])).unwrap();
        assert_eq!(five.seconds(), 5);
        for bad in ["0", "soon", "-1", "86401"] {
            let err = StoreTimeout::from_env(&env(&[(STORE_TIMEOUT_VAR, bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(STORE_TIMEOUT_VAR) && err.contains(&format!("'{bad}'")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_registry_sets_the_store_timeout_in_place_of_the_environment() {
        let registry = EnvObjectStoreRegistry::default()
            .with_store_timeout(std::time::Duration::from_millis(2500));
        assert_eq!(
            StoreTimeout::from_env(&registry.env()).unwrap().seconds(),
            2
        );
        let registry =
            EnvObjectStoreRegistry::default().with_store_timeout(std::time::Duration::ZERO);
        assert_eq!(
            StoreTimeout::from_env(&registry.env()).unwrap().seconds(),
            1
        );
    }

    #[test]
    fn the_environment_is_shown_without_values() {
        let shown = format!("{:?}", env(&KEYS));
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("very-secret-value"));
    }

    #[test]
    fn other_schemes_are_not_cloud_stores() {
        for url in ["file:///tmp/x", "memory:///x"] {
            let url = url::Url::parse(url).unwrap();
            assert!(store_for(&url, &StoreEnv::default()).unwrap().is_none());
        }
    }
}
