//! `VectorIndexSession`: a CALL-aware SQL front end over a `SessionContext`.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::{plan_err, Result};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, TableFactor, VisitMut, VisitorMut,
};
use object_store::memory::InMemory;

use super::args::{vector_literal_as_text, Kind};
use super::functions::{
    SearchFunction, SegmentsFunction, ShardsFunction, VersionsFunction, SEARCH, SEGMENTS, SHARDS,
    VERSIONS,
};
use super::procedures;
use crate::format::EnvObjectStoreRegistry;
use crate::progress::Progress;
use crate::search::{SearchCache, VectorIndexConfig, DEFAULT_SEARCH_CACHE_BYTES};

/// Registers the table functions, the `vector_index.` settings (unless set already)
/// and a `memory://` object store on `ctx`.
pub(super) fn register(ctx: &SessionContext) {
    {
        let state = ctx.state_ref();
        let mut state = state.write();
        let extensions = &mut state.config_mut().options_mut().extensions;
        if extensions.get::<VectorIndexConfig>().is_none() {
            extensions.insert(VectorIndexConfig::default());
        }
    }
    ctx.register_udtf(SHARDS.name, Arc::new(ShardsFunction));
    ctx.register_udtf(SEGMENTS.name, Arc::new(SegmentsFunction));
    ctx.register_udtf(VERSIONS.name, Arc::new(VersionsFunction));
    ctx.register_udtf(SEARCH.name, Arc::new(SearchFunction));
    let memory = ObjectStoreUrl::parse("memory://").expect("static URL parses");
    if ctx.runtime_env().object_store(&memory).is_err() {
        ctx.register_object_store(memory.as_ref(), Arc::new(InMemory::new()));
    }
}

/// `ctx`, or a copy of it whose runtime resolves cloud URLs from the environment.
fn with_env_stores(ctx: SessionContext) -> SessionContext {
    let runtime = ctx.runtime_env();
    if EnvObjectStoreRegistry::is_one(runtime.object_store_registry.as_ref()) {
        return ctx;
    }
    let registry = Arc::new(EnvObjectStoreRegistry::new(Arc::clone(
        &runtime.object_store_registry,
    )));
    let Ok(runtime) = RuntimeEnvBuilder::from_runtime_env(&runtime)
        .with_object_store_registry(registry)
        .build_arc()
    else {
        // Building from a runtime that exists only copies its parts; should it fail,
        // index URLs still resolve from the environment (IndexLocation::from_url).
        return ctx;
    };
    let state = SessionStateBuilder::new_from_existing(ctx.state())
        .with_runtime_env(runtime)
        .build();
    SessionContext::new_with_state(state)
}

/// Runs SQL with this crate's procedures (`CALL …`, `EXPLAIN CALL …`) and table
/// functions; every other statement goes to DataFusion unchanged.
#[derive(Clone)]
pub struct VectorIndexSession {
    ctx: SessionContext,
}

impl Default for VectorIndexSession {
    fn default() -> Self {
        Self::new()
    }
}

impl VectorIndexSession {
    /// The procedures a session runs (`CALL <name>(…)`), in the order of the flow.
    pub fn procedures() -> Vec<&'static str> {
        procedures::names()
    }

    /// The table functions a session registers.
    pub fn table_functions() -> Vec<&'static str> {
        [&SHARDS, &SEGMENTS, &VERSIONS, &SEARCH]
            .iter()
            .map(|s| s.name)
            .collect()
    }

    /// A session with DataFusion's defaults, a [`Progress`] and a [`SearchCache`] of
    /// [`DEFAULT_SEARCH_CACHE_BYTES`] attached.
    pub fn new() -> Self {
        Self::with_search_cache(Arc::new(SearchCache::new(DEFAULT_SEARCH_CACHE_BYTES)))
    }

    /// A session like [`VectorIndexSession::new`]'s whose searches use `cache` (share
    /// one between sessions, or size it: `SearchCache::new(bytes)`; zero bytes keeps
    /// nothing).
    pub fn with_search_cache(cache: Arc<SearchCache>) -> Self {
        let config = cache.attach(Progress::new().attach(SessionConfig::new()));
        Self::with_context(SessionContext::new_with_config(config))
    }

    /// A session over `ctx`, with this crate's table functions and settings. Cloud
    /// URLs — index URLs, table locations, `COPY` targets — resolve to stores built
    /// from the environment where `ctx`'s registry has none: unless its runtime
    /// already has an [`EnvObjectStoreRegistry`], the session works on a copy of
    /// `ctx` whose runtime wraps its registry in one (tables, functions and stores
    /// are shared with `ctx`; use [`Self::context`] from then on).
    pub fn with_context(ctx: SessionContext) -> Self {
        let ctx = with_env_stores(ctx);
        register(&ctx);
        Self { ctx }
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The search cache of this session, if its config has one attached.
    pub fn search_cache(&self) -> Option<Arc<SearchCache>> {
        SearchCache::of(self.ctx.state_ref().read().config())
    }

    /// The progress counters of this session's work, if its config has a
    /// [`Progress`] attached (`new` attaches one; see `Progress::attach`).
    pub fn progress(&self) -> Option<Arc<Progress>> {
        Progress::of(self.ctx.state_ref().read().config())
    }

    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let mut statement = state.sql_to_statement(sql, &dialect)?;
        if let Some(call) = as_call(&statement) {
            return self.frame(procedures::call(&self.ctx, call).await?);
        }
        if let Statement::Explain(explain) = &statement {
            if let Some(call) = as_call(&explain.statement) {
                return self.frame(procedures::explain(&self.ctx, call).await?);
            }
        }
        let floats_as_decimal = state.config().options().sql_parser.parse_float_as_decimal;
        prepare_search_args(&mut statement, floats_as_decimal)?;
        match state.statement_to_plan(statement).await? {
            plan @ (LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)) => {
                self.ctx.execute_logical_plan(plan).await
            }
            // What `execute_logical_plan` makes of a query, without a second copy of
            // the session state (a noticeable part of a one-query search's time).
            plan => Ok(DataFrame::new(state, plan)),
        }
    }

    fn frame(&self, batches: Vec<RecordBatch>) -> Result<DataFrame> {
        let Some(first) = batches.first() else {
            return plan_err!("procedure returned no result");
        };
        let table = MemTable::try_new(first.schema(), vec![batches])?;
        self.ctx.read_table(Arc::new(table))
    }
}

fn as_call(statement: &Statement) -> Option<&ast::Function> {
    match statement {
        Statement::Statement(s) => match s.as_ref() {
            ast::Statement::Call(f) => Some(f),
            _ => None,
        },
        _ => None,
    }
}

/// Prepares the arguments of each `vector_search` for DataFusion's planner:
/// - DataFusion drops the names of table-function arguments; `name => value`
///   arguments are put in declared order (NULL for gaps) so they mean what they say.
/// - A query vector of number literals is handed over as its text spelling
///   ([`vector_literal_as_text`]): the same floats, without planning and simplifying
///   an expression per element. Not when floats are read as decimals, whose
///   narrowing to `f32` may round differently.
fn prepare_search_args(statement: &mut Statement, floats_as_decimal: bool) -> Result<()> {
    struct Prepare {
        error: Option<datafusion::error::DataFusionError>,
        floats_as_decimal: bool,
    }
    impl VisitorMut for Prepare {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            let TableFactor::Table {
                name,
                args: Some(args),
                ..
            } = factor
            else {
                return ControlFlow::Continue(());
            };
            let is_search = name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case(SEARCH.name));
            if !is_search {
                return ControlFlow::Continue(());
            }
            if args
                .args
                .iter()
                .any(|a| !matches!(a, FunctionArg::Unnamed(_)))
            {
                match SEARCH.bind(&args.args) {
                    Ok(bound) => {
                        let last = bound.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
                        let null = ast::Expr::Value(ast::Value::Null.into());
                        args.args = bound[..last]
                            .iter()
                            .map(|e| {
                                FunctionArg::Unnamed(FunctionArgExpr::Expr(
                                    e.cloned().unwrap_or_else(|| null.clone()),
                                ))
                            })
                            .collect();
                    }
                    Err(e) => {
                        self.error = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            if self.floats_as_decimal {
                return ControlFlow::Continue(());
            }
            for (param, arg) in SEARCH.params.iter().zip(args.args.iter_mut()) {
                if let (Kind::Vector, FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) =
                    (param.kind, arg)
                {
                    if let Some(text) = vector_literal_as_text(e) {
                        *e = ast::Expr::Value(ast::Value::SingleQuotedString(text).into());
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut visitor = Prepare {
        error: None,
        floats_as_decimal,
    };
    match statement {
        Statement::Statement(s) => {
            let _ = s.visit(&mut visitor);
        }
        Statement::Explain(e) => return prepare_search_args(&mut e.statement, floats_as_decimal),
        _ => {}
    }
    visitor.error.map_or(Ok(()), Err)
}
