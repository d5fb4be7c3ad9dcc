//! Helpers shared by this crate's physical operators.

use std::sync::Arc;

use arrow::array::{AsArray, FixedSizeListArray, PrimitiveArray, RecordBatch};
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

/// Column `name` of `batch` as a primitive array of `T`: a contract between two of
/// our operators broken is an internal error, never a panicking downcast.
pub(crate) fn primitive<'a, T: ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a PrimitiveArray<T>> {
    batch
        .column_by_name(name)
        .ok_or_else(|| internal_datafusion_err!("batch lacks column '{name}'"))?
        .as_primitive_opt::<T>()
        .ok_or_else(|| internal_datafusion_err!("column '{name}' is not {}", T::DATA_TYPE))
}

/// Column `name` of `batch` as vectors of `Float32`.
pub(crate) fn vectors<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a FixedSizeListArray> {
    batch
        .column_by_name(name)
        .ok_or_else(|| internal_datafusion_err!("batch lacks column '{name}'"))?
        .as_fixed_size_list_opt()
        .filter(|l| l.value_type() == arrow::datatypes::DataType::Float32)
        .ok_or_else(|| internal_datafusion_err!("column '{name}' is not a list of Float32"))
}
