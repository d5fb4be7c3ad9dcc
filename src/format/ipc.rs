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
use arrow::ipc::writer::FileWriter;
use arrow::ipc::{Block, MetadataVersion};
use bytes::Bytes;
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
pub struct IpcFileSink {
    writer: FileWriter<Vec<u8>>,
    written: u64,
    blocks: Vec<BlockInfo>,
    crc: crc32fast::Hasher,
}

impl IpcFileSink {
    pub fn try_new(schema: &SchemaRef) -> Result<Self> {
        let writer = FileWriter::try_new(Vec::with_capacity(1 << 16), schema)?;
        Ok(Self {
            writer,
            written: 0,
            blocks: Vec::new(),
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Bytes produced so far and not yet taken (hashed into the file's CRC).
    fn take_bytes(&mut self) -> Bytes {
        let buf = std::mem::take(self.writer.get_mut());
        self.crc.update(&buf);
        self.written += buf.len() as u64;
        Bytes::from(buf)
    }

    /// Encodes one batch; returns the bytes to write (the file header first, on the first call).
    /// Each byte is hashed once: the block's CRC is combined into the file's.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Bytes> {
        let pending = self.writer.get_ref().len();
        let offset = self.written + pending as u64;
        // Sized up front: growing by doubling would copy the block again and churn the heap.
        self.writer
            .get_mut()
            .reserve(batch.get_array_memory_size() + 4096);
        self.writer.write(batch)?;
        let buf = std::mem::take(self.writer.get_mut());
        self.crc.update(&buf[..pending]);
        let block = &buf[pending..];
        let mut block_crc = crc32fast::Hasher::new();
        block_crc.update(block);
        self.crc.combine(&block_crc);
        self.blocks.push(BlockInfo {
            rows: batch.num_rows() as u64,
            offset,
            meta_len: message_header_len(block)?,
            length: block.len() as u64,
            crc32: block_crc.finalize(),
        });
        self.written += buf.len() as u64;
        Ok(Bytes::from(buf))
    }

    /// Writes the footer; returns its bytes, the blocks, the file size and its CRC-32.
    pub fn finish(mut self) -> Result<(Bytes, Vec<BlockInfo>, u64, u32)> {
        self.writer.finish()?;
        let tail = self.take_bytes();
        Ok((tail, self.blocks, self.written, self.crc.finalize()))
    }
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
pub fn encode_partitions(
    schema: &SchemaRef,
    batches: impl IntoIterator<Item = RecordBatch>,
) -> Result<(Vec<u8>, Vec<BlockInfo>, u32)> {
    let mut sink = IpcFileSink::try_new(schema)?;
    let mut out = Vec::new();
    for batch in batches {
        out.extend_from_slice(&sink.write(&batch)?);
    }
    let (tail, blocks, _, crc) = sink.finish()?;
    out.extend_from_slice(&tail);
    Ok((out, blocks, crc))
}

/// Decodes one block read by a ranged read, after checking its length and CRC-32.
/// `what` names the file in errors.
pub fn decode_block(
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
