//! The model file: `models/<fingerprint>.arrow` (see FORMAT.md).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, Float32Array, ListArray, RecordBatch, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use arrow::ipc::convert::fb_to_schema;
use arrow::ipc::reader::{read_footer_length, FileReader};
use arrow::ipc::root_as_footer;
use sha2::{Digest, Sha256};

use super::{Model, ModelInfo, ModelParams, ProductQuantizer, ScalarQuantizer};
use crate::error::{IndexError, Result};
use crate::format::{check_version, encode_partitions, IndexLocation, IndexManifest};

const PARAMS_KEY: &str = "vector_index.model";

/// Tensors in canonical order: the fingerprint and the file both follow it.
fn tensors(model: &Model) -> Vec<(&'static str, &[f32])> {
    let mut t = vec![("centroids", model.centroids.as_slice())];
    if let Some(pq) = &model.pq {
        t.push(("pq_codebook", pq.codebook.as_slice()));
    }
    if let Some(sq) = &model.sq {
        t.push(("sq_lower", sq.lower.as_slice()));
        t.push(("sq_upper", sq.upper.as_slice()));
    }
    t
}

fn params_json(model: &Model) -> String {
    serde_json::to_string(model.params()).unwrap_or_default()
}

/// SHA-256 of the canonical bytes (parameters JSON, then each tensor's name,
/// length and little-endian floats), as 32 hex digits.
pub(super) fn fingerprint(model: &Model) -> String {
    let mut h = Sha256::new();
    h.update(params_json(model).as_bytes());
    for (name, values) in tensors(model) {
        h.update(name.as_bytes());
        h.update((values.len() as u64).to_le_bytes());
        // In blocks: one `update` per float took twice as long (0.33 against 0.18 ms
        // for a 256 KB PQ model).
        let mut block = [0u8; 4096];
        for chunk in values.chunks(block.len() / 4) {
            for (bytes, v) in block.chunks_exact_mut(4).zip(chunk) {
                bytes.copy_from_slice(&v.to_le_bytes());
            }
            h.update(&block[..chunk.len() * 4]);
        }
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn model_schema(params: String) -> Arc<Schema> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("tensor", DataType::Utf8, false),
            Field::new("values", DataType::List(item), false),
        ],
        HashMap::from([(PARAMS_KEY.to_string(), params)]),
    ))
}

/// Writes the model file (put-if-absent: content addressing makes a second write a no-op)
/// and makes it the index's model in `index.json`. Fails if the index already has
/// another model.
pub(super) async fn write_model(model: &Model, location: &IndexLocation) -> Result<()> {
    let schema = model_schema(params_json(model));
    let t = tensors(model);
    let names = StringArray::from_iter_values(t.iter().map(|(n, _)| *n));
    let flat: Vec<f32> = t.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let offsets = OffsetBuffer::from_lengths(t.iter().map(|(_, v)| v.len()));
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values = ListArray::try_new(item, offsets, Arc::new(Float32Array::from(flat)), None)?;
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(names), Arc::new(values)])?;
    let (bytes, _, _) = encode_partitions(&schema, [batch])?;
    location
        .put_if_absent(&location.model_file(model.fingerprint()), bytes)
        .await?;

    let manifest = IndexManifest {
        format_version: crate::format::FORMAT_VERSION,
        model: model.fingerprint().to_string(),
    };
    let path = location.index_manifest();
    if !location
        .put_if_absent(&path, serde_json::to_vec_pretty(&manifest)?)
        .await?
    {
        let existing = IndexManifest::from_json(&location.get(&path).await?)?;
        if existing.model != manifest.model {
            return Err(IndexError::invalid_argument(
                "index",
                format!(
                    "index {} already exists with model {}; create the new model under another index location",
                    location.url(),
                    existing.model
                ),
            ));
        }
    }
    Ok(())
}

/// The fingerprint of the index's model, from `index.json`.
async fn current_fingerprint(location: &IndexLocation) -> Result<String> {
    let bytes = location
        .get_opt(&location.index_manifest())
        .await?
        .ok_or_else(|| {
            IndexError::NotFound(format!(
                "no vector index at {} (index.json is missing; run create_vector_index first)",
                location.url()
            ))
        })?;
    Ok(IndexManifest::from_json(&bytes)?.model)
}

pub(super) async fn read_current_model(location: &IndexLocation) -> Result<Model> {
    read_model(location, &current_fingerprint(location).await?).await
}

/// Bytes at the end of the model file read for its parameters: its IPC footer holds
/// the schema and so the parameters, a few KiB whatever the size of the tensors.
const MODEL_TAIL_BYTES: u64 = 64 << 10;

pub(super) async fn read_current_model_info(location: &IndexLocation) -> Result<ModelInfo> {
    let fingerprint = current_fingerprint(location).await?;
    let what = format!("model {fingerprint}");
    let schema = read_model_schema(location, &fingerprint, MODEL_TAIL_BYTES).await?;
    let params = read_params(&what, &schema)?;
    check_params(&what, &params)?;
    Ok(ModelInfo {
        params,
        fingerprint,
    })
}

fn model_file_missing(location: &IndexLocation, fp: &str) -> IndexError {
    IndexError::NotFound(format!(
        "model file models/{fp}.arrow in {}",
        location.url()
    ))
}

/// The schema in the model file's IPC footer, from a read of the file's last
/// `first_read` bytes, and a second one if the footer is longer.
async fn read_model_schema(location: &IndexLocation, fp: &str, first_read: u64) -> Result<Schema> {
    let what = format!("model {fp}");
    let path = location.model_file(fp);
    let path = &path;
    let tail = |n| async move {
        location
            .get_tail_opt(path, n)
            .await?
            .ok_or_else(|| model_file_missing(location, fp))
    };
    let mut bytes = tail(first_read.max(10)).await?;
    let footer_len = |bytes: &[u8]| -> Result<usize> {
        let end: [u8; 10] = bytes
            .get(bytes.len().saturating_sub(10)..)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| IndexError::corrupt(&what, "too short to be an Arrow IPC file"))?;
        read_footer_length(end).map_err(|e| IndexError::corrupt(&what, e.to_string()))
    };
    let needed = footer_len(&bytes)? + 10;
    if bytes.len() < needed {
        bytes = tail(needed as u64).await?;
        if bytes.len() < needed || footer_len(&bytes)? + 10 != needed {
            return Err(IndexError::corrupt(
                &what,
                "its footer does not fit the file",
            ));
        }
    }
    let footer = root_as_footer(&bytes[bytes.len() - needed..bytes.len() - 10])
        .map_err(|e| IndexError::corrupt(&what, format!("footer: {e}")))?;
    let schema = footer
        .schema()
        .filter(|s| s.fields().is_some())
        .ok_or_else(|| IndexError::corrupt(&what, "no schema in the footer"))?;
    Ok(fb_to_schema(schema))
}

/// The model file, its footer and schema read; its batch not yet decoded.
async fn open_model_file(
    location: &IndexLocation,
    fp: &str,
) -> Result<FileReader<std::io::Cursor<bytes::Bytes>>> {
    let bytes = location
        .get_opt(&location.model_file(fp))
        .await?
        .ok_or_else(|| model_file_missing(location, fp))?;
    FileReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| IndexError::corrupt(format!("model {fp}"), e.to_string()))
}

/// The parameters in the model file's schema metadata, after their format version.
fn read_params(what: &str, schema: &Schema) -> Result<ModelParams> {
    let params_json =
        schema.metadata().get(PARAMS_KEY).cloned().ok_or_else(|| {
            IndexError::corrupt(what, "no model parameters in the schema metadata")
        })?;
    let version: serde_json::Value = serde_json::from_str(&params_json)?;
    check_version(what, version["format_version"].as_u64().unwrap_or(0) as u32)?;
    serde_json::from_str(&params_json).map_err(|e| IndexError::corrupt(what, e.to_string()))
}

/// Parameters no model can have (the tensors are checked against them on a full read).
fn check_params(what: &str, params: &ModelParams) -> Result<()> {
    let dim = params.dim;
    let bad = match params.num_sub_vectors {
        _ if dim == 0 || params.num_partitions == 0 => true,
        Some(m) => m == 0 || !dim.is_multiple_of(m),
        None => params.index_type.quantizer() == super::Quantizer::Pq,
    };
    if bad {
        return Err(IndexError::corrupt(
            what,
            format!(
                "parameters do not describe a model: dim {dim}, {} partitions, num_sub_vectors {:?}",
                params.num_partitions, params.num_sub_vectors
            ),
        ));
    }
    Ok(())
}

pub(super) async fn read_model(location: &IndexLocation, fp: &str) -> Result<Model> {
    let what = format!("model {fp}");
    let reader = open_model_file(location, fp).await?;
    let params = read_params(&what, &reader.schema())?;
    check_params(&what, &params)?;
    let mut found: HashMap<String, Vec<f32>> = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| IndexError::corrupt(&what, e.to_string()))?;
        let names = batch
            .column(0)
            .as_string_opt::<i32>()
            .ok_or_else(|| IndexError::corrupt(&what, "tensor names"))?;
        let lists = batch
            .column(1)
            .as_list_opt::<i32>()
            .ok_or_else(|| IndexError::corrupt(&what, "tensor values"))?;
        for i in 0..batch.num_rows() {
            let v = lists.value(i);
            let v = v
                .as_primitive_opt::<Float32Type>()
                .ok_or_else(|| IndexError::corrupt(&what, "tensor type"))?;
            found.insert(names.value(i).to_string(), v.values().to_vec());
        }
    }
    let mut take = |name: &str| {
        found
            .remove(name)
            .ok_or_else(|| IndexError::corrupt(&what, format!("missing tensor {name}")))
    };
    let dim = params.dim as usize;
    let centroids = take("centroids")?;
    if centroids.len() != dim * params.num_partitions as usize {
        return Err(IndexError::corrupt(&what, "centroids have the wrong size"));
    }
    let pq = match params.num_sub_vectors {
        Some(m) => Some(ProductQuantizer {
            num_sub_vectors: m as usize,
            sub_dim: dim / m.max(1) as usize,
            codebook: take("pq_codebook")?,
        }),
        None => None,
    };
    let sq = if params.index_type.quantizer() == super::Quantizer::Sq {
        Some(ScalarQuantizer {
            lower: take("sq_lower")?,
            upper: take("sq_upper")?,
        })
    } else {
        None
    };
    if let Some(pq) = &pq {
        let m = pq.num_sub_vectors;
        if m == 0
            || !dim.is_multiple_of(m)
            || pq.codebook.len() != m * crate::model::pq::PQ_CODES * pq.sub_dim
        {
            return Err(IndexError::corrupt(
                &what,
                "PQ codebook does not match num_sub_vectors and dim",
            ));
        }
    }
    if let Some(sq) = &sq {
        if sq.lower.len() != dim || sq.upper.len() != dim {
            return Err(IndexError::corrupt(&what, "SQ bounds do not match dim"));
        }
    }
    let model = Model::new(params, centroids, pq, sq);
    if model.fingerprint() != fp {
        return Err(IndexError::corrupt(
            &what,
            format!("contents hash to {}, not to its name", model.fingerprint()),
        ));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::super::{IndexType, Metric, ModelParams, ProductQuantizer, ScalarQuantizer};
    use super::*;

    fn params(index_type: IndexType, num_sub_vectors: Option<u32>) -> ModelParams {
        ModelParams {
            format_version: 1,
            index_type,
            metric: Metric::L2,
            dim: 4,
            num_partitions: 3,
            num_sub_vectors,
            hnsw: None,
            seed: 7,
            sample_rows: 100,
            max_iterations: 10,
        }
    }

    fn values(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 - 5.5) * scale).collect()
    }

    /// Fingerprints name model files and are recorded in every shard and version:
    /// they must never change for the same model (FORMAT.md).
    #[test]
    fn fingerprints_are_stable() {
        let pq = Model::new(
            params(IndexType::IvfPq, Some(2)),
            values(12, 0.25),
            Some(ProductQuantizer {
                num_sub_vectors: 2,
                sub_dim: 2,
                codebook: values(2 * 256 * 2, 0.01),
            }),
            None,
        );
        let sq = Model::new(
            params(IndexType::IvfSq, None),
            values(12, -1.5),
            None,
            Some(ScalarQuantizer {
                lower: values(4, 1.0),
                upper: values(4, 2.0),
            }),
        );
        assert_eq!(
            (pq.fingerprint(), sq.fingerprint()),
            (
                "ba93f6550dbbd806ca301d994e3cf150",
                "927a71e2e91e06d150d15bce2b0702f0"
            )
        );
    }

    #[test]
    fn parameters_no_model_can_have_are_refused() {
        let ok = [
            params(IndexType::IvfPq, Some(2)),
            params(IndexType::IvfSq, None),
            params(IndexType::IvfFlat, None),
        ];
        for p in &ok {
            check_params("model m", p).unwrap();
        }
        let bad = [
            params(IndexType::IvfPq, Some(3)),
            params(IndexType::IvfPq, Some(0)),
            params(IndexType::IvfPq, None),
            ModelParams {
                dim: 0,
                ..params(IndexType::IvfFlat, None)
            },
            ModelParams {
                num_partitions: 0,
                ..params(IndexType::IvfSq, None)
            },
        ];
        for p in &bad {
            let err = check_params("model m", p).unwrap_err().to_string();
            assert!(
                err.contains("model m") && err.contains("do not describe a model"),
                "{err}"
            );
        }
    }

    fn memory_location() -> IndexLocation {
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let memory = url::Url::parse("memory://").unwrap();
        runtime.register_object_store(&memory, Arc::new(object_store::memory::InMemory::new()));
        IndexLocation::from_url("memory:///idx", &runtime).unwrap()
    }

    #[tokio::test]
    async fn parameters_are_read_from_the_footer_alone() {
        // 128 KiB of centroids: more than the first read of the file's end.
        let model = Model::new(
            ModelParams {
                dim: 64,
                num_partitions: 512,
                ..params(IndexType::IvfFlat, None)
            },
            values(512 * 64, 0.5),
            None,
            None,
        );
        let location = memory_location();
        model.write(&location).await.unwrap();
        let fp = model.fingerprint();
        // Reads shorter than the footer take a second read; longer ones get the file.
        for first_read in [1, 16, 1 << 10, MODEL_TAIL_BYTES, 1 << 30] {
            let schema = read_model_schema(&location, fp, first_read).await.unwrap();
            assert_eq!(&read_params("m", &schema).unwrap(), model.params());
        }
        assert_eq!(
            &read_current_model_info(&location).await.unwrap(),
            model.info()
        );
    }

    #[tokio::test]
    async fn a_model_file_without_a_footer_is_refused() {
        let location = memory_location();
        let mut too_long = vec![0xff, 0xff, 0xff, 0x0f];
        too_long.extend_from_slice(b"ARROW1");
        let cases: [(&[u8], &str); 3] = [
            (b"ARROW1", "too short to be an Arrow IPC file"),
            (b"these bytes are not an Arrow file", "footer"),
            (&too_long, "its footer does not fit the file"),
        ];
        for (bytes, why) in cases {
            location
                .put(&location.model_file("bad"), bytes.to_vec())
                .await
                .unwrap();
            let err = read_model_schema(&location, "bad", MODEL_TAIL_BYTES)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("model bad") && err.contains(why), "{err}");
        }
        let err = read_model_schema(&location, "absent", MODEL_TAIL_BYTES)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("models/absent.arrow"), "{err}");
    }
}
