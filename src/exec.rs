//! Helpers shared by this crate's physical operators.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BinaryArray, FixedSizeListArray, PrimitiveArray, RecordBatch, StringArray,
};
use arrow::datatypes::{ArrowPrimitiveType, SchemaRef};
use datafusion::common::{internal_datafusion_err, Result};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{ExecutionPlan, Partitioning, PlanProperties};

/// Properties of an operator that emits `schema` in `partitions` partitions, once its
/// input is done, with no ordering guarantees.
pub(crate) fn compute_properties(
    schema: SchemaRef,
    partitions: usize,
    emission: EmissionType,
) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        emission,
        Boundedness::Bounded,
    ))
}

/// The single child of a unary operator, or a planning error naming the operator.
pub(crate) fn single_child(
    name: &str,
    mut children: Vec<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if children.len() != 1 {
        return datafusion::common::plan_err!(
            "{name} takes exactly one child, got {}",
            children.len()
        );
    }
    Ok(children.remove(0))
}

/// Column `name` of `batch`, downcast by `cast` to what `what` describes: a broken
/// contract between two of our operators is an internal error naming the column,
/// never a panicking downcast.
fn typed<'a, A: ?Sized>(
    batch: &'a RecordBatch,
    name: &str,
    what: &str,
    cast: impl FnOnce(&'a ArrayRef) -> Option<&'a A>,
) -> Result<&'a A> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| internal_datafusion_err!("batch lacks column '{name}'"))?;
    cast(column).ok_or_else(|| internal_datafusion_err!("column '{name}' is not {what}"))
}

/// Column `name` of `batch` as a primitive array of `T`.
pub(crate) fn primitive<'a, T: ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a PrimitiveArray<T>> {
    typed(batch, name, &T::DATA_TYPE.to_string(), |c| {
        c.as_primitive_opt::<T>()
    })
}

/// Column `name` of `batch` as strings.
pub(crate) fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    typed(batch, name, "Utf8", |c| c.as_string_opt::<i32>())
}

/// Column `name` of `batch` as binary values.
pub(crate) fn binaries<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a BinaryArray> {
    typed(batch, name, "Binary", |c| c.as_binary_opt::<i32>())
}

/// Column `name` of `batch` as vectors of `Float32`.
pub(crate) fn vectors<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a FixedSizeListArray> {
    typed(batch, name, "a list of Float32", |c| {
        c.as_fixed_size_list_opt()
            .filter(|l| l.value_type() == arrow::datatypes::DataType::Float32)
    })
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
