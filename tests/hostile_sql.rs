//! Malformed and hostile SQL, as an adversarial user would type it: every statement
//! must fail with an error (or succeed where noted), never panic, never abort the
//! process, never report a bug of ours for bad input.

use datafusion::error::DataFusionError;
use datafusion_vector_index::{IndexError, VectorIndexSession};

/// Runs `sql` to completion in a task of its own, so that a panic is seen as such.
async fn run(session: &VectorIndexSession, sql: &str) -> Result<usize, DataFusionError> {
    let ctx = session.context().clone();
    let sql = sql.to_string();
    let task = tokio::spawn(async move {
        let session = VectorIndexSession::with_context(ctx);
        let batches = session.sql(&sql).await?.collect().await?;
        Ok::<_, DataFusionError>(batches.iter().map(|b| b.num_rows()).sum())
    });
    match task.await {
        Ok(outcome) => outcome,
        Err(e) => panic!("panicked: {e}"),
    }
}

async fn setup(dir: &std::path::Path) -> VectorIndexSession {
    let session = VectorIndexSession::new();
    let d = dir.display();
    for sql in [
        "CREATE TABLE items AS SELECT CAST(value AS BIGINT UNSIGNED) + (CAST(value % 4 AS BIGINT UNSIGNED) << 32) AS row_id, \
         make_array(sin(value), cos(value * 0.7), value / 400.0, (value % 13) / 13.0) AS vec, \
         'item ' || CAST(value AS VARCHAR) AS name, CAST(value AS BIGINT) - 200 AS signed_id FROM generate_series(0, 399)".to_string(),
        "CREATE TABLE ragged AS SELECT value AS row_id, CASE WHEN value = 3 THEN make_array(1.0, 2.0) ELSE make_array(1.0, 2.0, 3.0, 4.0) END AS vec FROM generate_series(0, 9)".to_string(),
        "CREATE TABLE empty AS SELECT row_id, vec FROM items WHERE row_id > 1000000000000".to_string(),
        format!("CALL create_vector_index(index => 'file://{d}/flat', table => 'items', column => 'vec', type => 'IVF_FLAT', num_partitions => 4)"),
        format!("CALL build_vector_index_shard(index => 'file://{d}/flat', table => 'items', column => 'vec')"),
        format!("CALL finalize_vector_index(index => 'file://{d}/flat')"),
        format!("CALL create_vector_index(index => 'file://{d}/hsq', table => 'items', column => 'vec', type => 'IVF_HNSW_SQ', num_partitions => 4)"),
        format!("CALL build_vector_index_shard(index => 'file://{d}/hsq', table => 'items', column => 'vec')"),
        format!("CALL finalize_vector_index(index => 'file://{d}/hsq')"),
    ] {
        run(&session, &sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    session
}

#[tokio::test]
async fn hostile_sql_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let session = setup(dir.path()).await;
    let d = dir.path().display();
    let flat = format!("file://{d}/flat");
    let hsq = format!("file://{d}/hsq");
    let q = "[0.1, 0.2, 0.3, 0.4]";
    let errors = [
        // vector_search: queries.
        format!("SELECT * FROM vector_search('{flat}', [], 5)"),
        format!("SELECT * FROM vector_search('{flat}', NULL, 5)"),
        format!("SELECT * FROM vector_search('{flat}', [NULL, 1.0, 2.0, 3.0], 5)"),
        format!("SELECT * FROM vector_search('{flat}', ['a', 'b', 'c', 'd'], 5)"),
        format!("SELECT * FROM vector_search('{flat}', [1e40, 0.0, 0.0, 0.0], 5)"),
        format!("SELECT * FROM vector_search('{flat}', ['NaN'::double, 0.0, 0.0, 0.0], 5)"),
        format!("SELECT * FROM vector_search('{flat}', [1.0, 2.0], 5)"),
        format!("SELECT * FROM vector_search('{hsq}', [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 5)"),
        format!("SELECT * FROM vector_search('{flat}', [[1.0, 2.0], [3.0, 4.0]], 5)"),
        format!("SELECT * FROM vector_search('{flat}', 'abc', 5)"),
        format!("SELECT * FROM vector_search('{flat}', (SELECT vec FROM items LIMIT 1), 5)"),
        // vector_search: counts.
        format!("SELECT * FROM vector_search('{flat}', {q}, NULL)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, -1)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, 1.5)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, '5')"),
        format!("SELECT * FROM vector_search('{flat}', {q}, 0)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, 1099511627776)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, 9223372036854775807)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, 18446744073709551615)"),
        format!("SELECT * FROM vector_search('{hsq}', {q}, 5, 4, 1099511627776)"),
        format!("SELECT * FROM vector_search('{hsq}', {q}, 5, 4, 9223372036854775807)"),
        format!("SELECT * FROM vector_search('{hsq}', {q}, 5, 4, -1)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, 5, 9223372036854775807)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, 5, -4)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, k => 5, k => 6)"),
        format!("SELECT * FROM vector_search('{flat}', {q}, 5, 4, 10, 11)"),
        format!("SELECT * FROM vector_search(index => '{flat}', {q}, 5)"),
        format!("SELECT * FROM vector_search('{flat}')"),
        "SELECT * FROM vector_search()".to_string(),
        // vector_search: locations.
        format!("SELECT * FROM vector_search('', {q}, 5)"),
        format!("SELECT * FROM vector_search(NULL, {q}, 5)"),
        format!("SELECT * FROM vector_search(42, {q}, 5)"),
        format!("SELECT * FROM vector_search('file://{d}/nothing', {q}, 5)"),
        format!("SELECT * FROM vector_search('file://{d}/flat/../hsq/..', {q}, 5)"),
        format!("SELECT * FROM vector_search('s3://bucket/x', {q}, 5)"),
        format!("SELECT * FROM vector_search('not a url', {q}, 5)"),
        format!("SELECT * FROM vector_search('file://{d}/flat/segments', {q}, 5)"),
        // Table functions.
        "SELECT * FROM vector_index_shards()".to_string(),
        "SELECT * FROM vector_index_shards(NULL)".to_string(),
        "SELECT * FROM vector_index_shards(123)".to_string(),
        "SELECT * FROM vector_index_segments('bogus://x/y')".to_string(),
        format!("SELECT * FROM vector_index_segments('{flat}', 1)"),
        format!("SELECT * FROM vector_index_segments('file://{d}/nothing')"),
        // create_vector_index.
        "CALL create_vector_index()".to_string(),
        format!("CALL create_vector_index(index => '{d}/x', table => 'items', column => 'vec', type => 'IVF_FLAT', num_partitions => 4)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items', column => 'vec', type => 'IVF_FLAT', num_partitions => 1099511627776)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items', column => 'vec', type => 'IVF_FLAT', num_partitions => 4, sample_rows => 9223372036854775807)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items', column => 'vec', type => 'IVF_FLAT', num_partitions => 4, max_iterations => 9223372036854775807)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items', column => 'vec', type => 'IVF_PQ', num_partitions => 4, num_sub_vectors => 9223372036854775807)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items', column => 'vec', type => 'IVF_HNSW_PQ', num_partitions => 4, hnsw_m => 0)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items', column => 'vec', type => '', num_partitions => 4)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items', column => 'vec', metric => NULL, type => 'IVF_FLAT', num_partitions => NULL)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items; DROP TABLE items', column => 'vec', type => 'IVF_FLAT', num_partitions => 4)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'items', column => 'name', type => 'IVF_FLAT', num_partitions => 4)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'ragged', column => 'vec', type => 'IVF_FLAT', num_partitions => 2)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => 'empty', column => 'vec', type => 'IVF_FLAT', num_partitions => 2)"),
        format!("CALL create_vector_index(index => 'file://{d}/c1', table => (SELECT 1), column => 'vec', type => 'IVF_FLAT', num_partitions => 2)"),
        format!("CALL create_vector_index('file://{d}/c1', 'items', 'vec', 'IVF_FLAT', 4, 'l2', 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
        // build_vector_index_shard.
        format!("CALL build_vector_index_shard(index => '{flat}', table => 'items', column => 'vec', where => 'garbage garbage')"),
        format!("CALL build_vector_index_shard(index => '{flat}', table => 'items', column => 'vec', where => '1 = 1; DROP TABLE items')"),
        format!("CALL build_vector_index_shard(index => '{flat}', table => 'items', column => 'vec', where => 'nope > 1')"),
        format!("CALL build_vector_index_shard(index => '{flat}', table => 'items', column => 'vec', row_id => 'name')"),
        format!("CALL build_vector_index_shard(index => '{flat}', table => 'items', column => 'vec', row_id => 'signed_id')"),
        format!("CALL build_vector_index_shard(index => '{flat}', table => 'ragged', column => 'vec')"),
        format!("CALL build_vector_index_shard(index => '{flat}', table => 'items', column => 'nope')"),
        format!("CALL build_vector_index_shard(index => 'file://{d}/nothing', table => 'items', column => 'vec')"),
        // finalize_vector_index and vacuum_vector_index.
        "CALL finalize_vector_index()".to_string(),
        "CALL finalize_vector_index(index => NULL)".to_string(),
        "CALL finalize_vector_index(index => 5)".to_string(),
        format!("CALL finalize_vector_index(index => 'file://{d}/nothing')"),
        format!("CALL finalize_vector_index(index => '{flat}', mode => NULL, mode => 'append')"),
        format!("CALL finalize_vector_index(index => '{flat}', skip_incomplete => 'yes')"),
        format!("CALL finalize_vector_index(index => '{flat}', target_segment_rows => -1)"),
        format!("CALL finalize_vector_index(index => '{flat}', target_file_bytes => 18446744073709551615)"),
        format!("CALL finalize_vector_index(index => '{flat}', max_commit_attempts => 9223372036854775807)"),
        format!("CALL finalize_vector_index('{flat}', index => '{flat}')"),
        format!("EXPLAIN CALL finalize_vector_index(index => '{flat}', target_segment_rows => 0)"),
        format!("CALL vacuum_vector_index(index => '{flat}', older_than_seconds => -1)"),
        format!("CALL vacuum_vector_index(index => '{flat}', dry_run => 'x')"),
        format!("CALL vacuum_vector_index(index => 'file://{d}/nothing')"),
        "CALL".to_string(),
        "CALL nope()".to_string(),
        "CALL finalize_vector_index(index => 'file:///', index => 'file:///')".to_string(),
    ];
    for sql in &errors {
        match run(&session, sql).await {
            Ok(rows) => panic!("{sql}: accepted, {rows} rows"),
            Err(e) => {
                let index = IndexError::from(e);
                assert!(
                    !matches!(index, IndexError::Internal(_)),
                    "{sql}: {index:?}"
                );
                let text = index.to_string();
                assert!(!text.contains("panicked"), "{sql}: {text}");
            }
        }
    }
    // The index is as it was: one version, searchable.
    let rows = run(
        &session,
        &format!("SELECT * FROM vector_search('{flat}', {q}, 5)"),
    )
    .await
    .unwrap();
    assert_eq!(rows, 5);
    // Bounds are inclusive, and a vacuum far in the future or the past is fine.
    for sql in [
        format!("SELECT * FROM vector_search('{flat}', {q}, 10000, 65536)"),
        format!("SELECT * FROM vector_search('{hsq}', {q}, 3, 4, 100000)"),
        format!("CALL vacuum_vector_index(index => '{flat}', older_than_seconds => 18446744073709551615)"),
        format!("CALL vacuum_vector_index(index => '{flat}', older_than_seconds => 0, dry_run => true)"),
    ] {
        run(&session, &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}
