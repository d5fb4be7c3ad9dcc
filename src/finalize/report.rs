//! What a finalize committed: [`FinalizeReport`], and the rows that carry it out of
//! the commit operator and out of `CALL finalize_vector_index` (one per new segment).

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::common::{internal_datafusion_err, Result};

use crate::catalog::Committed;
use crate::exec::{primitive, strings};

/// Column names of [`commit_output_schema`].
pub(crate) mod col {
    pub(crate) const SEGMENT_ID: &str = "segment_id";
    pub(crate) const SHARDS: &str = "shards";
    pub(crate) const ROWS: &str = "rows";
    pub(crate) const NUM_FRAGMENTS: &str = "num_fragments";
    pub(crate) const BYTES: &str = "bytes";
    pub(crate) const VERSION: &str = "version";
    pub(crate) const REPLACED_SEGMENTS: &str = "replaced_segments";
}

/// Schema of the rows a finalize emits: one per new segment, each with the version
/// and the replaced segments (comma-separated; NULL when none).
pub(crate) fn commit_output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SEGMENT_ID, DataType::Utf8, false),
        Field::new(col::SHARDS, DataType::UInt64, false),
        Field::new(col::ROWS, DataType::UInt64, false),
        Field::new(col::NUM_FRAGMENTS, DataType::UInt64, false),
        Field::new(col::BYTES, DataType::UInt64, false),
        Field::new(col::VERSION, DataType::UInt64, false),
        Field::new(col::REPLACED_SEGMENTS, DataType::Utf8, true),
    ]))
}

/// What a finalize committed (as [`crate::VacuumReport`] says what a vacuum did).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalizeReport {
    /// The version it committed.
    pub version: u64,
    /// The new segments, as the version lists them.
    pub segments: Vec<FinalizedSegment>,
    /// Segments of the previous version the new one dropped (`mode => 'replace'`).
    pub replaced_segments: Vec<String>,
}

/// One segment a finalize committed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalizedSegment {
    pub segment_id: String,
    /// Staged shards merged into it (and removed from the staging area).
    pub shards: u64,
    pub rows: u64,
    pub num_fragments: u64,
    /// Bytes of its data and graph files.
    pub bytes: u64,
}

impl FinalizeReport {
    /// Rows of all new segments.
    pub fn rows(&self) -> u64 {
        self.segments.iter().map(|s| s.rows).sum()
    }

    pub(crate) fn of(committed: &Committed) -> Self {
        Self {
            version: committed.version,
            segments: committed
                .segments
                .iter()
                .map(|r| FinalizedSegment {
                    segment_id: r.segment_id.clone(),
                    shards: r.consumed_shards.len() as u64,
                    rows: r.rows,
                    num_fragments: r.num_fragments,
                    bytes: r.bytes,
                })
                .collect(),
            replaced_segments: committed.replaced.clone(),
        }
    }

    /// One row per segment (schema: [`commit_output_schema`]).
    pub(crate) fn to_batch(&self) -> Result<RecordBatch> {
        let segments = &self.segments;
        let n = segments.len();
        let replaced =
            (!self.replaced_segments.is_empty()).then(|| self.replaced_segments.join(","));
        let u64s = |f: fn(&FinalizedSegment) -> u64| {
            Arc::new(UInt64Array::from_iter_values(segments.iter().map(f)))
        };
        Ok(RecordBatch::try_new(
            commit_output_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    segments.iter().map(|s| s.segment_id.as_str()),
                )),
                u64s(|s| s.shards),
                u64s(|s| s.rows),
                u64s(|s| s.num_fragments),
                u64s(|s| s.bytes),
                Arc::new(UInt64Array::from(vec![self.version; n])),
                Arc::new(StringArray::from(vec![replaced.as_deref(); n])),
            ],
        )?)
    }

    /// The report the rows of one commit carry.
    pub(crate) fn from_batches(batches: &[RecordBatch]) -> Result<Self> {
        let mut report: Option<Self> = None;
        for batch in batches {
            let ids = strings(batch, col::SEGMENT_ID)?;
            let u64s = |name| primitive::<UInt64Type>(batch, name).map(|a| a.values());
            let (shards, rows, fragments, bytes, versions) = (
                u64s(col::SHARDS)?,
                u64s(col::ROWS)?,
                u64s(col::NUM_FRAGMENTS)?,
                u64s(col::BYTES)?,
                u64s(col::VERSION)?,
            );
            let replaced = strings(batch, col::REPLACED_SEGMENTS)?;
            for i in 0..batch.num_rows() {
                let report = report.get_or_insert_with(|| Self {
                    version: versions[i],
                    segments: Vec::new(),
                    replaced_segments: match replaced.is_valid(i) {
                        true => replaced.value(i).split(',').map(str::to_string).collect(),
                        false => Vec::new(),
                    },
                });
                report.segments.push(FinalizedSegment {
                    segment_id: ids.value(i).to_string(),
                    shards: shards[i],
                    rows: rows[i],
                    num_fragments: fragments[i],
                    bytes: bytes[i],
                });
            }
        }
        report.ok_or_else(|| internal_datafusion_err!("a finalize committed no segment"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(id: &str, rows: u64) -> FinalizedSegment {
        FinalizedSegment {
            segment_id: id.into(),
            shards: 2,
            rows,
            num_fragments: 3,
            bytes: 4096,
        }
    }

    #[test]
    fn reports_round_trip_through_their_rows() {
        for replaced in [vec![], vec!["old-1".to_string(), "old-2".to_string()]] {
            let report = FinalizeReport {
                version: 7,
                segments: vec![segment("a", 10), segment("b", 20)],
                replaced_segments: replaced,
            };
            let batch = report.to_batch().unwrap();
            assert_eq!(batch.num_rows(), 2);
            let (first, second) = (batch.slice(0, 1), batch.slice(1, 1));
            assert_eq!(
                FinalizeReport::from_batches(&[first, second]).unwrap(),
                report
            );
            assert_eq!(report.rows(), 30);
        }
        let none = RecordBatch::new_empty(commit_output_schema());
        assert!(FinalizeReport::from_batches(&[none]).is_err());
    }
}
