//! [`WorkExec`]: the one skeleton of this crate's unary operators.
//!
//! In the spirit of DataFusion's `DataSinkExec` + `DataSink`: the operator owns the
//! plumbing every `ExecutionPlan` repeats (properties, children, the partition
//! check, metrics, display per format), and a [`Work`] owns what the operator is
//! built with, what it asks of its input, how it reads in `EXPLAIN`, and how it
//! runs one partition. Adding an operator is writing its `Work`.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
    ExecutionPlanProperties, Partitioning, PlanProperties, ReplaceChildrenOptions,
};
use futures::stream::BoxStream;

/// How an operator's output partitions follow its input's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Partitions {
    /// One output partition, over a single input partition.
    One,
    /// One output partition per input partition.
    PerInput,
}

/// The stream a [`Work`] returns for one partition.
pub(crate) type WorkStream = BoxStream<'static, Result<RecordBatch>>;

/// What one operator does; [`WorkExec`] runs it as an `ExecutionPlan`.
pub(crate) trait Work: fmt::Debug + Send + Sync + 'static {
    /// The operator's name in plans and errors.
    const NAME: &'static str;
    /// How its output partitions follow its input's.
    const PARTITIONS: Partitions;
    /// When it emits: once its input ends, or as it goes.
    const EMISSION: EmissionType = EmissionType::Final;
    /// Whether it records metrics (`EXPLAIN ANALYZE` shows them).
    const METRICS: bool = false;

    /// The rows it emits.
    fn schema(&self) -> SchemaRef;

    /// What its input's partitions must hold, given the input's schema (the hash
    /// keys of an exchange are expressions over it).
    fn input_distribution(&self, _input: &SchemaRef) -> Result<Distribution> {
        Ok(match Self::PARTITIONS {
            Partitions::One => Distribution::SinglePartition,
            Partitions::PerInput => Distribution::UnspecifiedDistribution,
        })
    }

    /// Whether more input partitions make it faster, given what it requires of
    /// them (DataFusion's default: unless it needs a single partition).
    fn benefits_from_input_partitioning(&self, required: &Distribution) -> bool {
        !matches!(required, Distribution::SinglePartition)
    }

    /// What it was built with, as `key=value` pairs in the order `EXPLAIN` shows
    /// them; `format` lets the tree form keep only what matters at a glance.
    fn details(&self, format: DisplayFormatType, partitions: usize) -> Vec<(&'static str, String)>;

    /// Runs partition `partition` over `input`, that partition of the child (the
    /// only one when [`Partitions::One`]).
    fn run(
        self: Arc<Self>,
        partition: usize,
        input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<WorkStream>;
}

/// A unary operator running `W`. See the module documentation.
///
/// Partitioning: as `W::PARTITIONS` says, with `W::input_distribution` required of
/// the input; every operator's own documentation says what it emits.
pub(crate) struct WorkExec<W: Work> {
    input: Arc<dyn ExecutionPlan>,
    work: Arc<W>,
    distribution: Distribution,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

impl<W: Work> fmt::Debug for WorkExec<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(W::NAME)
            .field("work", &self.work)
            .field("input", &self.input)
            .finish()
    }
}

impl<W: Work> WorkExec<W> {
    /// `work` over `input`.
    pub(crate) fn try_new(input: Arc<dyn ExecutionPlan>, work: impl Into<Arc<W>>) -> Result<Self> {
        let work = work.into();
        let partitions = match W::PARTITIONS {
            Partitions::One => 1,
            Partitions::PerInput => input.output_partitioning().partition_count(),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(work.schema()),
            Partitioning::UnknownPartitioning(partitions),
            W::EMISSION,
            Boundedness::Bounded,
        ));
        Ok(Self {
            distribution: work.input_distribution(&input.schema())?,
            input,
            work,
            metrics: ExecutionPlanMetricsSet::new(),
            properties,
        })
    }

    /// What the operator was built with (the codec's view of it).
    #[cfg(feature = "codec")]
    pub(crate) fn work(&self) -> &W {
        &self.work
    }
}

impl<W: Work> DisplayAs for WorkExec<W> {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let details = self
            .work
            .details(t, self.properties.partitioning.partition_count());
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "{}:", W::NAME)?;
                for (i, (key, value)) in details.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{key}={value}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => {
                for (key, value) in details {
                    writeln!(f, "{key}={value}")?;
                }
                Ok(())
            }
        }
    }
}

impl<W: Work> ExecutionPlan for WorkExec<W> {
    fn name(&self) -> &str {
        W::NAME
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![self.distribution.clone()])
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![self
            .work
            .benefits_from_input_partitioning(&self.distribution)]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// A new child with the same properties keeps the output partitioning; the
    /// distribution is recomputed either way (its keys are bound to the input's
    /// schema).
    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return plan_err!(
                "{} takes exactly one child, got {}",
                W::NAME,
                children.len()
            );
        }
        Ok(Arc::new(Self::try_new(
            children.remove(0),
            Arc::clone(&self.work),
        )?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        W::METRICS.then(|| self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if W::PARTITIONS == Partitions::One && partition != 0 {
            return exec_err!("{} has one partition, asked for {partition}", W::NAME);
        }
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let stream = Arc::clone(&self.work).run(partition, input, context, &self.metrics)?;
        // The schema the properties hold, not the work's built again per partition.
        let schema = Arc::clone(self.properties.eq_properties.schema());
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::UInt32Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use futures::{StreamExt, TryStreamExt};

    /// Counts its input's rows.
    #[derive(Debug)]
    struct Count;

    fn counts() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "rows",
            DataType::UInt32,
            false,
        )]))
    }

    impl Work for Count {
        const NAME: &'static str = "CountExec";
        const PARTITIONS: Partitions = Partitions::One;

        fn schema(&self) -> SchemaRef {
            counts()
        }

        fn details(&self, t: DisplayFormatType, _: usize) -> Vec<(&'static str, String)> {
            let mut d = vec![("what", "rows".to_string())];
            if t != DisplayFormatType::TreeRender {
                d.push(("detail", "more".to_string()));
            }
            d
        }

        fn run(
            self: Arc<Self>,
            _: usize,
            input: SendableRecordBatchStream,
            _: Arc<TaskContext>,
            _: &ExecutionPlanMetricsSet,
        ) -> Result<WorkStream> {
            Ok(futures::stream::once(async move {
                let batches: Vec<RecordBatch> = input.try_collect().await?;
                let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
                Ok(RecordBatch::try_new(
                    counts(),
                    vec![Arc::new(UInt32Array::from(vec![n as u32]))],
                )?)
            })
            .boxed())
        }
    }

    fn input() -> Arc<dyn ExecutionPlan> {
        let batch =
            RecordBatch::try_new(counts(), vec![Arc::new(UInt32Array::from(vec![1, 2, 3]))])
                .unwrap();
        MemorySourceConfig::try_new_exec(&[vec![batch]], counts(), None).unwrap()
    }

    #[tokio::test]
    async fn the_skeleton_runs_its_work_and_checks_the_partition() {
        let exec = Arc::new(WorkExec::try_new(input(), Count).unwrap());
        let ctx = Arc::new(TaskContext::default());
        let out: Vec<RecordBatch> = exec
            .execute(0, Arc::clone(&ctx))
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out[0].num_rows(), 1);
        let err = exec.execute(1, ctx).err().unwrap().to_string();
        assert!(
            err.contains("CountExec has one partition, asked for 1"),
            "{err}"
        );
        assert!(exec.metrics().is_none());
        let again = Arc::clone(&exec)
            .replace_children(
                vec![input(), input()],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )
            .unwrap_err()
            .to_string();
        assert!(
            again.contains("CountExec takes exactly one child, got 2"),
            "{again}"
        );
    }

    #[test]
    fn each_display_format_reads_as_the_work_says() {
        use datafusion::physical_plan::displayable;
        let exec = WorkExec::try_new(input(), Count).unwrap();
        let one_line = displayable(&exec).one_line().to_string();
        assert_eq!(one_line.trim(), "CountExec: what=rows, detail=more");
        let tree = format!("{}", displayable(&exec).tree_render());
        assert!(tree.contains("what: rows"), "{tree}");
        assert!(!tree.contains("detail"), "{tree}");
    }
}
