//! The SQL front end: `CALL` procedures, `EXPLAIN CALL`, and table functions.

mod args;
mod functions;
mod procedures;
mod session;

pub use session::VectorIndexSession;

/// The schema metadata key under which a procedure's answer says how it ended
/// when that is not plain success: [`NOTHING_TO_FINALIZE`].
pub const OUTCOME_KEY: &str = "vector_index.outcome";
/// [`OUTCOME_KEY`]'s value on the row of a finalize that found nothing to merge (the
/// reason is under `vector_index.reason`); `dvi` then exits with status 3.
pub const NOTHING_TO_FINALIZE: &str = "nothing_to_finalize";
