//! The `dvi` command line: runs SQL statements in a `VectorIndexSession`, the way
//! to run a worker or a coordinator step on any machine without writing Rust.
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
//!
//! `--scheduler df://HOST:PORT` runs every statement on a cluster. This crate does
//! not build one (its users do not pay for a distributed engine): [`run`] takes the
//! [`Cluster`] client of a binary that does (the `dvi-cluster` program of the
//! `datafusion-vector-index-ballista` crate), and the `dvi` binary, which has none,
//! hands such a command line to `dvi-cluster sql` (docs/cluster.md).

mod output;
mod progress;
mod repl;
mod statements;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;

use crate::error::error_line;
use crate::format::STORE_TIMEOUT_VAR;
use crate::sql::{VectorIndexSession, NOTHING_TO_FINALIZE, OUTCOME_KEY};
use output::Format;
use progress::{LineSource, ProgressMode, Reporter};

/// What `dvi --scheduler URL` needs of a distributed engine's client.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// A session whose statements run on the scheduler at `scheduler_url`.
    fn connect(&self, scheduler_url: &str) -> datafusion::common::Result<VectorIndexSession>;

    /// One line on the job `session` has running on the cluster (its stages
    /// done of their totals), asked about once a second while a statement runs;
    /// `None` while there is nothing to show.
    async fn status(&self, session: &VectorIndexSession) -> Option<String>;
}

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
      --scheduler URL    run every statement on the cluster whose scheduler is at
                         URL (df://HOST:PORT); needs the dvi-cluster program
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
    /// `--scheduler`: run on the cluster whose scheduler is at this URL.
    scheduler: Option<String>,
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
        scheduler: None,
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
            "--scheduler" => options.scheduler = Some(value()?),
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

/// Runs `dvi` with `args` (the command line without the program name) and returns
/// its exit status. `cluster` serves `--scheduler`; without one, a command line
/// with `--scheduler` is handed to `dvi-cluster sql` (see the module docs).
pub fn run(args: Vec<String>, cluster: Option<Arc<dyn Cluster>>) -> ExitCode {
    let options = match parse_args(args.iter().cloned()) {
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
    if options.scheduler.is_some() && cluster.is_none() {
        return hand_to_cluster_program(&args);
    }
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
    let (session, source) = match (&options.scheduler, cluster) {
        (Some(url), Some(cluster)) => match cluster.connect(url) {
            Ok(session) => (
                session.clone(),
                Some(LineSource::Cluster { cluster, session }),
            ),
            Err(e) => {
                eprintln!("dvi: {}", error_line(e));
                return ExitCode::FAILURE;
            }
        },
        _ => {
            let session = VectorIndexSession::new();
            let source = session.progress().map(LineSource::Local);
            (session, source)
        }
    };
    let shell = Shell {
        reporter: Reporter::new(options.progress, source),
        runtime,
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

/// The program that runs `dvi` on a cluster: `dvi-cluster`, next to this
/// executable, or on `PATH`.
const CLUSTER_PROGRAM: &str = "dvi-cluster";

/// Runs `dvi-cluster sql ARGS` in place of this process (its exit status is ours).
fn hand_to_cluster_program(args: &[String]) -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(CLUSTER_PROGRAM)))
        .filter(|path| path.is_file());
    let program = beside.map_or_else(|| CLUSTER_PROGRAM.into(), |path| path.into_os_string());
    let mut command = std::process::Command::new(&program);
    command.arg("sql").args(args);
    let failed = {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.exec()
        }
        #[cfg(not(unix))]
        match command.status() {
            Ok(status) => return ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
            Err(e) => e,
        }
    };
    eprintln!(
        "dvi: --scheduler runs statements through the {CLUSTER_PROGRAM} program, which could \
         not be started ({failed}); install it beside dvi or on PATH (docs/cluster.md)"
    );
    ExitCode::from(2)
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
        assert_eq!(
            args(&["--scheduler", "df://10.0.0.5:50050"])
                .unwrap()
                .scheduler,
            Some("df://10.0.0.5:50050".to_string())
        );
    }
}
