//! Arrow IPC files whose record batches (blocks) are addressed directly.
//!
//! Every data file is a standard Arrow IPC file, readable by any Arrow tool. Its
//! manifest also records where each block lies, so a reader fetches one IVF
//! partition with a single ranged read and checks it against its CRC-32, without
//! reading the file's footer first.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileDecoder;
use arrow::ipc::writer::{StreamEncoder, StreamWriter};
use arrow::ipc::{Block, FooterBuilder, MetadataVersion};
use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

/// Where one record batch lies in its file, and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub rows: u64,
    pub offset: u64,
    /// Length of the flatbuffer message header, including its prefix and padding.
    pub meta_len: u32,
    /// Header plus body.
    pub length: u64,
    pub crc32: u32,
}

impl BlockInfo {
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.length
    }
}

/// Writes an Arrow IPC file batch by batch, handing out the bytes as they are
/// produced so the caller can stream them to an object store, and recording a
/// [`BlockInfo`] for every batch.
///
/// Batches are encoded with arrow's [`StreamEncoder`], which hands out the batch's own
/// buffers rather than copying them; this sink adds the file framing around them
/// (magic, footer), so a batch's rows are never copied on their way to the store.
pub(crate) struct IpcFileSink {
    schema: SchemaRef,
    encoder: StreamEncoder,
    /// The stream's schema message, written after the file magic.
    schema_message: Bytes,
    /// Whether the encoder has emitted its own copy of the schema message (dropped).
    encoder_started: bool,
    written: u64,
    blocks: Vec<BlockInfo>,
    crc: crc32fast::Hasher,
}

/// File magic plus padding to 8 bytes.
const FILE_HEADER: &[u8; 8] = b"ARROW1\0\0";

impl IpcFileSink {
    pub(crate) fn try_new(schema: &SchemaRef) -> Result<Self> {
        // What a stream writer writes up front with the same options is the schema
        // message the encoder emits before its first batch.
        let schema_message = StreamWriter::try_new(Vec::new(), schema)?.get_ref().clone();
        Ok(Self {
            schema: Arc::clone(schema),
            encoder: StreamEncoder::try_new(schema)?,
            schema_message: Bytes::from(schema_message),
            encoder_started: false,
            written: 0,
            blocks: Vec::new(),
            crc: crc32fast::Hasher::new(),
        })
    }

    fn push(&mut self, out: &mut Vec<Bytes>, piece: Bytes) {
        self.crc.update(&piece);
        self.written += piece.len() as u64;
        out.push(piece);
    }

    /// The file magic and schema message, before the first batch.
    fn start(&mut self, out: &mut Vec<Bytes>) {
        if self.written == 0 {
            self.push(out, Bytes::from_static(FILE_HEADER));
            let schema = self.schema_message.clone();
            self.push(out, schema);
        }
    }

    /// For a caller writing a batch's bytes itself: what must precede the batch (the
    /// file magic and schema message before the first batch, nothing afterwards).
    pub(crate) fn preamble(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.start(&mut out);
        out
    }

    /// Records a batch the caller wrote itself right after everything this sink has
    /// accounted for: `length` bytes of which the first `meta_len` are its message
    /// header, with CRC-32 state `crc` over all of them.
    pub(crate) fn append_written(
        &mut self,
        rows: usize,
        meta_len: u32,
        length: u64,
        crc: &crc32fast::Hasher,
    ) {
        let offset = self.written;
        self.crc.combine(crc);
        self.written += length;
        self.blocks.push(BlockInfo {
            rows: rows as u64,
            offset,
            meta_len,
            length,
            crc32: crc.clone().finalize(),
        });
    }

    /// Encodes one batch; returns the pieces to write, in order (the file header and
    /// schema first, on the first call). The pieces share the batch's buffers.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<Vec<Bytes>> {
        let mut buffers = self.encoder.encode(batch)?.into_iter();
        let mut out = Vec::new();
        self.start(&mut out);
        if !self.encoder_started {
            self.encoder_started = true;
            let mut skipped = 0;
            while skipped < self.schema_message.len() {
                let piece = buffers.next().ok_or_else(|| {
                    IndexError::corrupt("IPC encoder", "schema message cut short")
                })?;
                skipped += piece.len();
            }
            if skipped != self.schema_message.len() {
                return Err(IndexError::corrupt(
                    "IPC encoder",
                    "schema message does not end on a buffer boundary",
                ));
            }
        }
        let mut pieces = buffers.map(arrow_bytes).peekable();
        let first = pieces
            .peek()
            .ok_or_else(|| IndexError::corrupt("IPC encoder", "no record batch message"))?;
        let meta_len = message_header_len(first)?;
        self.append_block(batch.num_rows(), meta_len, pieces, &mut out);
        Ok(out)
    }

    /// The schema of the file's batches.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Writes one batch of `rows` rows already framed: its message `header`, then its
    /// body as `pieces` (padded by the caller). The pieces are not copied unless
    /// small, so a merge can write rows straight from the blocks it read.
    pub(crate) fn write_framed(
        &mut self,
        rows: usize,
        header: Vec<u8>,
        pieces: impl Iterator<Item = Bytes>,
    ) -> Vec<Bytes> {
        let meta_len = header.len() as u32;
        let mut out = Vec::new();
        self.start(&mut out);
        let pieces = std::iter::once(Bytes::from(header)).chain(pieces);
        self.append_block(rows, meta_len, coalesce(pieces), &mut out);
        out
    }

    /// Records the block made of `pieces` (hashing each byte once) and appends them to `out`.
    fn append_block(
        &mut self,
        rows: usize,
        meta_len: u32,
        pieces: impl Iterator<Item = Bytes>,
        out: &mut Vec<Bytes>,
    ) {
        let mut block_crc = crc32fast::Hasher::new();
        let mut length = 0u64;
        for piece in pieces {
            block_crc.update(&piece);
            length += piece.len() as u64;
            out.push(piece);
        }
        self.append_written(rows, meta_len, length, &block_crc);
    }

    /// Writes the end-of-stream marker and footer; returns their bytes, the blocks, the
    /// file size and its CRC-32.
    pub(crate) fn finish(mut self) -> Result<(Bytes, Vec<BlockInfo>, u64, u32)> {
        let mut tail = Vec::with_capacity(1024);
        if self.written == 0 {
            // No batch: the magic and schema message still make a valid file.
            tail.extend_from_slice(FILE_HEADER);
            tail.extend_from_slice(&self.schema_message);
        }
        tail.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let mut fbb = FlatBufferBuilder::new();
        let schema = arrow::ipc::convert::schema_to_fb_offset(&mut fbb, &self.schema);
        let blocks: Vec<Block> = self
            .blocks
            .iter()
            .map(|b| {
                Block::new(
                    b.offset as i64,
                    b.meta_len as i32,
                    (b.length - b.meta_len as u64) as i64,
                )
            })
            .collect();
        let batches = fbb.create_vector(&blocks);
        let dictionaries = fbb.create_vector::<Block>(&[]);
        let mut footer = FooterBuilder::new(&mut fbb);
        footer.add_version(MetadataVersion::V5);
        footer.add_schema(schema);
        footer.add_dictionaries(dictionaries);
        footer.add_recordBatches(batches);
        let root = footer.finish();
        fbb.finish(root, None);
        let footer = fbb.finished_data();
        tail.extend_from_slice(footer);
        tail.extend_from_slice(&(footer.len() as i32).to_le_bytes());
        tail.extend_from_slice(b"ARROW1");
        self.crc.update(&tail);
        self.written += tail.len() as u64;
        Ok((
            Bytes::from(tail),
            self.blocks,
            self.written,
            self.crc.finalize(),
        ))
    }
}

/// Pieces smaller than this are copied together rather than written one by one:
/// a write call per few hundred bytes costs more than the copy.
const COALESCE_BELOW: usize = 16 << 10;

/// Joins runs of small pieces into one, passes large pieces through untouched.
fn coalesce(pieces: impl Iterator<Item = Bytes>) -> impl Iterator<Item = Bytes> {
    let mut pieces = pieces.peekable();
    std::iter::from_fn(move || {
        let first = pieces.next()?;
        if first.len() >= COALESCE_BELOW {
            return Some(first);
        }
        let mut joined: Option<Vec<u8>> = None;
        while let Some(next) = pieces.next_if(|p| p.len() < COALESCE_BELOW) {
            joined
                .get_or_insert_with(|| {
                    let mut v = Vec::with_capacity(2 * COALESCE_BELOW);
                    v.extend_from_slice(&first);
                    v
                })
                .extend_from_slice(&next);
        }
        Some(joined.map_or(first, Bytes::from))
    })
}

pub(crate) fn pad_to_8(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Shares an arrow buffer's memory as `Bytes`, without copying.
pub(crate) fn arrow_bytes(buffer: Buffer) -> Bytes {
    struct Owner(Buffer);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            self.0.as_slice()
        }
    }
    Bytes::from_owner(Owner(buffer))
}

fn message_header_len(block: &[u8]) -> Result<u32> {
    let corrupt = || IndexError::corrupt("IPC block", "truncated message header");
    let prefix: [u8; 4] = block
        .get(0..4)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    let len: [u8; 4] = block
        .get(4..8)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    if prefix != [0xff; 4] {
        return Err(IndexError::corrupt(
            "IPC block",
            "missing continuation marker",
        ));
    }
    Ok(8 + u32::from_le_bytes(len))
}

/// Encodes whole batches into one in-memory IPC file.
pub(crate) fn encode_partitions(
    schema: &SchemaRef,
    batches: impl IntoIterator<Item = RecordBatch>,
) -> Result<(Vec<u8>, Vec<BlockInfo>, u32)> {
    let mut sink = IpcFileSink::try_new(schema)?;
    let mut out = Vec::new();
    for batch in batches {
        for piece in sink.write(&batch)? {
            out.extend_from_slice(&piece);
        }
    }
    let (tail, blocks, _, crc) = sink.finish()?;
    out.extend_from_slice(&tail);
    Ok((out, blocks, crc))
}

/// Decodes one block read by a ranged read, after checking its length and CRC-32.
/// `what` names the file in errors.
pub(crate) fn decode_block(
    what: &str,
    schema: &SchemaRef,
    info: &BlockInfo,
    bytes: Bytes,
) -> Result<RecordBatch> {
    if bytes.len() as u64 != info.length {
        return Err(IndexError::corrupt(
            what,
            format!(
                "block at offset {} is truncated: {} of {} bytes",
                info.offset,
                bytes.len(),
                info.length
            ),
        ));
    }
    if (info.meta_len as u64) > info.length {
        return Err(IndexError::corrupt(
            what,
            format!(
                "block at offset {} has a header longer than itself",
                info.offset
            ),
        ));
    }
    let crc = crc32fast::hash(&bytes);
    if crc != info.crc32 {
        return Err(IndexError::corrupt(
            what,
            format!(
                "checksum mismatch in block at offset {}: crc32 {crc:#010x}, expected {:#010x}",
                info.offset, info.crc32
            ),
        ));
    }
    let block = Block::new(
        0,
        info.meta_len as i32,
        (info.length - info.meta_len as u64) as i64,
    );
    let decoder = FileDecoder::new(Arc::clone(schema), MetadataVersion::V5);
    let batch = decoder
        .read_record_batch(&block, &Buffer::from(bytes))
        .map_err(|e| IndexError::corrupt(what, format!("block at offset {}: {e}", info.offset)))?
        .ok_or_else(|| {
            IndexError::corrupt(what, format!("empty block at offset {}", info.offset))
        })?;
    if batch.num_rows() as u64 != info.rows {
        return Err(IndexError::corrupt(
            what,
            format!(
                "block at offset {} has {} rows, manifest says {}",
                info.offset,
                batch.num_rows(),
                info.rows
            ),
        ));
    }
    Ok(batch)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::reader::FileReader;

    /// `row_id`, then one stored column of type `stored`.
    pub(in crate::format) fn schema(stored: DataType) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("row_id", DataType::UInt64, false),
            Field::new("codes", stored, false),
        ]))
    }

    pub(in crate::format) fn concat(pieces: &[Bytes]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn empty_file_is_readable() {
        let schema = schema(DataType::FixedSizeBinary(4));
        let (tail, blocks, size, _) = IpcFileSink::try_new(&schema).unwrap().finish().unwrap();
        assert!(blocks.is_empty());
        assert_eq!(size, tail.len() as u64);
        let reader = FileReader::try_new(std::io::Cursor::new(tail.to_vec()), None).unwrap();
        assert_eq!(reader.count(), 0);
    }

    #[test]
    fn coalescing_keeps_bytes_and_order() {
        let sizes = [3usize, 20_000, 5, 6, 100_000, 1, 2, 3];
        let pieces: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![i as u8; n]))
            .collect();
        let joined: Vec<Bytes> = coalesce(pieces.clone().into_iter()).collect();
        assert_eq!(concat(&joined), concat(&pieces));
        let lens: Vec<usize> = joined.iter().map(Bytes::len).collect();
        assert_eq!(lens, [3, 20_000, 11, 100_000, 6]);
    }
}
