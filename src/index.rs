//! `VectorIndex`: the Rust API over one index location. SQL is a thin layer over it.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::UInt64Type;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionContext;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use futures::StreamExt;

use crate::catalog::{restore, vacuum, Restored, VacuumOptions, VacuumReport};
use crate::catalog::{ReadWhole, SegmentsTable};
use crate::error::{IndexError, Result};
use crate::exec::{exact_rows, primitive};
use crate::finalize::{finalize_plan, FinalizeOptions, FinalizeReport};
use crate::format::{IndexLocation, ShardManifest, VersionManifest};
use crate::model::input::{append_vectors, first_dim, is_vector_type};
use crate::model::{check_before_training, train_model, Model, SampleCollector, TrainOptions};
use crate::progress::{ProgressStep, Tracker};
use crate::runner;
use crate::search::{search_plan, SearchCache, SearchOptions, SearchTarget};
use crate::staging::{discard_shard, DiscardedShard, ShardsTable};
use crate::worker::{
    fragment_key, write_rows, PublishShards, ShardWriter, StagedShardRow,
    VectorIndexShardPublishExec, VectorIndexShardWriteExec, WriteShards,
};

/// One vector index: an object-store prefix (see FORMAT.md).
#[derive(Debug, Clone)]
pub struct VectorIndex {
    location: IndexLocation,
}

/// What a distributed shard build staged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardBuild {
    /// The staged shards, sorted.
    pub shard_ids: Vec<String>,
    pub rows: u64,
    /// Fragments covered, summed over the shards (no fragment is in two of them).
    pub num_fragments: u64,
}

/// A search hit.
pub use crate::search::topk::Scored as SearchHit;

impl VectorIndex {
    /// Resolves `url` through the object stores registered with `ctx`'s runtime.
    pub fn open(ctx: &SessionContext, url: &str) -> Result<Self> {
        Ok(Self {
            location: IndexLocation::from_url(url, &ctx.runtime_env())?,
        })
    }

    pub fn location(&self) -> &IndexLocation {
        &self.location
    }

    /// Coordinator: samples `column` of `df`, trains the model and writes it.
    pub async fn create(
        &self,
        df: DataFrame,
        column: &str,
        options: &TrainOptions,
    ) -> Result<Model> {
        check_vector_column(&df, column)?;
        options.check()?;
        check_before_training(&self.location, options).await?;
        let (mut stream, tracker) =
            tracked_stream(df.select_columns(&[column])?, ProgressStep::Sampling).await?;
        let mut sample: Option<SampleCollector> = None;
        let mut rows = Vec::new();
        let mut seen = 0u64;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let array = batch.column(0);
            if array.is_empty() {
                continue;
            }
            let dim = match &sample {
                Some(s) => s.dim(),
                None => first_dim(array).filter(|&d| d > 0).ok_or_else(|| {
                    IndexError::InvalidInput(format!(
                        "column '{column}': first vector is NULL or empty"
                    ))
                })?,
            };
            let collector = sample.get_or_insert_with(|| {
                SampleCollector::new(dim, options.sample_rows(), options.seed)
            });
            rows.clear();
            let base = seen;
            append_vectors(
                array,
                dim,
                column,
                &|i| format!("row {}", base + i as u64),
                &mut rows,
            )?;
            seen += array.len() as u64;
            collector.push_rows(&rows);
            tracker.add(ProgressStep::Sampling, array.len() as u64);
        }
        let sample = sample.ok_or_else(|| {
            IndexError::InvalidInput(format!("column '{column}' has no rows to train on"))
        })?;
        let dim = sample.dim();
        let model = tokio::task::spawn_blocking({
            let options = options.clone();
            move || train_model(dim, sample.finish(), &options, &tracker)
        })
        .await
        .map_err(|e| IndexError::task_failed("training", e))??;
        model.write(&self.location).await?;
        Ok(model)
    }

    /// The committed versions, oldest first (empty before the first finalize).
    pub async fn versions(&self) -> Result<Vec<u64>> {
        crate::catalog::list_versions(&self.location).await
    }

    /// The manifest of committed version `version`: its segments and what it replaced.
    pub async fn version(&self, version: u64) -> Result<VersionManifest> {
        crate::catalog::read_version(&self.location, version).await
    }

    /// The index's model.
    pub async fn model(&self) -> Result<Model> {
        Model::read_current(&self.location).await
    }

    /// Worker: a writer for one partial shard built with the index's model.
    pub async fn shard_writer(&self) -> Result<ShardWriter> {
        Ok(ShardWriter::new(
            self.location.clone(),
            Arc::new(self.model().await?),
        ))
    }

    /// Worker: writes the rows of `df` (`row_id` column, vector `column`) as one shard.
    pub async fn build_shard(
        &self,
        df: DataFrame,
        row_id: &str,
        column: &str,
    ) -> Result<ShardManifest> {
        let mut writer = self.shard_writer().await?;
        self.write_into(&mut writer, df, row_id, column).await?;
        writer.finish().await
    }

    /// Streams `df` into an existing writer.
    pub async fn write_into(
        &self,
        writer: &mut ShardWriter,
        df: DataFrame,
        row_id: &str,
        column: &str,
    ) -> Result<()> {
        check_vector_column(&df, column)?;
        check_row_id_column(&df, row_id)?;
        let (mut stream, tracker) = tracked_stream(
            df.select_columns(&[row_id, column])?,
            ProgressStep::Encoding,
        )
        .await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            write_rows(writer, &batch, row_id, column)?;
            tracker.add(ProgressStep::Encoding, batch.num_rows() as u64);
        }
        Ok(())
    }

    /// The distributed shard build, unexecuted (what `EXPLAIN CALL
    /// build_vector_index_shards` shows): `df`'s rows hash-partitioned on their
    /// fragment (`row_id >> 32`) into `shards` partitions, each staged as one shard.
    pub async fn build_shards_plan(
        &self,
        df: DataFrame,
        row_id: &str,
        column: &str,
        shards: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        crate::limits::check_count("shards", shards, 1, crate::limits::MAX_BUILD_SHARDS)?;
        check_vector_column(&df, column)?;
        check_row_id_column(&df, row_id)?;
        let (state, logical) = df.select_columns(&[row_id, column])?.into_parts();
        // DataFusion's own planner, not the session's query planner: a session that
        // runs plans elsewhere (a `PlanRunner`) may wrap what its planner returns,
        // and this input is one part of the plan shipped whole.
        let input = DefaultPhysicalPlanner::default()
            .create_physical_plan(&state.optimize(&logical)?, &state)
            .await?;
        let key = fragment_key(&input.schema(), row_id)?;
        let input = Arc::new(RepartitionExec::try_new(
            input,
            Partitioning::Hash(vec![key], shards),
        )?);
        let write = VectorIndexShardWriteExec::try_new(
            input,
            WriteShards {
                location: self.location.clone(),
                model: Arc::new(self.model().await?),
                row_id: row_id.to_string(),
                column: column.to_string(),
            },
        )?;
        Ok(Arc::new(VectorIndexShardPublishExec::try_new(
            Arc::new(CoalescePartitionsExec::new(Arc::new(write))),
            PublishShards {
                location: self.location.clone(),
            },
        )?))
    }

    /// Workers as one plan: stages the rows of `df` as up to `shards` shards, whole
    /// fragments each, built in parallel by the session's executor (or its
    /// [`crate::PlanRunner`]'s cluster). Shards of partitions without rows are not
    /// written.
    pub async fn build_shards(
        &self,
        ctx: &SessionContext,
        df: DataFrame,
        row_id: &str,
        column: &str,
        shards: usize,
    ) -> Result<ShardBuild> {
        let plan = self.build_shards_plan(df, row_id, column, shards).await?;
        Tracker::of(ctx.state_ref().read().config()).start(ProgressStep::Encoding, None);
        let mut built = ShardBuild::default();
        for batch in runner::collect(plan, ctx.task_ctx()).await? {
            for shard in StagedShardRow::from_batch(&batch)? {
                built.rows += shard.manifest.rows;
                built.num_fragments += shard.manifest.num_fragments;
                built.shard_ids.push(shard.manifest.shard_id);
            }
        }
        built.shard_ids.sort();
        Ok(built)
    }

    /// The staged shards as a DataFrame (`vector_index_shards`).
    pub fn shards(&self, ctx: &SessionContext) -> Result<DataFrame> {
        Ok(ctx.read_table(Arc::new(ShardsTable::new(self.location.clone())))?)
    }

    /// The committed segments of the latest version (`vector_index_segments`).
    pub async fn segments(&self) -> Result<RecordBatch> {
        SegmentsTable::new(self.location.clone()).read_batch().await
    }

    /// The finalize plan, unexecuted (what `EXPLAIN CALL finalize_vector_index` shows).
    pub async fn finalize_plan(
        &self,
        ctx: &SessionContext,
        options: &FinalizeOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        finalize_plan(&ctx.state(), &self.location, options).await
    }

    /// Plans, merges and commits the staged shards; says what it committed.
    ///
    /// A finalize that loses a race to another finalize of the same shards fails with
    /// [`IndexError::Conflict`], wherever it noticed (a staged file gone while it
    /// merged, a shard half removed while it planned, or at its commit).
    pub async fn finalize(
        &self,
        ctx: &SessionContext,
        options: &FinalizeOptions,
    ) -> Result<FinalizeReport> {
        let base = crate::catalog::list_versions(&self.location)
            .await?
            .last()
            .copied();
        let run = async {
            let plan = self.finalize_plan(ctx, options).await?;
            let rows = runner::collect(plan, ctx.task_ctx()).await?;
            Ok(FinalizeReport::from_batches(&rows)?)
        };
        match run.await {
            Ok(batches) => Ok(batches),
            Err(e) => Err(self.finalized_concurrently(base, e).await),
        }
    }

    /// `error`, or a [`IndexError::Conflict`] when it concerns a staged shard that a
    /// version committed after `base` consumed: the winner of a race removes the
    /// shards it merged, and the loser must not report their absence as damage.
    /// Shard ids are UUIDs, so an error naming one names that shard.
    async fn finalized_concurrently(&self, base: Option<u64>, error: IndexError) -> IndexError {
        if matches!(
            error,
            IndexError::Conflict(_) | IndexError::InvalidArgument { .. }
        ) {
            return error;
        }
        let text = error.to_string();
        let Ok(versions) = crate::catalog::list_versions(&self.location).await else {
            return error;
        };
        for version in versions.into_iter().filter(|&v| Some(v) > base) {
            let Ok(manifest) = self.version(version).await else {
                continue;
            };
            if let Some(shard) = manifest
                .segments
                .iter()
                .flat_map(|s| &s.consumed_shards)
                .find(|shard| text.contains(shard.as_str()))
            {
                return IndexError::Conflict(format!(
                    "shard {shard} was finalized concurrently by version {version}; nothing was \
                     committed by this call, and nothing is left to do for that shard"
                ));
            }
        }
        error
    }

    /// Removes staged shard `shard_id` (see `discard_vector_index_shard`): the remedy
    /// for a shard staged by mistake.
    pub async fn discard_shard(&self, shard_id: &str) -> Result<DiscardedShard> {
        discard_shard(&self.location, shard_id).await
    }

    /// Commits the segments of the older committed `version` as a new version (a
    /// rollback that keeps every version as it was).
    pub async fn restore(&self, version: u64) -> Result<Restored> {
        restore(&self.location, version).await
    }

    /// Searches the latest version for many queries (n × dim, row-major) at once;
    /// returns each query's hits, nearest first.
    pub async fn search(
        &self,
        ctx: &SessionContext,
        queries: &[f32],
        options: SearchOptions,
    ) -> Result<Vec<Vec<SearchHit>>> {
        let state = ctx.state();
        let cache = SearchCache::of(state.config());
        let loaded = SearchTarget::load(&self.location, options.version, cache.as_deref()).await?;
        let dim = loaded.target.model.info().dim();
        let n = queries.len().checked_div(dim).unwrap_or(0);
        let plan = search_plan(&state, loaded, queries.to_vec(), options)?;
        let batches = runner::collect(plan, ctx.task_ctx()).await?;
        let mut hits = vec![Vec::new(); n];
        for b in batches {
            let q = primitive::<arrow::datatypes::UInt32Type>(&b, "query_id")?;
            let r = primitive::<UInt64Type>(&b, "row_id")?;
            let d = primitive::<arrow::datatypes::Float32Type>(&b, "distance")?;
            for i in 0..b.num_rows() {
                let query = hits.get_mut(q.value(i) as usize).ok_or_else(|| {
                    IndexError::Internal(format!("a hit of query {}, of {n}", q.value(i)))
                })?;
                query.push(SearchHit {
                    row_id: r.value(i),
                    distance: d.value(i),
                });
            }
        }
        Ok(hits)
    }

    /// Removes consumed shards and what crashes left behind.
    pub async fn vacuum(&self, options: &VacuumOptions) -> Result<VacuumReport> {
        vacuum(&self.location, options).await
    }
}

/// Runs `df` with its session's progress: `step` starts with the input's row count
/// when the plan knows it exactly.
async fn tracked_stream(
    df: DataFrame,
    step: ProgressStep,
) -> Result<(SendableRecordBatchStream, Tracker)> {
    let task_ctx = Arc::new(df.task_ctx());
    let tracker = Tracker::of_task(&task_ctx);
    let plan = df.create_physical_plan().await?;
    tracker.start(step, exact_rows(plan.as_ref()));
    Ok((execute_stream(plan, task_ctx)?, tracker))
}

fn check_row_id_column(df: &DataFrame, row_id: &str) -> Result<()> {
    let field = df
        .schema()
        .field_with_unqualified_name(row_id)
        .map_err(|_| {
            IndexError::invalid_argument("row_id", format!("no column '{row_id}' in the input"))
        })?;
    if !field.data_type().is_integer() {
        return Err(IndexError::invalid_argument(
            "row_id",
            format!(
                "column '{row_id}' has type {}, expected an integer type",
                field.data_type()
            ),
        ));
    }
    Ok(())
}

fn check_vector_column(df: &DataFrame, column: &str) -> Result<()> {
    let field = df
        .schema()
        .field_with_unqualified_name(column)
        .map_err(|_| {
            IndexError::invalid_argument("column", format!("no column '{column}' in the input"))
        })?;
    if !is_vector_type(field.data_type()) {
        return Err(IndexError::invalid_argument(
            "column",
            format!(
                "column '{column}' has type {}; expected a FixedSizeList or List of Float32 or Float64",
                field.data_type()
            ),
        ));
    }
    Ok(())
}
