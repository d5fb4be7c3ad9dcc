//! The contract between the merge and the commit: one row per segment data file
//! merged, carrying what the commit needs to describe its segment.

use std::sync::Arc;

use arrow::array::{Array, BinaryArray, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::{internal_datafusion_err, Result};

use super::SegmentPlan;
use crate::exec::{binaries, primitive, strings};
use crate::format::SegmentFile;

/// Schema of the merged files emitted by [`super::VectorIndexMergeExec`].
pub(crate) fn merged_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("file_index", DataType::UInt32, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
        Field::new("fragments", DataType::Binary, true),
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
}

pub(crate) fn to_batch(files: &[MergedFile]) -> Result<RecordBatch> {
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
pub(crate) fn from_batch(batch: &RecordBatch) -> Result<Vec<MergedFile>> {
    let (segment_ids, files, segments) = (
        strings(batch, "segment_id")?,
        strings(batch, "file")?,
        strings(batch, "segment")?,
    );
    let file_index = primitive::<UInt32Type>(batch, "file_index")?;
    let rows = primitive::<UInt64Type>(batch, "rows")?;
    let fragments = binaries(batch, "fragments")?;
    (0..batch.num_rows())
        .map(|i| {
            let file: SegmentFile = serde_json::from_str(files.value(i))
                .map_err(|e| internal_datafusion_err!("merged file {i}: {e}"))?;
            Ok(MergedFile {
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
        let batch = to_batch(&files).unwrap();
        assert_eq!(from_batch(&batch).unwrap(), files);
        let without = batch.project(&[0, 1, 2, 3, 5, 6]).unwrap();
        let err = from_batch(&without).unwrap_err().to_string();
        assert!(err.contains("lack column 'file'"), "{err}");
    }
}
