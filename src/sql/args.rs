//! Named arguments of procedures and table functions: declared once, checked with
//! errors that list what is accepted, evaluated to constants.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Schema};
use datafusion::catalog::Session;
use datafusion::common::{plan_datafusion_err, plan_err, DFSchema, Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Expr};
use datafusion::sql::sqlparser::ast::{self, FunctionArg, FunctionArgExpr};

/// What an argument accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A string literal.
    Str,
    /// A string literal or a bare identifier (table and column names).
    Name,
    UInt,
    Bool,
    /// A list of numbers.
    Vector,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Name => "a name (string or identifier)",
            Kind::UInt => "a non-negative integer",
            Kind::Bool => "a boolean",
            Kind::Vector => "a list of numbers",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

pub(super) const fn req(name: &'static str, kind: Kind) -> Param {
    Param {
        name,
        kind,
        required: true,
    }
}

pub(super) const fn opt(name: &'static str, kind: Kind) -> Param {
    Param {
        name,
        kind,
        required: false,
    }
}

/// A procedure's or table function's signature.
#[derive(Debug)]
pub(super) struct Signature {
    pub name: &'static str,
    pub params: &'static [Param],
}

impl Signature {
    pub(super) fn accepted(&self) -> String {
        self.params
            .iter()
            .map(|p| {
                format!(
                    "{}{} ({})",
                    p.name,
                    if p.required { "" } else { "?" },
                    p.kind.describe()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn param(&self, name: &str) -> Result<usize> {
        self.params
            .iter()
            .position(|p| p.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                plan_datafusion_err!(
                    "{}: unknown argument '{name}'; accepted arguments: {}",
                    self.name,
                    self.accepted()
                )
            })
    }

    /// Orders SQL arguments (positional first, then `name => value`) by parameter,
    /// checking names, duplicates and required arguments.
    pub(super) fn bind<'a>(&self, args: &'a [FunctionArg]) -> Result<Vec<Option<&'a ast::Expr>>> {
        let mut bound: Vec<Option<&ast::Expr>> = vec![None; self.params.len()];
        let mut named_seen = false;
        for (i, arg) in args.iter().enumerate() {
            let (slot, expr) = match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => {
                    if named_seen {
                        return plan_err!(
                            "{}: positional argument {} follows named arguments",
                            self.name,
                            i + 1
                        );
                    }
                    if i >= self.params.len() {
                        return plan_err!(
                            "{}: too many arguments ({}); accepted arguments: {}",
                            self.name,
                            args.len(),
                            self.accepted()
                        );
                    }
                    (i, e)
                }
                FunctionArg::Named {
                    name,
                    arg: FunctionArgExpr::Expr(e),
                    ..
                } => {
                    named_seen = true;
                    (self.param(&name.value)?, e)
                }
                FunctionArg::ExprNamed {
                    name: ast::Expr::Identifier(name),
                    arg: FunctionArgExpr::Expr(e),
                    ..
                } => {
                    named_seen = true;
                    (self.param(&name.value)?, e)
                }
                other => return plan_err!("{}: unsupported argument {other}", self.name),
            };
            if bound[slot].is_some() {
                return plan_err!(
                    "{}: argument '{}' is given twice",
                    self.name,
                    self.params[slot].name
                );
            }
            bound[slot] = Some(expr);
        }
        if let Some(p) = self
            .params
            .iter()
            .zip(&bound)
            .find(|(p, b)| p.required && b.is_none())
            .map(|(p, _)| p)
        {
            return plan_err!(
                "{}: missing required argument '{}'; accepted arguments: {}",
                self.name,
                p.name,
                self.accepted()
            );
        }
        Ok(bound)
    }
}

/// Evaluates a constant expression (literals, `[…]`, `make_array`, casts, arithmetic).
pub(super) fn eval_const(session: &dyn Session, expr: &Expr) -> Result<ScalarValue> {
    match literal_list(expr) {
        Some(list) => Ok(list),
        None => evaluate(session, expr),
    }
}

/// Simplifies, plans and evaluates `expr` on one empty row.
fn evaluate(session: &dyn Session, expr: &Expr) -> Result<ScalarValue> {
    let physical = session.create_physical_expr(expr.clone(), &DFSchema::empty())?;
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    match physical.evaluate(&one_row)? {
        ColumnarValue::Scalar(s) => Ok(s),
        ColumnarValue::Array(a) => ScalarValue::try_from_array(&a, 0),
    }
}

/// `[…]` of non-NULL literals of one numeric type, which is how a query vector is
/// written, as the list that evaluating it would give, without simplifying,
/// planning and evaluating an expression per element (most of a millisecond for a
/// 128-element vector, on every search call). Anything else is evaluated.
fn literal_list(expr: &Expr) -> Option<ScalarValue> {
    let Expr::ScalarFunction(f) = expr else {
        return None;
    };
    if f.func.name() != "make_array" {
        return None;
    }
    let data_type = match f.args.first()? {
        Expr::Literal(v, _) => v.data_type(),
        _ => return None,
    };
    if !data_type.is_numeric() {
        return None;
    }
    let values = f
        .args
        .iter()
        .map(|a| match a {
            Expr::Literal(v, None) if !v.is_null() && v.data_type() == data_type => Some(v.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ScalarValue::List(ScalarValue::new_list_nullable(
        &values, &data_type,
    )))
}

/// An evaluated argument.
#[derive(Debug, Clone)]
pub(super) enum Value {
    Str(String),
    UInt(u64),
    Bool(bool),
    Vector(Vec<f32>),
}

/// Converts an evaluated constant to what `param` accepts.
pub(super) fn convert(sig: &Signature, param: &Param, value: ScalarValue) -> Result<Option<Value>> {
    if value.is_null() {
        return Ok(None);
    }
    let wrong = |v: &ScalarValue| {
        plan_datafusion_err!(
            "{}: argument '{}' must be {}, got {} ({})",
            sig.name,
            param.name,
            param.kind.describe(),
            v,
            v.data_type()
        )
    };
    Ok(Some(match param.kind {
        Kind::Str | Kind::Name => match &value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Value::Str(s.clone()),
            _ => return Err(wrong(&value)),
        },
        Kind::UInt => {
            let ty = value.data_type();
            let v = match ty.is_unsigned_integer() {
                true => value.cast_to(&DataType::UInt64),
                false => value.cast_to(&DataType::Int64),
            };
            match (ty.is_integer(), v.map_err(|_| wrong(&value))?) {
                (true, ScalarValue::UInt64(Some(u))) => Value::UInt(u),
                (true, ScalarValue::Int64(Some(i))) if i >= 0 => Value::UInt(i as u64),
                _ => return Err(wrong(&value)),
            }
        }
        Kind::Bool => match value {
            ScalarValue::Boolean(Some(b)) => Value::Bool(b),
            _ => return Err(wrong(&value)),
        },
        Kind::Vector => {
            if let ScalarValue::Utf8(Some(text))
            | ScalarValue::LargeUtf8(Some(text))
            | ScalarValue::Utf8View(Some(text)) = &value
            {
                return match vector_from_text(text) {
                    Ok(v) => Ok(Some(Value::Vector(v))),
                    Err(why) => plan_err!(
                        "{}: argument '{}' must be {}, got '{}': {why}",
                        sig.name,
                        param.name,
                        param.kind.describe(),
                        abbreviated(text)
                    ),
                };
            }
            let array = value.to_array()?;
            let values = match array.data_type() {
                DataType::List(_) => array.as_list::<i32>().value(0),
                DataType::LargeList(_) => array.as_list::<i64>().value(0),
                DataType::FixedSizeList(_, _) => array.as_fixed_size_list().value(0),
                _ => return Err(wrong(&value)),
            };
            if !values.data_type().is_numeric() || values.null_count() > 0 {
                return Err(wrong(&value));
            }
            let floats = cast(&values, &DataType::Float32)?;
            Value::Vector(floats.as_primitive::<Float32Type>().values().to_vec())
        }
    }))
}

/// A vector written as text, as pgvector prints one: `'[1, 2.5, -3e-2]'`. Parsing
/// 128 numbers from one string literal costs far less than planning and simplifying
/// a 128-element `[…]`. Each number is read as a double and then narrowed, as a `[…]`
/// of SQL literals is, so both spellings give the same vector.
fn vector_from_text(text: &str) -> std::result::Result<Vec<f32>, String> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or("as text, a vector is written '[1, 2.5, -3]'")?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|x| {
            let x = x.trim();
            match x.parse::<f64>() {
                Ok(v) if v.is_finite() && (v as f32).is_finite() => Ok(v as f32),
                _ => Err(format!("'{}' is not a finite number", abbreviated(x))),
            }
        })
        .collect()
}

/// The text spelling ([`vector_from_text`]) of a query vector written as `[…]` or
/// `ARRAY[…]` of number literals, each perhaps negated, which reads back to the very
/// floats DataFusion's planning of the literals gives: it parses each number as an
/// `i64` if it can and as a double otherwise, and the list ends as floats. So an
/// integer is written in its canonical form (`-0` becomes `0`, as the `i64` is) and
/// only up to 2^53, which a double holds exactly; a double's token is kept as written.
/// `None` for anything else (expressions, NULL, `_` separators, empty lists,
/// numbers no float holds), which DataFusion then plans and evaluates as before.
/// Planning 128 literals and simplifying the list is about a third of a one-query
/// search call (BENCHMARKS.md, "Search").
pub(super) fn vector_literal_as_text(expr: &ast::Expr) -> Option<String> {
    let ast::Expr::Array(array) = expr else {
        return None;
    };
    if array.elem.is_empty() {
        return None;
    }
    let mut text = String::with_capacity(2 + array.elem.len() * 12);
    text.push('[');
    for (i, element) in array.elem.iter().enumerate() {
        let (negative, number) = match element {
            ast::Expr::UnaryOp {
                op: ast::UnaryOperator::Minus,
                expr,
            } => (true, expr.as_ref()),
            other => (false, other),
        };
        let ast::Expr::Value(value) = number else {
            return None;
        };
        let ast::Value::Number(digits, false) = &value.value else {
            return None;
        };
        if i > 0 {
            text.push_str(", ");
        }
        // The number as DataFusion reads it, written in place.
        let at = text.len();
        if negative {
            text.push('-');
        }
        text.push_str(digits);
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            // An integer (DataFusion's `i64`, or `u64` beyond it, which we leave).
            match text[at..].parse::<i64>() {
                Ok(n) if n.unsigned_abs() <= 1 << 53 => {
                    text.truncate(at);
                    let _ = write!(text, "{n}"); // Writing to a `String` cannot fail.
                }
                _ => return None,
            }
        } else {
            // `1.5`, `.5`, `2e-3`: a double, narrowed; the token stays as written.
            match text[at..].parse::<f64>() {
                Ok(v) if v.is_finite() && (v as f32).is_finite() => {}
                _ => return None,
            }
        }
    }
    text.push(']');
    Some(text)
}

/// At most 40 characters of `text`, for messages.
fn abbreviated(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Bound and evaluated arguments, by parameter name.
#[derive(Debug, Default)]
pub(super) struct Args {
    values: HashMap<&'static str, Value>,
}

impl Args {
    pub(super) fn new(values: HashMap<&'static str, Value>) -> Self {
        Self { values }
    }

    /// A required string argument: present once bound (a missing or NULL one was
    /// refused by then), so this is never a silent default.
    pub(super) fn required_str(&self, name: &str) -> Result<&str> {
        self.str(name)
            .ok_or_else(|| plan_datafusion_err!("missing required argument '{name}'"))
    }

    /// A required count argument; see [`Args::required_str`].
    pub(super) fn required_uint(&self, name: &str) -> Result<u64> {
        self.uint(name)
            .ok_or_else(|| plan_datafusion_err!("missing required argument '{name}'"))
    }

    pub(super) fn str(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub(super) fn uint(&self, name: &str) -> Option<u64> {
        match self.values.get(name) {
            Some(Value::UInt(v)) => Some(*v),
            _ => None,
        }
    }

    pub(super) fn bool(&self, name: &str) -> Option<bool> {
        match self.values.get(name) {
            Some(Value::Bool(v)) => Some(*v),
            _ => None,
        }
    }

    pub(super) fn vector(&self, name: &str) -> Option<&[f32]> {
        match self.values.get(name) {
            Some(Value::Vector(v)) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    fn floats(v: &ScalarValue) -> Vec<f32> {
        let array = v.to_array().unwrap();
        let values = array.as_list::<i32>().value(0);
        cast(&values, &DataType::Float32)
            .unwrap()
            .as_primitive::<Float32Type>()
            .values()
            .to_vec()
    }

    /// A query vector of literals is read without evaluating it, to the same numbers
    /// evaluating gives; any other shape takes the evaluating path.
    #[test]
    fn literal_vectors_read_as_evaluated() {
        let ctx = SessionContext::new();
        let state = ctx.state();
        let expr = |sql: &str| state.create_logical_expr(sql, &DFSchema::empty()).unwrap();
        for (sql, direct) in [
            ("[1.5, -2.25, 3.0, 0.1]", true),
            ("[1, -2, 3]", true),
            ("make_array(1e-3, 2.5)", true),
            ("[1, 2.5]", false),
            ("[1.0, NULL]", false),
            ("[1.0, 1.0 + 1.0]", false),
            ("[CAST(1 AS FLOAT), 2.0]", false),
        ] {
            let e = expr(sql);
            match literal_list(&e) {
                Some(v) => {
                    assert!(direct, "{sql} was read directly");
                    assert_eq!(floats(&v), floats(&evaluate(&state, &e).unwrap()), "{sql}");
                }
                None => assert!(!direct, "{sql} was evaluated"),
            }
        }
    }

    #[test]
    fn vectors_as_text_read_as_literals_do() {
        assert_eq!(
            vector_from_text(" [1, 2.5,-3e-2 ] "),
            Ok(vec![1.0, 2.5, -0.03])
        );
        assert_eq!(vector_from_text("[]"), Ok(vec![]));
        // Read as a double, then narrowed: what a `[…]` of SQL literals gives.
        let x = "0.10000000149011612";
        assert_eq!(
            vector_from_text(&format!("[{x}]")),
            Ok(vec![x.parse::<f64>().unwrap() as f32])
        );
        assert!(vector_from_text("1, 2")
            .unwrap_err()
            .contains("written '[1, 2.5, -3]'"));
        for (text, bad) in [
            ("[1, x]", "x"),
            ("[1,,2]", ""),
            ("[NaN]", "NaN"),
            ("[1e39]", "1e39"),
        ] {
            let why = format!("'{bad}' is not a finite number");
            assert_eq!(vector_from_text(text), Err(why));
        }
        let long = format!("[{}]", "1.0, ".repeat(30));
        assert!(abbreviated(&long).ends_with('…') && abbreviated(&long).chars().count() == 41);
    }

    fn sql_expr(sql: &str) -> ast::Expr {
        use datafusion::sql::sqlparser::{dialect::GenericDialect, parser::Parser};
        Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_expr()
            .unwrap()
    }

    #[test]
    fn which_query_vectors_are_handed_over_as_text() {
        for (sql, text) in [
            ("[-0, 1.5, -2e-3, .5, 7]", Some("[0, 1.5, -2e-3, .5, 7]")),
            ("ARRAY[1, 2]", Some("[1, 2]")),
            (
                "[9007199254740992, -9007199254740992]",
                Some("[9007199254740992, -9007199254740992]"),
            ),
            // Not exactly a double, or no float at all: planned by DataFusion.
            ("[9007199254740993]", None),
            ("[18446744073709551615]", None),
            ("[1e39]", None),
            ("[]", None),
            ("[1, NULL]", None),
            ("[1.0 + 1.0]", None),
            ("['1']", None),
            ("[+1]", None),
            ("make_array(1, 2)", None),
        ] {
            assert_eq!(
                vector_literal_as_text(&sql_expr(sql)).as_deref(),
                text,
                "{sql}"
            );
        }
    }

    /// A number token of the kinds SQL users write, as DataFusion's tokenizer sees it
    /// (a leading `-` is a negation of the token after it).
    fn number_token() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // Mostly numbers a float holds, so most lists are handed over; a few that
        // are not, so lists that must be left to DataFusion are too.
        prop_oneof![
            1 => any::<i64>().prop_map(|n| n.to_string()),
            4 => (-(1i64 << 54)..(1i64 << 54)).prop_map(|n| n.to_string()),
            8 => (-1000i64..1000).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            2 => (-1e6f64..1e6).prop_map(|x| format!("{x}")),
            1 => any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| format!("{x}")),
            8 => any::<f32>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| format!("{x:e}")),
            8 => (any::<bool>(), 0u32..100_000, 0u32..100_000, -40i32..38)
                .prop_map(|(neg, a, b, e)| format!("{}{a}.{b}e{e}", if neg { "-" } else { "" })),
            1 => Just("-0".to_string()),
            1 => Just("-0.0".to_string()),
            1 => Just(".5".to_string()),
            1 => Just("5.".to_string()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Whatever numbers a `[…]` holds, its text spelling, where there is one,
        /// reads back to the very floats DataFusion plans the literals to.
        #[test]
        fn query_vectors_as_text_read_as_planned(
            tokens in proptest::collection::vec(number_token(), 1..6)
        ) {
            let sql = format!("[{}]", tokens.join(", "));
            if let Some(text) = vector_literal_as_text(&sql_expr(&sql)) {
                const ONE: Signature = Signature {
                    name: "t",
                    params: &[req("query", Kind::Vector)],
                };
                let ctx = SessionContext::new();
                let state = ctx.state();
                let planned = state.create_logical_expr(&sql, &DFSchema::empty()).unwrap();
                let value = eval_const(&state, &planned).unwrap();
                let Some(Value::Vector(planned)) = convert(&ONE, &ONE.params[0], value).unwrap()
                else {
                    panic!("{sql}: not a vector");
                };
                let read = vector_from_text(&text).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(bits(&read), bits(&planned), "{} as {}", sql, text);
            }
        }
    }
}
