//! `dvi`: SQL statements of a vector index session from a shell (the `cli` module).

use std::process::ExitCode;

fn main() -> ExitCode {
    datafusion_vector_index::cli::run(std::env::args().skip(1).collect(), None)
}
