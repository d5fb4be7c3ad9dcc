//! `vector_index_versions('<index>')`: every committed version, oldest first.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};

use super::read_version;
use super::whole_table::ReadWhole;
use crate::format::IndexLocation;

static VERSIONS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::UInt64, false),
        Field::new("current", DataType::Boolean, false),
        Field::new(
            "committed_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("segments", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("num_fragments", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("replaced_segments", DataType::UInt64, false),
        Field::new("restored_from", DataType::UInt64, true),
    ]))
});

/// Schema of `vector_index_versions(…)`: per version its segments' totals, how many
/// segments of the version before it dropped (`replace` mode, or a restore), the
/// version a restore listed again, and when the store wrote it.
pub(crate) fn versions_schema() -> SchemaRef {
    Arc::clone(&VERSIONS_SCHEMA)
}

/// The committed versions of an index, read when scanned.
#[derive(Debug, Clone)]
pub(crate) struct VersionsTable {
    location: IndexLocation,
}

impl VersionsTable {
    pub(crate) fn new(location: IndexLocation) -> Self {
        Self { location }
    }
}

#[async_trait]
impl ReadWhole for VersionsTable {
    fn schema(&self) -> SchemaRef {
        versions_schema()
    }

    /// One row per committed version, oldest first (none before the first commit;
    /// an error where there is no index).
    async fn read_batch(&self) -> crate::error::Result<RecordBatch> {
        let loc = &self.location;
        crate::model::ModelInfo::read_current(loc).await?;
        let dir = loc.versions_dir();
        let written: HashMap<String, i64> = loc
            .store()
            .list(Some(&dir))
            .map_ok(|m| {
                let name = m.location.filename().unwrap_or_default().to_string();
                (name, m.last_modified.timestamp_millis())
            })
            .try_collect()
            .await
            .map_err(|e| {
                crate::error::IndexError::store(format!("listing {}", loc.object_url(&dir)), e)
            })?;
        let mut numbers: Vec<u64> = written
            .keys()
            .filter_map(|name| name.strip_suffix(".json")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        let versions: Vec<_> = futures::stream::iter(numbers)
            .map(|v| async move { read_version(loc, v).await })
            .buffered(16)
            .try_collect()
            .await?;
        let latest = versions.last().map(|v| v.version);
        let sum = |f: fn(&crate::format::SegmentRef) -> u64| {
            UInt64Array::from_iter_values(
                versions
                    .iter()
                    .map(|v| v.segments.iter().map(f).sum::<u64>()),
            )
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(
                versions.iter().map(|v| v.version),
            )),
            Arc::new(BooleanArray::from_iter(
                versions.iter().map(|v| Some(Some(v.version) == latest)),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter(
                    versions
                        .iter()
                        .map(|v| written.get(&format!("{}.json", v.version)).copied()),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(UInt64Array::from_iter_values(
                versions.iter().map(|v| v.segments.len() as u64),
            )),
            Arc::new(sum(|s| s.rows)),
            Arc::new(sum(|s| s.num_fragments)),
            Arc::new(sum(|s| s.bytes)),
            Arc::new(UInt64Array::from_iter_values(
                versions.iter().map(|v| v.replaced_segments.len() as u64),
            )),
            Arc::new(UInt64Array::from_iter(
                versions.iter().map(|v| v.restored_from),
            )),
        ];
        Ok(RecordBatch::try_new(versions_schema(), cols)?)
    }
}
