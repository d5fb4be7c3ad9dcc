//! Progress of the long steps (training, shard building, finalize, search),
//! readable while they run.
//!
//! A [`Progress`] is attached to a session as a `SessionConfig` extension
//! (`VectorIndexSession::new` attaches one), so it reaches every place that works
//! for the session: the API functions through the `DataFrame`s and contexts they are
//! given, the plans' operators through their `TaskContext`. A process that runs no
//! `Progress` (a library user who did not attach one, a remote executor) pays one
//! `Option` check per counted event.
//!
//! Counters are per step, not per call: one session running two finalizes at
//! once adds both into the same counters.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::execution::TaskContext;
use datafusion::prelude::SessionConfig;

/// One counted step of the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProgressStep {
    /// `create`: rows of the input read while sampling (total when the input's
    /// row count is known exactly before it is read).
    Sampling,
    /// `create`: k-means iterations of the IVF centroids and, for PQ, of every
    /// sub-quantizer; an early convergence counts its remaining iterations as done.
    Training,
    /// Shard building: rows encoded into the shard (total as for `Sampling`).
    Encoding,
    /// Finalize: work units merged, out of the plan's work units.
    Merging,
    /// Finalize: rows written into segments, out of the rows of the consumed shards.
    MergedRows,
    /// Finalize: bytes of segment files written (data and graphs; no total).
    WrittenBytes,
    /// Finalize of the HNSW types: graphs built, one per IVF partition per segment.
    Graphs,
    /// Finalize: the commit of the new version (0 or 1 of 1).
    Commit,
    /// Search: (query, partition) probes scored (each over every segment), out of those planned.
    Probes,
}

impl ProgressStep {
    /// Every step, in the order the work runs.
    pub const ALL: [ProgressStep; 9] = [
        ProgressStep::Sampling,
        ProgressStep::Training,
        ProgressStep::Encoding,
        ProgressStep::Merging,
        ProgressStep::MergedRows,
        ProgressStep::WrittenBytes,
        ProgressStep::Graphs,
        ProgressStep::Commit,
        ProgressStep::Probes,
    ];

    /// What one unit of the counter is.
    pub fn unit(self) -> ProgressUnit {
        match self {
            ProgressStep::Training => ProgressUnit::Iterations,
            ProgressStep::Merging => ProgressUnit::WorkUnits,
            ProgressStep::WrittenBytes => ProgressUnit::Bytes,
            ProgressStep::Graphs => ProgressUnit::Graphs,
            ProgressStep::Commit => ProgressUnit::Versions,
            ProgressStep::Probes => ProgressUnit::Probes,
            ProgressStep::Sampling | ProgressStep::Encoding | ProgressStep::MergedRows => {
                ProgressUnit::Rows
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ProgressStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgressStep::Sampling => "sampling",
            ProgressStep::Training => "training",
            ProgressStep::Encoding => "encoding",
            ProgressStep::Merging => "merging",
            ProgressStep::MergedRows => "merged",
            ProgressStep::WrittenBytes => "written",
            ProgressStep::Graphs => "graphs",
            ProgressStep::Commit => "commit",
            ProgressStep::Probes => "probes",
        })
    }
}

/// The unit a step counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProgressUnit {
    Rows,
    Iterations,
    WorkUnits,
    Bytes,
    Graphs,
    Versions,
    Probes,
}

/// One step's counter at the time of a [`Progress::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    pub step: ProgressStep,
    pub done: u64,
    /// `None` when the total is not known in advance.
    pub total: Option<u64>,
}

const UNKNOWN: u64 = u64::MAX;

#[derive(Debug)]
struct Counter {
    started: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            started: AtomicBool::new(false),
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
        }
    }
}

/// Live counters of a session's long steps; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    counters: Arc<[Counter; ProgressStep::ALL.len()]>,
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    /// `config` with this progress attached (what `VectorIndexSession::new` does).
    pub fn attach(&self, config: SessionConfig) -> SessionConfig {
        config.with_extension(Arc::new(self.clone()))
    }

    /// The progress attached to `config`, if any.
    pub fn of(config: &SessionConfig) -> Option<Arc<Progress>> {
        config.get_extension::<Progress>()
    }

    /// The steps started since the last [`reset`](Self::reset), in [`ProgressStep::ALL`] order.
    pub fn snapshot(&self) -> Vec<StepProgress> {
        ProgressStep::ALL
            .iter()
            .filter_map(|&step| {
                let c = &self.counters[step.index()];
                if !c.started.load(Ordering::Acquire) {
                    return None;
                }
                let total = c.total.load(Ordering::Relaxed);
                Some(StepProgress {
                    step,
                    done: c.done.load(Ordering::Relaxed),
                    total: (total != UNKNOWN).then_some(total),
                })
            })
            .collect()
    }

    /// Forgets every step (e.g. between two statements).
    pub fn reset(&self) {
        for c in self.counters.iter() {
            c.started.store(false, Ordering::Release);
            c.done.store(0, Ordering::Relaxed);
            c.total.store(UNKNOWN, Ordering::Relaxed);
        }
    }

    fn counter(&self, step: ProgressStep) -> &Counter {
        &self.counters[step.index()]
    }
}

/// What the crate counts through: a session's [`Progress`], or nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker(Option<Arc<Progress>>);

impl Tracker {
    pub(crate) fn of(config: &SessionConfig) -> Self {
        Self(Progress::of(config))
    }

    pub(crate) fn of_task(context: &TaskContext) -> Self {
        Self::of(context.session_config())
    }

    /// Starts `step` from zero with `total` (`None`: unknown).
    pub(crate) fn start(&self, step: ProgressStep, total: Option<u64>) {
        if let Some(p) = &self.0 {
            let c = p.counter(step);
            c.done.store(0, Ordering::Relaxed);
            c.total.store(total.unwrap_or(UNKNOWN), Ordering::Relaxed);
            c.started.store(true, Ordering::Release);
        }
    }

    /// Counts `n` more of `step`. A step counted before anything started it (the
    /// tasks a remote executor runs count their share without knowing the whole)
    /// starts with an unknown total.
    pub(crate) fn add(&self, step: ProgressStep, n: u64) {
        if let Some(p) = &self.0 {
            let c = p.counter(step);
            c.done.fetch_add(n, Ordering::Relaxed);
            if !c.started.load(Ordering::Relaxed) {
                c.started.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_start_add_and_reset() {
        let progress = Progress::new();
        let config = progress.attach(SessionConfig::new());
        let tracker = Tracker::of(&config);
        assert!(progress.snapshot().is_empty());
        tracker.start(ProgressStep::Merging, Some(3));
        tracker.add(ProgressStep::Merging, 2);
        tracker.start(ProgressStep::Probes, Some(5));
        tracker.start(ProgressStep::WrittenBytes, None);
        tracker.add(ProgressStep::WrittenBytes, 10);
        assert_eq!(
            progress.snapshot(),
            vec![
                StepProgress {
                    step: ProgressStep::Merging,
                    done: 2,
                    total: Some(3)
                },
                StepProgress {
                    step: ProgressStep::WrittenBytes,
                    done: 10,
                    total: None
                },
                StepProgress {
                    step: ProgressStep::Probes,
                    done: 0,
                    total: Some(5)
                },
            ]
        );
        progress.reset();
        assert!(progress.snapshot().is_empty());
        // Counting a step nothing started starts it, total unknown.
        tracker.add(ProgressStep::Encoding, 7);
        assert_eq!(
            progress.snapshot(),
            vec![StepProgress {
                step: ProgressStep::Encoding,
                done: 7,
                total: None
            }]
        );
        // Without a progress attached, counting is a no-op.
        Tracker::of(&SessionConfig::new()).add(ProgressStep::Merging, 1);
    }
}
