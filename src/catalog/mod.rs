//! Committed state: versions, segments, the commit protocol that adds them, vacuum
//! that removes what nothing references, and the `vector_index_segments` table.

mod commit;
mod segments_table;
mod vacuum;
mod versions;

pub use commit::{remove_consumed, CommitMode, Committed, NewSegment, Transaction};
pub use vacuum::{vacuum, VacuumOptions, VacuumReport};

pub use segments_table::{segments_schema, SegmentsTable};
pub use versions::{
    latest_version, list_versions, read_segment, read_segment_fragments, read_version,
};
