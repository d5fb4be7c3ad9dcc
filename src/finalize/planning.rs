//! The pure part of planning a finalize: checks, segment grouping and work units.

use std::sync::Arc;

use roaring::RoaringBitmap;

use super::{FinalizeOptions, SegmentGrouping, SegmentPlan, ShardInput, WorkUnit};
use crate::catalog::{fragment_sample, replace_would_drop, CommitMode};
use crate::error::{IndexError, Result};
use crate::format::ShardManifest;
use crate::model::ModelInfo;

/// A complete shard, read and checked for readability, ready to plan.
#[derive(Debug, Clone)]
pub(crate) struct PlannedShard {
    pub manifest: ShardManifest,
    /// Object-store path of the shard folder.
    pub dir: String,
    pub fragments: RoaringBitmap,
}

/// A committed segment's identity and fragments.
#[derive(Debug, Clone)]
pub(crate) struct CommittedSegment {
    pub segment_id: String,
    pub rows: u64,
    pub fragments: RoaringBitmap,
}

/// Planned segments with their work units and fragment sets.
#[derive(Debug)]
pub(crate) struct Planned {
    pub units: Vec<WorkUnit>,
    pub fragments: Vec<(String, RoaringBitmap)>,
}

/// Checks a shard's manifest against the index's model.
pub(super) fn check_shard_model(shard: &ShardManifest, model: &ModelInfo) -> Result<()> {
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

/// Refuses when a fragment of `expected` is neither in `staged` nor in a committed
/// segment: its worker never staged it.
pub(crate) fn check_expected_fragments(
    expected: &[std::ops::RangeInclusive<u32>],
    staged: &RoaringBitmap,
    committed: &[CommittedSegment],
) -> Result<()> {
    let mut missing = RoaringBitmap::new();
    for range in expected {
        missing.insert_range(range.clone());
    }
    missing -= staged;
    for seg in committed {
        missing -= &seg.fragments;
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(IndexError::Finalize(format!(
        "{} expected fragments are neither staged nor committed: {}; run the workers for them \
         (or finalize without expect_fragments)",
        missing.len(),
        fragment_sample(&missing)
    )))
}

/// Groups checked shards into segments and splits each segment into work units.
/// `committed` are the segments of the latest version.
pub(crate) fn plan_segments(
    mut shards: Vec<PlannedShard>,
    committed: &[CommittedSegment],
    model: &ModelInfo,
    options: &FinalizeOptions,
    new_segment_id: &mut dyn FnMut(&[&str]) -> String,
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

    if let Some(s) = shards.iter().find(|s| s.manifest.rows == 0) {
        return Err(IndexError::Finalize(format!(
            "shard {} holds no rows, and a segment without rows is never committed; discard \
             it with CALL discard_vector_index_shard(index => ..., shard => '{}')",
            s.manifest.shard_id, s.manifest.shard_id
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
                    fragment_sample(&common)
                )));
            }
        }
        union |= &s.fragments;
    }
    if let Some(expected) = &options.expect_fragments {
        check_expected_fragments(expected, &union, committed)?;
    }

    let mut replaced = Vec::new();
    for seg in committed {
        let Some(s) = shards
            .iter()
            .find(|s| !seg.fragments.is_disjoint(&s.fragments))
        else {
            continue;
        };
        match options.mode {
            CommitMode::Append => {
                let common = &seg.fragments & &s.fragments;
                return Err(IndexError::Finalize(format!(
                    "shard {} covers fragments {} already covered by committed segment {}; \
                     if the shard was staged again by mistake, discard it with CALL \
                     discard_vector_index_shard(index => ..., shard => '{}'); to replace those \
                     rows, stage shards covering all {} fragments of that segment ({}..={}) \
                     and finalize with mode => 'replace'",
                    s.manifest.shard_id,
                    fragment_sample(&common),
                    seg.segment_id,
                    s.manifest.shard_id,
                    seg.fragments.len(),
                    seg.fragments.min().unwrap_or_default(),
                    seg.fragments.max().unwrap_or_default(),
                )));
            }
            CommitMode::Replace => {
                if let Some(dropped) =
                    replace_would_drop(&seg.segment_id, seg.rows, &seg.fragments, &union)
                {
                    return Err(IndexError::Finalize(dropped));
                }
                replaced.push(seg.segment_id.clone());
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
        let shard_ids: Vec<&str> = group.iter().map(|s| s.manifest.shard_id.as_str()).collect();
        let segment_id = new_segment_id(&shard_ids);
        let mut frags = RoaringBitmap::new();
        for s in &group {
            frags |= &s.fragments;
        }
        let ranges = partition_ranges(
            &partition_sizes(&group, model),
            options.target_file_bytes,
            model.index_type().is_hnsw(),
        );
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
        let shard_fragments: Vec<Arc<RoaringBitmap>> = group
            .iter()
            .map(|s| Arc::new(s.fragments.clone()))
            .collect();
        for (file_index, (start, end)) in ranges.into_iter().enumerate() {
            let shards_in: Vec<ShardInput> = group
                .iter()
                .zip(&shard_fragments)
                .map(|(s, fragments)| ShardInput {
                    shard_id: s.manifest.shard_id.clone(),
                    dir: s.dir.clone(),
                    fragments: Arc::clone(fragments),
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

/// Splits partitions into as many contiguous ranges as `target_bytes` calls for (for
/// the HNSW types, at least [`MIN_HNSW_UNITS`]; never more than there are
/// partitions), each as close to an equal share of what is left as partition
/// boundaries allow: work units of equal size keep the merge partitions, which take
/// units in turn, busy until the end (cutting greedily at `target_bytes` left a small
/// last unit and an idle core). Sizes are computed from row counts, so ranges depend
/// only on the rows, never on how they were spread over shards.
pub(crate) fn partition_ranges(sizes: &[u64], target_bytes: u64, hnsw: bool) -> Vec<(u32, u32)> {
    let p = sizes.len();
    let mut remaining: u64 = sizes.iter().sum();
    let mut n = remaining.div_ceil(target_bytes.max(1));
    if hnsw {
        n = n.max(MIN_HNSW_UNITS);
    }
    let n = n.clamp(1, p.max(1) as u64) as usize;
    let mut ranges = Vec::with_capacity(n);
    let (mut start, mut acc) = (0usize, 0u64);
    for i in 0..p {
        let left = n - ranges.len();
        if left == 1 {
            break;
        }
        acc += sizes[i];
        let next = sizes.get(i + 1).copied().unwrap_or(0);
        // Cut after partition i when that boundary is nearer an equal share of what
        // is left than the next one is, or when every range still to come needs one
        // of the partitions that follow.
        let nearer = (2 * acc as u128 + next as u128) * left as u128 >= 2 * remaining as u128;
        if nearer || p - (i + 1) < left {
            ranges.push((start as u32, i as u32 + 1));
            start = i + 1;
            remaining -= acc;
            acc = 0;
        }
    }
    ranges.push((start as u32, p as u32));
    ranges
}

/// Bytes each IVF partition of `group` will take in the segment (row ids and codes).
fn partition_sizes(group: &[PlannedShard], model: &ModelInfo) -> Vec<u64> {
    let row_bytes = 8 + model.code_width() as u64;
    (0..model.num_partitions())
        .map(|i| {
            group
                .iter()
                .map(|s| s.manifest.partitions[i].rows)
                .sum::<u64>()
                * row_bytes
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes_of(sizes: &[u64], (start, end): (u32, u32)) -> u64 {
        sizes[start as usize..end as usize].iter().sum()
    }

    #[test]
    fn equal_partitions_split_into_equal_ranges() {
        let sizes = vec![100u64; 256];
        // 25,600 bytes at a 4,000-byte target: 7 ranges, none more than a partition
        // apart (cutting greedily at the target left a last range of 1,600 bytes).
        let ranges = partition_ranges(&sizes, 4_000, false);
        assert_eq!(ranges.len(), 7);
        let bytes: Vec<u64> = ranges.iter().map(|&r| bytes_of(&sizes, r)).collect();
        assert!(
            bytes.iter().max().unwrap() - bytes.iter().min().unwrap() <= 100,
            "{bytes:?}"
        );
    }

    #[test]
    fn hnsw_asks_for_at_least_sixteen_ranges() {
        let sizes = vec![10u64; 64];
        assert_eq!(partition_ranges(&sizes, 1 << 20, true).len(), 16);
        assert_eq!(partition_ranges(&sizes, 1 << 20, false).len(), 1);
        // Lumpy partitions still give one range each when there are few.
        assert_eq!(
            partition_ranges(&[500, 100, 100, 100], 1 << 20, true),
            vec![(0, 1), (1, 2), (2, 3), (3, 4)]
        );
    }

    proptest! {
        /// Ranges tile the partitions in order, there are as many as the target size
        /// calls for (or one per partition), and none is further from another than
        /// two partitions' worth.
        #[test]
        fn ranges_tile_the_partitions_in_near_equal_shares(
            sizes in proptest::collection::vec(0u64..100_000, 1..300),
            target in 1u64..2_000_000,
            hnsw in any::<bool>(),
        ) {
            let ranges = partition_ranges(&sizes, target, hnsw);
            prop_assert_eq!(ranges[0].0, 0);
            prop_assert_eq!(ranges[ranges.len() - 1].1 as usize, sizes.len());
            for w in ranges.windows(2) {
                prop_assert_eq!(w[0].1, w[1].0);
            }
            for &(start, end) in &ranges {
                prop_assert!(start < end);
            }
            let total: u64 = sizes.iter().sum();
            let mut wanted = total.div_ceil(target);
            if hnsw {
                wanted = wanted.max(MIN_HNSW_UNITS);
            }
            prop_assert_eq!(ranges.len() as u64, wanted.clamp(1, sizes.len() as u64));
            let largest = sizes.iter().copied().max().unwrap_or(0);
            let bytes: Vec<u64> = ranges.iter().map(|&r| bytes_of(&sizes, r)).collect();
            let (max, min) = (bytes.iter().max().unwrap(), bytes.iter().min().unwrap());
            prop_assert!(max - min <= 2 * largest, "{:?}", bytes);
        }
    }
}
