//! Discarding one staged shard (`discard_vector_index_shard`): the remedy for a shard
//! staged by mistake, e.g. a worker run again over fragments already committed.

use crate::error::{IndexError, Result};
use crate::format::IndexLocation;

/// What a discard removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardedShard {
    pub shard_id: String,
    /// Objects deleted below the shard's folder.
    pub objects: usize,
}

/// Removes staged shard `shard_id`: its `shard.json` first, so that a discard that
/// fails half-way leaves an incomplete shard (which finalize refuses to guess about
/// and vacuum removes), never a complete shard with files missing.
pub(crate) async fn discard_shard(
    location: &IndexLocation,
    shard_id: &str,
) -> Result<DiscardedShard> {
    if uuid::Uuid::parse_str(shard_id).is_err() {
        return Err(IndexError::invalid_argument(
            "shard",
            format!("'{shard_id}' is not a shard id (a UUID, as vector_index_shards lists them)"),
        ));
    }
    // Only below a readable index: a mistyped location must not lose anything.
    crate::model::ModelInfo::read_current(location).await?;
    let dir = location.shard_dir(shard_id);
    let files = location.list_files(&dir).await?;
    if files.is_empty() {
        return Err(IndexError::NotFound(format!(
            "no shard {shard_id} is staged in {}/_staging (SELECT shard_id FROM vector_index_shards('{}') lists them)",
            location.url(),
            location.url()
        )));
    }
    let manifest = dir.clone().join("shard.json");
    let mut objects = 0;
    if files.iter().any(|(name, _)| name == "shard.json") {
        location.delete(&manifest).await?;
        objects += 1;
    }
    objects += location.delete_dir(&dir).await?;
    if let Some(folder) = location.local_file(&dir) {
        // Best effort: an empty folder left behind lists as nothing.
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(folder)).await;
    }
    Ok(DiscardedShard {
        shard_id: shard_id.to_string(),
        objects,
    })
}
