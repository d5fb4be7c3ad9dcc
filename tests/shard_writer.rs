//! Worker side: shards round-trip exactly, assignment is the nearest centroid,
//! bad input is rejected clearly, and readers check the format version.

mod common;

use std::sync::Arc;

use arrow::array::{AsArray, ListArray};
use arrow::datatypes::{Float32Type, Float64Type, UInt64Type};
use arrow::ipc::reader::FileReader;
use common::*;
use datafusion_vector_index::format::ShardManifest;
use datafusion_vector_index::ShardWriter;
use datafusion_vector_index::{IndexType, Metric, ModelInfo};
use roaring::RoaringBitmap;

#[tokio::test]
async fn shard_round_trips_and_assigns_nearest_centroid() {
    let data = clustered(1500, 6, 1);
    let ids = row_ids(1500, 5);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 8);
    let t = TestIndex::new(&model).await;
    let shard_ids = t.stage(&model, &data, &ids, &[0, 0, 0, 0, 0]).await;
    assert_eq!(shard_ids.len(), 1);
    let dir = t
        .path()
        .join("_staging")
        .join(format!("partial_{}", shard_ids[0]));

    let manifest = ShardManifest::from_json(
        &shard_ids[0],
        &std::fs::read(dir.join("shard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.rows, 1500);
    assert_eq!(manifest.num_fragments, 5);
    assert_eq!(
        (manifest.min_fragment, manifest.max_fragment),
        (Some(0), Some(4))
    );
    assert_eq!(manifest.model, model.info().fingerprint());
    let bytes = std::fs::read(dir.join("data.arrow")).unwrap();
    assert_eq!(bytes.len() as u64, manifest.data_file.size);
    assert_eq!(crc32fast::hash(&bytes), manifest.data_file.crc32);

    let fragments =
        RoaringBitmap::deserialize_from(&std::fs::read(dir.join("fragments.roaring")).unwrap()[..])
            .unwrap();
    assert_eq!(fragments.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);

    let reader = FileReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let mut seen = 0;
    for (partition, batch) in reader.enumerate() {
        let batch = batch.unwrap();
        assert_eq!(batch.num_rows() as u64, manifest.partitions[partition].rows);
        let rids = batch.column(0).as_primitive::<UInt64Type>().values();
        assert!(
            rids.windows(2).all(|w| w[0] < w[1]),
            "rows sorted by row id"
        );
        let vecs = batch.column(1).as_fixed_size_list();
        let values = vecs.values().as_primitive::<Float32Type>().values();
        for (r, &rid) in rids.iter().enumerate() {
            let i = ids.iter().position(|&x| x == rid).unwrap();
            let original = &data[i * DIM..(i + 1) * DIM];
            assert_eq!(
                &values[r * DIM..(r + 1) * DIM],
                original,
                "vectors stored exactly"
            );
            assert_eq!(
                nearest_centroid(original, model.centroids()),
                partition,
                "row {rid}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 1500);
}

#[tokio::test]
async fn bad_vectors_are_rejected_with_the_row_named() {
    let data = clustered(600, 3, 2);
    let model = train(&data, IndexType::IvfSq, Metric::L2, 4);
    let t = TestIndex::new(&model).await;
    let mut writer = ShardWriter::new(t.location().clone(), Arc::new(model.clone()));

    // Wrong dimension, as a List column.
    let list =
        ListArray::from_iter_primitive::<Float32Type, _, _>(vec![Some(vec![Some(1.0), Some(2.0)])]);
    let err = writer
        .write(&[7], &(Arc::new(list) as _), "vec")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row id 7") && err.contains("dimension 2, expected 16"),
        "{err}"
    );

    // NULL vector.
    let list = ListArray::from_iter_primitive::<Float64Type, Vec<Option<f64>>, _>(vec![None]);
    let err = writer
        .write(&[8], &(Arc::new(list) as _), "vec")
        .unwrap_err()
        .to_string();
    assert!(err.contains("row id 8") && err.contains("NULL"), "{err}");

    // NaN.
    let mut v = data[..DIM].to_vec();
    v[3] = f32::NAN;
    let err = writer
        .write(&[9], &vector_array(&v), "vec")
        .unwrap_err()
        .to_string();
    assert!(err.contains("row id 9") && err.contains("NaN"), "{err}");

    // Duplicate row id.
    writer
        .write(&[10], &vector_array(&data[..DIM]), "vec")
        .unwrap();
    let err = writer
        .write(&[10], &vector_array(&data[..DIM]), "vec")
        .unwrap_err()
        .to_string();
    assert!(err.contains("row id 10"), "{err}");
}

#[tokio::test]
async fn float64_list_input_is_accepted() {
    let data = clustered(600, 3, 4);
    let model = train(&data, IndexType::IvfFlat, Metric::Cosine, 4);
    let t = TestIndex::new(&model).await;
    let mut writer = ShardWriter::new(t.location().clone(), Arc::new(model.clone()));
    let rows: Vec<Option<Vec<Option<f64>>>> = data
        .chunks(DIM)
        .take(10)
        .map(|v| Some(v.iter().map(|&x| Some(x as f64)).collect()))
        .collect();
    let list = ListArray::from_iter_primitive::<Float64Type, _, _>(rows);
    writer
        .write(
            &(0..10).collect::<Vec<u64>>(),
            &(Arc::new(list) as _),
            "vec",
        )
        .unwrap();
    assert_eq!(writer.finish().await.unwrap().rows, 10);
}

#[test]
fn unknown_format_version_is_rejected() {
    let json = br#"{"format_version": 99, "shard_id": "x"}"#;
    let err = ShardManifest::from_json("x", json).unwrap_err().to_string();
    assert!(
        err.contains("format version 99") && err.contains("understands version 2"),
        "{err}"
    );
}

#[tokio::test]
async fn model_files_round_trip_and_are_content_addressed() {
    let data = clustered(2000, 8, 5);
    for ty in IndexType::ALL {
        let model = train(&data, ty, Metric::Dot, 8);
        let t = TestIndex::new(&model).await;
        let back = datafusion_vector_index::Model::read_current(t.location())
            .await
            .unwrap();
        assert_eq!(back, model, "{ty}");
        // What finalize reads: the parameters, without the tensors.
        let info = ModelInfo::read_current(t.location()).await.unwrap();
        assert_eq!(&info, model.info(), "{ty}");
        let file = t
            .path()
            .join("models")
            .join(format!("{}.arrow", model.info().fingerprint()));
        assert!(file.exists());
        // Writing again is a no-op; another model for the same index is refused.
        model.write(t.location()).await.unwrap();
        let other = train(&data[..DIM * 1000], ty, Metric::Dot, 8);
        let err = other.write(t.location()).await.unwrap_err().to_string();
        assert!(err.contains("already exists with model"), "{err}");
    }
}

#[test]
fn training_is_deterministic_per_seed() {
    let data = clustered(3000, 10, 6);
    for ty in [IndexType::IvfFlat, IndexType::IvfPq, IndexType::IvfSq] {
        let a = train(&data, ty, Metric::L2, 16);
        let b = train(&data, ty, Metric::L2, 16);
        assert_eq!(a.info().fingerprint(), b.info().fingerprint(), "{ty}");
        assert_eq!(a, b);
    }
}

/// A batch the writer refuses leaves it as it was: none of its rows are staged, and
/// its row ids may be written again.
#[tokio::test]
async fn a_refused_batch_leaves_the_writer_as_it_was() {
    let data = clustered(40, 3, 6);
    let model = train(&data, IndexType::IvfFlat, Metric::L2, 2);
    let t = TestIndex::new(&model).await;
    let mut writer = ShardWriter::new(t.location().clone(), Arc::new(model.clone()));
    let rows =
        |range: std::ops::Range<usize>| vector_array(&data[range.start * DIM..range.end * DIM]);

    // A row id twice in one batch, after rows that would have been accepted.
    let err = writer
        .write(&[1, 2, 3, 2], &rows(0..4), "vec")
        .unwrap_err()
        .to_string();
    assert!(err.contains("row id 2 appears twice in one batch"), "{err}");
    // A bad vector after good ones.
    let mut bad = data[..4 * DIM].to_vec();
    bad[3 * DIM] = f32::INFINITY;
    assert!(writer
        .write(&[1, 2, 3, 4], &vector_array(&bad), "vec")
        .is_err());

    // The same row ids are still free, and only this batch is staged.
    writer.write(&[1, 2, 3, 4], &rows(0..4), "vec").unwrap();
    let err = writer
        .write(&[4, 5], &rows(4..6), "vec")
        .unwrap_err()
        .to_string();
    assert!(err.contains("row id 4 was written twice"), "{err}");
    let manifest = writer.finish().await.unwrap();
    assert_eq!(manifest.rows, 4);
}

/// The partition whose centroid is nearest in L2 (the first of equals).
fn nearest_centroid(v: &[f32], centroids: &[f32]) -> usize {
    centroids
        .chunks_exact(DIM)
        .enumerate()
        .min_by(|a, b| {
            Metric::L2
                .distance(v, a.1)
                .total_cmp(&Metric::L2.distance(v, b.1))
        })
        .map(|(p, _)| p)
        .unwrap()
}
