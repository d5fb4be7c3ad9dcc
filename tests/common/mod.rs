//! Shared helpers for the integration tests: seeded clustered data, index
//! locations in temporary folders, and shards written with arbitrary splits.
#![allow(dead_code)]

pub mod faults;

use std::sync::Arc;

use arrow::array::ArrayRef;
use datafusion::prelude::SessionContext;
use datafusion_vector_index::datasets::SplitMix64;
use datafusion_vector_index::format::IndexLocation;
use datafusion_vector_index::SearchOptions;
use datafusion_vector_index::ShardWriter;
use datafusion_vector_index::VectorIndex;
use datafusion_vector_index::{IndexType, Metric, Model, TrainOptions};

pub const DIM: usize = 16;

/// `rows` vectors from a Gaussian mixture of `clusters` centers.
pub fn clustered(rows: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let centers: Vec<f32> = (0..clusters * DIM)
        .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
        .collect();
    let mut v = Vec::with_capacity(rows * DIM);
    for _ in 0..rows {
        let c = rng.below(clusters);
        v.extend(
            centers[c * DIM..(c + 1) * DIM]
                .iter()
                .map(|x| x + 0.3 * rng.normal() as f32),
        );
    }
    v
}

/// Row i lives in fragment `i % fragments`.
pub fn row_ids(rows: usize, fragments: u64) -> Vec<u64> {
    (0..rows as u64)
        .map(|i| ((i % fragments) << 32) | i)
        .collect()
}

pub fn vector_array(values: &[f32]) -> ArrayRef {
    datafusion_vector_index::datasets::vector_column(values, DIM)
}

pub fn train(data: &[f32], index_type: IndexType, metric: Metric, partitions: usize) -> Model {
    let options = TrainOptions::default()
        .with_index_type(index_type)
        .with_metric(metric)
        .with_num_partitions(partitions)
        .with_num_sub_vectors(4)
        .with_max_iterations(10)
        .with_seed(3);
    Model::train(DIM, data.to_vec(), &options).unwrap()
}

pub struct TestIndex {
    pub dir: tempfile::TempDir,
    pub ctx: SessionContext,
    pub index: VectorIndex,
}

impl TestIndex {
    pub async fn new(model: &Model) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ctx = datafusion_vector_index::VectorIndexSession::new()
            .context()
            .clone();
        let index =
            VectorIndex::open(&ctx, &format!("file://{}/idx", dir.path().display())).unwrap();
        model.write(index.location()).await.unwrap();
        Self { dir, ctx, index }
    }

    /// The same layout on disk, reached through an object store that wraps the local
    /// filesystem, so the merge takes its object-store path (ranged reads, uploads)
    /// instead of the local-file one.
    pub async fn through_object_store(model: &Model) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ctx = datafusion_vector_index::VectorIndexSession::new()
            .context()
            .clone();
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let store = object_store::limit::LimitStore::new(local, 16);
        ctx.register_object_store(&url::Url::parse("wrapped://t").unwrap(), Arc::new(store));
        let index = VectorIndex::open(&ctx, "wrapped://t/idx").unwrap();
        model.write(index.location()).await.unwrap();
        Self { dir, ctx, index }
    }

    pub fn location(&self) -> &IndexLocation {
        self.index.location()
    }

    /// The error text of a search that must fail.
    pub async fn search_error(&self, query: &[f32], options: SearchOptions) -> String {
        self.index
            .search(&self.ctx, query, options)
            .await
            .unwrap_err()
            .to_string()
    }

    /// Finalizes what is staged, with the default options.
    pub async fn finalize(&self) {
        self.index
            .finalize(
                &self.ctx,
                &datafusion_vector_index::FinalizeOptions::default(),
            )
            .await
            .unwrap();
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("idx")
    }

    /// Writes one shard per group of fragments: `groups[f]` is the worker owning fragment f.
    pub async fn stage(
        &self,
        model: &Model,
        data: &[f32],
        ids: &[u64],
        owner_of_fragment: &[usize],
    ) -> Vec<String> {
        let workers = owner_of_fragment.iter().max().map_or(0, |m| m + 1);
        let mut shard_ids = Vec::new();
        for w in 0..workers {
            let mut writer = ShardWriter::new(self.location().clone(), Arc::new(model.clone()));
            let mine: Vec<usize> = (0..ids.len())
                .filter(|&i| owner_of_fragment[(ids[i] >> 32) as usize] == w)
                .collect();
            if mine.is_empty() {
                continue;
            }
            // Several batches per worker, in an order unrelated to row ids.
            for chunk in mine.chunks(97).rev() {
                let vals: Vec<f32> = chunk
                    .iter()
                    .flat_map(|&i| data[i * DIM..(i + 1) * DIM].iter().copied())
                    .collect();
                let cids: Vec<u64> = chunk.iter().map(|&i| ids[i]).collect();
                writer.write(&cids, &vector_array(&vals), "vec").unwrap();
            }
            shard_ids.push(writer.finish().await.unwrap().shard_id);
        }
        shard_ids
    }
}

/// Every file below `dir`, as (relative path, bytes), sorted.
pub fn files_below(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The guarantee the commit protocol stands on, asked of a store directly: in each
/// of `rounds`, eight concurrent create-if-absent PUTs of one key under `prefix`;
/// exactly one succeeds, the others see `AlreadyExists`, and the key holds the
/// winner's bytes.
pub async fn one_create_wins(
    store: Arc<dyn object_store::ObjectStore>,
    prefix: &str,
    rounds: usize,
) {
    use object_store::{ObjectStoreExt, PutMode, PutOptions};
    for round in 0..rounds {
        let path = object_store::path::Path::from(format!("{prefix}/_versions/{round}.json"));
        let puts = (0..8).map(|writer| {
            let (store, path) = (Arc::clone(&store), path.clone());
            async move {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                store
                    .put_opts(&path, format!("writer {writer}").into(), opts)
                    .await
                    .map(|_| writer)
            }
        });
        let results = futures::future::join_all(puts).await;
        let winners: Vec<usize> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(e, object_store::Error::AlreadyExists { .. }),
                "round {round}: {e}"
            );
        }
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored, format!("writer {}", winners[0]).as_bytes());
    }
}

/// Copies the folder `from` (recursively) to `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
