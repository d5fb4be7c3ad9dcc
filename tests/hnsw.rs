//! HNSW types: finalize stores one graph per IVF partition, search walks it, and
//! recall stays with the non-HNSW twin's.

mod common;

use common::*;
use datafusion_vector_index::format::SegmentManifest;
use datafusion_vector_index::FinalizeOptions;
use datafusion_vector_index::SearchOptions;
use datafusion_vector_index::{IndexType, Metric};

const ROWS: usize = 16_000;
const FRAGMENTS: u64 = 16;
const PARTITIONS: usize = 6;

fn truth(data: &[f32], ids: &[u64], q: &[f32], k: usize) -> Vec<u64> {
    let mut all: Vec<(f32, u64)> = data
        .chunks(DIM)
        .zip(ids)
        .map(|(v, &id)| (Metric::L2.distance(q, v), id))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all[..k].iter().map(|x| x.1).collect()
}

async fn built(ty: IndexType, data: &[f32], ids: &[u64]) -> TestIndex {
    let model = train(data, ty, Metric::L2, PARTITIONS);
    let t = TestIndex::new(&model).await;
    let owners: Vec<usize> = (0..FRAGMENTS as usize).map(|f| f % 4).collect();
    t.stage(&model, data, ids, &owners).await;
    t.index
        .finalize(&t.ctx, &FinalizeOptions::default())
        .await
        .unwrap();
    t
}

async fn recall(
    t: &TestIndex,
    data: &[f32],
    ids: &[u64],
    queries: &[f32],
    ef: Option<usize>,
) -> f64 {
    let mut options = SearchOptions::default().with_k(10).with_nprobes(2);
    options.ef = ef;
    let hits = t.index.search(&t.ctx, queries, options).await.unwrap();
    let mut found = 0;
    for (q, h) in queries.chunks(DIM).zip(&hits) {
        assert_eq!(h.len(), 10);
        let truth = truth(data, ids, q, 10);
        found += h.iter().filter(|s| truth.contains(&s.row_id)).count();
    }
    found as f64 / (hits.len() * 10) as f64
}

fn segment_manifest(t: &TestIndex) -> (std::path::PathBuf, SegmentManifest) {
    let dir = std::fs::read_dir(t.path().join("segments"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let id = dir.file_name().unwrap().to_string_lossy().to_string();
    let bytes = std::fs::read(dir.join("segment.json")).unwrap();
    (dir, SegmentManifest::from_json(&id, &bytes).unwrap())
}

#[tokio::test]
async fn recall_is_within_two_points_of_the_twin() {
    let data = clustered(ROWS, 40, 31);
    let ids = row_ids(ROWS, FRAGMENTS);
    let queries = clustered(60, 40, 32);
    for (twin, hnsw) in [
        (IndexType::IvfFlat, IndexType::IvfHnswFlat),
        (IndexType::IvfSq, IndexType::IvfHnswSq),
        (IndexType::IvfPq, IndexType::IvfHnswPq),
    ] {
        let a = built(twin, &data, &ids).await;
        let b = built(hnsw, &data, &ids).await;
        let (ra, rb) = (
            recall(&a, &data, &ids, &queries, None).await,
            recall(&b, &data, &ids, &queries, Some(100)).await,
        );
        assert!(
            rb >= ra - 0.02,
            "{hnsw}: recall@10 {rb} vs {twin} {ra} at ef 100"
        );
        eprintln!("{twin} {ra:.3}  {hnsw} {rb:.3}");
        // A narrower search cannot find more true neighbors in aggregate here.
        let narrow = recall(&b, &data, &ids, &queries, Some(10)).await;
        eprintln!("{hnsw} ef=10 {narrow:.3}");
        assert!(narrow <= rb, "{hnsw}: ef 10 recall {narrow} > ef 100 {rb}");
    }
}

#[tokio::test]
async fn graphs_are_stored_per_partition_and_checked_when_read() {
    let data = clustered(4000, 12, 33);
    let ids = row_ids(4000, FRAGMENTS);
    let t = built(IndexType::IvfHnswSq, &data, &ids).await;
    let (dir, segment) = segment_manifest(&t);
    for file in &segment.files {
        let graph = file.graph.as_ref().expect("HNSW segment files have graphs");
        assert_eq!(graph.partitions.len(), file.partitions.len());
        assert!(dir.join(&graph.name).exists());
        for (g, d) in graph.partitions.iter().zip(&file.partitions) {
            assert!(g.rows >= d.rows, "a graph has a level-0 row per data row");
        }
    }
    // The twin type stores no graphs.
    let twin = built(IndexType::IvfSq, &data, &ids).await;
    assert!(segment_manifest(&twin)
        .1
        .files
        .iter()
        .all(|f| f.graph.is_none()));

    // Corrupt one graph block: searches probing it fail and name it.
    let file = &segment.files[0];
    let graph = file.graph.as_ref().unwrap();
    let block = graph.partitions[0];
    let path = dir.join(&graph.name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(block.offset + block.length - 1) as usize] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let options = SearchOptions::default().with_k(5).with_nprobes(PARTITIONS);
    let err = t.search_error(&data[..DIM], options).await;
    assert!(
        err.contains(&format!(
            "segment {}, partition {}, graph",
            segment.segment_id, file.partition_start
        )) && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn graph_parameters_are_checked_when_training() {
    use datafusion_vector_index::{HnswParams, Model, TrainOptions};
    let data = clustered(500, 4, 34);
    for (hnsw, name) in [
        (
            HnswParams {
                m: 1,
                ef_construction: 64,
            },
            "`hnsw_m`",
        ),
        (
            HnswParams {
                m: 129,
                ef_construction: 64,
            },
            "`hnsw_m`",
        ),
        (
            HnswParams {
                m: 16,
                ef_construction: 0,
            },
            "`hnsw_ef_construction`",
        ),
    ] {
        let options = TrainOptions::default()
            .with_index_type(IndexType::IvfHnswFlat)
            .with_num_partitions(4)
            .with_hnsw(hnsw);
        let err = Model::train(DIM, data.clone(), &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{err}");
    }
}
