//! The staging table's rows (`vector_index_shards(…)`): their schema, a shard's row
//! as the scan writes it ([`ShardRow`]), and the part of it the finalize planner
//! reads back ([`ListedShard`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{internal_datafusion_err, Result};

use super::source::ShardRow;
use super::ShardStatus;
use crate::exec::strings;

/// Column names of [`shards_schema`] that other operators read.
pub(crate) mod col {
    pub(crate) const SHARD_ID: &str = "shard_id";
    pub(crate) const STATUS: &str = "status";
    pub(crate) const PROBLEM: &str = "problem";
    pub(crate) const PATH: &str = "path";
}

static SHARDS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(col::SHARD_ID, DataType::Utf8, false),
        Field::new("model", DataType::Utf8, true),
        Field::new("index_type", DataType::Utf8, true),
        Field::new("metric", DataType::Utf8, true),
        Field::new("dim", DataType::UInt32, true),
        Field::new("rows", DataType::UInt64, true),
        Field::new("bytes", DataType::UInt64, true),
        Field::new("num_fragments", DataType::UInt64, true),
        Field::new("min_fragment", DataType::UInt32, true),
        Field::new("max_fragment", DataType::UInt32, true),
        Field::new("complete", DataType::Boolean, false),
        Field::new(col::STATUS, DataType::Utf8, false),
        Field::new(col::PROBLEM, DataType::Utf8, true),
        Field::new(col::PATH, DataType::Utf8, false),
    ]))
});

/// Schema of `vector_index_shards(…)`. `complete` is true when `shard.json` exists
/// and is consistent with its sidecar; otherwise `status` says whose move it is
/// (`incomplete`: the worker's; `invalid`: the shard is damaged; `unreadable`: the
/// store failed, retry) and `problem` says why.
pub(crate) fn shards_schema() -> SchemaRef {
    Arc::clone(&SHARDS_SCHEMA)
}

impl ShardRow {
    /// The shard's row (schema: [`shards_schema`]).
    pub(super) fn to_batch(&self) -> Result<RecordBatch> {
        let m = self.manifest.as_ref();
        let status = self.status();
        let complete = status == ShardStatus::Complete;
        let bytes = m.map(|m| m.data_file.size + m.fragments_file.size);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some(self.shard_id.as_str())])),
            Arc::new(StringArray::from(vec![m.map(|m| m.model.as_str())])),
            Arc::new(StringArray::from(vec![m.map(|m| m.index_type.name())])),
            Arc::new(StringArray::from(vec![m.map(|m| m.metric.name())])),
            Arc::new(UInt32Array::from(vec![m.map(|m| m.dim)])),
            Arc::new(UInt64Array::from(vec![m.map(|m| m.rows)])),
            Arc::new(UInt64Array::from(vec![bytes])),
            Arc::new(UInt64Array::from(vec![m.map(|m| m.num_fragments)])),
            Arc::new(UInt32Array::from(vec![m.and_then(|m| m.min_fragment)])),
            Arc::new(UInt32Array::from(vec![m.and_then(|m| m.max_fragment)])),
            Arc::new(BooleanArray::from(vec![complete])),
            Arc::new(StringArray::from(vec![status.as_str()])),
            Arc::new(StringArray::from(vec![self
                .problem
                .as_ref()
                .map(|p| p.reason.as_str())])),
            Arc::new(StringArray::from(vec![Some(self.path.as_str())])),
        ];
        Ok(RecordBatch::try_new(shards_schema(), cols)?)
    }
}

/// One staged shard as the staging table listed it: what the finalize planner acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedShard {
    pub shard_id: String,
    pub status: ShardStatus,
    pub problem: Option<String>,
    pub path: String,
}

impl ListedShard {
    /// The shards of the staging table's rows, columns found by name.
    pub(crate) fn from_batches(batches: &[RecordBatch]) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for b in batches {
            let (ids, status, problem, path) = (
                strings(b, col::SHARD_ID)?,
                strings(b, col::STATUS)?,
                strings(b, col::PROBLEM)?,
                strings(b, col::PATH)?,
            );
            for i in 0..b.num_rows() {
                let status = ShardStatus::parse(status.value(i)).ok_or_else(|| {
                    internal_datafusion_err!(
                        "staging scan: unknown shard status '{}'",
                        status.value(i)
                    )
                })?;
                out.push(Self {
                    shard_id: ids.value(i).to_string(),
                    status,
                    problem: problem.is_valid(i).then(|| problem.value(i).to_string()),
                    path: path.value(i).to_string(),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staging::Problem;

    #[test]
    fn shard_rows_round_trip_to_what_the_planner_reads() {
        let incomplete = ShardRow {
            shard_id: "a".into(),
            path: "idx/_staging/a".into(),
            ..Default::default()
        };
        let damaged = ShardRow {
            shard_id: "b".into(),
            path: "idx/_staging/b".into(),
            problem: Some(Problem {
                status: ShardStatus::Invalid,
                reason: "data.arrow is truncated".into(),
            }),
            ..Default::default()
        };
        let batches = [incomplete.to_batch().unwrap(), damaged.to_batch().unwrap()];
        assert_eq!(
            ListedShard::from_batches(&batches).unwrap(),
            vec![
                ListedShard {
                    shard_id: "a".into(),
                    status: ShardStatus::Incomplete,
                    problem: None,
                    path: "idx/_staging/a".into(),
                },
                ListedShard {
                    shard_id: "b".into(),
                    status: ShardStatus::Invalid,
                    problem: Some("data.arrow is truncated".into()),
                    path: "idx/_staging/b".into(),
                },
            ]
        );
        let without = batches[0].project(&[0, 1, 2]).unwrap();
        let err = ListedShard::from_batches(&[without])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lack column 'status'"), "{err}");
    }
}
