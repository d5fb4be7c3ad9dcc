//! `dvi`: runs SQL statements in a `VectorIndexSession`, the way to run a worker or
//! a coordinator step on any machine without writing Rust.
//!
//! ```text
//! dvi -c "CALL finalize_vector_index(index => 's3://bucket/items')"
//! dvi -f build.sql            # the statements of a file, in order
//! dvi < build.sql             # piped statements
//! dvi                         # a prompt, when stdin is a terminal
//! ```
//!
//! Results print as tables on stdout (`--format csv|json` for programs), progress
//! of long steps on stderr when it is a terminal. The first failing statement
//! stops a script with a one-line error on stderr and exit status 1 (2 for bad
//! arguments); a run in which a finalize found nothing to do exits with status 3. Object stores are configured from the environment
//! (docs/object-stores.md), or from the flags below for an S3-compatible store.

mod output;
mod progress;
mod repl;
mod statements;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion_vector_index::{
    error_line, VectorIndexSession, NOTHING_TO_FINALIZE, OUTCOME_KEY, STORE_TIMEOUT_VAR,
};

use output::Format;
use progress::{ProgressMode, Reporter};

const USAGE: &str = "\
usage: dvi [OPTIONS] [-c SQL | -f FILE]...

Runs SQL statements (';'-separated) of a vector index session: the procedures
(CALL …), the table functions and any DataFusion statement. Without -c or -f it
reads statements from stdin, or shows a prompt when stdin is a terminal.
{CATALOG}
  -c, --command SQL      run the statements in SQL
  -f, --file FILE        run the statements in FILE ('-' for stdin)
      --format FORMAT    table (default), csv, or json (one object per row)
      --progress MODE    auto (default: when stderr is a terminal), always, never
      --endpoint-url URL S3-compatible endpoint (sets AWS_ENDPOINT_URL)
      --region REGION    S3 region (sets AWS_REGION)
      --allow-http       allow an http:// endpoint (sets AWS_ALLOW_HTTP)
      --timeout SECONDS  how long one operation on a cloud store may take, retries
                         included (default 60; sets VECTOR_INDEX_STORE_TIMEOUT)
  -h, --help             show this help
  -V, --version          show the version

Credentials come from the environment only (AWS_ACCESS_KEY_ID, …), never from flags,
which other users of the machine can see.

Exit status: 0 when every statement ran, 1 when one failed (the run stops there),
2 for bad arguments, 3 when a finalize found nothing to do and nothing failed.";

/// The usage text, with the procedures and table functions the session has.
fn usage() -> String {
    let wrap = |label: &str, names: Vec<&str>| {
        let mut out = String::from(label);
        let mut width = label.len();
        for (i, name) in names.iter().enumerate() {
            let word = if i + 1 < names.len() {
                format!("{name},")
            } else {
                name.to_string()
            };
            if width + 1 + word.len() > 84 {
                out.push_str("\n   ");
                width = 3;
            }
            out.push(' ');
            out.push_str(&word);
            width += 1 + word.len();
        }
        out
    };
    let catalog = format!(
        "\n{}\n{}\n",
        wrap(
            "Procedures (CALL name(arg => value, …)):",
            VectorIndexSession::procedures()
        ),
        wrap("Table functions:", VectorIndexSession::table_functions()),
    );
    USAGE.replace("{CATALOG}", &catalog)
}

/// One source of statements, in the order given.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Command(String),
    File(String),
    Stdin,
}

#[derive(Debug, PartialEq, Eq)]
struct Options {
    sources: Vec<Source>,
    format: Format,
    progress: ProgressMode,
    /// Environment variables the flags stand for, set before any store is built.
    env: Vec<(&'static str, String)>,
}

/// Why the arguments do not make a run.
#[derive(Debug, PartialEq, Eq)]
enum ArgsError {
    /// `-h` or `-V`: print this and exit successfully.
    Info(String),
    Invalid(String),
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, ArgsError> {
    let mut options = Options {
        sources: Vec::new(),
        format: Format::Table,
        progress: ProgressMode::Auto,
        env: Vec::new(),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| ArgsError::Invalid(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "-c" | "--command" => options.sources.push(Source::Command(value()?)),
            "-f" | "--file" => options.sources.push(match value()?.as_str() {
                "-" => Source::Stdin,
                path => Source::File(path.to_string()),
            }),
            "--format" => options.format = value()?.parse().map_err(ArgsError::Invalid)?,
            "--progress" => options.progress = value()?.parse().map_err(ArgsError::Invalid)?,
            "--endpoint-url" => options.env.push(("AWS_ENDPOINT_URL", value()?)),
            "--region" => options.env.push(("AWS_REGION", value()?)),
            "--allow-http" => options.env.push(("AWS_ALLOW_HTTP", "true".to_string())),
            "--timeout" => {
                let secs = value()?;
                if !secs.parse::<u64>().is_ok_and(|s| (1..=86_400).contains(&s)) {
                    return Err(ArgsError::Invalid(format!(
                        "--timeout takes whole seconds between 1 and 86400, got '{secs}'"
                    )));
                }
                options.env.push((STORE_TIMEOUT_VAR, secs));
            }
            "-h" | "--help" => return Err(ArgsError::Info(usage())),
            "-V" | "--version" => {
                return Err(ArgsError::Info(format!(
                    "dvi {}",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            other => return Err(ArgsError::Invalid(format!("unknown argument '{other}'"))),
        }
    }
    Ok(options)
}

/// The reason, when `batches` are the answer of a finalize that had nothing to do.
fn nothing_finalized(batches: &[RecordBatch]) -> Option<String> {
    let metadata = batches.first()?.schema_ref().metadata().clone();
    (metadata.get(OUTCOME_KEY).map(String::as_str) == Some(NOTHING_TO_FINALIZE)).then(|| {
        metadata
            .get("vector_index.reason")
            .cloned()
            .unwrap_or_default()
    })
}

/// A session, how to print its results, and its progress reporter.
pub(crate) struct Shell {
    runtime: tokio::runtime::Runtime,
    session: VectorIndexSession,
    format: Format,
    reporter: Option<Reporter>,
    /// Set when a finalize found nothing to do: the run then exits with status 3.
    nothing_finalized: std::cell::Cell<bool>,
}

impl Shell {
    /// Runs one statement and prints its result.
    fn run(&self, statement: &str) -> Result<(), String> {
        self.runtime.block_on(self.execute(statement))
    }

    /// Like [`Shell::run`]; Ctrl-C cancels the statement instead of ending the
    /// process (at the prompt). A cancelled finalize commits nothing, or all.
    fn run_interruptible(&self, statement: &str) -> Result<(), String> {
        self.runtime.block_on(async {
            tokio::select! {
                result = self.execute(statement) => result,
                _ = tokio::signal::ctrl_c() => Err("cancelled".to_string()),
            }
        })
    }

    async fn execute(&self, statement: &str) -> Result<(), String> {
        let drawing = self.reporter.as_ref().map(Reporter::start);
        let result = self.collect(statement).await;
        if let Some(d) = drawing {
            d.finish();
        }
        let batches = result?;
        if let Some(reason) = nothing_finalized(&batches) {
            eprintln!("dvi: nothing to finalize: {reason}");
            self.nothing_finalized.set(true);
        }
        let mut out = std::io::stdout().lock();
        output::print(&batches, self.format, &mut out)?;
        out.flush()
            .map_err(|e| format!("cannot write the result: {e}"))
    }

    async fn collect(&self, statement: &str) -> Result<Vec<RecordBatch>, String> {
        let df = self.session.sql(statement).await.map_err(error_line)?;
        let schema = Arc::clone(df.schema().inner());
        let batches = df.collect().await.map_err(error_line)?;
        // An empty result still shows its columns.
        Ok(if batches.is_empty() {
            vec![RecordBatch::new_empty(schema)]
        } else {
            batches
        })
    }

    /// Runs every statement of `sql`, stopping at the first failure.
    fn run_script(&self, sql: &str) -> Result<(), String> {
        statements::split(sql)
            .all()
            .iter()
            .try_for_each(|s| self.run(s))
    }
}

/// The exit status of a run in which a finalize found nothing to do (and nothing
/// failed): not a failure, but not work done either, for scripts to tell apart.
const NOTHING_TO_DO: u8 = 3;

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(ArgsError::Info(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Invalid(message)) => {
            eprintln!("dvi: {message}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    // Before any thread starts: the stores read these when they are built.
    for (name, value) in &options.env {
        std::env::set_var(name, value);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dvi: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let session = VectorIndexSession::new();
    let shell = Shell {
        runtime,
        reporter: Reporter::new(options.progress, session.progress()),
        session,
        format: options.format,
        nothing_finalized: std::cell::Cell::new(false),
    };
    let mut sources = options.sources;
    let prompt = sources.is_empty() && std::io::stdin().is_terminal();
    if sources.is_empty() && !prompt {
        sources.push(Source::Stdin);
    }
    let result = if prompt {
        repl::run(&shell)
    } else {
        sources.into_iter().try_for_each(|source| {
            let sql = match &source {
                Source::Command(sql) => sql.clone(),
                Source::File(path) => {
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
                }
                Source::Stdin => {
                    let mut sql = String::new();
                    std::io::stdin()
                        .read_to_string(&mut sql)
                        .map_err(|e| format!("cannot read stdin: {e}"))?;
                    sql
                }
            };
            shell.run_script(&sql)
        })
    };
    match result {
        Ok(()) if shell.nothing_finalized.get() => ExitCode::from(NOTHING_TO_DO),
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dvi: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Options, ArgsError> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_in_order_with_known_flags() {
        let invalid = |a: &[&str]| match args(a) {
            Err(ArgsError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(invalid(&["-x"]).contains("unknown argument '-x'"));
        assert!(invalid(&["-c"]).contains("-c needs a value"));
        assert!(invalid(&["--format", "xml"]).contains("table, csv or json"));
        assert!(invalid(&["--timeout", "0"]).contains("between 1 and 86400"));
        assert!(invalid(&["--timeout=soon"]).contains("got 'soon'"));
        assert!(matches!(args(&["-h"]), Err(ArgsError::Info(_))));
        let options = args(&[
            "-c",
            "SELECT 1",
            "-f",
            "x.sql",
            "-f",
            "-",
            "--format=csv",
            "--progress",
            "never",
            "--endpoint-url",
            "http://127.0.0.1:9000",
            "--allow-http",
            "--timeout",
            "5",
        ])
        .unwrap();
        assert_eq!(
            options.sources,
            vec![
                Source::Command("SELECT 1".into()),
                Source::File("x.sql".into()),
                Source::Stdin
            ]
        );
        assert_eq!(options.format, Format::Csv);
        assert_eq!(options.progress, ProgressMode::Never);
        assert_eq!(
            options.env,
            vec![
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000".to_string()),
                ("AWS_ALLOW_HTTP", "true".to_string()),
                ("VECTOR_INDEX_STORE_TIMEOUT", "5".to_string())
            ]
        );
        assert!(args(&[]).unwrap().sources.is_empty());
    }
}
