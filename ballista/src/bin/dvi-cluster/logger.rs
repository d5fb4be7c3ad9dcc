//! Log lines on stderr: `2026-12-07T10:00:00.000Z INFO  target: message`.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger {
    level: LevelFilter,
}

/// The transport's crates say a lot at info level about every connection; they
/// are shown at trace only.
fn chatty(target: &str) -> bool {
    ["h2", "hyper", "tower", "tonic", "rustls", "axum"]
        .iter()
        .any(|name| target == *name || target.starts_with(&format!("{name}::")))
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
            && (metadata.level() <= Level::Warn
                || self.level == LevelFilter::Trace
                || !chatty(metadata.target()))
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "{} {:<5} {}: {}",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

pub(crate) fn init(level: LevelFilter) {
    // Only fails when a logger is already set, which this program does once; the
    // logger lives as long as the process.
    let _ = log::set_logger(Box::leak(Box::new(Logger { level })));
    log::set_max_level(level);
}
