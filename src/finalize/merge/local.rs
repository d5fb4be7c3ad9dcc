//! The merge of a work unit on a local filesystem.
//!
//! Finalize is mostly moving bytes, and through the object-store API every byte
//! lands in a freshly allocated (and zero-filled) buffer on its way in and goes
//! through an upload buffer on its way out. Here each shard block is read front to
//! back through a small read-only mapping of the shard file that moves forward with
//! it, and written straight from the mappings to the segment file, many pieces per
//! vectored write: the only copy is the one into the output file, as with `cp`. A
//! merged partition is never held in memory, only its row ids; what is mapped at
//! once is bounded by the window budget (and the windows pending pieces still hold).
//!
//! Every byte of a block passes through its [`BlockCursor`] exactly once, in file
//! order, so the block's CRC-32 is checked without a second pass; the CRC of the
//! output block is composed from the same per-piece hashes.

use std::fs::File;
use std::io::{ErrorKind, IoSlice, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use crc32fast::Hasher;
use memmap2::{Mmap, MmapOptions};
use object_store::path::Path;

use super::{described, merge_runs, non_empty_blocks};
use crate::error::{IndexError, Result};
use crate::finalize::WorkUnit;
use crate::format::{
    pad_to_8, stored_rows_header, BlockInfo, IndexLocation, IpcFileSink, SegmentFile,
    StoredRowsLayout,
};
use crate::model::ModelInfo;

/// Mapped windows of one work unit together span this much (a quarter more at most,
/// see [`BlockCursor::map_ahead`]), whatever the size of the index, so memory (mapped
/// file pages count towards a process's resident set) does not grow with it (beyond
/// 64 shards a unit, the minimum window sets the total instead). Windows a cursor has
/// moved past stay mapped while pending pieces lie in them, until the next write:
/// since a cursor consumes a whole window between two mappings, that is at most
/// [`WRITE_BATCH`] / [`MIN_WINDOW`] windows more than one per shard, i.e. about the
/// budget again.
const WINDOW_BUDGET: usize = 4 << 20;
/// Bounds of one shard's window: large enough that one mapping serves many blocks,
/// small enough that windows of many shards fit the budget.
const MIN_WINDOW: usize = 64 << 10;
const MAX_WINDOW: usize = 1 << 20;
/// Pieces of output (row ids and codes in the shard mappings, headers) are written
/// together once this many bytes are pending: the kernel's cost per `write` call and
/// per page-cache allocation makes 32 KiB writes ~30% slower than 256 KiB ones here.
const WRITE_BATCH: usize = 256 << 10;
/// At most this many pieces go into one vectored write (Linux's `IOV_MAX` is 1024).
const MAX_PIECES: usize = 512;
/// Pieces shorter than this are hashed twice (block and output) rather than hashed
/// once and combined: combining costs about as much as hashing a few KiB.
const COMBINE_ABOVE: usize = 4 << 10;

/// Buffers a merge partition reuses from one work unit to the next, so that the merge
/// loop allocates nothing per partition or row.
#[derive(Default)]
pub(super) struct Scratch {
    /// Row ids of each shard's block of the current partition.
    ids: Vec<BlockIds>,
    /// Output not yet written (see [`WRITE_BATCH`]).
    pending: Vec<Piece>,
    /// The bytes of the pending pieces made here rather than mapped (headers, padding).
    made: Vec<u8>,
}

impl Scratch {
    /// Pieces and row ids hold mappings: none outlives the unit.
    fn release_mappings(&mut self) {
        self.pending.clear();
        for ids in &mut self.ids {
            ids.stored = None;
        }
    }
}

/// The row ids of one shard block, decoded (to merge by), and where they are stored
/// (to write runs of them to the output as they are).
#[derive(Default)]
struct BlockIds {
    values: Vec<u64>,
    stored: Option<(Arc<Mmap>, usize)>,
}

/// A piece of output waiting for the next vectored write.
enum Piece {
    /// Bytes of a shard file's mapping, which the piece keeps mapped until written.
    Mapped(Arc<Mmap>, Range<usize>),
    /// Bytes of [`Scratch::made`].
    Made(Range<usize>),
}

/// The files of one work unit, when the index is on a local filesystem.
pub(super) struct LocalFiles {
    /// `data.arrow` of each shard of the unit, in the unit's shard order.
    shards: Vec<PathBuf>,
    /// The segment data file to write.
    out: PathBuf,
}

impl LocalFiles {
    /// `None` when the index is not on a local filesystem.
    pub(super) fn of(location: &IndexLocation, unit: &WorkUnit) -> Option<Self> {
        let shards = unit
            .shards
            .iter()
            .map(|s| location.local_file(&Path::from(s.dir.as_str()).join("data.arrow")))
            .collect::<Option<Vec<_>>>()?;
        let out = location.local_file(
            &location
                .segment_dir(&unit.segment.segment_id)
                .join(unit.file_name.as_str()),
        )?;
        Some(Self { shards, out })
    }

    /// Merges `unit` into its segment data file; blocking. On error the partial file
    /// is removed.
    pub(super) fn merge(
        &self,
        model: &ModelInfo,
        unit: &WorkUnit,
        scratch: &mut Scratch,
    ) -> Result<SegmentFile> {
        let result = self.write(model, unit, scratch);
        scratch.release_mappings();
        if result.is_err() {
            std::fs::remove_file(&self.out).ok();
        }
        result
    }

    fn write(
        &self,
        model: &ModelInfo,
        unit: &WorkUnit,
        scratch: &mut Scratch,
    ) -> Result<SegmentFile> {
        if let Some(dir) = self.out.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        }
        let file = File::create(&self.out).map_err(|e| io_error("creating", &self.out, e))?;
        let mut out = OutFile {
            path: &self.out,
            file,
            pending: &mut scratch.pending,
            made: &mut scratch.made,
            pending_bytes: 0,
        };
        out.pending.clear();
        out.made.clear();
        let window = (WINDOW_BUDGET / unit.shards.len().max(1)).clamp(MIN_WINDOW, MAX_WINDOW);
        let shards = unit.shards.len();
        scratch
            .ids
            .resize_with(shards.max(scratch.ids.len()), BlockIds::default);
        let mut cursors: Vec<BlockCursor> = unit
            .shards
            .iter()
            .zip(&self.shards)
            .map(|(s, path)| {
                let span_end = s
                    .blocks
                    .iter()
                    .filter(|b| b.rows > 0)
                    .map(|b| b.range().end)
                    .max();
                BlockCursor::new(&s.shard_id, path, span_end.unwrap_or(0), window)
            })
            .collect();
        let ids_of = &mut scratch.ids;
        let schema = &model.storage_schema();
        let width = model.code_width();
        let mut sink = IpcFileSink::try_new(schema)?;
        for piece in sink.preamble() {
            out.write_made(&piece)?;
        }
        for (i, partition) in
            (unit.partition_start as usize..unit.partition_end as usize).enumerate()
        {
            let present = non_empty_blocks(unit, partition);
            for &s in &present {
                let cursor = &mut cursors[s];
                cursor.start(unit.shards[s].blocks[i], partition)?;
                let layout = cursor.layout(schema)?;
                cursor.read_ids(&layout, &mut ids_of[s])?;
            }
            let ids: Vec<&[u64]> = present.iter().map(|&s| &ids_of[s].values[..]).collect();
            let (runs, rows) = merge_runs(unit, partition, &ids)?;

            let header = stored_rows_header(schema, rows, rows * 8, rows * width)?;
            let mut crc = Hasher::new();
            crc.update(&header);
            out.write_made(&header)?;
            for run in &runs {
                let (map, at) = ids_of[present[run.block]].stored.as_ref().ok_or_else(|| {
                    IndexError::Internal("row ids written before they were read".into())
                })?;
                let ids = at + run.start * 8..at + run.end * 8;
                crc.update(&map[ids.clone()]);
                out.write_mapped(map, ids)?;
            }
            // The pending pieces hold what they need: a window a cursor moves past
            // while copying codes is unmapped once they are written.
            for &s in &present {
                ids_of[s].stored = None;
            }
            for run in &runs {
                let len = ((run.end - run.start) * width) as u64;
                cursors[present[run.block]].copy_to(len, &mut out, &mut crc)?;
            }
            let pad = &[0u8; 8][..pad_to_8(rows * width)];
            crc.update(pad);
            out.write_made(pad)?;
            for &s in &present {
                cursors[s].finish()?;
            }
            let length = (header.len() + rows * 8 + rows * width + pad.len()) as u64;
            sink.append_written(rows, header.len() as u32, length, &crc);
        }
        let (tail, blocks, size, _) = sink.finish()?;
        out.write_made(&tail)?;
        out.flush()?;
        Ok(described(unit, size, blocks, None))
    }
}

fn io_error(doing: &str, path: &std::path::Path, e: std::io::Error) -> IndexError {
    IndexError::Io(std::io::Error::new(
        e.kind(),
        format!("{doing} {}: {e}", path.display()),
    ))
}

/// A shard file that cannot be opened or read: missing is corruption of the shard.
fn shard_file_error(
    shard_id: &str,
    file_name: &str,
    doing: &str,
    path: &std::path::Path,
    e: std::io::Error,
) -> IndexError {
    match e.kind() {
        ErrorKind::NotFound => {
            IndexError::corrupt(format!("shard {shard_id}: {file_name}"), "is missing")
        }
        _ => io_error(doing, path, e),
    }
}

/// The segment data file being written: pieces of output are collected, the mapped
/// ones without a copy, and written together with one vectored write per
/// [`WRITE_BATCH`] bytes.
struct OutFile<'a> {
    path: &'a std::path::Path,
    file: File,
    pending: &'a mut Vec<Piece>,
    made: &'a mut Vec<u8>,
    pending_bytes: usize,
}

impl OutFile<'_> {
    /// Adds bytes made here (copied: headers and padding are small).
    fn write_made(&mut self, bytes: &[u8]) -> Result<()> {
        let start = self.made.len();
        self.made.extend_from_slice(bytes);
        self.push(Piece::Made(start..self.made.len()), bytes.len())
    }

    /// Adds `range` of a shard mapping, uncopied.
    fn write_mapped(&mut self, map: &Arc<Mmap>, range: Range<usize>) -> Result<()> {
        let len = range.len();
        self.push(Piece::Mapped(Arc::clone(map), range), len)
    }

    fn push(&mut self, piece: Piece, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.pending.push(piece);
        self.pending_bytes += len;
        if self.pending_bytes >= WRITE_BATCH || self.pending.len() >= MAX_PIECES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes every pending piece, in order.
    fn flush(&mut self) -> Result<()> {
        let made = &self.made[..];
        let mut slices: Vec<IoSlice> = self
            .pending
            .iter()
            .map(|piece| {
                IoSlice::new(match piece {
                    Piece::Mapped(map, range) => &map[range.clone()],
                    Piece::Made(range) => &made[range.clone()],
                })
            })
            .collect();
        let mut left = &mut slices[..];
        while !left.is_empty() {
            match self.file.write_vectored(left) {
                Ok(0) => {
                    let e = std::io::Error::new(ErrorKind::WriteZero, "the file takes no more");
                    return Err(io_error("writing", self.path, e));
                }
                Ok(n) => IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("writing", self.path, e)),
            }
        }
        self.pending.clear();
        self.made.clear();
        self.pending_bytes = 0;
        Ok(())
    }
}

/// Reads one shard's blocks of a unit, each front to back, through a read-only
/// mapping of at most `window` bytes of the file that moves forward as the blocks are
/// consumed (a shard's partitions lie one after the other, so one mapping usually
/// serves several blocks), hashing every byte once as it is consumed. The file is
/// opened on first use.
///
/// A mapping, unlike a read into a buffer, copies nothing and zero-fills nothing:
/// the bytes are the page cache's, hashed there and written from there. Staged shard
/// files are immutable (FORMAT.md); the file's length is checked against the blocks
/// before anything is mapped.
struct BlockCursor<'a> {
    shard_id: &'a str,
    path: &'a std::path::Path,
    file: Option<File>,
    window: usize,
    /// File offset past the last block the unit needs: mappings never go further.
    span_end: u64,
    map: Option<Arc<Mmap>>,
    /// File offset of `map[0]`.
    map_start: u64,
    block: BlockInfo,
    partition: usize,
    /// Bytes of the current block consumed so far.
    consumed: u64,
    crc: Hasher,
}

impl<'a> BlockCursor<'a> {
    fn new(shard_id: &'a str, path: &'a std::path::Path, span_end: u64, window: usize) -> Self {
        Self {
            shard_id,
            path,
            file: None,
            window,
            span_end,
            map: None,
            map_start: 0,
            block: BlockInfo {
                rows: 0,
                offset: 0,
                meta_len: 0,
                length: 0,
                crc32: 0,
            },
            partition: 0,
            consumed: 0,
            crc: Hasher::new(),
        }
    }

    fn what(&self) -> String {
        format!(
            "shard {}: data.arrow, partition {}",
            self.shard_id, self.partition
        )
    }

    fn corrupt(&self, why: String) -> IndexError {
        IndexError::corrupt(
            self.what(),
            format!("block at offset {}: {why}", self.block.offset),
        )
    }

    /// A broken invariant of the cursor itself, not of the shard.
    fn internal(&self, why: &str) -> IndexError {
        IndexError::Internal(format!("{}: {why}", self.what()))
    }

    /// Positions the cursor at the start of `block`.
    fn start(&mut self, block: BlockInfo, partition: usize) -> Result<()> {
        self.block = block;
        self.partition = partition;
        self.consumed = 0;
        self.crc = Hasher::new();
        if self.file.is_none() {
            let file = File::open(self.path).map_err(|e| {
                shard_file_error(self.shard_id, "data.arrow", "opening", self.path, e)
            })?;
            let len = file
                .metadata()
                .map_err(|e| io_error("reading", self.path, e))?
                .len();
            if len < self.span_end {
                return Err(self.corrupt(format!(
                    "is truncated: the file ends at byte {len}, before the blocks it lists end \
                     at byte {}",
                    self.span_end
                )));
            }
            self.file = Some(file);
        }
        Ok(())
    }

    /// File offset of the next unconsumed byte.
    fn position(&self) -> u64 {
        self.block.offset + self.consumed
    }

    /// Mapped bytes from the position on (none when the position is not mapped).
    fn mapped(&self) -> &[u8] {
        match &self.map {
            Some(map) if self.position() >= self.map_start => {
                let from = (self.position() - self.map_start) as usize;
                map.get(from..).unwrap_or_default()
            }
            _ => &[],
        }
    }

    /// Maps at least the next `n` bytes of the block when they are not mapped yet; a
    /// new mapping reaches `window` bytes ahead (up to the unit's span), so that it
    /// serves the blocks that follow too, and takes in the rest of the span when less
    /// than a quarter window would be left: a default-sized unit then maps each
    /// shard's part once rather than a window and a sliver (mapping and unmapping take
    /// the process's memory-map lock, which the merge partitions contend for).
    fn map_ahead(&mut self, n: usize) -> Result<()> {
        if n as u64 > self.block.length - self.consumed {
            return Err(self.corrupt(format!(
                "needs {n} more bytes past byte {} of a {}-byte block",
                self.consumed, self.block.length
            )));
        }
        if self.mapped().len() >= n {
            return Ok(());
        }
        // Unmapped first: the window bounds what is mapped at once.
        self.map = None;
        let at = self.position();
        let rest = self.span_end.saturating_sub(at);
        let mut len = rest.min(self.window.max(n) as u64);
        if rest - len < self.window as u64 / 4 {
            len = rest;
        }
        let len = len as usize;
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| self.internal("read before the block was started"))?;
        // SAFETY: the mapping is read-only, and staged shard files are never written
        // once their shard.json exists (FORMAT.md); `start` checked that the file holds
        // the whole span. Were a file truncated by someone else while mapped, the
        // process would get SIGBUS, and the commit protocol leaves nothing
        // half-committed then (the version file is written last).
        let map = unsafe { MmapOptions::new().offset(at).len(len).populate().map(file) }
            .map_err(|e| io_error("mapping", self.path, e))?;
        self.map = Some(Arc::new(map));
        self.map_start = at;
        Ok(())
    }

    /// Moves past the next `n` mapped bytes; returns where they lie in the mapping.
    fn advance(&mut self, n: usize) -> std::ops::Range<usize> {
        let from = (self.position() - self.map_start) as usize;
        self.consumed += n as u64;
        from..from + n
    }

    /// Consumes the next `n` bytes, mapping them at once; returns their mapping and
    /// where they lie in it.
    fn take(&mut self, n: usize) -> Result<(&Arc<Mmap>, Range<usize>)> {
        self.map_ahead(n)?;
        let range = self.advance(n);
        let map = self
            .map
            .as_ref()
            .ok_or_else(|| self.internal("read before the block was started"))?;
        self.crc.update(&map[range.clone()]);
        Ok((map, range))
    }

    /// Consumes bytes up to `offset` within the block (framing between regions).
    fn skip_to(&mut self, offset: u64) -> Result<()> {
        let mut left = offset.checked_sub(self.consumed).ok_or_else(|| {
            self.corrupt(format!("byte {offset} lies before byte {}", self.consumed))
        })?;
        while left > 0 {
            self.map_ahead(1)?;
            let n = left.min(self.mapped().len() as u64) as usize;
            self.take(n)?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Consumes the block's message header and returns where its rows are.
    fn layout(&mut self, schema: &SchemaRef) -> Result<StoredRowsLayout> {
        let what = self.what();
        let block = self.block;
        let (map, header) = self.take(block.meta_len as usize)?;
        StoredRowsLayout::parse(&what, schema, &block, &map[header])
    }

    /// Consumes the block up to the end of its row ids, decoding them into `ids`.
    fn read_ids(&mut self, layout: &StoredRowsLayout, ids: &mut BlockIds) -> Result<()> {
        self.skip_to(layout.ids.start)?;
        let (map, stored) = self.take(layout.rows * 8)?;
        ids.values.clear();
        ids.values
            .extend(map[stored.clone()].chunks_exact(8).map(|b| {
                let mut le = [0u8; 8];
                le.copy_from_slice(b);
                u64::from_le_bytes(le)
            }));
        ids.stored = Some((Arc::clone(map), stored.start));
        self.skip_to(layout.values.start)
    }

    /// Consumes the next `len` bytes, writing them to `out` and hashing them into
    /// `out_crc` as well.
    fn copy_to(&mut self, mut len: u64, out: &mut OutFile, out_crc: &mut Hasher) -> Result<()> {
        while len > 0 {
            self.map_ahead(1)?;
            let range = self.advance(len.min(self.mapped().len() as u64) as usize);
            let map = self
                .map
                .as_ref()
                .ok_or_else(|| self.internal("read before the block was started"))?;
            let piece = &map[range.clone()];
            if piece.len() < COMBINE_ABOVE {
                self.crc.update(piece);
                out_crc.update(piece);
            } else {
                let mut hash = Hasher::new();
                hash.update(piece);
                self.crc.combine(&hash);
                out_crc.combine(&hash);
            }
            len -= piece.len() as u64;
            out.write_mapped(map, range)?;
        }
        Ok(())
    }

    /// Consumes the rest of the block and checks its CRC-32 against the manifest.
    fn finish(&mut self) -> Result<()> {
        self.skip_to(self.block.length)?;
        let crc = self.crc.clone().finalize();
        if crc != self.block.crc32 {
            return Err(IndexError::corrupt(
                self.what(),
                format!(
                    "checksum mismatch in block at offset {}: crc32 {crc:#010x}, expected {:#010x}",
                    self.block.offset, self.block.crc32
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces reach the file whole and in order, across batch and piece-count flushes.
    #[test]
    fn pending_pieces_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let source_path = dir.path().join("source");
        let source: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&source_path, &source).unwrap();
        let source_file = File::open(&source_path).unwrap();
        // SAFETY: a private temporary file nobody else writes.
        let map = Arc::new(unsafe { Mmap::map(&source_file) }.unwrap());

        let out_path = dir.path().join("out");
        let (mut pending, mut made) = (Vec::new(), Vec::new());
        let mut out = OutFile {
            path: &out_path,
            file: File::create(&out_path).unwrap(),
            pending: &mut pending,
            made: &mut made,
            pending_bytes: 0,
        };
        let mut expected = Vec::new();
        let mut at = 0usize;
        // Sizes from empty to past WRITE_BATCH, more pieces than MAX_PIECES.
        for i in 0..1500usize {
            let len = (i * 97) % 3000 + if i % 500 == 7 { WRITE_BATCH } else { 0 };
            let len = len.min(source.len() - at);
            if i % 3 == 0 {
                let bytes: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
                out.write_made(&bytes).unwrap();
                expected.extend_from_slice(&bytes);
            } else {
                out.write_mapped(&map, at..at + len).unwrap();
                expected.extend_from_slice(&source[at..at + len]);
                at = (at + len) % (source.len() / 2);
            }
        }
        out.flush().unwrap();
        assert!(out.pending.is_empty() && out.made.is_empty());
        assert_eq!(std::fs::read(&out_path).unwrap(), expected);
    }
}
