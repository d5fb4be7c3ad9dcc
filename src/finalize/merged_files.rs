//! The contract between the merge and the commit: one row per segment data file
//! merged, carrying what the commit needs to describe its segment.

use std::sync::Arc;

use arrow::array::{Array, BinaryArray, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::{internal_datafusion_err, Result};

use super::SegmentPlan;
use crate::exec::{binaries, primitive, strings};
use crate::format::SegmentFile;

/// Column names of [`merged_file_schema`].
mod col {
    pub(super) const SEGMENT_ID: &str = "segment_id";
    pub(super) const FILE_INDEX: &str = "file_index";
    pub(super) const ROWS: &str = "rows";
    pub(super) const BYTES: &str = "bytes";
    pub(super) const FILE: &str = "file";
    pub(super) const SEGMENT: &str = "segment";
    pub(super) const FRAGMENTS: &str = "fragments";
}

/// Schema of the merged files emitted by [`super::VectorIndexMergeExec`].
pub(crate) fn merged_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SEGMENT_ID, DataType::Utf8, false),
        Field::new(col::FILE_INDEX, DataType::UInt32, false),
        Field::new(col::ROWS, DataType::UInt64, false),
        Field::new(col::BYTES, DataType::UInt64, false),
        Field::new(col::FILE, DataType::Utf8, false),
        Field::new(col::SEGMENT, DataType::Utf8, false),
        Field::new(col::FRAGMENTS, DataType::Binary, true),
    ]))
}

/// One merged data file (a row of [`merged_file_schema`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MergedFile {
    pub segment_id: String,
    pub file_index: u32,
    pub rows: u64,
    /// The file as its segment manifest will list it (`file`, as JSON).
    pub file: SegmentFile,
    /// The unit's segment plan as the work unit carried it (`segment`, JSON of
    /// [`SegmentPlan`]), passed through without being parsed and written again.
    pub segment: String,
    /// The segment's fragment set (portable Roaring bytes), on its first file only.
    pub fragments: Option<Vec<u8>>,
}

impl MergedFile {
    pub(super) fn segment_plan(&self) -> Result<SegmentPlan> {
        serde_json::from_str(&self.segment).map_err(|e| {
            internal_datafusion_err!("merged file {}: segment plan: {e}", self.file.name)
        })
    }

    /// `files` as rows of [`merged_file_schema`].
    pub(crate) fn to_batch(files: &[Self]) -> Result<RecordBatch> {
        let file_json = files
            .iter()
            .map(|f| serde_json::to_string(&f.file))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal_datafusion_err!("merged file: {e}"))?;
        Ok(RecordBatch::try_new(
            merged_file_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    files.iter().map(|f| f.segment_id.as_str()),
                )),
                Arc::new(UInt32Array::from_iter_values(
                    files.iter().map(|f| f.file_index),
                )),
                Arc::new(UInt64Array::from_iter_values(files.iter().map(|f| f.rows))),
                Arc::new(UInt64Array::from_iter_values(
                    files.iter().map(|f| f.file.size),
                )),
                Arc::new(StringArray::from(file_json)),
                Arc::new(StringArray::from_iter_values(
                    files.iter().map(|f| f.segment.as_str()),
                )),
                Arc::new(BinaryArray::from(
                    files
                        .iter()
                        .map(|f| f.fragments.as_deref())
                        .collect::<Vec<_>>(),
                )),
            ],
        )?)
    }

    /// The merged files of a batch of [`merged_file_schema`], its columns found by name.
    pub(crate) fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let (segment_ids, files, segments) = (
            strings(batch, col::SEGMENT_ID)?,
            strings(batch, col::FILE)?,
            strings(batch, col::SEGMENT)?,
        );
        let file_index = primitive::<UInt32Type>(batch, col::FILE_INDEX)?;
        let rows = primitive::<UInt64Type>(batch, col::ROWS)?;
        let fragments = binaries(batch, col::FRAGMENTS)?;
        (0..batch.num_rows())
            .map(|i| {
                let file: SegmentFile = serde_json::from_str(files.value(i))
                    .map_err(|e| internal_datafusion_err!("merged file {i}: {e}"))?;
                Ok(Self {
                    segment_id: segment_ids.value(i).to_string(),
                    file_index: file_index.value(i),
                    rows: rows.value(i),
                    file,
                    segment: segments.value(i).to_string(),
                    fragments: fragments.is_valid(i).then(|| fragments.value(i).to_vec()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlockInfo;

    #[test]
    fn merged_files_round_trip_through_a_batch() {
        let file = |i: u32, fragments: Option<Vec<u8>>| MergedFile {
            segment_id: format!("seg-{}", i % 2),
            file_index: i,
            rows: 10 + u64::from(i),
            file: SegmentFile {
                name: format!("part-{i}.arrow"),
                size: 100,
                partition_start: i,
                partition_end: i + 1,
                partitions: vec![BlockInfo {
                    rows: 10 + u64::from(i),
                    offset: 8,
                    meta_len: 8,
                    length: 80,
                    crc32: i,
                }],
                graph: None,
            },
            segment: format!("{{\"segment_id\": \"seg-{}\"}}", i % 2),
            fragments,
        };
        let files = vec![
            file(0, Some(vec![1, 2, 3])),
            file(1, None),
            file(2, Some(vec![])),
        ];
        let batch = MergedFile::to_batch(&files).unwrap();
        assert_eq!(MergedFile::from_batch(&batch).unwrap(), files);
        let without = batch.project(&[0, 1, 2, 3, 5, 6]).unwrap();
        let err = MergedFile::from_batch(&without).unwrap_err().to_string();
        assert!(err.contains("lack column 'file'"), "{err}");
    }
}
