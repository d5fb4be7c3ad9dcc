//! The staging area as a table: `vector_index_shards('<index>')`.
//!
//! The scan is DataFusion's own `DataSourceExec` over a `FileScanConfig` with one
//! file per shard (its `shard.json`, or any file of an incomplete shard), read
//! through [`ShardManifestSource`].

mod source;
mod table;

pub(crate) use source::{read_shard_row, Problem};
pub use source::{ScannedShard, ScannedShards, ShardManifestSource, ShardStatus};
pub use table::{list_staged_shards, shards_schema, ShardsTable, StagedShard};
