//! Work units as Arrow rows: what [`super::VectorIndexPlanExec`] emits and
//! [`super::VectorIndexMergeExec`] reads.
//!
//! A unit's bulk is its shards' block addresses (shards × partitions of the unit), so
//! they travel as nested Arrow columns, not as text to format and parse on each
//! side. Each shard also carries its fragment set (the portable Roaring bytes the
//! staging scan read and checked), which the merge checks row ids against without
//! reading `fragments.roaring` again. The segment plan, a few shard ids passed
//! through to the commit, stays JSON.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, ListArray, RecordBatch, StringArray, StructArray, UInt32Array,
    UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::{exec_datafusion_err, internal_err, Result};
use roaring::RoaringBitmap;

use super::{SegmentPlan, ShardInput, WorkUnit};
use crate::exec::{binaries, primitive, strings, structs, NamedColumns};
use crate::format::BlockInfo;

fn block_fields() -> Fields {
    Fields::from(vec![
        Field::new("rows", DataType::UInt64, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("meta_len", DataType::UInt32, false),
        Field::new("length", DataType::UInt64, false),
        Field::new("crc32", DataType::UInt32, false),
    ])
}

fn list_of(fields: Fields) -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Struct(fields), false))
}

fn shard_fields() -> Fields {
    Fields::from(vec![
        Field::new("shard_id", DataType::Utf8, false),
        Field::new("dir", DataType::Utf8, false),
        Field::new("fragments", DataType::Binary, false),
        Field::new("blocks", DataType::List(list_of(block_fields())), false),
    ])
}

/// Column names of [`work_unit_schema`].
mod col {
    pub(super) const SEGMENT_ID: &str = "segment_id";
    pub(super) const FILE_INDEX: &str = "file_index";
    pub(super) const FILE_NAME: &str = "file_name";
    pub(super) const PARTITION_START: &str = "partition_start";
    pub(super) const PARTITION_END: &str = "partition_end";
    pub(super) const ROWS: &str = "rows";
    pub(super) const SEGMENT: &str = "segment";
    pub(super) const SHARDS: &str = "shards";
    pub(super) const FRAGMENTS: &str = "fragments";
}

/// Schema of the work units emitted by [`super::VectorIndexPlanExec`]: one row per
/// unit; `shards` lists, in the segment's shard order, each shard's blocks of the
/// unit's partitions; `fragments` is the segment's fragment set on its first unit.
pub(crate) fn work_unit_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SEGMENT_ID, DataType::Utf8, false),
        Field::new(col::FILE_INDEX, DataType::UInt32, false),
        Field::new(col::FILE_NAME, DataType::Utf8, false),
        Field::new(col::PARTITION_START, DataType::UInt32, false),
        Field::new(col::PARTITION_END, DataType::UInt32, false),
        Field::new(col::ROWS, DataType::UInt64, false),
        Field::new(col::SEGMENT, DataType::Utf8, false),
        Field::new(col::SHARDS, DataType::List(list_of(shard_fields())), false),
        Field::new(col::FRAGMENTS, DataType::Binary, true),
    ]))
}

/// The columns that identify a work unit, as expressions over `schema` (the work unit
/// schema): the key the finalize plan hash-partitions units on.
pub(super) fn work_unit_key(
    schema: &SchemaRef,
) -> datafusion::common::Result<Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>> {
    [col::SEGMENT_ID, col::FILE_INDEX]
        .into_iter()
        .map(|name| datafusion::physical_expr::expressions::col(name, schema))
        .collect()
}

fn roaring_bytes(set: &RoaringBitmap) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(set.serialized_size());
    set.serialize_into(&mut bytes)?;
    Ok(bytes)
}

impl WorkUnit {
    /// One batch holding this unit, with the segment's fragment set when given.
    pub(super) fn to_batch(
        &self,
        segment_fragments: Option<&RoaringBitmap>,
    ) -> Result<RecordBatch> {
        let unit = self;
        let (mut rows, mut offsets, mut meta_lens, mut lengths, mut crcs) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut block_ends = vec![0i32];
        let mut fragment_sets = Vec::with_capacity(unit.shards.len());
        for s in &unit.shards {
            for b in &s.blocks {
                rows.push(b.rows);
                offsets.push(b.offset);
                meta_lens.push(b.meta_len);
                lengths.push(b.length);
                crcs.push(b.crc32);
            }
            block_ends.push(i32::try_from(rows.len()).map_err(|_| {
                exec_datafusion_err!("work unit {} lists too many blocks", unit.file_name)
            })?);
            fragment_sets.push(roaring_bytes(&s.fragments)?);
        }
        let blocks = StructArray::try_new(
            block_fields(),
            vec![
                Arc::new(UInt64Array::from(rows)) as ArrayRef,
                Arc::new(UInt64Array::from(offsets)),
                Arc::new(UInt32Array::from(meta_lens)),
                Arc::new(UInt64Array::from(lengths)),
                Arc::new(UInt32Array::from(crcs)),
            ],
            None,
        )?;
        let shards = StructArray::try_new(
            shard_fields(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    unit.shards.iter().map(|s| &s.shard_id),
                )) as ArrayRef,
                Arc::new(StringArray::from_iter_values(
                    unit.shards.iter().map(|s| &s.dir),
                )),
                Arc::new(BinaryArray::from_iter_values(&fragment_sets)),
                Arc::new(ListArray::try_new(
                    list_of(block_fields()),
                    OffsetBuffer::new(block_ends.into()),
                    Arc::new(blocks),
                    None,
                )?),
            ],
            None,
        )?;
        let shards = ListArray::try_new(
            list_of(shard_fields()),
            OffsetBuffer::from_lengths([unit.shards.len()]),
            Arc::new(shards),
            None,
        )?;
        let segment =
            serde_json::to_string(&unit.segment).map_err(|e| exec_datafusion_err!("{e}"))?;
        let segment_fragments = match (unit.file_index, segment_fragments) {
            (0, Some(set)) => Some(roaring_bytes(set)?),
            _ => None,
        };
        Ok(RecordBatch::try_new(
            work_unit_schema(),
            vec![
                Arc::new(StringArray::from(vec![unit.segment.segment_id.as_str()])),
                Arc::new(UInt32Array::from(vec![unit.file_index])),
                Arc::new(StringArray::from(vec![unit.file_name.as_str()])),
                Arc::new(UInt32Array::from(vec![unit.partition_start])),
                Arc::new(UInt32Array::from(vec![unit.partition_end])),
                Arc::new(UInt64Array::from(vec![unit.rows])),
                Arc::new(StringArray::from(vec![segment])),
                Arc::new(shards),
                Arc::new(BinaryArray::from(vec![segment_fragments.as_deref()])),
            ],
        )?)
    }
}

fn u64s<'a>(of: &'a impl NamedColumns, name: &str) -> Result<&'a [u64]> {
    Ok(primitive::<UInt64Type>(of, name)?.values())
}

fn u32s<'a>(of: &'a impl NamedColumns, name: &str) -> Result<&'a [u32]> {
    Ok(primitive::<UInt32Type>(of, name)?.values())
}

/// A work unit read from its row.
pub(super) struct UnitRow {
    pub unit: WorkUnit,
    /// `unit.segment` as the row carries it (JSON), to pass on to the commit.
    pub segment_json: String,
    /// The segment's fragment set (portable Roaring bytes), on the segment's first unit.
    pub segment_fragments: Option<Vec<u8>>,
}

impl UnitRow {
    /// The units of a batch of [`work_unit_schema`], its columns found by name.
    pub(super) fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>> {
        let file_index = u32s(batch, col::FILE_INDEX)?;
        let file_name = strings(batch, col::FILE_NAME)?;
        let (start, end) = (
            u32s(batch, col::PARTITION_START)?,
            u32s(batch, col::PARTITION_END)?,
        );
        let rows = u64s(batch, col::ROWS)?;
        let segment = strings(batch, col::SEGMENT)?;
        let fragments = binaries(batch, col::FRAGMENTS)?;
        (0..batch.num_rows())
            .map(|i| {
                let plan: SegmentPlan = serde_json::from_str(segment.value(i))
                    .map_err(|e| exec_datafusion_err!("work unit {}: {e}", file_name.value(i)))?;
                let unit = WorkUnit {
                    segment: plan,
                    file_index: file_index[i],
                    file_name: file_name.value(i).to_string(),
                    partition_start: start[i],
                    partition_end: end[i],
                    rows: rows[i],
                    shards: shard_inputs(&structs(batch, col::SHARDS, i)?)?,
                };
                check_unit(&unit)?;
                Ok(Self {
                    unit,
                    segment_json: segment.value(i).to_string(),
                    segment_fragments: fragments.is_valid(i).then(|| fragments.value(i).to_vec()),
                })
            })
            .collect()
    }
}

/// The merge indexes blocks by partition and reads their byte ranges: a unit whose
/// blocks do not match its partition range cannot have come from the plan operator.
fn check_unit(unit: &WorkUnit) -> Result<()> {
    let partitions = unit.partition_end.checked_sub(unit.partition_start);
    for s in &unit.shards {
        let fits = s
            .blocks
            .iter()
            .all(|b| b.offset.checked_add(b.length).is_some() && u64::from(b.meta_len) <= b.length);
        if partitions != Some(s.blocks.len() as u32) || !fits {
            return internal_err!(
                "work unit {} (partitions {}..{}): shard {} has {} blocks or a block out of range",
                unit.file_name,
                unit.partition_start,
                unit.partition_end,
                s.shard_id,
                s.blocks.len()
            );
        }
    }
    Ok(())
}

fn shard_inputs(shards: &StructArray) -> Result<Vec<ShardInput>> {
    let (ids, dirs) = (strings(shards, "shard_id")?, strings(shards, "dir")?);
    let fragments = binaries(shards, "fragments")?;
    (0..shards.len())
        .map(|s| {
            let b = structs(shards, "blocks", s)?;
            let (rows, offset, meta_len, length, crc32) = (
                u64s(&b, "rows")?,
                u64s(&b, "offset")?,
                u32s(&b, "meta_len")?,
                u64s(&b, "length")?,
                u32s(&b, "crc32")?,
            );
            let set = RoaringBitmap::deserialize_from(fragments.value(s)).map_err(|e| {
                exec_datafusion_err!("work unit: fragments of shard {}: {e}", ids.value(s))
            })?;
            Ok(ShardInput {
                shard_id: ids.value(s).to_string(),
                dir: dirs.value(s).to_string(),
                fragments: Arc::new(set),
                blocks: (0..b.len())
                    .map(|k| BlockInfo {
                        rows: rows[k],
                        offset: offset[k],
                        meta_len: meta_len[k],
                        length: length[k],
                        crc32: crc32[k],
                    })
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finalize::SegmentPlan;

    fn unit(shards: usize, partitions: u32) -> WorkUnit {
        let segment = SegmentPlan {
            segment_id: "seg".into(),
            shards: (0..shards).map(|s| format!("s{s}")).collect(),
            rows: 10,
            num_fragments: 2,
            min_fragment: Some(0),
            max_fragment: Some(7),
            num_files: 3,
            replaces: vec!["old".into()],
        };
        WorkUnit {
            segment,
            file_index: 1,
            file_name: format!("part-00002-{:05}.arrow", 2 + partitions),
            partition_start: 2,
            partition_end: 2 + partitions,
            rows: 10,
            shards: (0..shards)
                .map(|s| ShardInput {
                    shard_id: format!("s{s}"),
                    dir: format!("_staging/partial_s{s}"),
                    fragments: Arc::new(RoaringBitmap::from_iter([s as u32, 7 + s as u32])),
                    blocks: (0..partitions as u64)
                        .map(|p| BlockInfo {
                            rows: p + s as u64,
                            offset: 1000 * p,
                            meta_len: 184,
                            length: 900 + p,
                            crc32: (p * 31 + s as u64) as u32,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn units_survive_a_batch_and_a_repartition() {
        let units = [unit(3, 4), unit(1, 1), unit(0, 2)];
        let set = RoaringBitmap::from_iter([0u32, 7]);
        let batches: Vec<RecordBatch> = units
            .iter()
            .map(|u| u.to_batch(Some(&set)).unwrap())
            .collect();
        // A repartition may hand the merge several units coalesced into one batch.
        let batch = arrow::compute::concat_batches(&work_unit_schema(), &batches).unwrap();
        let read = UnitRow::from_batch(&batch).unwrap();
        assert_eq!(read.len(), units.len());
        for (got, want) in read.iter().zip(&units) {
            assert_eq!(&got.unit, want);
            assert_eq!(got.segment_fragments.is_some(), want.file_index == 0);
        }
        let first = WorkUnit {
            file_index: 0,
            ..unit(1, 1)
        }
        .to_batch(Some(&set))
        .unwrap();
        let read = UnitRow::from_batch(&first).unwrap();
        let bytes = read[0]
            .segment_fragments
            .as_deref()
            .expect("the first unit carries the segment's fragments");
        assert_eq!(RoaringBitmap::deserialize_from(bytes).unwrap(), set);
    }

    #[test]
    fn a_batch_without_the_shards_column_is_refused() {
        let batch = unit(1, 1).to_batch(None).unwrap();
        let without = batch.project(&[0, 1, 2, 3, 4, 5, 6, 8]).unwrap();
        let err = UnitRow::from_batch(&without)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("lack column 'shards'"), "{err}");
    }
}
