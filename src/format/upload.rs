//! A file written to an object store piece by piece: held in memory up to one part,
//! then sent as a multipart upload with a bounded number of parts in flight.
//!
//! Unlike object_store's `BufWriter`, a failed or finished upload is a state of its
//! own: every call after the first error returns an error naming the file (the store
//! is not touched again), and [`Upload::abort`] after a failure or a finish does
//! nothing, where `BufWriter` panics.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::error::{IndexError, Result};

/// Parts of a multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

enum State {
    /// Pieces not sent yet, under one part's size in all.
    Buffered {
        pieces: Vec<Bytes>,
        bytes: usize,
    },
    Uploading(WriteMultipart),
    /// Finished, failed or aborted: the store is not touched again.
    Closed {
        failed: bool,
    },
}

/// One object being written; see the module docs.
pub(crate) struct Upload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    part_bytes: usize,
    state: State,
}

impl Upload {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path, part_bytes: usize) -> Self {
        Self {
            store,
            path,
            part_bytes: part_bytes.max(1),
            state: State::Buffered {
                pieces: Vec::new(),
                bytes: 0,
            },
        }
    }

    /// Appends `bytes`. On a store error the upload is aborted and stays failed.
    pub(crate) async fn put(&mut self, bytes: Bytes) -> Result<()> {
        match &mut self.state {
            State::Buffered { pieces, bytes: n } => {
                *n += bytes.len();
                pieces.push(bytes);
                if *n < self.part_bytes {
                    return Ok(());
                }
                let pieces = std::mem::take(pieces);
                let upload = match self.store.put_multipart(&self.path).await {
                    Ok(upload) => upload,
                    Err(e) => return Err(self.failed(e)),
                };
                let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_bytes);
                for piece in pieces {
                    writer.put(piece);
                }
                self.state = State::Uploading(writer);
                self.wait_for_capacity().await
            }
            State::Uploading(writer) => {
                writer.put(bytes);
                self.wait_for_capacity().await
            }
            State::Closed { failed } => {
                let failed = *failed;
                Err(self.closed(failed))
            }
        }
    }

    /// Completes the object. Afterwards the upload is closed, whatever the outcome.
    pub(crate) async fn finish(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, State::Closed { failed: true }) {
            State::Buffered { pieces, .. } => {
                let payload: PutPayload = pieces.into_iter().collect();
                self.store
                    .put(&self.path, payload)
                    .await
                    .map_err(|e| self.error(e))?;
            }
            // `finish` aborts the upload itself when completing it fails.
            State::Uploading(writer) => {
                writer.finish().await.map_err(|e| self.error(e))?;
            }
            State::Closed { failed } => {
                self.state = State::Closed { failed };
                return Err(self.closed(failed));
            }
        }
        self.state = State::Closed { failed: false };
        Ok(())
    }

    /// Drops what was written, best effort: a store that cannot abort leaves parts
    /// that were never completed, which no reader sees. Does nothing once closed.
    pub(crate) async fn abort(&mut self) {
        let failed = !matches!(self.state, State::Closed { failed: false });
        if let State::Uploading(writer) =
            std::mem::replace(&mut self.state, State::Closed { failed })
        {
            writer.abort().await.ok();
        }
    }

    async fn wait_for_capacity(&mut self) -> Result<()> {
        let State::Uploading(writer) = &mut self.state else {
            return Ok(());
        };
        match writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.abort().await;
                Err(self.error(e))
            }
        }
    }

    /// Closes the upload after `e` (nothing was started on the store, so nothing to abort).
    fn failed(&mut self, e: object_store::Error) -> IndexError {
        self.state = State::Closed { failed: true };
        self.error(e)
    }

    fn error(&self, e: object_store::Error) -> IndexError {
        IndexError::store(format!("writing {}", self.path), e)
    }

    fn closed(&self, failed: bool) -> IndexError {
        IndexError::Internal(format!(
            "write to {} after its upload {}",
            self.path,
            if failed { "failed" } else { "was finished" }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn upload(store: &Arc<InMemory>, part_bytes: usize) -> Upload {
        Upload::new(
            Arc::clone(store) as Arc<dyn ObjectStore>,
            Path::from("f"),
            part_bytes,
        )
    }

    #[tokio::test]
    async fn small_and_multipart_files_arrive_whole() {
        let store = Arc::new(InMemory::new());
        for (part, pieces) in [(1 << 20, 3usize), (10, 7), (4, 40)] {
            let mut up = upload(&store, part);
            let mut expected = Vec::new();
            for i in 0..pieces {
                let piece: Vec<u8> = (0..i as u8 + 1).collect();
                expected.extend_from_slice(&piece);
                up.put(Bytes::from(piece)).await.unwrap();
            }
            up.finish().await.unwrap();
            let got = store.get(&Path::from("f")).await.unwrap().bytes().await;
            assert_eq!(got.unwrap().to_vec(), expected, "part size {part}");
            // Closed: a second finish or a put is an error, an abort does nothing.
            assert!(up.put(Bytes::from_static(b"x")).await.is_err());
            assert!(up.finish().await.is_err());
            up.abort().await;
        }
    }

    #[tokio::test]
    async fn an_aborted_upload_writes_nothing() {
        let store = Arc::new(InMemory::new());
        let mut up = upload(&store, 4);
        for _ in 0..5 {
            up.put(Bytes::from_static(b"abcdef")).await.unwrap();
        }
        up.abort().await;
        up.abort().await;
        let err = up.finish().await.unwrap_err().to_string();
        assert!(err.contains("after its upload failed"), "{err}");
        assert!(store.get(&Path::from("f")).await.is_err());
    }
}
