//! The worker side: encode one worker's rows with the shared model and stage
//! them as a partial shard.

mod shard_writer;

pub use shard_writer::ShardWriter;

/// The fragment a row id belongs to (Lance's row-address convention).
pub(crate) fn fragment_of(row_id: u64) -> u32 {
    (row_id >> 32) as u32
}
