//! The pure part of planning a finalize: checks, segment grouping and work units.

use roaring::RoaringBitmap;

use super::{CommitMode, FinalizeOptions, SegmentGrouping, SegmentPlan, ShardInput, WorkUnit};
use crate::error::{IndexError, Result};
use crate::format::ShardManifest;
use crate::model::Model;

/// A complete shard, read and checked for readability, ready to plan.
#[derive(Debug, Clone)]
pub struct PlannedShard {
    pub manifest: ShardManifest,
    /// Object-store path of the shard folder.
    pub dir: String,
    pub fragments: RoaringBitmap,
}

/// A committed segment's identity and fragments.
#[derive(Debug, Clone)]
pub struct CommittedSegment {
    pub segment_id: String,
    pub fragments: RoaringBitmap,
}

/// Planned segments with their work units and fragment sets.
#[derive(Debug)]
pub struct Planned {
    pub units: Vec<WorkUnit>,
    pub fragments: Vec<(String, RoaringBitmap)>,
}

fn sample(b: &RoaringBitmap) -> String {
    let shown: Vec<String> = b.iter().take(5).map(|f| f.to_string()).collect();
    let more = b.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Checks a shard's manifest against the index's model.
pub fn check_shard_model(shard: &ShardManifest, model: &Model) -> Result<()> {
    let id = &shard.shard_id;
    let bad = |what: String| Err(IndexError::Finalize(format!("shard {id}: {what}")));
    if shard.model != model.fingerprint() {
        return bad(format!(
            "built with model {}, but the index's model is {}",
            shard.model,
            model.fingerprint()
        ));
    }
    if shard.index_type != model.index_type() {
        return bad(format!(
            "index type {} differs from the index's {}",
            shard.index_type,
            model.index_type()
        ));
    }
    if shard.metric != model.metric() {
        return bad(format!(
            "metric {} differs from the index's {}",
            shard.metric,
            model.metric()
        ));
    }
    if shard.dim as usize != model.dim() {
        return bad(format!(
            "dimension {} differs from the index's {}",
            shard.dim,
            model.dim()
        ));
    }
    if shard.num_partitions as usize != model.num_partitions()
        || shard.partitions.len() != model.num_partitions()
    {
        return bad(format!(
            "has {} partitions, the index has {}",
            shard.partitions.len(),
            model.num_partitions()
        ));
    }
    let rows: u64 = shard.partitions.iter().map(|b| b.rows).sum();
    if rows != shard.rows {
        return bad(format!(
            "partitions hold {rows} rows, shard.json says {}",
            shard.rows
        ));
    }
    if let Some(b) = shard
        .partitions
        .iter()
        .find(|b| b.offset + b.length > shard.data_file.size)
    {
        return bad(format!(
            "block at offset {} lies past the end of data.arrow",
            b.offset
        ));
    }
    Ok(())
}

/// Groups checked shards into segments and splits each segment into work units.
/// `committed` are the segments of the latest version.
pub fn plan_segments(
    mut shards: Vec<PlannedShard>,
    committed: &[CommittedSegment],
    model: &Model,
    options: &FinalizeOptions,
    new_segment_id: &mut dyn FnMut() -> String,
) -> Result<Planned> {
    // Shards are ordered by their first fragment: that order, not uuids, drives grouping.
    shards.sort_by(|a, b| {
        (a.fragments.min(), &a.manifest.shard_id).cmp(&(b.fragments.min(), &b.manifest.shard_id))
    });
    let mut ids: Vec<(&str, &str)> = shards
        .iter()
        .map(|s| (s.manifest.shard_id.as_str(), s.dir.as_str()))
        .collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(IndexError::Finalize(format!(
            "shard id {} is staged twice ({} and {})",
            w[0].0, w[0].1, w[1].1
        )));
    }

    let mut union = RoaringBitmap::new();
    for (i, s) in shards.iter().enumerate() {
        if !union.is_disjoint(&s.fragments) {
            let other = shards[..i]
                .iter()
                .find(|o| !o.fragments.is_disjoint(&s.fragments))
                .map(|o| (o.manifest.shard_id.as_str(), &o.fragments & &s.fragments));
            if let Some((other, common)) = other {
                return Err(IndexError::Finalize(format!(
                    "shards {other} and {} both cover fragments {}",
                    s.manifest.shard_id,
                    sample(&common)
                )));
            }
        }
        union |= &s.fragments;
    }

    let mut replaced = Vec::new();
    for seg in committed {
        for s in &shards {
            let common = &seg.fragments & &s.fragments;
            if common.is_empty() {
                continue;
            }
            match options.mode {
                CommitMode::Append => {
                    return Err(IndexError::Finalize(format!(
                        "shard {} covers fragments {} already covered by committed segment {} \
                         (use mode => 'replace' to replace that segment)",
                        s.manifest.shard_id,
                        sample(&common),
                        seg.segment_id
                    )))
                }
                CommitMode::Replace => {
                    if !replaced.contains(&seg.segment_id) {
                        replaced.push(seg.segment_id.clone());
                    }
                }
            }
        }
    }

    let groups: Vec<Vec<PlannedShard>> = match options.grouping {
        SegmentGrouping::Single => vec![shards],
        SegmentGrouping::PerShard => shards.into_iter().map(|s| vec![s]).collect(),
        SegmentGrouping::TargetRows(target) => {
            let mut groups: Vec<Vec<PlannedShard>> = Vec::new();
            let mut rows = 0u64;
            for s in shards {
                if rows > 0 && rows + s.manifest.rows > target.max(1) {
                    rows = 0;
                }
                if rows == 0 {
                    groups.push(Vec::new());
                }
                rows += s.manifest.rows;
                if let Some(g) = groups.last_mut() {
                    g.push(s);
                }
            }
            groups
        }
    };

    let mut units = Vec::new();
    let mut fragments = Vec::new();
    for group in groups.into_iter().filter(|g| !g.is_empty()) {
        let segment_id = new_segment_id();
        let mut frags = RoaringBitmap::new();
        for s in &group {
            frags |= &s.fragments;
        }
        let ranges = partition_ranges(&group, model, options.target_file_bytes);
        let segment = SegmentPlan {
            segment_id: segment_id.clone(),
            shards: group.iter().map(|s| s.manifest.shard_id.clone()).collect(),
            rows: group.iter().map(|s| s.manifest.rows).sum(),
            num_fragments: frags.len(),
            min_fragment: frags.min(),
            max_fragment: frags.max(),
            num_files: ranges.len() as u32,
            replaces: replaced.clone(),
        };
        for (file_index, (start, end)) in ranges.into_iter().enumerate() {
            let shards_in: Vec<ShardInput> = group
                .iter()
                .map(|s| ShardInput {
                    shard_id: s.manifest.shard_id.clone(),
                    dir: s.dir.clone(),
                    blocks: s.manifest.partitions[start as usize..end as usize].to_vec(),
                })
                .collect();
            let rows = shards_in
                .iter()
                .flat_map(|s| &s.blocks)
                .map(|b| b.rows)
                .sum();
            units.push(WorkUnit {
                segment: segment.clone(),
                file_index: file_index as u32,
                file_name: format!("part-{start:05}-{end:05}.arrow"),
                partition_start: start,
                partition_end: end,
                rows,
                shards: shards_in,
            });
        }
        fragments.push((segment_id, frags));
    }
    Ok(Planned { units, fragments })
}

/// Work units per segment the HNSW types aim for at least: their units are CPU-heavy
/// (graph building) and uneven, so more of them keep every merge partition busy.
const MIN_HNSW_UNITS: u64 = 16;

/// Splits partitions into contiguous ranges of about `target_bytes` each (for the
/// HNSW types, also at least about [`MIN_HNSW_UNITS`] ranges). Sizes are computed from
/// row counts, so ranges depend only on the rows, never on how they were spread over
/// shards.
fn partition_ranges(group: &[PlannedShard], model: &Model, target_bytes: u64) -> Vec<(u32, u32)> {
    let p = model.num_partitions();
    let row_bytes = 8 + model.code_width() as u64;
    let sizes: Vec<u64> = (0..p)
        .map(|i| {
            group
                .iter()
                .map(|s| s.manifest.partitions[i].rows)
                .sum::<u64>()
                * row_bytes
        })
        .collect();
    let target_bytes = if model.index_type().is_hnsw() {
        target_bytes.min(sizes.iter().sum::<u64>() / MIN_HNSW_UNITS)
    } else {
        target_bytes
    };
    let mut ranges = Vec::new();
    let mut start = 0usize;
    let mut acc = 0u64;
    for (i, size) in sizes.iter().enumerate() {
        acc += size;
        if acc >= target_bytes.max(1) && i + 1 < p {
            ranges.push((start as u32, i as u32 + 1));
            start = i + 1;
            acc = 0;
        }
    }
    ranges.push((start as u32, p as u32));
    ranges
}
