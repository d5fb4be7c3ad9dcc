//! The staging area as a table: `vector_index_shards('<index>')`.
//!
//! The scan is DataFusion's own `DataSourceExec` over a `FileScanConfig` with one
//! file per shard (its `shard.json`, or any file of an incomplete shard), read
//! through [`ShardManifestSource`].

mod discard;
mod rows;
mod source;
mod table;

pub(crate) use discard::discard_shard;
pub use discard::DiscardedShard;

pub(crate) use rows::ListedShard;
pub(crate) use source::{read_shard_row, Problem};
pub(crate) use source::{ScannedShards, ShardManifestSource, ShardStatus};
pub(crate) use table::{list_staged_shards, ShardsTable};
