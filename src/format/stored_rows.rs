//! The framing of one stored-rows batch (`row_id`, then one fixed-width column; see
//! FORMAT.md, "Stored rows") at the byte level: building the message header of a batch
//! whose body finalize writes piece by piece, and finding the row ids and stored values
//! inside a block without decoding it into arrays.

use std::ops::Range;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::ipc::{
    Buffer as IpcBuffer, FieldNode, MessageBuilder, MessageHeader, MetadataVersion,
    RecordBatchBuilder,
};
use flatbuffers::FlatBufferBuilder;

use super::ipc::pad_to_8;
use super::BlockInfo;
use crate::error::{IndexError, Result};

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

/// The framed IPC message header (continuation marker, length, flatbuffer, padding)
/// of a record batch of the stored-rows schema with `rows` rows whose body is the
/// row ids (`ids_len` bytes), then the stored values (`values_len` bytes) padded to 8.
/// No column has nulls, so every validity buffer is empty, as the format allows.
pub fn stored_rows_header(
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
pub struct StoredRowsLayout {
    pub rows: usize,
    pub width: usize,
    pub ids: Range<u64>,
    pub values: Range<u64>,
}

impl StoredRowsLayout {
    /// Reads the layout from a block's message header (its first `info.meta_len`
    /// bytes), checking it against the schema and the manifest's block entry. `what`
    /// names the file in errors.
    pub fn parse(what: &str, schema: &SchemaRef, info: &BlockInfo, header: &[u8]) -> Result<Self> {
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
