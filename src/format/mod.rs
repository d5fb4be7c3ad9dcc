//! The on-disk format: paths, manifests and Arrow IPC blocks (specified in FORMAT.md).

mod cloud;
mod ipc;
mod location;
mod manifest;
mod params;
mod stored_rows;
mod upload;

pub use cloud::{EnvObjectStoreRegistry, STORE_TIMEOUT_VAR};
pub use ipc::BlockInfo;
pub(crate) use ipc::{arrow_bytes, decode_block, encode_partitions, pad_to_8, IpcFileSink};
pub use location::IndexLocation;
pub(crate) use manifest::check_version;
pub use manifest::{
    FileInfo, GraphFile, IndexManifest, SegmentFile, SegmentManifest, SegmentRef, ShardManifest,
    VersionManifest,
};
pub(crate) use params::Quantizer;
pub use params::{HnswParams, IndexType, Metric, ModelParams};
pub(crate) use stored_rows::{
    stored_rows_batch, stored_rows_header, stored_rows_schema, write_gathered, StoredBuffers,
    StoredRows, StoredRowsLayout,
};
pub(crate) use upload::Upload;

/// The format version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 2;

/// Column holding the row id in every data file.
pub(crate) const ROW_ID_COLUMN: &str = "row_id";
