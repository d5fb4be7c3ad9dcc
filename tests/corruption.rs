//! Corruption: a flipped bit anywhere in any file of the format, or a file cut
//! short, must give a clear error naming what is damaged, or the unchanged correct
//! answer: never a panic, never a different answer. Checked for search over a
//! committed index and for a finalize of staged shards, all six types.

mod common;

use std::sync::Arc;

use common::*;
use datafusion::prelude::SessionContext;
use datafusion_vector_index::SearchOptions;
use datafusion_vector_index::ShardWriter;
use datafusion_vector_index::{FinalizeOptions, SegmentGrouping};
use datafusion_vector_index::{IndexError, SearchHit, VectorIndex, VectorIndexSession};
use datafusion_vector_index::{IndexType, Metric};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const ROWS: usize = 300;
const FRAGMENTS: u64 = 4;

fn open(store: Arc<dyn ObjectStore>) -> (SessionContext, VectorIndex) {
    let ctx = VectorIndexSession::new().context().clone();
    ctx.register_object_store(&url::Url::parse("mem://t").unwrap(), store);
    let index = VectorIndex::open(&ctx, "mem://t/idx").unwrap();
    (ctx, index)
}

fn finalize_options() -> FinalizeOptions {
    FinalizeOptions::default()
        .with_grouping(SegmentGrouping::TargetRows(150))
        .with_target_file_bytes(1 << 10)
}

async fn search(
    ctx: &SessionContext,
    index: &VectorIndex,
    data: &[f32],
) -> Result<Vec<Vec<SearchHit>>, IndexError> {
    let options = SearchOptions::default().with_k(5).with_nprobes(2);
    index.search(ctx, &data[..8 * DIM], options).await
}

/// One index type's store in two states: shards staged, and the same finalized.
struct Fixture {
    ty: IndexType,
    data: Vec<f32>,
    staged: Arc<InMemory>,
    committed: Arc<InMemory>,
    /// What search answers on the committed index.
    expected: Vec<Vec<SearchHit>>,
}

async fn fixture(ty: IndexType) -> Fixture {
    let data = clustered(ROWS, 4, 5);
    let ids = row_ids(ROWS, FRAGMENTS);
    let model = train(&data, ty, Metric::L2, 4);
    let staged = Arc::new(InMemory::new());
    let (_, index) = open(Arc::clone(&staged) as Arc<dyn ObjectStore>);
    model.write(index.location()).await.unwrap();
    for w in 0..2u64 {
        let mine: Vec<usize> = (0..ROWS).filter(|&i| (ids[i] >> 32) % 2 == w).collect();
        let vals: Vec<f32> = mine
            .iter()
            .flat_map(|&i| data[i * DIM..(i + 1) * DIM].iter().copied())
            .collect();
        let mine_ids: Vec<u64> = mine.iter().map(|&i| ids[i]).collect();
        let mut writer = ShardWriter::new(index.location().clone(), Arc::new(model.clone()));
        writer
            .write(&mine_ids, &vector_array(&vals), "vec")
            .unwrap();
        writer.finish().await.unwrap();
    }
    let committed = Arc::new(staged.fork());
    let (ctx, index) = open(Arc::clone(&committed) as Arc<dyn ObjectStore>);
    index.finalize(&ctx, &finalize_options()).await.unwrap();
    let expected = search(&ctx, &index, &data).await.unwrap();
    Fixture {
        ty,
        data,
        staged,
        committed,
        expected,
    }
}

async fn paths(store: &InMemory) -> Vec<Path> {
    let mut paths: Vec<Path> = store
        .list(None)
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    paths.sort();
    paths
}

/// A damaged copy of `store`: one bit of one file flipped, or the file cut short;
/// with `manifest`, the file is one of the JSON manifests (whose every byte matters).
async fn damaged(
    store: &InMemory,
    manifest: bool,
    file: Index,
    byte: Index,
    bit: u8,
    cut: bool,
) -> (Arc<InMemory>, String) {
    let copy = Arc::new(store.fork());
    let mut all = paths(&copy).await;
    if manifest {
        all.retain(|p| p.as_ref().ends_with(".json"));
    }
    let path = file.get(&all).clone();
    let mut bytes = copy
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let at = byte.index(bytes.len());
    let what = if cut {
        bytes.truncate(at);
        format!("{path} cut to {at} bytes")
    } else {
        bytes[at] ^= 1 << bit;
        format!("{path}: bit {bit} of byte {at} flipped")
    };
    copy.put(&path, bytes.into()).await.unwrap();
    (copy, what)
}

/// An error must name the damage plainly: never a bug report, never a panic.
fn check_error(what: &str, e: &IndexError) -> Result<(), TestCaseError> {
    prop_assert!(
        !matches!(e, IndexError::Internal(_)),
        "{}: internal error {:?}",
        what,
        e
    );
    Ok(())
}

/// Cases per property: `CORRUPTION_CASES` in the environment, for longer runs.
fn runner() -> TestRunner {
    let cases = std::env::var("CORRUPTION_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1500);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn fixtures(rt: &tokio::runtime::Runtime) -> Vec<Fixture> {
    rt.block_on(futures::future::join_all(IndexType::ALL.map(fixture)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Which state of a fixture is damaged, and what then runs on it.
#[derive(Debug, Clone, Copy)]
enum Damaged {
    /// The committed index, then a search.
    Committed,
    /// The staged shards, then a finalize and a search.
    Staged,
}

/// Damages one file of one fixture per case; what runs on it must answer as the
/// undamaged index does or fail with an error that is not a bug report or a panic.
fn damage_property(target: Damaged) {
    let rt = runtime();
    let fixtures = fixtures(&rt);
    let strategy = (
        0..fixtures.len(),
        proptest::bool::weighted(0.6),
        any::<Index>(),
        any::<Index>(),
        0u8..8,
        proptest::bool::weighted(0.15),
    );
    runner()
        .run(&strategy, |(f, manifest, file, byte, bit, cut)| {
            let f = &fixtures[f];
            let source = match target {
                Damaged::Committed => &f.committed,
                Damaged::Staged => &f.staged,
            };
            rt.block_on(async {
                let (store, what) = damaged(source, manifest, file, byte, bit, cut).await;
                let what = format!("{}: {what}", f.ty);
                let (ctx, index) = open(store);
                let data = f.data.clone();
                let run = tokio::spawn(async move {
                    if let Damaged::Staged = target {
                        index.finalize(&ctx, &finalize_options()).await?;
                    }
                    search(&ctx, &index, &data).await
                });
                match run.await {
                    Err(e) => Err(TestCaseError::fail(format!("{what}: panicked: {e}"))),
                    Ok(Ok(hits)) => {
                        prop_assert_eq!(&hits, &f.expected, "{}: another answer", what);
                        Ok(())
                    }
                    Ok(Err(e)) => check_error(&what, &e),
                }
            })
        })
        .unwrap();
}

#[test]
fn a_damaged_committed_index_answers_correctly_or_says_what_is_damaged() {
    damage_property(Damaged::Committed);
}

#[test]
fn a_damaged_staging_area_finalizes_correctly_or_says_what_is_damaged() {
    damage_property(Damaged::Staged);
}

/// The damage a user is most likely to meet is reported with the file and a remedy.
#[tokio::test]
async fn errors_name_the_damaged_file() {
    let f = fixture(IndexType::IvfSq).await;
    let all = paths(&f.committed).await;
    let find = |suffix: &str| {
        all.iter()
            .find(|p| p.as_ref().ends_with(suffix))
            .unwrap()
            .clone()
    };
    // Every data file cut short, since a search reads only the probed partitions.
    let parts: Vec<Path> = all
        .iter()
        .filter(|p| p.as_ref().contains("/part-"))
        .cloned()
        .collect();
    let cases = [
        (
            vec![find(".arrow")],
            None,
            vec!["models/", "index.json says", "restore"],
        ),
        (
            parts,
            Some(40),
            vec![
                "/part-",
                "shorter than its manifest says",
                "restore the file",
            ],
        ),
        (
            vec![find("_versions/1.json")],
            None,
            vec!["_versions/1.json", "checksum mismatch"],
        ),
        (
            vec![find("segment.json")],
            None,
            vec!["segment.json", "checksum mismatch"],
        ),
        (
            vec![find("index.json")],
            None,
            vec!["index.json", "checksum mismatch"],
        ),
    ];
    for (paths, cut, words) in cases {
        let copy = Arc::new(f.committed.fork());
        for path in &paths {
            let bytes = copy.get(path).await.unwrap().bytes().await.unwrap();
            let mut bytes = bytes.to_vec();
            match cut {
                Some(n) => bytes.truncate(n),
                None => bytes[20] ^= 0x04,
            }
            copy.put(path, bytes.into()).await.unwrap();
        }
        let path = &paths[0];
        let (ctx, index) = open(copy);
        let err = search(&ctx, &index, &f.data).await.unwrap_err();
        assert!(matches!(err, IndexError::Corrupt { .. }), "{path}: {err:?}");
        let text = err.to_string();
        for w in words {
            assert!(text.contains(w), "{path}: '{w}' not in {text}");
        }
    }
}
