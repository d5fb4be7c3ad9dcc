//! Committed state: versions, segments, the commit protocol that adds them, vacuum
//! that removes what nothing references, and the `vector_index_segments` table.

mod commit;
mod segments_table;
mod vacuum;
mod versions;

pub use commit::CommitMode;
pub(crate) use commit::{remove_consumed, Committed, NewSegment, Transaction};
pub(crate) use vacuum::vacuum;
pub use vacuum::{VacuumOptions, VacuumReport, VacuumedItem, VacuumedKind};

pub(crate) use segments_table::SegmentsTable;
pub(crate) use versions::{
    latest_version, list_versions, read_segment, read_segment_fragments, read_version,
};
