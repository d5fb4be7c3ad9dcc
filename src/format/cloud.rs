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
    /// The `AWS_*`, `GOOGLE_*` and `AZURE_*` variables of this process.
    pub(crate) fn from_process() -> Self {
        Self::from_vars(std::env::vars())
    }

    pub(crate) fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            vars: vars
                .into_iter()
                .filter(|(k, _)| {
                    ["AWS_", "GOOGLE_", "AZURE_"]
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
    IndexError::invalid_argument("index", format!("{}: {reason}", bucket_url(url)))
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
    let builder = configure!(AmazonS3Builder::new(), AmazonS3ConfigKey, env, "AWS_");
    let store = builder
        .with_url(bucket_url(url))
        .build()
        .map_err(|e| misconfigured(url, e))?;
    Ok(Some(Arc::new(store)))
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
    let builder = configure!(
        GoogleCloudStorageBuilder::new(),
        GoogleConfigKey,
        env,
        "GOOGLE_"
    );
    let store = builder
        .with_url(bucket_url(url))
        .build()
        .map_err(|e| misconfigured(url, e))?;
    Ok(Some(Arc::new(store)))
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
    let builder = configure!(MicrosoftAzureBuilder::new(), AzureConfigKey, env, "AZURE_");
    let container = &url[..url::Position::BeforePath];
    let store = builder
        .with_url(container)
        .build()
        .map_err(|e| misconfigured(url, e))?;
    Ok(Some(Arc::new(store)))
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
