//! `restore_vector_index`: a rollback that commits an older version's segments as a
//! new version. Nothing is rewritten: the older version's segments are still on the
//! store (vacuum keeps every segment some version lists), and versions in between
//! stay as they were, so a restore can itself be undone by restoring again.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};

use super::{check_listed, list_versions, put_version, read_segment, read_version};
use crate::error::{IndexError, Result};
use crate::format::{IndexLocation, VersionManifest, FORMAT_VERSION};
use crate::model::ModelInfo;
use crate::staging::list_staged_shards;

/// What a restore committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The new version.
    pub version: u64,
    /// The version whose segments it lists.
    pub restored_from: u64,
    pub segments: usize,
    pub rows: u64,
    /// Segments of the version before it that the new one no longer lists.
    pub replaced_segments: Vec<String>,
}

pub(crate) async fn restore(location: &IndexLocation, version: u64) -> Result<Restored> {
    let model = ModelInfo::read_current(location).await?;
    let versions = list_versions(location).await?;
    let Some(&latest) = versions.last() else {
        return Err(IndexError::NotFound(format!(
            "index {} has no committed version to restore",
            location.url()
        )));
    };
    check_listed(location, &versions, version)?;
    if version == latest {
        return Err(IndexError::invalid_argument(
            "version",
            format!(
                "version {version} is already the current version of {}",
                location.url()
            ),
        ));
    }
    let (old, current) = futures::try_join!(
        read_version(location, version),
        read_version(location, latest)
    )?;
    if old.model != model.fingerprint() {
        return Err(IndexError::invalid_argument(
            "version",
            format!(
                "version {version} was built with model {}, but the index's model is now {}",
                old.model,
                model.fingerprint()
            ),
        ));
    }
    // Every segment it lists must still be there (and whole) before a version names it.
    // Read together, as vector_index_segments reads them: an old version may list many.
    // Owned inputs: the future must be `Send` for any lifetime (spawned SQL calls).
    let ids: Vec<String> = old.segments.iter().map(|s| s.segment_id.clone()).collect();
    futures::stream::iter(ids)
        .map(|id| {
            let location = location.clone();
            async move { read_segment(&location, &id).await }
        })
        .buffered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let kept: HashSet<&str> = old.segments.iter().map(|s| s.segment_id.as_str()).collect();
    let dropped: Vec<_> = current
        .segments
        .iter()
        .filter(|s| !kept.contains(s.segment_id.as_str()))
        .collect();
    // Shards those segments consumed are consumed no longer once the restore is the
    // latest version: a finalize would merge any still staged a second time.
    let undone: HashSet<&str> = dropped
        .iter()
        .flat_map(|s| s.consumed_shards.iter().map(String::as_str))
        .collect();
    if let Some(shard) = list_staged_shards(location)
        .await?
        .into_iter()
        .find(|s| undone.contains(s.shard_id.as_str()))
    {
        return Err(IndexError::Finalize(format!(
            "shard {} is still staged, and the segments this restore drops consumed it; \
             run CALL vacuum_vector_index(index => '{}') first",
            shard.shard_id,
            location.url()
        )));
    }
    let manifest = VersionManifest {
        format_version: FORMAT_VERSION,
        version: latest + 1,
        model: old.model.clone(),
        segments: old.segments.clone(),
        replaced_segments: dropped.iter().map(|s| s.segment_id.clone()).collect(),
        restored_from: Some(version),
    };
    if !put_version(location, &manifest).await? {
        return Err(IndexError::Conflict(format!(
            "version {} was committed concurrently while restoring version {version}; nothing \
             was committed here: look at vector_index_versions('{}') and run the restore again \
             if it is still wanted",
            latest + 1,
            location.url()
        )));
    }
    Ok(Restored {
        version: manifest.version,
        restored_from: version,
        segments: manifest.segments.len(),
        rows: manifest.segments.iter().map(|s| s.rows).sum(),
        replaced_segments: manifest.replaced_segments,
    })
}
