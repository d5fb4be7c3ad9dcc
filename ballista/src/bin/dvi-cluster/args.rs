//! The command line: `dvi-cluster scheduler|executor|sql [OPTIONS]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use datafusion_vector_index_ballista::{ExecutorOptions, SchedulerOptions};
use log::LevelFilter;

pub(crate) const USAGE: &str = "\
usage: dvi-cluster COMMAND [OPTIONS]

Runs an Apache DataFusion Ballista cluster whose scheduler and executors run
datafusion-vector-index's plans (shard builds, finalize, search), and submits SQL
to it.

Commands:
  scheduler   start the scheduler (one per cluster)
  executor    start an executor, which runs tasks for the scheduler
  sql         run dvi's command line on the cluster: what `dvi --scheduler` runs
              (dvi-cluster sql --scheduler df://HOST:PORT -c \"CALL …\")

`dvi-cluster COMMAND --help` lists a command's options.

Object stores come from each process's environment, as in dvi (AWS_*, AZURE_*,
GOOGLE_*; docs/object-stores.md): give every process, the scheduler too, the same
store settings. Credentials stay in the environment: never in flags, plans or logs.
SIGTERM or Ctrl-C stops a process cleanly (an executor first finishes its tasks).";

const SCHEDULER_USAGE: &str = "\
usage: dvi-cluster scheduler [OPTIONS]

  --bind HOST:PORT          listen address (default 0.0.0.0:50050). The port serves
                            gRPC and HTTP: GET /healthz (alive), /readyz (200 once
                            an executor has registered), /dvi/jobs (job progress)
  --advertise HOST          host name executors and clients reach it by (default:
                            the bind host, or $HOSTNAME when binding 0.0.0.0)
  --executor-timeout SECS   an executor silent this long is lost and its tasks run
                            elsewhere (default 30; keep it above the executors'
                            --heartbeat)
  --task-max-failures N     attempts of one task before its job fails (default 4)
  --grpc-max-message MIB    largest gRPC message sent or accepted (default 64)
  --log-level LEVEL         error, warn, info (default), debug or trace
  -h, --help                show this help";

const EXECUTOR_USAGE: &str = "\
usage: dvi-cluster executor [OPTIONS]

  --scheduler HOST:PORT     the scheduler (default localhost:50050)
  --bind HOST               listen address of its two ports (default 0.0.0.0)
  --advertise HOST          host name the scheduler and other executors reach it by
                            (default: the address the scheduler sees it connect from)
  --flight-port PORT        Arrow Flight port results are fetched from (default 50051)
  --grpc-port PORT          gRPC port the scheduler sends tasks to (default 50052)
  --slots N                 tasks run at once (default: half the cores, at least 1;
                            a merge or shard-build task uses threads of its own)
  --work-dir DIR            shuffle and spill files (default: a temporary directory)
  --heartbeat SECS          how often it reports to the scheduler (default 5)
  --connect-timeout SECS    how long it keeps trying to reach the scheduler at
                            start (default 60)
  --grpc-max-message MIB    largest gRPC message sent or accepted (default 64)
  --log-level LEVEL         error, warn, info (default), debug or trace
  -h, --help                show this help

It logs the work its tasks did (work units merged, shards written, …) as it
changes and when it stops.";

#[derive(Debug)]
pub(crate) enum Command {
    Scheduler {
        bind: SocketAddr,
        options: SchedulerOptions,
        log_level: LevelFilter,
    },
    Executor {
        options: ExecutorOptions,
        log_level: LevelFilter,
    },
    /// dvi's arguments.
    Sql(Vec<String>),
}

/// Why the arguments make no run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ArgsError {
    /// `--help` or `--version`: print this and exit successfully.
    Info(String),
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ArgsError {
    ArgsError::Invalid(message.into())
}

/// Flags and their values, `--flag value` or `--flag=value`.
struct Flags<I: Iterator<Item = String>> {
    args: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = String>> Flags<I> {
    /// The next flag and, when it was written `--flag=value`, its value.
    fn next(&mut self) -> Option<(String, Option<String>)> {
        let arg = self.args.next()?;
        Some(match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg, None),
        })
    }

    fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String, ArgsError> {
        inline
            .or_else(|| self.args.next())
            .ok_or_else(|| invalid(format!("{flag} needs a value")))
    }

    fn number<T>(
        &mut self,
        flag: &str,
        inline: Option<String>,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ArgsError>
    where
        T: FromStr + PartialOrd + std::fmt::Display,
    {
        let text = self.value(flag, inline)?;
        match text.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(invalid(format!(
                "{flag} takes a whole number from {} to {}, got '{text}'",
                range.start(),
                range.end()
            ))),
        }
    }
}

fn log_level(text: &str) -> Result<LevelFilter, ArgsError> {
    match text {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(text.parse().expect("a level name")),
        other => Err(invalid(format!(
            "--log-level takes error, warn, info, debug or trace, got '{other}'"
        ))),
    }
}

/// `HOST:PORT`, split.
fn host_port(flag: &str, text: &str) -> Result<(String, u16), ArgsError> {
    text.rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?)))
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| invalid(format!("{flag} takes HOST:PORT, got '{text}'")))
}

pub(crate) fn parse(args: impl Iterator<Item = String>) -> Result<Command, ArgsError> {
    let mut args = args.peekable();
    let command = args.next().ok_or_else(|| invalid("a command is needed"))?;
    let mut flags = Flags { args };
    match command.as_str() {
        "scheduler" => scheduler(&mut flags),
        "executor" => executor(&mut flags),
        "sql" => Ok(Command::Sql(flags.args.collect())),
        "-h" | "--help" | "help" => Err(ArgsError::Info(USAGE.to_string())),
        "-V" | "--version" => Err(ArgsError::Info(format!(
            "dvi-cluster {}",
            env!("CARGO_PKG_VERSION")
        ))),
        other => Err(invalid(format!("unknown command '{other}'"))),
    }
}

fn scheduler<I: Iterator<Item = String>>(flags: &mut Flags<I>) -> Result<Command, ArgsError> {
    let mut bind: SocketAddr = "0.0.0.0:50050".parse().expect("a socket address");
    let mut advertise = None;
    let mut options = SchedulerOptions::default();
    let mut level = LevelFilter::Info;
    while let Some((flag, inline)) = flags.next() {
        match flag.as_str() {
            "--bind" => {
                let text = flags.value(&flag, inline)?;
                bind = text.parse().map_err(|_| {
                    invalid(format!("--bind takes an IP address and port, got '{text}'"))
                })?;
            }
            "--advertise" => advertise = Some(flags.value(&flag, inline)?),
            "--executor-timeout" => {
                options.executor_timeout =
                    Duration::from_secs(flags.number(&flag, inline, 2..=86_400)?)
            }
            "--task-max-failures" => {
                options.task_max_failures = flags.number(&flag, inline, 1..=100)?
            }
            "--grpc-max-message" => {
                options.grpc_max_message_bytes = flags.number::<u32>(&flag, inline, 1..=2047)? << 20
            }
            "--log-level" => level = log_level(&flags.value(&flag, inline)?)?,
            "-h" | "--help" => return Err(ArgsError::Info(SCHEDULER_USAGE.to_string())),
            other => return Err(invalid(format!("unknown scheduler option '{other}'"))),
        }
    }
    options.advertised_host = advertise.unwrap_or_else(|| {
        if bind.ip().is_unspecified() {
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string())
        } else {
            bind.ip().to_string()
        }
    });
    Ok(Command::Scheduler {
        bind,
        options,
        log_level: level,
    })
}

fn executor<I: Iterator<Item = String>>(flags: &mut Flags<I>) -> Result<Command, ArgsError> {
    let mut options = ExecutorOptions::default();
    let mut level = LevelFilter::Info;
    while let Some((flag, inline)) = flags.next() {
        match flag.as_str() {
            "--scheduler" => {
                let text = flags.value(&flag, inline)?;
                let text = text
                    .strip_prefix("df://")
                    .or_else(|| text.strip_prefix("http://"))
                    .unwrap_or(&text);
                (options.scheduler_host, options.scheduler_port) = host_port(&flag, text)?;
            }
            "--bind" => options.bind_host = flags.value(&flag, inline)?,
            "--advertise" => options.advertised_host = Some(flags.value(&flag, inline)?),
            "--flight-port" => options.flight_port = flags.number(&flag, inline, 1..=65_535)?,
            "--grpc-port" => options.grpc_port = flags.number(&flag, inline, 1..=65_535)?,
            "--slots" => options.task_slots = flags.number(&flag, inline, 1..=4096)?,
            "--work-dir" => options.work_dir = Some(PathBuf::from(flags.value(&flag, inline)?)),
            "--heartbeat" => {
                options.heartbeat_interval =
                    Duration::from_secs(flags.number(&flag, inline, 1..=3600)?)
            }
            "--connect-timeout" => {
                options.scheduler_connect_timeout =
                    Duration::from_secs(flags.number(&flag, inline, 1..=65_535)?)
            }
            "--grpc-max-message" => {
                options.grpc_max_message_bytes = flags.number::<u32>(&flag, inline, 1..=2047)? << 20
            }
            "--log-level" => level = log_level(&flags.value(&flag, inline)?)?,
            "-h" | "--help" => return Err(ArgsError::Info(EXECUTOR_USAGE.to_string())),
            other => return Err(invalid(format!("unknown executor option '{other}'"))),
        }
    }
    if options.flight_port == options.grpc_port {
        return Err(invalid(format!(
            "--flight-port and --grpc-port must differ (both {})",
            options.grpc_port
        )));
    }
    Ok(Command::Executor {
        options,
        log_level: level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, ArgsError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn invalid_text(args: &[&str]) -> String {
        match parse_strs(args) {
            Err(ArgsError::Invalid(message)) => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_flags_and_errors() {
        let Command::Scheduler {
            bind,
            options,
            log_level,
        } = parse_strs(&[
            "scheduler",
            "--bind=127.0.0.1:6000",
            "--executor-timeout",
            "9",
            "--log-level",
            "debug",
        ])
        .unwrap()
        else {
            panic!("not a scheduler")
        };
        assert_eq!(bind.port(), 6000);
        assert_eq!(options.advertised_host, "127.0.0.1");
        assert_eq!(options.executor_timeout, Duration::from_secs(9));
        assert_eq!(log_level, LevelFilter::Debug);

        let Command::Executor { options, .. } = parse_strs(&[
            "executor",
            "--scheduler",
            "df://sched:7000",
            "--slots",
            "3",
            "--flight-port",
            "7001",
            "--grpc-port",
            "7002",
            "--work-dir",
            "/tmp/w",
        ])
        .unwrap() else {
            panic!("not an executor")
        };
        assert_eq!(
            (options.scheduler_host.as_str(), options.scheduler_port),
            ("sched", 7000)
        );
        assert_eq!(options.task_slots, 3);
        assert_eq!(options.work_dir, Some(PathBuf::from("/tmp/w")));

        let Command::Sql(rest) =
            parse_strs(&["sql", "--scheduler", "df://h:1", "-c", "x"]).unwrap()
        else {
            panic!("not sql")
        };
        assert_eq!(rest, ["--scheduler", "df://h:1", "-c", "x"]);

        assert!(invalid_text(&[]).contains("a command is needed"));
        assert!(invalid_text(&["gateway"]).contains("unknown command 'gateway'"));
        assert!(invalid_text(&["executor", "--slots", "0"]).contains("from 1 to 4096, got '0'"));
        assert!(invalid_text(&["executor", "--scheduler", "nohost"]).contains("HOST:PORT"));
        assert!(invalid_text(&["executor", "--grpc-port", "50051"]).contains("must differ"));
        assert!(invalid_text(&["scheduler", "--bind", "x"]).contains("IP address and port"));
        assert!(invalid_text(&["scheduler", "--log-level", "loud"]).contains("'loud'"));
        assert!(invalid_text(&["scheduler", "--slots", "2"]).contains("unknown scheduler option"));
        assert!(matches!(
            parse_strs(&["executor", "--help"]),
            Err(ArgsError::Info(text)) if text.contains("--slots N")
        ));
    }
}
