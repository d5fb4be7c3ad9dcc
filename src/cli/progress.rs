//! Progress on stderr while a statement runs: one line redrawn in place on a
//! terminal; nothing otherwise, unless asked for (`--progress always`), which
//! writes a line per second and the final counts, for logs.

use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Cluster;
use crate::progress::{Progress, ProgressUnit, StepProgress};
use crate::sql::VectorIndexSession;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgressMode {
    /// Bars when stderr is a terminal.
    Auto,
    Always,
    Never,
}

impl FromStr for ProgressMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ProgressMode::Auto),
            "always" => Ok(ProgressMode::Always),
            "never" => Ok(ProgressMode::Never),
            other => Err(format!(
                "unknown progress mode '{other}' (expected auto, always or never)"
            )),
        }
    }
}

/// Where the progress line comes from.
#[derive(Clone)]
pub(crate) enum LineSource {
    /// The counters of this process's work.
    Local(Arc<Progress>),
    /// The job the session runs on a cluster, as its scheduler reports it.
    Cluster {
        cluster: Arc<dyn Cluster>,
        session: VectorIndexSession,
    },
}

impl LineSource {
    async fn line(&self) -> String {
        match self {
            LineSource::Local(progress) => line(&progress.snapshot()),
            LineSource::Cluster { cluster, session } => {
                cluster.status(session).await.unwrap_or_default()
            }
        }
    }
}

/// Draws a statement's progress while it runs.
pub(crate) struct Reporter {
    source: LineSource,
    /// Redraw one line in place (a terminal), or write lines (a log).
    in_place: bool,
}

impl Reporter {
    pub(crate) fn new(mode: ProgressMode, source: Option<LineSource>) -> Option<Self> {
        let terminal = std::io::stderr().is_terminal();
        let shown = match mode {
            ProgressMode::Auto => terminal,
            ProgressMode::Always => true,
            ProgressMode::Never => false,
        };
        Some(Self {
            source: source.filter(|_| shown)?,
            in_place: terminal,
        })
    }

    /// Starts drawing; the drawing stops when the returned guard is finished or dropped.
    pub(crate) fn start(&self) -> Drawing {
        if let LineSource::Local(progress) = &self.source {
            progress.reset();
        }
        let source = self.source.clone();
        let in_place = self.in_place;
        let period = Duration::from_millis(if in_place { 100 } else { 1000 });
        let last = Arc::new(Mutex::new(String::new()));
        let shown = Arc::clone(&last);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let now = source.line().await;
                let mut last = shown.lock().unwrap_or_else(|e| e.into_inner());
                if *last != now && !now.is_empty() {
                    draw(&now, in_place);
                    *last = now;
                }
            }
        });
        Drawing {
            task,
            source: self.source.clone(),
            last,
            in_place,
        }
    }
}

pub(crate) struct Drawing {
    task: tokio::task::JoinHandle<()>,
    source: LineSource,
    /// The line drawn last.
    last: Arc<Mutex<String>>,
    in_place: bool,
}

impl Drawing {
    /// Stops drawing: clears the line on a terminal, writes the final counts in a
    /// log (a cluster's job has ended by then: its last line stands).
    pub(crate) fn finish(self) {
        self.task.abort();
        let mut err = std::io::stderr().lock();
        if self.in_place {
            let _ = write!(err, "\r\x1b[2K");
        } else {
            let last = match &self.source {
                LineSource::Local(progress) => line(&progress.snapshot()),
                LineSource::Cluster { .. } => {
                    self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
                }
            };
            if !last.is_empty() {
                let _ = writeln!(err, "progress: {last}");
            }
        }
        let _ = err.flush();
    }
}

impl Drop for Drawing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn draw(line: &str, in_place: bool) {
    let mut err = std::io::stderr().lock();
    if in_place {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(100)
            .saturating_sub(1);
        let shown: String = line.chars().take(width).collect();
        let _ = write!(err, "\r\x1b[2K{shown}");
    } else {
        let _ = writeln!(err, "progress: {line}");
    }
    let _ = err.flush();
}

/// One line for the started steps, with a bar for the first unfinished one that
/// has a total: `training 12/25 iterations [#####.....] 48% · …`.
pub(crate) fn line(steps: &[StepProgress]) -> String {
    let mut barred = false;
    steps
        .iter()
        .map(|s| {
            let amount = |n: u64| match s.step.unit() {
                ProgressUnit::Bytes => bytes(n),
                _ => n.to_string(),
            };
            let unit = match s.step.unit() {
                ProgressUnit::Rows => " rows",
                ProgressUnit::Iterations => " iterations",
                ProgressUnit::WorkUnits => " work units",
                // Bytes print their unit; the others are named by their step.
                _ => "",
            };
            match s.total {
                Some(total) => {
                    let mut text = format!("{} {}/{}{unit}", s.step, amount(s.done), amount(total));
                    if !barred && s.done < total {
                        barred = true;
                        let filled = (s.done.min(total) * 20 / total.max(1)) as usize;
                        text += &format!(
                            " [{}{}] {}%",
                            "#".repeat(filled),
                            ".".repeat(20 - filled),
                            s.done * 100 / total.max(1)
                        );
                    }
                    text
                }
                None => format!("{} {}{unit}", s.step, amount(s.done)),
            }
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use crate::progress::ProgressStep;

    use super::*;

    #[test]
    fn one_line_with_a_bar_for_the_first_unfinished_step() {
        let step = |step, done, total| StepProgress { step, done, total };
        assert_eq!(
            line(&[
                step(ProgressStep::Merging, 5, Some(10)),
                step(ProgressStep::MergedRows, 50, Some(100)),
                step(ProgressStep::WrittenBytes, 3 << 20, None),
            ]),
            "merging 5/10 work units [##########..........] 50% · merged 50/100 rows · written 3.0 MiB"
        );
        assert_eq!(
            line(&[step(ProgressStep::Commit, 1, Some(1))]),
            "commit 1/1"
        );
        assert_eq!(bytes(512), "512 B");
        assert!("sometimes".parse::<ProgressMode>().is_err());
    }
}
