//! Helpers shared by this crate's physical operators.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
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
