//! Reading versions and segments.

use roaring::RoaringBitmap;

use crate::error::{IndexError, Result};
use crate::format::{IndexLocation, SegmentManifest, VersionManifest};

/// Version numbers present under `_versions/`, ascending.
pub(crate) async fn list_versions(location: &IndexLocation) -> Result<Vec<u64>> {
    let mut versions: Vec<u64> = location
        .list_files(&location.versions_dir())
        .await?
        .into_iter()
        .filter_map(|(name, _)| name.strip_suffix(".json")?.parse().ok())
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Refuses `version` unless it is one of `versions` (the index's, ascending).
pub(crate) fn check_listed(location: &IndexLocation, versions: &[u64], version: u64) -> Result<()> {
    if versions.contains(&version) {
        return Ok(());
    }
    let range = match (versions.first(), versions.last()) {
        (Some(first), Some(last)) => format!("its versions are {first}..={last}"),
        _ => "it has no committed version".to_string(),
    };
    Err(IndexError::invalid_argument(
        "version",
        format!(
            "index {} has no version {version} ({range})",
            location.url()
        ),
    ))
}

pub(crate) async fn read_version(
    location: &IndexLocation,
    version: u64,
) -> Result<VersionManifest> {
    let bytes = location.get(&location.version_file(version)).await?;
    let v = VersionManifest::from_json(version, &bytes)?;
    if v.version != version {
        return Err(IndexError::corrupt(
            format!("version {version}"),
            format!("file says it is version {}", v.version),
        ));
    }
    Ok(v)
}

/// The latest committed version, or `None` before the first finalize.
pub(crate) async fn latest_version(location: &IndexLocation) -> Result<Option<VersionManifest>> {
    match list_versions(location).await?.last() {
        Some(&v) => Ok(Some(read_version(location, v).await?)),
        None => Ok(None),
    }
}

pub(crate) async fn read_segment(
    location: &IndexLocation,
    segment_id: &str,
) -> Result<SegmentManifest> {
    let path = location.segment_dir(segment_id).join("segment.json");
    let bytes = location.get_opt(&path).await?.ok_or_else(|| {
        IndexError::corrupt(format!("segment {segment_id}"), "segment.json is missing")
    })?;
    let manifest = SegmentManifest::from_json(segment_id, &bytes)?;
    if manifest.segment_id != segment_id {
        return Err(IndexError::corrupt(
            format!("segment {segment_id}: segment.json"),
            format!("names segment {}", manifest.segment_id),
        ));
    }
    Ok(manifest)
}

pub(crate) async fn read_segment_fragments(
    location: &IndexLocation,
    segment: &SegmentManifest,
) -> Result<RoaringBitmap> {
    let what = format!("segment {}: fragments.roaring", segment.segment_id);
    let path = location
        .segment_dir(&segment.segment_id)
        .join("fragments.roaring");
    let bytes = location.get(&path).await?;
    if bytes.len() as u64 != segment.fragments_file.size
        || crc32fast::hash(&bytes) != segment.fragments_file.crc32
    {
        return Err(IndexError::corrupt(
            what,
            "size or checksum does not match segment.json",
        ));
    }
    RoaringBitmap::deserialize_from(&bytes[..])
        .map_err(|e| IndexError::corrupt(what, e.to_string()))
}
