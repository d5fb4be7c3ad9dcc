//! The SQL front end: `CALL` procedures, `EXPLAIN CALL`, and table functions.

mod args;
mod functions;
mod procedures;
mod session;

pub use session::VectorIndexSession;
