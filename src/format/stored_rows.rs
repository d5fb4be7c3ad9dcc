//! Stored rows (`row_id`, then one fixed-width column; FORMAT.md, "Stored rows"): their
//! schema, building a batch of them, viewing one without a copy, and, at the byte
//! level, building the message header of a batch whose body finalize writes piece by
//! piece and finding the row ids and stored values inside a block without decoding it.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, RecordBatch,
    UInt64Array,
};
use arrow::buffer::{Buffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt64Type};
use arrow::ipc::{
    Buffer as IpcBuffer, FieldNode, MessageBuilder, MessageHeader, MetadataVersion,
    RecordBatchBuilder,
};
use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;

use super::ipc::{pad_to_8, IpcFileSink};
use super::Quantizer;
use super::{BlockInfo, ROW_ID_COLUMN};
use crate::error::{IndexError, Result};

/// Name of the stored column: `vector` for FLAT, `codes` for PQ and SQ.
pub(crate) fn stored_column_name(q: Quantizer) -> &'static str {
    match q {
        Quantizer::Flat => "vector",
        Quantizer::Pq | Quantizer::Sq => "codes",
    }
}

/// The schema of stored rows: `row_id`, then `vector` (`FixedSizeList<Float32, dim>`)
/// for FLAT or `codes` (`FixedSizeBinary(code_width)`) for PQ and SQ.
pub(crate) fn stored_rows_schema(q: Quantizer, dim: usize, code_width: usize) -> SchemaRef {
    let stored = match q {
        Quantizer::Flat => DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, false)),
            dim as i32,
        ),
        Quantizer::Pq | Quantizer::Sq => DataType::FixedSizeBinary(code_width as i32),
    };
    Arc::new(Schema::new(vec![
        Field::new(ROW_ID_COLUMN, DataType::UInt64, false),
        Field::new(stored_column_name(q), stored, false),
    ]))
}

/// A batch of `schema` (a [`stored_rows_schema`]) from row ids and the rows' packed
/// stored bytes, without a copy. `values` should be 8-byte aligned (a `MutableBuffer`
/// or a slice of an IPC body).
pub(crate) fn stored_rows_batch(
    schema: &SchemaRef,
    row_ids: Buffer,
    values: Buffer,
) -> Result<RecordBatch> {
    let row_ids = UInt64Array::new(row_ids.into(), None);
    let stored: ArrayRef = match schema.field(1).data_type() {
        DataType::FixedSizeList(item, dim) => Arc::new(FixedSizeListArray::try_new(
            Arc::clone(item),
            *dim,
            Arc::new(Float32Array::new(values.into(), None)),
            None,
        )?),
        DataType::FixedSizeBinary(w) => Arc::new(FixedSizeBinaryArray::try_new(*w, values, None)?),
        other => {
            return Err(IndexError::Internal(format!(
                "a stored-rows schema with a {other} column"
            )))
        }
    };
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(row_ids), stored],
    )?)
}

/// Rows of a stored-rows batch, viewed without a copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredRows<'a> {
    /// Row ids, one per row.
    pub ids: &'a [u64],
    /// The stored values of every row, `width` bytes each (little-endian `f32` for FLAT).
    pub bytes: &'a [u8],
    pub width: usize,
    /// FLAT: the same values as floats, with the dimension.
    pub vectors: Option<(&'a [f32], usize)>,
}

/// A stored-rows batch's row ids and stored values: buffers sharing the batch's
/// memory and holding exactly its rows. Found once per batch, so that viewing any
/// range of its rows afterwards ([`StoredBuffers::rows`]) is only arithmetic.
#[derive(Debug, Clone)]
pub(crate) struct StoredBuffers {
    pub ids: ScalarBuffer<u64>,
    /// `width` bytes a row.
    pub values: Buffer,
    pub width: usize,
    /// FLAT: the values as floats, with the dimension.
    floats: Option<(ScalarBuffer<f32>, usize)>,
}

impl StoredBuffers {
    /// The buffers of `batch`, which must have a stored-rows schema.
    pub(crate) fn of(batch: &RecordBatch) -> Result<Self> {
        let bad = |why: &str| IndexError::Internal(format!("stored rows: {why}"));
        if batch.num_columns() != 2 {
            return Err(bad("expected two columns"));
        }
        let ids = batch
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| bad("row_id is not UInt64"))?
            .values()
            .clone();
        let col = batch.column(1);
        let n = col.len();
        Ok(match col.data_type() {
            DataType::FixedSizeList(_, dim) => {
                let list = col.as_fixed_size_list();
                let d = *dim as usize;
                let floats = list
                    .values()
                    .as_primitive_opt::<Float32Type>()
                    .ok_or_else(|| bad("vector items are not Float32"))?
                    .values()
                    .slice(list.offset() * d, n * d);
                Self {
                    ids,
                    // Arrow's own byte view of the floats, not a cast of ours.
                    values: floats.inner().clone(),
                    width: d * 4,
                    floats: Some((floats, d)),
                }
            }
            DataType::FixedSizeBinary(w) => {
                let codes = col.as_fixed_size_binary();
                let w = *w as usize;
                Self {
                    ids,
                    values: codes.values().slice_with_length(codes.offset() * w, n * w),
                    width: w,
                    floats: None,
                }
            }
            _ => return Err(bad("unexpected stored column type")),
        })
    }

    pub(crate) fn num_rows(&self) -> usize {
        self.ids.len()
    }

    /// The rows of `parts` one after the other, in new buffers; `None` if they are
    /// not all rows of one stored column (width, and floats or codes).
    pub(crate) fn join(parts: &[Self]) -> Option<Self> {
        let first = parts.first()?;
        let dim = first.floats.as_ref().map(|(_, d)| *d);
        if parts
            .iter()
            .any(|p| p.width != first.width || p.floats.as_ref().map(|(_, d)| *d) != dim)
        {
            return None;
        }
        let ids: Vec<u64> = parts.iter().flat_map(|p| p.ids.iter().copied()).collect();
        Some(match dim {
            Some(d) => {
                let floats: ScalarBuffer<f32> = parts
                    .iter()
                    .flat_map(|p| p.floats.iter().flat_map(|(f, _)| f.iter().copied()))
                    .collect::<Vec<f32>>()
                    .into();
                Self {
                    ids: ids.into(),
                    values: floats.inner().clone(),
                    width: first.width,
                    floats: Some((floats, d)),
                }
            }
            None => {
                let mut values = Vec::with_capacity(parts.iter().map(|p| p.values.len()).sum());
                for p in parts {
                    values.extend_from_slice(&p.values);
                }
                Self {
                    ids: ids.into(),
                    values: Buffer::from_vec(values),
                    width: first.width,
                    floats: None,
                }
            }
        })
    }

    /// All the rows.
    pub(crate) fn all(&self) -> StoredRows<'_> {
        self.rows(0..self.num_rows())
    }

    /// Rows `range` (within [`Self::num_rows`]).
    pub(crate) fn rows(&self, range: Range<usize>) -> StoredRows<'_> {
        let w = self.width;
        StoredRows {
            ids: &self.ids[range.clone()],
            bytes: &self.values[range.start * w..range.end * w],
            width: w,
            vectors: self
                .floats
                .as_ref()
                .map(|(f, d)| (&f[range.start * d..range.end * d], *d)),
        }
    }
}

/// What the schema's stored column looks like in an IPC message.
struct StoredColumn {
    width: usize,
    /// `Some(dim)` for a fixed-size list of floats (one more field node and buffer).
    list_dim: Option<usize>,
}

fn stored_column(schema: &SchemaRef) -> Result<StoredColumn> {
    let bad = |why: String| IndexError::InvalidInput(format!("stored-rows schema: {why}"));
    let fields = schema.fields();
    if fields.len() != 2 || fields[0].data_type() != &DataType::UInt64 {
        return Err(bad("is not (row_id UInt64, stored values)".into()));
    }
    match fields[1].data_type() {
        DataType::FixedSizeBinary(w) if *w > 0 => Ok(StoredColumn {
            width: *w as usize,
            list_dim: None,
        }),
        DataType::FixedSizeList(item, d) if item.data_type() == &DataType::Float32 && *d > 0 => {
            Ok(StoredColumn {
                width: *d as usize * 4,
                list_dim: Some(*d as usize),
            })
        }
        other => Err(bad(format!("unexpected stored column type {other}"))),
    }
}

/// Writes to `sink` one batch of the stored-rows schema (`row_id`, then one
/// fixed-width column) whose body is given as pieces: the row ids' bytes, then the
/// stored values' bytes, each concatenated in order (see
/// [`IpcFileSink::write_framed`]).
pub(crate) fn write_gathered(
    sink: &mut IpcFileSink,
    rows: usize,
    ids: Vec<Bytes>,
    values: Vec<Bytes>,
) -> Result<Vec<Bytes>> {
    let ids_len: usize = ids.iter().map(Bytes::len).sum();
    let values_len: usize = values.iter().map(Bytes::len).sum();
    let header = stored_rows_header(sink.schema(), rows, ids_len, values_len)?;
    let pad = pad_to_8(values_len);
    let body = ids
        .into_iter()
        .chain(values)
        .chain((pad > 0).then(|| Bytes::from_static(&[0u8; 8][..pad])));
    Ok(sink.write_framed(rows, header, body))
}

/// The framed IPC message header (continuation marker, length, flatbuffer, padding)
/// of a record batch of the stored-rows schema with `rows` rows whose body is the
/// row ids (`ids_len` bytes), then the stored values (`values_len` bytes) padded to 8.
/// No column has nulls, so every validity buffer is empty, as the format allows.
pub(crate) fn stored_rows_header(
    schema: &SchemaRef,
    rows: usize,
    ids_len: usize,
    values_len: usize,
) -> Result<Vec<u8>> {
    let bad = |why: String| IndexError::InvalidInput(format!("gathered batch: {why}"));
    let column = stored_column(schema)?;
    if ids_len != rows * 8 {
        return Err(bad(format!("{ids_len} bytes of row ids for {rows} rows")));
    }
    if values_len != rows * column.width {
        return Err(bad(format!(
            "{values_len} bytes of values for {rows} rows of {}",
            column.width
        )));
    }
    let n = rows as i64;
    let (ids_end, values_end) = (ids_len as i64, (ids_len + values_len) as i64);
    let empty = IpcBuffer::new(0, 0);
    let values = IpcBuffer::new(ids_end, values_len as i64);
    let mut nodes = vec![FieldNode::new(n, 0), FieldNode::new(n, 0)];
    let mut buffers = vec![empty, IpcBuffer::new(0, ids_end), empty];
    if let Some(dim) = column.list_dim {
        nodes.push(FieldNode::new(n * dim as i64, 0));
        buffers.push(empty);
    }
    buffers.push(values);
    let body_len = values_end + pad_to_8(values_len) as i64;
    let mut fbb = FlatBufferBuilder::new();
    let nodes = fbb.create_vector(&nodes);
    let buffers = fbb.create_vector(&buffers);
    let mut batch = RecordBatchBuilder::new(&mut fbb);
    batch.add_length(n);
    batch.add_nodes(nodes);
    batch.add_buffers(buffers);
    let batch = batch.finish();
    let mut message = MessageBuilder::new(&mut fbb);
    message.add_version(MetadataVersion::V5);
    message.add_header_type(MessageHeader::RecordBatch);
    message.add_bodyLength(body_len);
    message.add_header(batch.as_union_value());
    let message = message.finish();
    fbb.finish(message, None);
    let meta = fbb.finished_data();
    let padded = meta.len() + pad_to_8(meta.len());
    let mut out = Vec::with_capacity(8 + padded);
    out.extend_from_slice(&[0xff; 4]);
    out.extend_from_slice(&(padded as i32).to_le_bytes());
    out.extend_from_slice(meta);
    out.resize(8 + padded, 0);
    Ok(out)
}

/// Where a stored-rows block keeps its rows, as byte ranges from the start of the
/// block (its continuation marker): the row ids are little-endian `u64`s, the stored
/// values `rows × width` bytes. Everything else in the block (validity buffers, which
/// must be all-valid, and padding) is framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRowsLayout {
    pub rows: usize,
    pub width: usize,
    pub ids: Range<u64>,
    pub values: Range<u64>,
}

impl StoredRowsLayout {
    /// Reads the layout from a block's message header (its first `info.meta_len`
    /// bytes), checking it against the schema and the manifest's block entry. `what`
    /// names the file in errors.
    pub(crate) fn parse(
        what: &str,
        schema: &SchemaRef,
        info: &BlockInfo,
        header: &[u8],
    ) -> Result<Self> {
        let corrupt = |why: String| {
            IndexError::corrupt(what, format!("block at offset {}: {why}", info.offset))
        };
        if header.len() as u64 != info.meta_len as u64 {
            return Err(corrupt(format!(
                "{} header bytes, manifest says {}",
                header.len(),
                info.meta_len
            )));
        }
        // A continuation marker then the length, or (pre-1.0 framing) the length alone.
        let flatbuffer = match header {
            [0xff, 0xff, 0xff, 0xff, _, _, _, _, rest @ ..] => rest,
            [_, _, _, _, rest @ ..] => rest,
            _ => return Err(corrupt("truncated message header".into())),
        };
        let message = arrow::ipc::root_as_message(flatbuffer)
            .map_err(|e| corrupt(format!("unreadable message header: {e}")))?;
        let batch = message
            .header_as_record_batch()
            .ok_or_else(|| corrupt("is not a record batch".into()))?;
        if batch.compression().is_some() {
            return Err(corrupt("has a compressed body".into()));
        }
        let body = u64::try_from(message.bodyLength())
            .map_err(|_| corrupt("negative body length".into()))?;
        if info.meta_len as u64 + body != info.length {
            return Err(corrupt(format!(
                "header and body are {} bytes, manifest says {}",
                info.meta_len as u64 + body,
                info.length
            )));
        }
        let rows = batch.length();
        if rows < 0 || rows as u64 != info.rows {
            return Err(corrupt(format!(
                "has {rows} rows, manifest says {}",
                info.rows
            )));
        }
        let rows = rows as usize;
        let column = stored_column(schema)?;
        let mut expected_nodes = vec![rows, rows];
        if let Some(dim) = column.list_dim {
            expected_nodes.push(rows * dim);
        }
        let nodes = batch
            .nodes()
            .map(|n| n.iter().collect::<Vec<_>>())
            .unwrap_or_default();
        if nodes.len() != expected_nodes.len() {
            return Err(corrupt(format!(
                "has {} field nodes, the schema needs {}",
                nodes.len(),
                expected_nodes.len()
            )));
        }
        for (node, expected) in nodes.iter().zip(&expected_nodes) {
            if node.null_count() != 0 {
                return Err(corrupt("has nulls".into()));
            }
            if node.length() != *expected as i64 {
                return Err(corrupt(format!(
                    "a column has {} values, expected {expected}",
                    node.length()
                )));
            }
        }
        let buffers = batch
            .buffers()
            .map(|b| b.iter().collect::<Vec<_>>())
            .unwrap_or_default();
        // A validity and a data buffer per column, plus the list's child validity.
        if buffers.len() != expected_nodes.len() + 2 {
            return Err(corrupt(format!(
                "has {} buffers, the schema needs {}",
                buffers.len(),
                expected_nodes.len() + 2
            )));
        }
        let meta_len = info.meta_len as u64;
        let region = |buffer: &IpcBuffer, needed: usize| -> Result<Range<u64>> {
            let (offset, length) = (buffer.offset(), buffer.length());
            if offset < 0 || length < (needed as i64) || offset as u64 + length as u64 > body {
                return Err(corrupt(format!(
                    "buffer at {offset} of {length} bytes does not hold {needed} bytes \
                     inside a body of {body}"
                )));
            }
            let start = meta_len + offset as u64;
            Ok(start..start + needed as u64)
        };
        let ids = region(buffers[1], rows * 8)?;
        let values = region(buffers[buffers.len() - 1], rows * column.width)?;
        if ids.end > values.start {
            return Err(corrupt("stores values before row ids".into()));
        }
        Ok(Self {
            rows,
            width: column.width,
            ids,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored-rows batch of `ids` and `values` in the schema of `q`.
    fn batch_of<T: arrow::datatypes::ArrowNativeType>(
        q: Quantizer,
        dim: usize,
        width: usize,
        ids: &[u64],
        values: Vec<T>,
    ) -> RecordBatch {
        let schema = stored_rows_schema(q, dim, width);
        stored_rows_batch(
            &schema,
            Buffer::from_vec(ids.to_vec()),
            Buffer::from_vec(values),
        )
        .unwrap()
    }

    /// Six FLAT rows of two floats: ids 10.., values 0, 0.5, 1, ….
    fn flat_rows() -> (Vec<u64>, Vec<f32>, RecordBatch) {
        let ids: Vec<u64> = (10..16).collect();
        let floats: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let batch = batch_of(Quantizer::Flat, 2, 8, &ids, floats.clone());
        (ids, floats, batch)
    }

    /// Six SQ rows of three code bytes 0, 1, 2, … with `ids`.
    fn sq_rows(ids: &[u64]) -> (Vec<u8>, RecordBatch) {
        let codes: Vec<u8> = (0..18).collect();
        (codes.clone(), batch_of(Quantizer::Sq, 3, 3, ids, codes))
    }

    /// The buffers of a slice of a batch hold exactly its rows, and views of them (all or a
    /// range) are those rows: ids, bytes as stored, floats for FLAT.
    #[test]
    fn stored_rows_are_viewed_without_a_copy() {
        let (ids, floats, batch) = flat_rows();
        let part = StoredBuffers::of(&batch.slice(2, 3)).unwrap();
        let rows = part.all();
        assert_eq!(rows.ids, &ids[2..5]);
        assert_eq!(rows.vectors, Some((&floats[4..10], 2)));
        let bytes: Vec<u8> = floats[4..10].iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!((rows.bytes, rows.width), (&bytes[..], 8));
        assert_eq!(part.values.as_slice(), &bytes[..]);
        assert_eq!(part.ids.len(), 3);
        let rows = part.rows(1..3);
        assert_eq!(rows.ids, &ids[3..5]);
        assert_eq!(rows.vectors, Some((&floats[6..10], 2)));
        assert_eq!(rows.bytes, &bytes[8..]);

        let (codes, batch) = sq_rows(&ids);
        let part = StoredBuffers::of(&batch.slice(1, 2)).unwrap();
        let rows = part.all();
        assert_eq!(
            (rows.ids, rows.bytes, rows.width),
            (&ids[1..3], &codes[3..9], 3)
        );
        assert_eq!(part.values.as_slice(), &codes[3..9]);
        assert_eq!(part.rows(1..2).bytes, &codes[6..9]);
        assert!(rows.vectors.is_none());
    }

    /// Joined buffers hold each part's rows in order, as the parts' own views show
    /// them; parts of different columns are not joined.
    #[test]
    fn joined_rows_are_the_parts_in_order() {
        let (ids, floats, batch) = flat_rows();
        let slices = [batch.slice(4, 2), batch.slice(0, 1), batch.slice(1, 3)];
        let parts: Vec<StoredBuffers> = slices
            .iter()
            .map(|b| StoredBuffers::of(b).unwrap())
            .collect();
        let joined = StoredBuffers::join(&parts).unwrap();
        let order = [4, 5, 0, 1, 2, 3];
        let rows = joined.all();
        assert_eq!(rows.ids, order.map(|i| ids[i]));
        let expected: Vec<f32> = order
            .iter()
            .flat_map(|&i| floats[2 * i..2 * i + 2].iter().copied())
            .collect();
        assert_eq!(rows.vectors, Some((&expected[..], 2)));
        let bytes: Vec<u8> = expected.iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!((rows.bytes, rows.width), (&bytes[..], 8));
        assert_eq!(joined.rows(2..4).ids, &ids[0..2]);

        let (_, batch) = sq_rows(&ids);
        let parts = [
            StoredBuffers::of(&batch.slice(5, 1)).unwrap(),
            StoredBuffers::of(&batch.slice(0, 2)).unwrap(),
        ];
        let joined = StoredBuffers::join(&parts).unwrap();
        let rows = joined.all();
        assert_eq!(rows.ids, [15, 10, 11]);
        assert_eq!(rows.bytes, [15, 16, 17, 0, 1, 2, 3, 4, 5]);
        assert!(rows.vectors.is_none());

        let batch = batch_of(Quantizer::Sq, 2, 2, &[1], vec![0u8, 1]);
        let mixed = [parts[0].clone(), StoredBuffers::of(&batch).unwrap()];
        assert!(StoredBuffers::join(&mixed).is_none());
        assert!(StoredBuffers::join(&[]).is_none());
    }
}

/// Files of stored rows, written through an `IpcFileSink`.
#[cfg(test)]
mod file_tests {
    use super::super::ipc::tests::{concat, schema};
    use super::super::ipc::{arrow_bytes, decode_block, encode_partitions, IpcFileSink};
    use super::*;
    use arrow::array::RecordBatch;
    use arrow::ipc::reader::FileReader;

    fn flat(dim: i32) -> DataType {
        DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), dim)
    }

    fn batch(schema: &SchemaRef, rows: usize, width: usize, seed: u8) -> RecordBatch {
        let ids: Vec<u64> = (0..rows as u64).map(|i| i * 3 + seed as u64).collect();
        // Bytes below 0x7f: as f32 bits never a NaN, so batches compare equal.
        let values: Vec<u8> = (0..rows * width)
            .map(|i| ((i * 7 + seed as usize) % 61) as u8)
            .collect();
        // Through a MutableBuffer: aligned for f32, which a Vec<u8> is not.
        let mut aligned = arrow::buffer::MutableBuffer::with_capacity(values.len());
        aligned.extend_from_slice(&values);
        crate::format::stored_rows_batch(schema, Buffer::from_vec(ids), aligned.into()).unwrap()
    }

    /// A file of gathered batches reads back, with any Arrow reader and block by
    /// block, as the batches the pieces were cut from.
    #[test]
    fn gathered_batches_equal_encoded_batches() {
        for (stored, width) in [
            (DataType::FixedSizeBinary(5), 5),
            (DataType::FixedSizeBinary(16), 16),
            (flat(3), 12),
            (flat(128), 512),
        ] {
            let schema = schema(stored);
            let mut sink = IpcFileSink::try_new(&schema).unwrap();
            let mut file = Vec::new();
            let mut expected = Vec::new();
            // 0 rows, odd row counts (padding), and pieces both below and above
            // the coalescing size.
            for (i, rows) in [0usize, 1, 7, 300, 20_000].into_iter().enumerate() {
                let whole = batch(&schema, rows, width, i as u8);
                let stored = crate::format::StoredBuffers::of(&whole).unwrap();
                let (ids, values, w) = (stored.ids.into_inner(), stored.values, stored.width);
                assert_eq!(w, width);
                let cut = rows / 3;
                let ids = vec![
                    arrow_bytes(ids.slice_with_length(0, cut * 8)),
                    arrow_bytes(ids.slice_with_length(cut * 8, (rows - cut) * 8)),
                ];
                let values = vec![
                    arrow_bytes(values.slice_with_length(0, cut * width)),
                    arrow_bytes(values.slice_with_length(cut * width, (rows - cut) * width)),
                ];
                file.extend(concat(
                    &write_gathered(&mut sink, rows, ids, values).unwrap(),
                ));
                expected.push(whole.clone());
                // Interleaved with batches through arrow's encoder.
                file.extend(concat(&sink.write(&whole).unwrap()));
                expected.push(whole);
            }
            let (tail, blocks, size, crc) = sink.finish().unwrap();
            file.extend_from_slice(&tail);
            assert_eq!(size, file.len() as u64);
            assert_eq!(crc, crc32fast::hash(&file));

            let read: Vec<RecordBatch> =
                FileReader::try_new(std::io::Cursor::new(file.clone()), None)
                    .unwrap()
                    .map(|b| b.unwrap())
                    .collect();
            assert_eq!(read, expected);
            for (block, want) in blocks.iter().zip(&expected) {
                let bytes =
                    Bytes::copy_from_slice(&file[block.offset as usize..][..block.length as usize]);
                let got = decode_block("test", &schema, block, bytes.clone()).unwrap();
                assert_eq!(&got, want);
                // The byte-level layout finds the same rows without decoding.
                let layout = crate::format::StoredRowsLayout::parse(
                    "test",
                    &schema,
                    block,
                    &bytes[..block.meta_len as usize],
                )
                .unwrap();
                let stored = crate::format::StoredBuffers::of(want).unwrap();
                let (ids, values) = (stored.ids.into_inner(), stored.values);
                let range = |r: &std::ops::Range<u64>| &bytes[r.start as usize..r.end as usize];
                assert_eq!((layout.rows, layout.width), (want.num_rows(), width));
                assert_eq!(range(&layout.ids), ids.as_slice());
                assert_eq!(range(&layout.values), values.as_slice());
            }
        }
    }

    /// A block header that disagrees with the manifest or the schema is refused,
    /// naming the file and the block.
    #[test]
    fn layouts_that_disagree_are_refused() {
        let schema = schema(DataType::FixedSizeBinary(4));
        let (file, blocks, _) = encode_partitions(&schema, [batch(&schema, 10, 4, 1)]).unwrap();
        let block = blocks[0];
        let header = &file[block.offset as usize..][..block.meta_len as usize];
        let parse = |schema: &SchemaRef, info: BlockInfo, header: &[u8]| {
            crate::format::StoredRowsLayout::parse("shard s: data.arrow", schema, &info, header)
                .unwrap_err()
                .to_string()
        };
        let err = parse(&schema, BlockInfo { rows: 11, ..block }, header);
        assert!(
            err.contains("shard s: data.arrow") && err.contains("has 10 rows, manifest says 11"),
            "{err}"
        );
        let err = parse(
            &schema,
            BlockInfo {
                length: block.length + 8,
                ..block
            },
            header,
        );
        assert!(err.contains("manifest says"), "{err}");
        let err = parse(&schema, block, &header[..header.len() - 8]);
        assert!(err.contains("header bytes"), "{err}");
        let wider = self::schema(DataType::FixedSizeBinary(8));
        let err = parse(&wider, block, header);
        assert!(err.contains("does not hold 80 bytes"), "{err}");
        let err = parse(&self::schema(flat(1)), block, header);
        assert!(err.contains("field nodes"), "{err}");
        let mut garbled = header.to_vec();
        garbled[8..].fill(0xee);
        let err = parse(&schema, block, &garbled);
        assert!(err.contains("unreadable message header"), "{err}");
    }

    #[test]
    fn gathered_lengths_are_checked() {
        let schema = schema(DataType::FixedSizeBinary(4));
        let mut sink = IpcFileSink::try_new(&schema).unwrap();
        let err = write_gathered(
            &mut sink,
            2,
            vec![Bytes::from(vec![0u8; 16])],
            vec![Bytes::from(vec![0u8; 7])],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("7 bytes of values for 2 rows"),
            "{err}"
        );
    }
}
