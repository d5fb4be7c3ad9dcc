//! JSON manifests: the index pointer, shards, segments and versions.

use serde::{Deserialize, Serialize};

use super::{BlockInfo, FORMAT_VERSION};
use crate::error::{IndexError, Result};
use crate::model::{IndexType, Metric};

/// Rejects a manifest written by a format version this reader does not know.
pub fn check_version(what: &str, found: u32) -> Result<()> {
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

/// A manifest type: it carries the format version it was written with.
trait Versioned: for<'de> Deserialize<'de> {
    fn format_version(&self) -> u32;
}

/// Parses a manifest and checks its `format_version`. The document is parsed once
/// when it is well-formed (shard manifests are parsed on every finalize); only when
/// it is not is its version read on its own, so that a newer layout is reported as
/// such rather than as a parse error.
fn parse<T: Versioned>(what: &str, bytes: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct VersionOnly {
        format_version: u32,
    }
    match serde_json::from_slice::<T>(bytes) {
        Ok(manifest) => {
            check_version(what, manifest.format_version())?;
            Ok(manifest)
        }
        Err(full) => {
            let v: VersionOnly = serde_json::from_slice(bytes)
                .map_err(|e| IndexError::corrupt(what, format!("not a manifest: {e}")))?;
            check_version(what, v.format_version)?;
            Err(IndexError::corrupt(what, full.to_string()))
        }
    }
}

/// Size and CRC-32 of a file a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    pub crc32: u32,
}

/// `index.json`: names the model every shard and segment of the index must use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexManifest {
    pub format_version: u32,
    pub model: String,
}

impl Versioned for IndexManifest {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

impl IndexManifest {
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        parse("index.json", bytes)
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
}

impl ShardManifest {
    pub fn from_json(shard: &str, bytes: &[u8]) -> Result<Self> {
        parse(&format!("shard {shard}: shard.json"), bytes)
    }
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
}

impl SegmentManifest {
    pub fn from_json(segment: &str, bytes: &[u8]) -> Result<Self> {
        parse(&format!("segment {segment}: segment.json"), bytes)
    }

    pub fn bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.size + f.graph.as_ref().map_or(0, |g| g.size))
            .sum::<u64>()
            + self.fragments_file.size
    }

    /// The graph file and graph block of IVF partition `partition`, if the segment has graphs.
    pub fn graph_block(&self, partition: u32) -> Option<(&GraphFile, &BlockInfo)> {
        let (file, _) = self.block(partition)?;
        let graph = file.graph.as_ref()?;
        Some((
            graph,
            graph
                .partitions
                .get((partition - file.partition_start) as usize)?,
        ))
    }

    /// The file and block holding IVF partition `partition`, if any.
    pub fn block(&self, partition: u32) -> Option<(&SegmentFile, &BlockInfo)> {
        self.files
            .iter()
            .find(|f| (f.partition_start..f.partition_end).contains(&partition))
            .and_then(|f| {
                Some((
                    f,
                    f.partitions.get((partition - f.partition_start) as usize)?,
                ))
            })
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
}

impl Versioned for VersionManifest {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

impl VersionManifest {
    pub fn from_json(version: u64, bytes: &[u8]) -> Result<Self> {
        parse(&format!("version {version}"), bytes)
    }
}
