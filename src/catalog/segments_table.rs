//! `vector_index_segments('<index>')`: the committed segments of the latest version.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};

use super::whole_table::ReadWhole;
use super::{latest_version, read_segment};
use crate::format::IndexLocation;

static SEGMENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("index_type", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("num_fragments", DataType::UInt64, false),
        Field::new("min_fragment", DataType::UInt32, true),
        Field::new("max_fragment", DataType::UInt32, true),
        Field::new("num_files", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("consumed_shards", DataType::UInt64, false),
    ]))
});

pub(crate) fn segments_schema() -> SchemaRef {
    Arc::clone(&SEGMENTS_SCHEMA)
}

/// The committed segments of the latest version, read when scanned.
#[derive(Debug, Clone)]
pub(crate) struct SegmentsTable {
    location: IndexLocation,
}

impl SegmentsTable {
    pub(crate) fn new(location: IndexLocation) -> Self {
        Self { location }
    }
}

#[async_trait]
impl ReadWhole for SegmentsTable {
    fn schema(&self) -> SchemaRef {
        segments_schema()
    }

    /// One row per committed segment of the latest version (no rows before the first commit).
    async fn read_batch(&self) -> crate::error::Result<RecordBatch> {
        let loc = &self.location;
        let Some(version) = latest_version(loc).await? else {
            // No rows before the first commit, but an error where there is no index.
            crate::model::ModelInfo::read_current(loc).await?;
            return Ok(RecordBatch::new_empty(segments_schema()));
        };
        let ids: Vec<String> = version
            .segments
            .iter()
            .map(|s| s.segment_id.clone())
            .collect();
        let segments: Vec<_> = futures::stream::iter(ids)
            .map(|id| {
                let loc = loc.clone();
                async move { read_segment(&loc, &id).await }
            })
            .buffered(16)
            .try_collect()
            .await?;
        let n = segments.len();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                segments.iter().map(|s| s.segment_id.as_str()),
            )),
            Arc::new(UInt64Array::from(vec![version.version; n])),
            Arc::new(StringArray::from_iter_values(
                segments.iter().map(|s| s.index_type.name()),
            )),
            Arc::new(StringArray::from_iter_values(
                segments.iter().map(|s| s.metric.name()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                segments.iter().map(|s| s.rows),
            )),
            Arc::new(UInt64Array::from_iter_values(
                segments.iter().map(|s| s.num_fragments),
            )),
            Arc::new(UInt32Array::from_iter(
                segments.iter().map(|s| s.min_fragment),
            )),
            Arc::new(UInt32Array::from_iter(
                segments.iter().map(|s| s.max_fragment),
            )),
            Arc::new(UInt64Array::from_iter_values(
                segments.iter().map(|s| s.files.len() as u64),
            )),
            Arc::new(UInt64Array::from_iter_values(
                segments.iter().map(|s| s.bytes()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                segments.iter().map(|s| s.consumed_shards.len() as u64),
            )),
        ];
        Ok(RecordBatch::try_new(segments_schema(), cols)?)
    }
}
