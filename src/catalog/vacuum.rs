//! `vacuum_vector_index`: removes what finalize consumed or a crash left behind.

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;

use super::{list_versions, read_version};
use crate::error::Result;
use crate::format::IndexLocation;
use crate::staging::list_staged_shards;

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VacuumOptions {
    /// Incomplete shards and unreferenced segment folders are removed only when
    /// nothing in them changed for this long, so that a worker or a finalize still
    /// running is not robbed of its files.
    pub older_than: Duration,
    /// Report what would be removed without removing it.
    pub dry_run: bool,
}

impl Default for VacuumOptions {
    fn default() -> Self {
        Self {
            older_than: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// Builders, one per field: the struct is `#[non_exhaustive]` (it will grow), so
/// code outside this crate starts from `VacuumOptions::default()`.
impl VacuumOptions {
    /// Sets `older_than` (default: one hour).
    pub fn with_older_than(mut self, older_than: Duration) -> Self {
        self.older_than = older_than;
        self
    }

    /// Sets `dry_run` (default: false).
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What a removed folder held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VacuumedKind {
    /// A staged shard that a committed segment consumed.
    ConsumedShard,
    /// A staged shard without a complete manifest, older than the age limit.
    IncompleteShard,
    /// A segment folder no version references (a crashed or lost finalize's).
    UnreferencedSegment,
}

impl VacuumedKind {
    /// The name shown in `vacuum_vector_index`'s `kind` column.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConsumedShard => "consumed_shard",
            Self::IncompleteShard => "incomplete_shard",
            Self::UnreferencedSegment => "unreferenced_segment",
        }
    }
}

/// One removed (or removable, on a dry run) folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VacuumedItem {
    pub kind: VacuumedKind,
    /// The shard or segment id.
    pub id: String,
    /// Objects below the folder.
    pub objects: usize,
}

/// A folder a vacuum left alone because something in it changed recently: a
/// worker or a finalize may still be writing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptItem {
    /// What the folder will be removed as once it is old enough.
    pub kind: VacuumedKind,
    pub id: String,
    pub objects: usize,
    /// How long ago something in it last changed.
    pub age: Duration,
}

/// What a vacuum removed (or would remove, on a dry run), and what it kept for now.
#[derive(Debug, Clone, Default)]
pub struct VacuumReport {
    pub removed: Vec<VacuumedItem>,
    pub kept: Vec<KeptItem>,
}

/// Age of the newest object below `dir` and how many there are, or `None` when
/// `dir` is empty.
async fn newest_age(location: &IndexLocation, dir: &Path) -> Result<Option<(Duration, usize)>> {
    let newest = location
        .store()
        .list(Some(dir))
        .try_fold(
            None,
            |acc: Option<(chrono::DateTime<chrono::Utc>, usize)>, m| async move {
                Ok(Some(acc.map_or((m.last_modified, 1), |(a, n)| {
                    (a.max(m.last_modified), n + 1)
                })))
            },
        )
        .await?;
    Ok(newest.map(|(t, n)| {
        let age = (chrono::Utc::now() - t).to_std().unwrap_or(Duration::ZERO);
        (age, n)
    }))
}

pub(crate) async fn vacuum(
    location: &IndexLocation,
    options: &VacuumOptions,
) -> Result<VacuumReport> {
    // Only below a readable index: a mistyped location must not lose anything.
    crate::model::ModelInfo::read_current(location).await?;
    let mut referenced = HashSet::new();
    let mut consumed = HashSet::new();
    for v in list_versions(location).await? {
        for s in read_version(location, v).await?.segments {
            consumed.extend(s.consumed_shards.iter().cloned());
            referenced.insert(s.segment_id);
        }
    }
    let mut report = VacuumReport::default();
    for shard in list_staged_shards(location).await? {
        let kind = if consumed.contains(&shard.shard_id) {
            VacuumedKind::ConsumedShard
        } else if !shard.has_manifest {
            let Some((age, objects)) = newest_age(location, &shard.dir).await? else {
                continue;
            };
            if age < options.older_than {
                report.kept.push(KeptItem {
                    kind: VacuumedKind::IncompleteShard,
                    id: shard.shard_id,
                    objects,
                    age,
                });
                continue;
            }
            VacuumedKind::IncompleteShard
        } else {
            continue;
        };
        let objects = remove(location, &shard.dir, options.dry_run).await?;
        report.removed.push(VacuumedItem {
            kind,
            id: shard.shard_id,
            objects,
        });
    }
    // What a finalize moved aside and its process did not live to delete: only ever
    // consumed shards, so no age limit.
    for name in location.list_dirs(&location.trash_dir()).await? {
        let Some(shard_id) = name.strip_prefix("partial_") else {
            continue;
        };
        let dir = location.trashed_shard_dir(shard_id);
        let objects = remove(location, &dir, options.dry_run).await?;
        if objects > 0 {
            report.removed.push(VacuumedItem {
                kind: VacuumedKind::ConsumedShard,
                id: shard_id.to_string(),
                objects,
            });
        }
    }
    for segment_id in location.list_dirs(&location.segments_dir()).await? {
        if referenced.contains(&segment_id) {
            continue;
        }
        let dir = location.segment_dir(&segment_id);
        let Some((age, objects)) = newest_age(location, &dir).await? else {
            continue;
        };
        if age < options.older_than {
            report.kept.push(KeptItem {
                kind: VacuumedKind::UnreferencedSegment,
                id: segment_id,
                objects,
                age,
            });
            continue;
        }
        let objects = remove(location, &dir, options.dry_run).await?;
        report.removed.push(VacuumedItem {
            kind: VacuumedKind::UnreferencedSegment,
            id: segment_id,
            objects,
        });
    }
    Ok(report)
}

/// On a local filesystem, the folders left when their files were deleted, so that a
/// removed shard is not listed again (best effort: another vacuum or a finalize's
/// background deletion may get there first).
async fn remove_empty_folder(location: &IndexLocation, dir: &Path) {
    if let Some(folder) = location.local_file(dir) {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(folder)).await;
    }
}

async fn remove(location: &IndexLocation, dir: &Path, dry_run: bool) -> Result<usize> {
    if dry_run {
        let n = location
            .store()
            .list(Some(dir))
            .try_collect::<Vec<_>>()
            .await?
            .len();
        Ok(n)
    } else {
        let n = location.delete_dir(dir).await?;
        remove_empty_folder(location, dir).await;
        Ok(n)
    }
}
