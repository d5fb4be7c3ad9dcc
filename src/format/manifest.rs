//! JSON manifests: the index pointer, shards, segments and versions.

use serde::{Deserialize, Serialize};

use super::{BlockInfo, FORMAT_VERSION};
use super::{IndexType, Metric, ModelParams};
use crate::error::{IndexError, Result};

/// Rejects a manifest written by a format version this reader does not know.
pub(crate) fn check_version(what: &str, found: u32) -> Result<()> {
    if found == FORMAT_VERSION {
        Ok(())
    } else {
        Err(IndexError::UnsupportedVersion {
            what: what.to_string(),
            found,
            supported: FORMAT_VERSION,
        })
    }
}

/// A manifest type: it carries the format version it was written with and checks
/// its own consistency once parsed.
trait Versioned: Serialize + for<'de> Deserialize<'de> {
    fn format_version(&self) -> u32;

    /// Cross-checks of fields against each other (block addresses, counts), so that
    /// a manifest that parses is one whose addresses can be used without checks.
    fn validate(&self, _what: &str) -> Result<()> {
        Ok(())
    }
}

/// Key of the last member of every manifest: the CRC-32 of the bytes before it.
const CHECKSUM_KEY: &[u8] = b"\"checksum\"";

/// Serializes a manifest as pretty JSON whose last member is `"checksum"`: the CRC-32
/// (IEEE) of every byte of the file before the key (FORMAT.md, "Manifests").
fn to_json<T: Versioned>(manifest: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(manifest)?;
    // Pretty JSON of a struct ends with `\n}`: reopen the object to append the key.
    if bytes.pop() != Some(b'}') {
        return Err(IndexError::Internal(
            "a manifest is not a JSON object".into(),
        ));
    }
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    bytes.extend_from_slice(b",\n  ");
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(CHECKSUM_KEY);
    bytes.extend_from_slice(format!(": {crc}\n}}\n").as_bytes());
    Ok(bytes)
}

/// Checks a manifest's trailing checksum against the bytes before it.
fn check_checksum(what: &str, bytes: &[u8]) -> Result<()> {
    let at = bytes
        .windows(CHECKSUM_KEY.len())
        .rposition(|w| w == CHECKSUM_KEY)
        .ok_or_else(|| IndexError::corrupt(what, "no checksum (truncated or not a manifest)"))?;
    let tail = std::str::from_utf8(&bytes[at + CHECKSUM_KEY.len()..])
        .ok()
        .and_then(|t| t.trim_start().strip_prefix(':'))
        .and_then(|t| t.trim_end().strip_suffix('}'))
        .and_then(|t| t.trim().parse::<u32>().ok())
        .ok_or_else(|| IndexError::corrupt(what, "its checksum is unreadable"))?;
    let crc = crc32fast::hash(&bytes[..at]);
    if crc != tail {
        return Err(IndexError::corrupt(
            what,
            format!("checksum mismatch: crc32 {crc}, the file says {tail}"),
        ));
    }
    Ok(())
}

/// Parses a manifest: its checksum, then the document and its format version, then
/// its consistency. A manifest whose checksum fails is read for its version alone,
/// so that another format's file is reported as such rather than as damage.
fn parse<T: Versioned>(what: &str, bytes: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct VersionOnly {
        format_version: u32,
    }
    if let Err(damaged) = check_checksum(what, bytes) {
        if let Ok(v) = serde_json::from_slice::<VersionOnly>(bytes) {
            check_version(what, v.format_version)?;
        }
        return Err(damaged);
    }
    let manifest: T = serde_json::from_slice(bytes)
        .map_err(|e| IndexError::corrupt(what, format!("not a manifest: {e}")))?;
    check_version(what, manifest.format_version())?;
    manifest.validate(what)?;
    Ok(manifest)
}

/// Size and CRC-32 of a file a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub crc32: u32,
}

/// `index.json`: names the model every shard and segment of the index must use,
/// with its parameters (what finalize needs) and the size and CRC-32 of its file
/// (checked before the file is decoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexManifest {
    pub format_version: u32,
    pub model: String,
    pub model_file: FileInfo,
    pub params: ModelParams,
}

impl Versioned for IndexManifest {
    fn format_version(&self) -> u32 {
        self.format_version
    }

    fn validate(&self, what: &str) -> Result<()> {
        let expected = format!("models/{}.arrow", self.model);
        if self.model_file.name != expected {
            return Err(IndexError::corrupt(
                what,
                format!(
                    "names model file {}, expected {expected}",
                    self.model_file.name
                ),
            ));
        }
        self.params.check(what).map(|_| ())
    }
}

impl IndexManifest {
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        parse("index.json", bytes)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        to_json(self)
    }
}

/// `shard.json`: written last by a worker; its presence makes the shard complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub format_version: u32,
    pub shard_id: String,
    pub model: String,
    pub index_type: IndexType,
    pub metric: Metric,
    pub dim: u32,
    pub num_partitions: u32,
    pub rows: u64,
    pub num_fragments: u64,
    pub min_fragment: Option<u32>,
    pub max_fragment: Option<u32>,
    pub data_file: FileInfo,
    pub fragments_file: FileInfo,
    /// One block per IVF partition, in partition order.
    pub partitions: Vec<BlockInfo>,
}

impl Versioned for ShardManifest {
    fn format_version(&self) -> u32 {
        self.format_version
    }

    fn validate(&self, what: &str) -> Result<()> {
        for (file, name) in [
            (&self.data_file, "data.arrow"),
            (&self.fragments_file, "fragments.roaring"),
        ] {
            if file.name != name {
                return Err(IndexError::corrupt(
                    what,
                    format!("names file '{}' where {name} belongs", file.name),
                ));
            }
        }
        check_fragment_summary(
            what,
            self.num_fragments,
            self.min_fragment,
            self.max_fragment,
        )?;
        check_blocks(
            what,
            "data.arrow",
            &self.partitions,
            self.num_partitions,
            self.data_file.size,
        )?;
        check_rows(what, self.rows, &self.partitions)
    }
}

impl ShardManifest {
    pub fn from_json(shard: &str, bytes: &[u8]) -> Result<Self> {
        parse(&format!("shard {shard}: shard.json"), bytes)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        to_json(self)
    }
}

/// Blocks of one file: `expected` of them, in file order, each inside the file.
fn check_blocks(
    what: &str,
    file: &str,
    blocks: &[BlockInfo],
    expected: u32,
    size: u64,
) -> Result<()> {
    if blocks.len() as u64 != u64::from(expected) {
        return Err(IndexError::corrupt(
            what,
            format!(
                "{file} has {} blocks for {expected} partitions",
                blocks.len()
            ),
        ));
    }
    let mut end = 0u64;
    for (i, b) in blocks.iter().enumerate() {
        let within = b
            .offset
            .checked_add(b.length)
            .is_some_and(|e| b.offset >= end && e <= size);
        if !within || u64::from(b.meta_len) > b.length {
            return Err(IndexError::corrupt(
                what,
                format!(
                    "{file}: block {i} (offset {}, length {}) is not inside the file's {size} bytes after the block before it",
                    b.offset, b.length
                ),
            ));
        }
        end = b.offset + b.length;
    }
    Ok(())
}

fn check_rows(what: &str, rows: u64, blocks: &[BlockInfo]) -> Result<()> {
    let sum = blocks
        .iter()
        .try_fold(0u64, |sum, b| sum.checked_add(b.rows));
    if sum != Some(rows) {
        return Err(IndexError::corrupt(
            what,
            format!("says {rows} rows, its blocks hold {sum:?}"),
        ));
    }
    Ok(())
}

fn check_fragment_summary(what: &str, num: u64, min: Option<u32>, max: Option<u32>) -> Result<()> {
    let consistent = match (min, max) {
        (None, None) => num == 0,
        (Some(lo), Some(hi)) => lo <= hi && num >= 1 && num <= u64::from(hi - lo) + 1,
        _ => false,
    };
    if !consistent {
        return Err(IndexError::corrupt(
            what,
            format!("fragment summary is inconsistent: {num} fragments from {min:?} to {max:?}"),
        ));
    }
    Ok(())
}

/// A name a manifest gives a file or folder: one path component.
fn check_name(what: &str, name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if !plain {
        return Err(IndexError::corrupt(
            what,
            format!("'{name}' is not a plain file name"),
        ));
    }
    Ok(())
}

/// One data file of a segment: a contiguous range of IVF partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentFile {
    pub name: String,
    pub size: u64,
    pub partition_start: u32,
    pub partition_end: u32,
    /// One block per partition in `partition_start..partition_end`.
    pub partitions: Vec<BlockInfo>,
    /// HNSW types: the graphs of the same partitions, one block each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<GraphFile>,
}

/// The graph file of a segment data file: one graph block per IVF partition
/// (FORMAT.md, "Graph files").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphFile {
    pub name: String,
    pub size: u64,
    /// One block per partition, in the order of the data file's blocks.
    pub partitions: Vec<BlockInfo>,
}

/// `segment.json`: describes one immutable segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentManifest {
    pub format_version: u32,
    pub segment_id: String,
    pub model: String,
    pub index_type: IndexType,
    pub metric: Metric,
    pub dim: u32,
    pub num_partitions: u32,
    pub rows: u64,
    pub num_fragments: u64,
    pub min_fragment: Option<u32>,
    pub max_fragment: Option<u32>,
    pub files: Vec<SegmentFile>,
    pub fragments_file: FileInfo,
    /// Shards merged into this segment; a re-run of finalize skips them.
    pub consumed_shards: Vec<String>,
}

impl Versioned for SegmentManifest {
    fn format_version(&self) -> u32 {
        self.format_version
    }

    /// The files cover partitions `0..num_partitions` contiguously, each with one
    /// block (and one graph block, for the HNSW types) per partition inside it.
    fn validate(&self, what: &str) -> Result<()> {
        check_name(what, &self.segment_id)?;
        check_fragment_summary(
            what,
            self.num_fragments,
            self.min_fragment,
            self.max_fragment,
        )?;
        if self.fragments_file.name != "fragments.roaring" {
            return Err(IndexError::corrupt(
                what,
                format!("names fragments file '{}'", self.fragments_file.name),
            ));
        }
        let mut next = 0u32;
        let mut rows = 0u64;
        for f in &self.files {
            check_name(what, &f.name)?;
            if f.partition_start != next || f.partition_end <= f.partition_start {
                return Err(IndexError::corrupt(
                    what,
                    format!(
                        "file {} covers partitions {}..{} where partition {next} comes next",
                        f.name, f.partition_start, f.partition_end
                    ),
                ));
            }
            let count = f.partition_end - f.partition_start;
            check_blocks(what, &f.name, &f.partitions, count, f.size)?;
            match (&f.graph, self.index_type.is_hnsw()) {
                (Some(g), true) => {
                    check_name(what, &g.name)?;
                    check_blocks(what, &g.name, &g.partitions, count, g.size)?;
                }
                (None, false) => {}
                (Some(_), false) => {
                    return Err(IndexError::corrupt(
                        what,
                        format!(
                            "file {} has a graph, but {} has none",
                            f.name, self.index_type
                        ),
                    ))
                }
                (None, true) => {
                    return Err(IndexError::corrupt(
                        what,
                        format!("file {} has no graph file", f.name),
                    ))
                }
            }
            rows = f
                .partitions
                .iter()
                .try_fold(rows, |sum, b| sum.checked_add(b.rows))
                .ok_or_else(|| IndexError::corrupt(what, "row counts overflow"))?;
            next = f.partition_end;
        }
        if next != self.num_partitions {
            return Err(IndexError::corrupt(
                what,
                format!(
                    "its files cover partitions 0..{next} of {}",
                    self.num_partitions
                ),
            ));
        }
        if rows != self.rows {
            return Err(IndexError::corrupt(
                what,
                format!("says {} rows, its blocks hold {rows}", self.rows),
            ));
        }
        for shard in &self.consumed_shards {
            check_name(what, shard)?;
        }
        Ok(())
    }
}

impl SegmentManifest {
    pub fn from_json(segment: &str, bytes: &[u8]) -> Result<Self> {
        parse(&format!("segment {segment}: segment.json"), bytes)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        to_json(self)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.size + f.graph.as_ref().map_or(0, |g| g.size))
            .sum::<u64>()
            + self.fragments_file.size
    }

    /// The file (its number in `files`) and block holding IVF partition
    /// `partition`, if any.
    pub(crate) fn block(&self, partition: u32) -> Option<(usize, &BlockInfo)> {
        let f = self
            .files
            .iter()
            .position(|f| (f.partition_start..f.partition_end).contains(&partition))?;
        let file = &self.files[f];
        Some((
            f,
            file.partitions
                .get((partition - file.partition_start) as usize)?,
        ))
    }
}

/// A committed segment as listed in a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    pub segment_id: String,
    pub rows: u64,
    pub num_fragments: u64,
    pub min_fragment: Option<u32>,
    pub max_fragment: Option<u32>,
    pub bytes: u64,
    pub consumed_shards: Vec<String>,
}

/// `_versions/<N>.json`: the committed segments of version N. Never rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionManifest {
    pub format_version: u32,
    pub version: u64,
    pub model: String,
    pub segments: Vec<SegmentRef>,
    /// Segments of the previous version this version dropped (`replace` mode).
    #[serde(default)]
    pub replaced_segments: Vec<String>,
    /// The older version whose segments this one lists again (a restore), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
}

impl Versioned for VersionManifest {
    fn format_version(&self) -> u32 {
        self.format_version
    }

    fn validate(&self, what: &str) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for s in &self.segments {
            check_name(what, &s.segment_id)?;
            if !seen.insert(s.segment_id.as_str()) {
                return Err(IndexError::corrupt(
                    what,
                    format!("lists segment {} twice", s.segment_id),
                ));
            }
            check_fragment_summary(what, s.num_fragments, s.min_fragment, s.max_fragment)?;
        }
        Ok(())
    }
}

impl VersionManifest {
    pub fn from_json(version: u64, bytes: &[u8]) -> Result<Self> {
        parse(&format!("_versions/{version}.json"), bytes)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        to_json(self)
    }
}
