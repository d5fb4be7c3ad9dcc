//! The whole flow on Azure Blob Storage, against Azurite (Microsoft's emulator) on
//! 127.0.0.1, reached as an operator reaches Azure: `az://<container>/…` URLs and
//! the environment (tests/common/azurite.rs). A table on the store (`COPY … TO`,
//! `CREATE EXTERNAL TABLE`), an index built by two workers, racing finalizers, a
//! search joined to the table; the store's conditional create, which the commit
//! protocol stands on, asked directly; refusals before training.
#![cfg(feature = "azure")]

mod common;

#[path = "common/azurite.rs"]
mod azurite;

use std::sync::Arc;

use arrow::array::AsArray;
use common::one_create_wins;
use datafusion_vector_index::{FinalizeOptions, IndexError, VectorIndex, VectorIndexSession};
use object_store::ObjectStore;

async fn sql(session: &VectorIndexSession, statement: &str) -> Vec<arrow::array::RecordBatch> {
    session
        .sql(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
}

fn first_u64(batches: &[arrow::array::RecordBatch], column: &str) -> u64 {
    batches[0]
        .column_by_name(column)
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(0)
}

#[tokio::test]
async fn a_table_and_an_index_on_azure_with_racing_finalizers() {
    let container = azurite::azurite().container();
    let session = VectorIndexSession::new();
    let items = format!("az://{container}/items/");
    let index = format!("az://{container}/idx");
    sql(
        &session,
        &format!(
            "COPY (SELECT \
               CAST(value AS BIGINT UNSIGNED) + (CAST(value % 6 AS BIGINT UNSIGNED) << 32) AS row_id, \
               make_array(sin(value), cos(value * 0.7), value / 600.0, (value % 13) / 13.0) AS vec \
             FROM generate_series(0, 599)) TO '{items}' STORED AS PARQUET"
        ),
    )
    .await;
    sql(
        &session,
        &format!("CREATE EXTERNAL TABLE items STORED AS PARQUET LOCATION '{items}'"),
    )
    .await;
    sql(
        &session,
        &format!(
            "CALL create_vector_index(index => '{index}', table => 'items', column => 'vec', \
             type => 'IVF_PQ', num_partitions => 4, num_sub_vectors => 2)"
        ),
    )
    .await;
    for range in ["< 3", ">= 3"] {
        sql(
            &session,
            &format!(
                "CALL build_vector_index_shard(index => '{index}', table => 'items', column => 'vec', \
                 where => 'row_id >> 32 {range}')"
            ),
        )
        .await;
    }

    // Four finalizers at once: one commits, the others are told they lost.
    let ctx = session.context().clone();
    let vi = VectorIndex::open(&ctx, &index).unwrap();
    let racers = (0..4).map(|_| {
        let (vi, ctx) = (vi.clone(), ctx.clone());
        tokio::spawn(async move { vi.finalize(&ctx, &FinalizeOptions::default()).await })
    });
    let results: Vec<_> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for err in results.into_iter().filter_map(Result::err) {
        assert!(
            matches!(
                err,
                IndexError::Conflict(_) | IndexError::NothingToFinalize(_)
            ),
            "{err:?}"
        );
    }
    let versions = sql(
        &session,
        &format!("SELECT max(version) AS v, sum(rows) AS r FROM vector_index_segments('{index}')"),
    )
    .await;
    assert_eq!(
        (first_u64(&versions, "v"), first_u64(&versions, "r")),
        (1, 600)
    );

    // Row 7 finds itself, joined back to the table on the store.
    let found = sql(
        &session,
        &format!(
            "SELECT t.row_id FROM vector_search('{index}', [sin(7.0), cos(4.9), 7.0 / 600.0, 7.0 / 13.0], 1, nprobes => 4) s \
             JOIN items t ON t.row_id = s.row_id"
        ),
    )
    .await;
    assert_eq!(first_u64(&found, "row_id"), 7 + (1u64 << 32));
}

/// Of eight concurrent create-if-absent PUTs of one blob, exactly one succeeds and
/// the others see `AlreadyExists`: Azure's `If-None-Match: *`, as the emulator
/// honours it.
#[tokio::test]
async fn concurrent_conditional_puts_create_once() {
    let container = azurite::azurite().container();
    let ctx = VectorIndexSession::new().context().clone();
    let index = VectorIndex::open(&ctx, &format!("az://{container}/race")).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::clone(index.location().store());
    one_create_wins(store, "race", 10).await;
}

/// A container that does not exist is refused before any row is read, naming the
/// store's code without its XML.
#[tokio::test]
async fn a_missing_container_is_refused_before_training() {
    azurite::azurite();
    let session = VectorIndexSession::new();
    sql(
        &session,
        "CREATE TABLE items AS SELECT make_array(CAST(value AS DOUBLE), 1.0) AS vec FROM generate_series(0, 99)",
    )
    .await;
    let err = session
        .sql(
            "CALL create_vector_index(index => 'az://no-such-container/idx', table => 'items', \
             column => 'vec', type => 'IVF_FLAT', num_partitions => 2)",
        )
        .await
        .unwrap_err();
    let line = datafusion_vector_index::error_line(err);
    assert!(
        line.contains("az://no-such-container/idx/_probe/")
            && line.contains("ContainerNotFound")
            && !line.contains("<?xml"),
        "{line}"
    );
}
