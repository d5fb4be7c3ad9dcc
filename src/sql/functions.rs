//! Table functions: `vector_index_shards`, `vector_index_segments`,
//! `vector_index_versions`, `vector_search`.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{plan_datafusion_err, plan_err, Result};
use datafusion::datasource::TableProvider;

use super::args::{convert, eval_const, opt, req, Args, Kind, Signature};
use crate::catalog::{SegmentsTable, VersionsTable, WholeTable};
use crate::format::IndexLocation;
use crate::search::{SearchOptions, VectorSearchTable};
use crate::staging::ShardsTable;

pub(super) const SHARDS: Signature = Signature {
    name: "vector_index_shards",
    params: &[req("index", Kind::Str)],
};
pub(super) const SEGMENTS: Signature = Signature {
    name: "vector_index_segments",
    params: &[req("index", Kind::Str)],
};
pub(super) const SEARCH: Signature = Signature {
    name: "vector_search",
    params: &[
        req("index", Kind::Str),
        req("query", Kind::Vector),
        req("k", Kind::UInt),
        opt("nprobes", Kind::UInt),
        opt("ef", Kind::UInt),
        opt("version", Kind::UInt),
    ],
};
pub(super) const VERSIONS: Signature = Signature {
    name: "vector_index_versions",
    params: &[req("index", Kind::Str)],
};

/// Evaluates positional table-function arguments (named ones were already put in
/// order by the session, see `session::prepare_search_args`).
fn evaluate(sig: &'static Signature, args: &TableFunctionArgs) -> Result<(Args, IndexLocation)> {
    let exprs = args.exprs();
    if exprs.len() > sig.params.len() {
        return plan_err!(
            "{}: too many arguments ({}); accepted arguments: {}",
            sig.name,
            exprs.len(),
            sig.accepted()
        );
    }
    let mut values = HashMap::new();
    for (i, param) in sig.params.iter().enumerate() {
        let value = match exprs.get(i) {
            Some(e) => convert(sig, param, eval_const(args.session(), e)?)?,
            None => None,
        };
        match value {
            Some(v) => {
                values.insert(param.name, v);
            }
            None if param.required => {
                return plan_err!(
                    "{}: missing required argument '{}'; accepted arguments: {}",
                    sig.name,
                    param.name,
                    sig.accepted()
                )
            }
            None => {}
        }
    }
    let args_out = Args::new(values);
    let url = args_out.required_str("index")?;
    let location = IndexLocation::from_url(url, args.session().runtime_env())?;
    Ok((args_out, location))
}

#[derive(Debug)]
pub(super) struct ShardsFunction;

impl TableFunctionImpl for ShardsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let (_, location) = evaluate(&SHARDS, &args)?;
        Ok(Arc::new(ShardsTable::new(location)))
    }
}

#[derive(Debug)]
pub(super) struct SegmentsFunction;

impl TableFunctionImpl for SegmentsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let (_, location) = evaluate(&SEGMENTS, &args)?;
        Ok(Arc::new(WholeTable(SegmentsTable::new(location))))
    }
}

#[derive(Debug)]
pub(super) struct VersionsFunction;

impl TableFunctionImpl for VersionsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let (_, location) = evaluate(&VERSIONS, &args)?;
        Ok(Arc::new(WholeTable(VersionsTable::new(location))))
    }
}

#[derive(Debug)]
pub(super) struct SearchFunction;

impl TableFunctionImpl for SearchFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let (values, location) = evaluate(&SEARCH, &args)?;
        let defaults = SearchOptions::default();
        let count = |name: &str| {
            values
                .uint(name)
                .map(|v| {
                    usize::try_from(v).map_err(|_| {
                        plan_datafusion_err!("vector_search: argument '{name}' is out of range")
                    })
                })
                .transpose()
        };
        let options = SearchOptions {
            k: usize::try_from(values.required_uint("k")?)
                .map_err(|_| plan_datafusion_err!("vector_search: argument 'k' is out of range"))?,
            nprobes: count("nprobes")?.unwrap_or(defaults.nprobes),
            ef: count("ef")?,
            version: values.uint("version"),
        };
        if let Err(e) = options.check() {
            return plan_err!("vector_search: {e}");
        }
        let query = values
            .vector("query")
            .ok_or_else(|| {
                plan_datafusion_err!("vector_search: missing required argument 'query'")
            })?
            .to_vec();
        Ok(Arc::new(VectorSearchTable::new(location, query, options)))
    }
}
