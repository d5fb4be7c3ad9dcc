//! The `CALL` procedures.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{plan_datafusion_err, plan_err, DFSchema, Result};
use datafusion::execution::context::SessionContext;
use datafusion::physical_plan::displayable;
use datafusion::sql::sqlparser::ast::{self, FunctionArguments};

use super::args::{convert, eval_const, opt, req, Args, Kind, Signature};
use super::{NOTHING_TO_FINALIZE, OUTCOME_KEY};
use crate::catalog::{VacuumOptions, VacuumReport, VacuumedKind};
use crate::error::IndexError;
use crate::finalize::{parse_fragment_ranges, FinalizeOptions, SegmentGrouping};
use crate::format::HnswParams;
use crate::index::VectorIndex;
use crate::model::TrainOptions;

const CREATE: Signature = Signature {
    name: "create_vector_index",
    params: &[
        req("index", Kind::Str),
        req("table", Kind::Name),
        req("column", Kind::Name),
        req("type", Kind::Str),
        req("num_partitions", Kind::UInt),
        opt("metric", Kind::Str),
        opt("num_sub_vectors", Kind::UInt),
        opt("sample_rows", Kind::UInt),
        opt("max_iterations", Kind::UInt),
        opt("seed", Kind::UInt),
        opt("hnsw_m", Kind::UInt),
        opt("hnsw_ef_construction", Kind::UInt),
    ],
};

const BUILD_SHARD: Signature = Signature {
    name: "build_vector_index_shard",
    params: &[
        req("index", Kind::Str),
        req("table", Kind::Name),
        req("column", Kind::Name),
        opt("row_id", Kind::Name),
        opt("where", Kind::Str),
    ],
};

const BUILD_SHARDS: Signature = Signature {
    name: "build_vector_index_shards",
    params: &[
        req("index", Kind::Str),
        req("table", Kind::Name),
        req("column", Kind::Name),
        opt("row_id", Kind::Name),
        opt("shards", Kind::UInt),
        opt("where", Kind::Str),
    ],
};

const FINALIZE: Signature = Signature {
    name: "finalize_vector_index",
    params: &[
        req("index", Kind::Str),
        opt("target_segment_rows", Kind::UInt),
        opt("segments", Kind::Str),
        opt("mode", Kind::Str),
        opt("skip_incomplete", Kind::Bool),
        opt("target_file_bytes", Kind::UInt),
        opt("max_commit_attempts", Kind::UInt),
        opt("expect_fragments", Kind::Str),
    ],
};

const VACUUM: Signature = Signature {
    name: "vacuum_vector_index",
    params: &[
        req("index", Kind::Str),
        opt("older_than_seconds", Kind::UInt),
        opt("dry_run", Kind::Bool),
    ],
};

const DISCARD_SHARD: Signature = Signature {
    name: "discard_vector_index_shard",
    params: &[req("index", Kind::Str), req("shard", Kind::Str)],
};

const RESTORE: Signature = Signature {
    name: "restore_vector_index",
    params: &[req("index", Kind::Str), req("version", Kind::UInt)],
};

/// The procedures `CALL` runs; every match over them is exhaustive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Procedure {
    CreateVectorIndex,
    BuildVectorIndexShard,
    BuildVectorIndexShards,
    FinalizeVectorIndex,
    VacuumVectorIndex,
    DiscardVectorIndexShard,
    RestoreVectorIndex,
}

/// The procedures' names, in the order of the flow.
pub(super) fn names() -> Vec<&'static str> {
    Procedure::names()
}

impl Procedure {
    const ALL: [Self; 7] = [
        Self::CreateVectorIndex,
        Self::BuildVectorIndexShard,
        Self::BuildVectorIndexShards,
        Self::FinalizeVectorIndex,
        Self::VacuumVectorIndex,
        Self::DiscardVectorIndexShard,
        Self::RestoreVectorIndex,
    ];

    fn signature(self) -> &'static Signature {
        match self {
            Self::CreateVectorIndex => &CREATE,
            Self::BuildVectorIndexShard => &BUILD_SHARD,
            Self::BuildVectorIndexShards => &BUILD_SHARDS,
            Self::FinalizeVectorIndex => &FINALIZE,
            Self::VacuumVectorIndex => &VACUUM,
            Self::DiscardVectorIndexShard => &DISCARD_SHARD,
            Self::RestoreVectorIndex => &RESTORE,
        }
    }

    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|p| p.signature().name).collect()
    }

    fn named(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.signature().name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                plan_datafusion_err!(
                    "unknown procedure '{name}'; available procedures: {}",
                    Self::ALL
                        .iter()
                        .map(|p| p.signature().name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// A `CALL` with its arguments bound, once, into the typed options it runs with.
enum Call {
    Create {
        table: String,
        column: String,
        options: TrainOptions,
    },
    BuildShard {
        table: String,
        column: String,
        row_id: String,
        predicate: Option<String>,
    },
    BuildShards {
        table: String,
        column: String,
        row_id: String,
        shards: usize,
        predicate: Option<String>,
    },
    Finalize(FinalizeOptions),
    Vacuum(VacuumOptions),
    DiscardShard {
        shard: String,
    },
    Restore {
        version: u64,
    },
}

/// A bound call and the index it works on.
struct Bound {
    index: VectorIndex,
    call: Call,
}

impl Bound {
    fn new(ctx: &SessionContext, call: &ast::Function) -> Result<Self> {
        let procedure = Procedure::named(&procedure_name(call))?;
        let args = bind_args(ctx, procedure.signature(), call)?;
        let index = VectorIndex::open(ctx, args.required_str("index")?)?;
        let call = match procedure {
            Procedure::CreateVectorIndex => Call::Create {
                table: args.required_str("table")?.to_string(),
                column: args.required_str("column")?.to_string(),
                options: train_options(&args)?,
            },
            Procedure::BuildVectorIndexShard => Call::BuildShard {
                table: args.required_str("table")?.to_string(),
                column: args.required_str("column")?.to_string(),
                row_id: args.str("row_id").unwrap_or("row_id").to_string(),
                predicate: args.str("where").map(str::to_string),
            },
            Procedure::BuildVectorIndexShards => Call::BuildShards {
                table: args.required_str("table")?.to_string(),
                column: args.required_str("column")?.to_string(),
                row_id: args.str("row_id").unwrap_or("row_id").to_string(),
                shards: match args.uint("shards") {
                    Some(n) => narrow("shards", n)?,
                    None => ctx.state().config().target_partitions(),
                },
                predicate: args.str("where").map(str::to_string),
            },
            Procedure::FinalizeVectorIndex => Call::Finalize(finalize_options(&args)?),
            Procedure::VacuumVectorIndex => {
                let defaults = VacuumOptions::default();
                Call::Vacuum(VacuumOptions {
                    older_than: args
                        .uint("older_than_seconds")
                        .map_or(defaults.older_than, Duration::from_secs),
                    dry_run: args.bool("dry_run").unwrap_or(defaults.dry_run),
                })
            }
            Procedure::DiscardVectorIndexShard => Call::DiscardShard {
                shard: args.required_str("shard")?.to_string(),
            },
            Procedure::RestoreVectorIndex => Call::Restore {
                version: args.required_uint("version")?,
            },
        };
        Ok(Self { index, call })
    }
}

/// Binds and evaluates a CALL's arguments.
fn bind_args(ctx: &SessionContext, sig: &'static Signature, call: &ast::Function) -> Result<Args> {
    let args: &[ast::FunctionArg] = match &call.args {
        FunctionArguments::List(list) => &list.args,
        FunctionArguments::None => &[],
        FunctionArguments::Subquery(_) => {
            return plan_err!("{}: a subquery is not an argument", sig.name)
        }
    };
    let state = ctx.state();
    let mut values = HashMap::new();
    for (param, expr) in sig.params.iter().zip(sig.bind(args)?) {
        let Some(expr) = expr else { continue };
        let value = match (param.kind, expr) {
            (Kind::Name, ast::Expr::Identifier(id)) => {
                Some(super::args::Value::Str(id.value.clone()))
            }
            (Kind::Name, ast::Expr::CompoundIdentifier(ids)) => Some(super::args::Value::Str(
                ids.iter()
                    .map(|i| i.value.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
            )),
            _ => {
                let logical = state
                    .create_logical_expr_from_sql_expr(
                        ast::ExprWithAlias {
                            expr: expr.clone(),
                            alias: None,
                        },
                        &DFSchema::empty(),
                    )
                    .map_err(|e| {
                        plan_datafusion_err!(
                            "{}: argument '{}': {}",
                            sig.name,
                            param.name,
                            e.strip_backtrace()
                        )
                    })?;
                convert(sig, param, eval_const(&state, &logical)?)?
            }
        };
        match value {
            Some(v) => {
                values.insert(param.name, v);
            }
            None if param.required => {
                return plan_err!("{}: argument '{}' must not be NULL", sig.name, param.name)
            }
            None => {}
        }
    }
    Ok(Args::new(values))
}

fn procedure_name(call: &ast::Function) -> String {
    call.name
        .0
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// A count argument narrowed to the type its option has; a value that does not fit
/// is refused as out of range rather than clamped.
fn narrow<T: TryFrom<u64>>(name: &str, value: u64) -> crate::error::Result<T> {
    T::try_from(value).map_err(|_| {
        crate::error::IndexError::invalid_argument(name, format!("{value} is out of range"))
    })
}

fn train_options(args: &Args) -> Result<TrainOptions> {
    let index_type = args.required_str("type")?;
    let num_partitions = args.required_uint("num_partitions")?;
    let build = || -> crate::error::Result<TrainOptions> {
        let defaults = TrainOptions::default();
        let hnsw = HnswParams::default();
        let o = TrainOptions {
            index_type: index_type.parse()?,
            metric: args.str("metric").map_or(Ok(defaults.metric), str::parse)?,
            num_partitions: narrow("num_partitions", num_partitions)?,
            num_sub_vectors: args
                .uint("num_sub_vectors")
                .map(|v| narrow("num_sub_vectors", v))
                .transpose()?,
            sample_rows: args
                .uint("sample_rows")
                .map(|v| narrow("sample_rows", v))
                .transpose()?,
            max_iterations: args
                .uint("max_iterations")
                .map_or(Ok(defaults.max_iterations), |v| narrow("max_iterations", v))?,
            seed: args.uint("seed").unwrap_or(defaults.seed),
            hnsw: HnswParams {
                m: args
                    .uint("hnsw_m")
                    .map_or(Ok(hnsw.m), |v| narrow("hnsw_m", v))?,
                ef_construction: args
                    .uint("hnsw_ef_construction")
                    .map_or(Ok(hnsw.ef_construction), |v| {
                        narrow("hnsw_ef_construction", v)
                    })?,
            },
        };
        o.check()?;
        Ok(o)
    };
    build().or_else(|e| plan_err!("create_vector_index: {e}"))
}

fn finalize_options(args: &Args) -> Result<FinalizeOptions> {
    let grouping = match (args.uint("target_segment_rows"), args.str("segments")) {
        (Some(_), Some(_)) => {
            return plan_err!(
                "finalize_vector_index: give either 'target_segment_rows' or 'segments', not both"
            )
        }
        (Some(n), None) => SegmentGrouping::TargetRows(n),
        (None, Some(s)) if s.eq_ignore_ascii_case("single") => SegmentGrouping::Single,
        (None, Some(s)) if s.eq_ignore_ascii_case("per_shard") => SegmentGrouping::PerShard,
        (None, Some(s)) => {
            return plan_err!(
            "finalize_vector_index: argument 'segments' must be 'single' or 'per_shard', got '{s}'"
        )
        }
        (None, None) => SegmentGrouping::Single,
    };
    let build = || -> crate::error::Result<FinalizeOptions> {
        let defaults = FinalizeOptions::default();
        let o = FinalizeOptions {
            grouping,
            mode: args.str("mode").map_or(Ok(defaults.mode), str::parse)?,
            skip_incomplete: args.bool("skip_incomplete").unwrap_or(false),
            target_file_bytes: args
                .uint("target_file_bytes")
                .unwrap_or(defaults.target_file_bytes),
            max_commit_attempts: args
                .uint("max_commit_attempts")
                .map_or(Ok(defaults.max_commit_attempts), |v| {
                    narrow("max_commit_attempts", v)
                })?,
            merge_partitions: None,
            expect_fragments: args
                .str("expect_fragments")
                .map(parse_fragment_ranges)
                .transpose()?,
        };
        o.check()?;
        Ok(o)
    };
    build().or_else(|e| plan_err!("finalize_vector_index: {e}"))
}

fn one_row(fields: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    let schema = Schema::new(
        fields
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        fields.into_iter().map(|(_, a)| a).collect(),
    )?)
}

fn str_col(v: &str) -> ArrayRef {
    Arc::new(StringArray::from(vec![v]))
}

/// Runs `CALL <procedure>(…)`.
pub(super) async fn call(ctx: &SessionContext, call: &ast::Function) -> Result<Vec<RecordBatch>> {
    let Bound { index, call } = Bound::new(ctx, call)?;
    match call {
        Call::Create {
            table,
            column,
            options,
        } => {
            let df = ctx.table(table.as_str()).await?;
            let model = index.create(df, &column, &options).await?;
            Ok(vec![one_row(vec![
                ("index", str_col(index.location().url())),
                ("model", str_col(model.info().fingerprint())),
                ("type", str_col(model.info().index_type().name())),
                ("metric", str_col(model.info().metric().name())),
                (
                    "dim",
                    Arc::new(UInt32Array::from(vec![model.info().dim() as u32])),
                ),
                (
                    "num_partitions",
                    Arc::new(UInt32Array::from(
                        vec![model.info().num_partitions() as u32],
                    )),
                ),
            ])?])
        }
        Call::BuildShard {
            table,
            column,
            row_id,
            predicate,
        } => {
            let df = shard_input(ctx, BUILD_SHARD.name, &table, predicate.as_deref()).await?;
            let mut writer = index.shard_writer().await?;
            index.write_into(&mut writer, df, &row_id, &column).await?;
            if writer.rows() == 0 {
                return Err(no_rows(BUILD_SHARD.name, &table, predicate.as_deref()));
            }
            let shard = writer.finish().await?;
            Ok(vec![one_row(vec![
                ("shard_id", str_col(&shard.shard_id)),
                ("rows", Arc::new(UInt64Array::from(vec![shard.rows]))),
                (
                    "num_fragments",
                    Arc::new(UInt64Array::from(vec![shard.num_fragments])),
                ),
            ])?])
        }
        Call::BuildShards {
            table,
            column,
            row_id,
            shards,
            predicate,
        } => {
            let df = shard_input(ctx, BUILD_SHARDS.name, &table, predicate.as_deref()).await?;
            let built = index
                .build_shards(ctx, df, &row_id, &column, shards)
                .await?;
            if built.rows == 0 {
                return Err(no_rows(BUILD_SHARDS.name, &table, predicate.as_deref()));
            }
            Ok(vec![one_row(vec![
                (
                    "shards",
                    Arc::new(UInt64Array::from(vec![built.shard_ids.len() as u64])),
                ),
                ("rows", Arc::new(UInt64Array::from(vec![built.rows]))),
                (
                    "num_fragments",
                    Arc::new(UInt64Array::from(vec![built.num_fragments])),
                ),
            ])?])
        }
        Call::Finalize(options) => match index.finalize(ctx, &options).await {
            Err(IndexError::NothingToFinalize(reason)) => nothing_finalized(&index, &reason).await,
            done => Ok(vec![done?.to_batch()?]),
        },
        Call::Vacuum(options) => {
            let report = index.vacuum(&options).await?;
            Ok(vec![vacuum_rows(&report, &options)?])
        }
        Call::DiscardShard { shard } => {
            let discarded = index.discard_shard(&shard).await?;
            Ok(vec![one_row(vec![
                ("shard_id", str_col(&discarded.shard_id)),
                (
                    "objects",
                    Arc::new(UInt64Array::from(vec![discarded.objects as u64])),
                ),
            ])?])
        }
        Call::Restore { version } => {
            let restored = index.restore(version).await?;
            Ok(vec![one_row(vec![
                (
                    "version",
                    Arc::new(UInt64Array::from(vec![restored.version])),
                ),
                (
                    "restored_from",
                    Arc::new(UInt64Array::from(vec![restored.restored_from])),
                ),
                (
                    "segments",
                    Arc::new(UInt64Array::from(vec![restored.segments as u64])),
                ),
                ("rows", Arc::new(UInt64Array::from(vec![restored.rows]))),
                (
                    "replaced_segments",
                    Arc::new(StringArray::from(vec![(!restored
                        .replaced_segments
                        .is_empty())
                    .then(|| restored.replaced_segments.join(","))])),
                ),
            ])?])
        }
    }
}

/// `vacuum_vector_index`'s answer: a row per folder it removed (or would remove, on
/// a dry run) and per folder it kept for now, with why.
fn vacuum_rows(report: &VacuumReport, options: &VacuumOptions) -> Result<RecordBatch> {
    let limit = options.older_than.as_secs();
    let removed = if options.dry_run {
        "would_remove"
    } else {
        "removed"
    };
    let mut rows: Vec<(&str, &str, usize, &str, String)> = report
        .removed
        .iter()
        .map(|r| {
            let why = match r.kind {
                VacuumedKind::ConsumedShard => "merged into a committed segment".to_string(),
                VacuumedKind::IncompleteShard => {
                    format!("no shard.json, and unchanged for {limit} s or more")
                }
                VacuumedKind::UnreferencedSegment => {
                    format!("no version lists it, and unchanged for {limit} s or more")
                }
            };
            (r.kind.name(), r.id.as_str(), r.objects, removed, why)
        })
        .collect();
    rows.extend(report.kept.iter().map(|k| {
        let why = format!(
            "changed {} s ago, younger than {limit} s: its writer may still be running",
            k.age.as_secs()
        );
        (k.kind.name(), k.id.as_str(), k.objects, "kept", why)
    }));
    let schema = Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("objects", DataType::UInt64, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.2 as u64),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.4.as_str()),
            )),
        ],
    )?)
}

/// The error of a shard build whose input had no rows (nothing was staged).
fn no_rows(
    procedure: &str,
    table: &str,
    predicate: Option<&str>,
) -> datafusion::error::DataFusionError {
    let input = match predicate {
        Some(p) => format!("where => '{p}' matches no row of table '{table}'"),
        None => format!("table '{table}' has no rows"),
    };
    IndexError::InvalidInput(format!("{procedure}: {input}; no shard was staged")).into()
}

/// The answer of a finalize with nothing to do: one row, in the columns of a
/// finalize's, with no segment and the current version (NULL before the first),
/// the reason in the schema's metadata.
async fn nothing_finalized(index: &VectorIndex, reason: &str) -> Result<Vec<RecordBatch>> {
    let current = index.versions().await?.last().copied();
    let fields: Vec<Field> = crate::finalize::commit_output_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let metadata = HashMap::from([
        (OUTCOME_KEY.to_string(), NOTHING_TO_FINALIZE.to_string()),
        ("vector_index.reason".to_string(), reason.to_string()),
    ]);
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let zero = || Arc::new(UInt64Array::from(vec![0u64])) as ArrayRef;
    Ok(vec![RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![None::<&str>])),
            zero(),
            zero(),
            zero(),
            zero(),
            Arc::new(UInt64Array::from(vec![current])),
            Arc::new(StringArray::from(vec![None::<&str>])),
        ],
    )?])
}

async fn shard_input(
    ctx: &SessionContext,
    procedure: &str,
    table: &str,
    predicate: Option<&str>,
) -> Result<datafusion::dataframe::DataFrame> {
    let df = ctx.table(table).await?;
    match predicate {
        Some(predicate) => {
            let expr = df.parse_sql_expr(predicate).map_err(|e| {
                plan_datafusion_err!("{procedure}: argument 'where': {}", e.strip_backtrace())
            })?;
            df.filter(expr)
        }
        None => Ok(df),
    }
}

/// `EXPLAIN CALL …`: the plan a procedure would run, without running it.
pub(super) async fn explain(
    ctx: &SessionContext,
    call: &ast::Function,
) -> Result<Vec<RecordBatch>> {
    let Bound { index, call } = Bound::new(ctx, call)?;
    let (name, summary, plan) = match call {
        Call::Finalize(options) => {
            let plan = index.finalize_plan(ctx, &options).await?;
            (
                &FINALIZE,
                "finalize staged shards into segments and commit a version".to_string(),
                Some(plan),
            )
        }
        Call::Create {
            table,
            column,
            options,
        } => {
            let df = ctx.table(table.as_str()).await?;
            let df = df.select_columns(&[column.as_str()])?;
            let summary = format!(
                "sample up to {} rows, train {} partitions ({}, {}) and write the model",
                options.sample_rows(),
                options.num_partitions,
                options.index_type,
                options.metric
            );
            (&CREATE, summary, Some(df.create_physical_plan().await?))
        }
        Call::BuildShard {
            table,
            column,
            row_id,
            predicate,
        } => {
            let df = shard_input(ctx, BUILD_SHARD.name, &table, predicate.as_deref()).await?;
            let df = df.select_columns(&[row_id.as_str(), column.as_str()])?;
            (
                &BUILD_SHARD,
                "encode rows with the index's model and stage one partial shard".to_string(),
                Some(df.create_physical_plan().await?),
            )
        }
        Call::BuildShards {
            table,
            column,
            row_id,
            shards,
            predicate,
        } => {
            let df = shard_input(ctx, BUILD_SHARDS.name, &table, predicate.as_deref()).await?;
            (
                &BUILD_SHARDS,
                format!(
                    "encode rows with the index's model and stage up to {shards} shards, whole fragments each"
                ),
                Some(index.build_shards_plan(df, &row_id, &column, shards).await?),
            )
        }
        Call::Vacuum(_) => (
            &VACUUM,
            "remove consumed shards, and incomplete shards and unreferenced segments past their age"
                .to_string(),
            None,
        ),
        Call::DiscardShard { shard } => (
            &DISCARD_SHARD,
            format!("remove staged shard {shard} (its shard.json first)"),
            None,
        ),
        Call::Restore { version } => (
            &RESTORE,
            format!("commit the segments of version {version} as a new version"),
            None,
        ),
    };
    let name = name.name;
    let mut types = vec!["procedure".to_string()];
    let mut plans = vec![format!("{name}: {summary}")];
    if let Some(plan) = plan {
        types.push("physical_plan".to_string());
        plans.push(displayable(plan.as_ref()).indent(true).to_string());
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]));
    Ok(vec![RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(types)),
            Arc::new(StringArray::from(plans)),
        ],
    )?])
}
