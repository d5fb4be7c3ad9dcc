//! Committed state: versions, segments, the commit protocol that adds them, restore
//! of an older version, vacuum that removes what nothing references, and the
//! `vector_index_segments` and `vector_index_versions` tables.

mod commit;
mod restore;
mod segments_table;
mod vacuum;
mod versions;
mod versions_table;
mod whole_table;

pub use commit::CommitMode;
pub(crate) use commit::{
    fragment_sample, put_version, remove_consumed, replace_would_drop, Committed, NewSegment,
    Transaction,
};
pub(crate) use vacuum::vacuum;
pub use vacuum::{KeptItem, VacuumOptions, VacuumReport, VacuumedItem, VacuumedKind};

pub(crate) use restore::restore;
pub use restore::Restored;
pub(crate) use segments_table::SegmentsTable;
pub(crate) use versions::{
    check_listed, latest_version, list_versions, read_segment, read_segment_fragments, read_version,
};
pub(crate) use versions_table::VersionsTable;
pub(crate) use whole_table::{ReadWhole, WholeTable};
