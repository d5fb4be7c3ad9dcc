//! Committed state: versions, segments and the `vector_index_segments` table.

mod segments_table;
mod versions;

pub use segments_table::{segments_schema, SegmentsTable};
pub use versions::{
    latest_version, list_versions, read_segment, read_segment_fragments, read_version,
};
