//! The worker side: encode one worker's rows with the shared model and stage
//! them as a partial shard.

mod shard_build;
mod shard_writer;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, UInt64Type};

pub(crate) use shard_build::{
    fragment_key, PublishShards, StagedShardRow, VectorIndexShardPublishExec,
    VectorIndexShardWriteExec, WriteShards,
};
pub use shard_writer::ShardWriter;

use crate::error::{IndexError, Result};

/// Writes the columns `row_id` (integers) and `column` (vectors) of `batch` into
/// `writer`.
pub(crate) fn write_rows(
    writer: &mut ShardWriter,
    batch: &RecordBatch,
    row_id: &str,
    column: &str,
) -> Result<()> {
    let named = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| IndexError::Internal(format!("the rows to index lack column '{name}'")))
    };
    let (ids, vectors) = (named(row_id)?, named(column)?);
    if ids.null_count() > 0 {
        return Err(IndexError::InvalidInput(format!(
            "column '{row_id}' has NULL row ids"
        )));
    }
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let ids = cast_with_options(ids, &DataType::UInt64, &strict).map_err(|e| {
        IndexError::InvalidInput(format!(
            "column '{row_id}': row ids must be non-negative 64-bit integers: {e}"
        ))
    })?;
    writer.write(ids.as_primitive::<UInt64Type>().values(), vectors, column)
}

/// The fragment a row id belongs to (Lance's row-address convention).
pub(crate) fn fragment_of(row_id: u64) -> u32 {
    (row_id >> 32) as u32
}
