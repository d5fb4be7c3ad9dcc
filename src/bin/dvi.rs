//! `dvi`: runs SQL statements in a `VectorIndexSession`, the way to run a worker or
//! a coordinator step on any machine without writing Rust.
//!
//! ```text
//! dvi -c "CALL finalize_vector_index(index => 's3://bucket/items')"
//! dvi -f build.sql            # the statements of a file, in order
//! dvi -c "…" -c "…"           # several, in order
//! ```
//!
//! Results print as tables on stdout. The first failing statement stops the run
//! with a one-line error on stderr and exit status 1 (2 for bad arguments). Object
//! stores are configured from the environment (README, "Object stores").

use std::process::ExitCode;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion_vector_index::VectorIndexSession;

const USAGE: &str = "usage: dvi (-c SQL | -f FILE)...\n\
  -c SQL   run the statements in SQL (separated by ';')\n\
  -f FILE  run the statements in FILE\n\
  -h       show this help";

/// One source of statements, in the order given.
#[derive(Debug)]
enum Source {
    Command(String),
    File(String),
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Vec<Source>, String> {
    let mut sources = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "-c" | "--command" => sources.push(Source::Command(value(&arg)?)),
            "-f" | "--file" => sources.push(Source::File(value(&arg)?)),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if sources.is_empty() {
        return Err(format!("nothing to run\n{USAGE}"));
    }
    Ok(sources)
}

/// Splits `sql` at `;` outside quotes and comments, dropping empty statements.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    current.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            current.push('\n');
                            break;
                        }
                    }
                }
                ';' => out.push(std::mem::take(&mut current)),
                _ => current.push(c),
            },
        }
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn run(session: &VectorIndexSession, statement: &str) -> Result<(), String> {
    let df = session.sql(statement).await.map_err(|e| e.to_string())?;
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    if batches.iter().any(|b| b.num_columns() > 0) {
        let table = pretty_format_batches(&batches).map_err(|e| e.to_string())?;
        println!("{table}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let sources = match parse_args(std::env::args().skip(1)) {
        Ok(sources) => sources,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let session = VectorIndexSession::new();
    for source in sources {
        let sql = match source {
            Source::Command(sql) => sql,
            Source::File(path) => match std::fs::read_to_string(&path) {
                Ok(sql) => sql,
                Err(e) => {
                    eprintln!("dvi: cannot read {path}: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        for statement in statements(&sql) {
            if let Err(message) = run(&session, &statement).await {
                eprintln!("dvi: {}", message.replace('\n', " "));
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let sql = "SELECT 'a;b'; -- a comment; with a semicolon\nSELECT \"x;y\" ;; \n CALL f(1)";
        assert_eq!(
            statements(sql),
            vec!["SELECT 'a;b'", "SELECT \"x;y\"", "CALL f(1)"]
        );
    }

    #[test]
    fn arguments_need_a_statement_and_known_flags() {
        let args = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        assert!(args(&[]).unwrap_err().contains("nothing to run"));
        assert!(args(&["-x"]).unwrap_err().contains("unknown argument '-x'"));
        assert!(args(&["-c"]).unwrap_err().contains("-c needs a value"));
        assert_eq!(args(&["-c", "SELECT 1", "-f", "x.sql"]).unwrap().len(), 2);
    }
}
