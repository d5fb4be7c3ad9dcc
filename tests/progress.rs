//! A session's progress counters reach their totals: sampling and training
//! (create), encoding (shard builds), merging, rows, bytes, graphs and the commit
//! (finalize), probes (search).

use std::path::Path;

use datafusion_vector_index::{ProgressStep, StepProgress, VectorIndexSession};

async fn sql(session: &VectorIndexSession, statement: &str) {
    session
        .sql(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
        .collect()
        .await
        .unwrap();
}

fn step(steps: &[StepProgress], step: ProgressStep) -> (u64, Option<u64>) {
    let s = steps
        .iter()
        .find(|s| s.step == step)
        .unwrap_or_else(|| panic!("{step} not started: {steps:?}"));
    (s.done, s.total)
}

/// Bytes of the segments' data and graph files on disk.
fn segment_file_bytes(index: &Path) -> u64 {
    let mut total = 0;
    for segment in std::fs::read_dir(index.join("segments")).unwrap() {
        for file in std::fs::read_dir(segment.unwrap().path()).unwrap() {
            let file = file.unwrap();
            if file.file_name().to_string_lossy().starts_with("part-") {
                total += file.metadata().unwrap().len();
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_reach_their_totals() {
    let session = VectorIndexSession::new();
    let progress = session.progress().expect("a new session has progress");
    sql(
        &session,
        "CREATE TABLE items AS SELECT \
           (CAST(value / 500 AS BIGINT UNSIGNED) << 32) + CAST(value % 500 AS BIGINT UNSIGNED) AS row_id, \
           make_array(sin(value), cos(value), sin(value * 0.1), cos(value * 0.3), \
                      (value % 7) / 7.0, (value % 11) / 11.0, (value % 13) / 13.0, 1.0) AS vec \
         FROM generate_series(0, 2999)",
    )
    .await;
    for (ty, kmeans_runs) in [("IVF_PQ", 2), ("IVF_HNSW_SQ", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let index = format!("file://{}", dir.path().display());

        progress.reset();
        sql(
            &session,
            &format!(
                "CALL create_vector_index(index => '{index}', table => 'items', column => 'vec', \
                 type => '{ty}', num_partitions => 8, max_iterations => 6)"
            ),
        )
        .await;
        let steps = progress.snapshot();
        assert_eq!(step(&steps, ProgressStep::Sampling), (3000, Some(3000)));
        // IVF centroids, plus one PQ sub-quantizer (8 dims / 8).
        assert_eq!(
            step(&steps, ProgressStep::Training),
            (6 * kmeans_runs, Some(6 * kmeans_runs))
        );

        // A whole table's row count is known up front; a filtered one's is not.
        progress.reset();
        sql(
            &session,
            &format!(
                "CALL build_vector_index_shard(index => '{index}', table => 'items', column => 'vec', \
                 where => 'row_id >> 32 < 4')"
            ),
        )
        .await;
        assert_eq!(
            step(&progress.snapshot(), ProgressStep::Encoding),
            (2000, None)
        );
        sql(
            &session,
            "CREATE TABLE rest AS SELECT * FROM items WHERE row_id >> 32 >= 4",
        )
        .await;
        progress.reset();
        sql(
            &session,
            &format!(
                "CALL build_vector_index_shard(index => '{index}', table => 'rest', column => 'vec')"
            ),
        )
        .await;
        assert_eq!(
            step(&progress.snapshot(), ProgressStep::Encoding),
            (1000, Some(1000))
        );
        sql(&session, "DROP TABLE rest").await;

        progress.reset();
        sql(
            &session,
            &format!("CALL finalize_vector_index(index => '{index}', target_file_bytes => 4096)"),
        )
        .await;
        let steps = progress.snapshot();
        let (units, total) = step(&steps, ProgressStep::Merging);
        assert_eq!(Some(units), total);
        assert!(units > 1, "{steps:?}");
        assert_eq!(step(&steps, ProgressStep::MergedRows), (3000, Some(3000)));
        assert_eq!(
            step(&steps, ProgressStep::WrittenBytes),
            (segment_file_bytes(dir.path()), None)
        );
        assert_eq!(step(&steps, ProgressStep::Commit), (1, Some(1)));
        let graphs = steps.iter().find(|s| s.step == ProgressStep::Graphs);
        if ty == "IVF_HNSW_SQ" {
            // One graph per IVF partition of the one segment.
            assert_eq!(graphs.map(|g| (g.done, g.total)), Some((8, Some(8))));
        } else {
            assert_eq!(graphs, None);
        }

        progress.reset();
        sql(
            &session,
            &format!(
                "SELECT * FROM vector_search('{index}', [0.1, 0.9, 0.1, 0.9, 0.5, 0.5, 0.5, 1.0], 5, nprobes => 4)"
            ),
        )
        .await;
        let (done, total) = step(&progress.snapshot(), ProgressStep::Probes);
        assert_eq!(Some(done), total);
        assert!((1..=4).contains(&done), "{done}");
    }
}
