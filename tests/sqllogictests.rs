//! Runs the `.slt` files in `sqllogictests/` (and in `$SLT_EXTRA_DIR` when set)
//! through a [`VectorIndexSession`], one test per file, each on its own tokio
//! runtime with its own `$__TEST_DIR__`.
//!
//! `cargo test --test sqllogictests -- <filter>` runs the files whose name contains `<filter>`.
//!
//! The files in `sqllogictests/s3/` need the `s3` feature: they run against an S3
//! server started on 127.0.0.1 before the first file, with `$S3_TEST_BUCKET` a bucket
//! of their own and the `AWS_*` variables pointing at the server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion_vector_index::VectorIndexSession;
use regex::Regex;
use sqllogictest::harness::{run, Arguments, Failed, Trial};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

#[cfg(feature = "s3")]
#[path = "common/s3.rs"]
mod s3_server;

struct Db {
    session: VectorIndexSession,
}

/// A DataFusion error with its message normalized like results are.
#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

impl From<DataFusionError> for SltError {
    fn from(e: DataFusionError) -> Self {
        Self(normalize(&e.to_string()))
    }
}

fn column_type(dt: &DataType) -> DefaultColumnType {
    match dt {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

fn cell(array: &ArrayRef, row: usize) -> Result<String, DataFusionError> {
    if array.is_null(row) {
        return Ok("NULL".into());
    }
    Ok(match array.data_type() {
        DataType::Float32 => trim_float(
            array
                .as_primitive::<arrow::datatypes::Float32Type>()
                .value(row) as f64,
        ),
        DataType::Float64 => trim_float(
            array
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(row),
        ),
        DataType::Utf8 if array.as_string::<i32>().value(row).is_empty() => "(empty)".into(),
        _ => ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?
            .value(row)
            .to_string(),
    })
}

/// Four decimals, trailing zeros dropped: stable across platforms for our distances.
fn trim_float(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

#[async_trait]
impl AsyncDB for Db {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let df = self.session.sql(sql).await?;
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let mut rows = Vec::new();
        for b in &batches {
            for r in 0..b.num_rows() {
                // Normalized here, before `rowsort` sorts them.
                rows.push(
                    b.columns()
                        .iter()
                        .map(|c| cell(c, r).map(|v| normalize(&v)))
                        .collect::<Result<Vec<_>, _>>()?,
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "datafusion-vector-index"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Results and errors mention temporary paths, uuids and model fingerprints;
/// expected results write them as `<dir>`, `<uuid>` and `<fingerprint>`.
#[allow(clippy::ptr_arg)] // sqllogictest's `Normalizer` takes `&String`.
fn normalize(s: &String) -> String {
    static DIR: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"/?tmp/\.tmp[A-Za-z0-9]+").expect("regex"));
    static UUID: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").expect("regex")
    });
    static FINGERPRINT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\b[0-9a-f]{32}\b").expect("regex"));
    static BUCKET: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"bucket-[0-9]+-[0-9]+").expect("regex"));
    let s = DIR.replace_all(s, "<dir>");
    let s = BUCKET.replace_all(&s, "<bucket>");
    let s = UUID.replace_all(&s, "<uuid>");
    FINGERPRINT
        .replace_all(&s, "<fingerprint>")
        .trim_end()
        .to_string()
}

/// Compares line by line, so multi-line cells (EXPLAIN plans) read naturally in
/// `.slt` files: each line of the plan is one expected line.
fn validate(
    normalizer: sqllogictest::Normalizer,
    actual: &[Vec<String>],
    expected: &[String],
) -> bool {
    let actual: Vec<String> = actual
        .iter()
        .map(|row| row.join(" "))
        .flat_map(|row| {
            row.lines()
                .map(|l| normalizer(&l.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<String> = expected.iter().map(normalizer).collect();
    actual == expected
}

fn run_file(path: &Path) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    runtime.block_on(async {
        let mut runner = Runner::new(|| async {
            Ok(Db {
                session: VectorIndexSession::new(),
            })
        });
        runner.with_normalizer(normalize);
        runner.with_validator(validate);
        runner
            .run_file_async(path)
            .await
            .map_err(|e| Failed::from(e.display(true).to_string()))
    })
}

fn slt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "slt") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn main() {
    let args = Arguments::from_args();
    #[cfg(feature = "s3")]
    std::env::set_var("S3_TEST_BUCKET", s3_server::server().bucket());
    let mut dirs = vec![(
        String::new(),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sqllogictests"),
    )];
    if let Ok(extra) = std::env::var("SLT_EXTRA_DIR") {
        dirs.push(("extra/".into(), PathBuf::from(extra)));
    }
    let mut trials = Vec::new();
    for (prefix, dir) in dirs {
        for file in slt_files(&dir) {
            if cfg!(not(feature = "s3")) && file.parent().is_some_and(|p| p.ends_with("s3")) {
                continue;
            }
            let name = format!(
                "{prefix}{}",
                file.strip_prefix(&dir).unwrap_or(&file).display()
            );
            let file = Arc::new(file);
            trials.push(Trial::test(name, move || run_file(&file)));
        }
    }
    run(&args, trials).exit();
}
