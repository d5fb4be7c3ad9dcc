//! What this crate's physical operators share: the operator skeleton
//! ([`WorkExec`] running a [`Work`]) and typed access to the columns of the rows
//! they pass each other.

mod columns;
mod work_exec;

use datafusion::physical_plan::ExecutionPlan;

pub(crate) use columns::{binaries, primitive, strings, structs, vectors, NamedColumns};
pub(crate) use work_exec::{Partitions, Work, WorkExec, WorkStream};

use datafusion::physical_plan::DisplayFormatType;

use crate::format::IndexLocation;

/// The `index=<url>` detail an operator starts its display with; the tree form,
/// read at a glance, leaves the long URL out.
pub(crate) fn index_detail(
    format: DisplayFormatType,
    location: &IndexLocation,
) -> Vec<(&'static str, String)> {
    match format {
        DisplayFormatType::TreeRender => Vec::new(),
        _ => vec![("index", location.url().to_string())],
    }
}

/// The rows `plan` will produce, when its statistics know them exactly before it runs
/// (an in-memory table, Parquet without a filter).
pub(crate) fn exact_rows(plan: &dyn ExecutionPlan) -> Option<u64> {
    let stats = datafusion::physical_plan::StatisticsContext::new()
        .compute(plan, &datafusion::physical_plan::StatisticsArgs::new())
        .ok()?;
    match stats.num_rows {
        datafusion::common::stats::Precision::Exact(n) => Some(n as u64),
        _ => None,
    }
}
