//! [`VectorIndexCodec`]: this crate's operators and sources as bytes, so that their
//! plans can travel to other processes (a distributed scheduler and its executors).
//!
//! Each node is a versioned JSON document naming the operator and what it was built
//! with: index URLs, model parameters and fingerprints, options, a committed version
//! number. Never an object store or a credential: the receiving process resolves
//! each URL through the object stores of its own runtime (or builds one from its
//! environment, as [`crate::VectorIndex::open`] does), so secrets stay where they
//! were configured. The staging scan's file groups travel as DataFusion's own
//! `FileScanExecConf`. What a plan shares only within one process (the shards a
//! finalize's scan keeps for its planner, the live progress counters) is not
//! encoded: the receiving side reads the shards again and counts on its own.

use std::sync::Arc;

use datafusion::common::{internal_datafusion_err, DataFusionError, Result};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::parse_protobuf_file_scan_config;
use datafusion_proto::physical_plan::to_proto::serialize_file_scan_config;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::FileScanExecConf;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::IndexError;
use crate::finalize::{
    CommitSegments, FinalizeOptions, MergeUnits, PlanMerge, VectorIndexCommitExec,
    VectorIndexMergeExec, VectorIndexPlanExec,
};
use crate::format::IndexLocation;
use crate::format::ModelParams;
use crate::model::{Model, ModelInfo};
use crate::search::{
    LoadedTarget, MergeTopK, Probe, ScanBlocks, SearchCache, SearchOptions, SearchTarget,
    TaskRouting, VectorIndexProbeExec, VectorIndexScanExec, VectorIndexTopKExec,
};
use crate::staging::{ScannedShards, ShardManifestSource};
use crate::worker::{
    PublishShards, VectorIndexShardPublishExec, VectorIndexShardWriteExec, WriteShards,
};

/// Version of the encoded nodes; a codec refuses nodes of another version, so that
/// a scheduler and executors of different builds fail clearly instead of guessing.
const CODEC_VERSION: u32 = 3;

/// A `PhysicalExtensionCodec` for every operator and source of this crate: the
/// finalize (staging scan, planner, merge, commit), the search (probe, scan, top-k)
/// and the distributed shard build.
///
/// Compose it with a scheduler's own codec (DataFusion's
/// `ComposedPhysicalExtensionCodec`); it refuses, with an error, any node that is
/// not ours, so the composition tries the next codec.
#[derive(Debug, Default, Clone, Copy)]
pub struct VectorIndexCodec;

#[derive(Serialize, Deserialize)]
struct Envelope {
    codec_version: u32,
    node: Node,
}

/// The model of a finalize operator: its identity and parameters, not its tensors.
#[derive(Serialize, Deserialize)]
struct ModelIdentity {
    fingerprint: String,
    params: ModelParams,
}

impl ModelIdentity {
    fn of(model: &ModelInfo) -> Self {
        Self {
            fingerprint: model.fingerprint().to_string(),
            params: model.params().clone(),
        }
    }

    fn info(self, what: &str) -> Result<Arc<ModelInfo>> {
        Ok(Arc::new(ModelInfo::try_new(
            self.params,
            self.fingerprint,
            what,
        )?))
    }
}

/// A committed version to search, with the model its plan ranked partitions with.
#[derive(Serialize, Deserialize)]
struct TargetRef {
    index: String,
    version: u64,
    model: String,
}

impl TargetRef {
    fn of(target: &SearchTarget) -> Self {
        Self {
            index: target.location.url().to_string(),
            version: target.version,
            model: target.model.info().fingerprint().to_string(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "operator", rename_all = "snake_case")]
enum Node {
    /// `DataSourceExec` over [`ShardManifestSource`]; `scan` is a protobuf
    /// `FileScanExecConf`.
    StagingScan {
        local_index: Option<String>,
        scan: Vec<u8>,
    },
    FinalizePlan {
        index: String,
        model: ModelIdentity,
        options: FinalizeOptions,
        finalize_id: String,
    },
    Merge {
        index: String,
        model: ModelIdentity,
    },
    Commit {
        index: String,
        model: ModelIdentity,
        options: FinalizeOptions,
    },
    Probe {
        target: TargetRef,
        options: SearchOptions,
        slots: usize,
    },
    Scan {
        target: TargetRef,
        options: SearchOptions,
        routing: TaskRouting,
    },
    TopK {
        k: usize,
    },
    ShardWrite {
        index: String,
        model: String,
        row_id: String,
        column: String,
    },
    ShardPublish {
        index: String,
    },
}

fn not_ours(node: &dyn ExecutionPlan) -> DataFusionError {
    DataFusionError::NotImplemented(format!("VectorIndexCodec does not encode {}", node.name()))
}

fn one_input(name: &str, inputs: &[Arc<dyn ExecutionPlan>]) -> Result<Arc<dyn ExecutionPlan>> {
    match inputs {
        [input] => Ok(Arc::clone(input)),
        _ => Err(internal_datafusion_err!(
            "encoded {name} has {} inputs, expected 1",
            inputs.len()
        )),
    }
}

fn no_inputs(name: &str, inputs: &[Arc<dyn ExecutionPlan>]) -> Result<()> {
    if inputs.is_empty() {
        Ok(())
    } else {
        Err(internal_datafusion_err!(
            "encoded {name} has {} inputs, expected none",
            inputs.len()
        ))
    }
}

/// The index at `url`, through the receiving process's object stores.
fn open(url: &str, ctx: &TaskContext) -> Result<IndexLocation> {
    Ok(IndexLocation::from_url(url, ctx.runtime_env().as_ref())?)
}

/// Runs `load` to completion from the synchronous decoder: search and shard-build
/// nodes read the model (and a version's segment manifests) of the index they name.
/// Schedulers and executors decode on multi-threaded Tokio runtimes; anywhere else
/// this is an error, not a deadlock.
fn block_on<T>(load: impl std::future::Future<Output = crate::error::Result<T>>) -> Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let handle = Handle::try_current()
        .map_err(|e| internal_datafusion_err!("decoding this plan needs a Tokio runtime: {e}"))?;
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return Err(internal_datafusion_err!(
            "decoding a search or shard-build node reads the index's model, which needs a multi-threaded Tokio runtime"
        ));
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(load))?)
}

impl VectorIndexCodec {
    fn node_of(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Node> {
        let plan = plan.as_ref();
        if let Some(exec) = plan.downcast_ref::<DataSourceExec>() {
            let (config, source) = exec
                .downcast_to_file_source::<ShardManifestSource>()
                .ok_or_else(|| not_ours(plan))?;
            let scan = serialize_file_scan_config(config, self, proto_converter)?;
            return Ok(Node::StagingScan {
                local_index: source.index().map(|l| l.url().to_string()),
                scan: scan.encode_to_vec(),
            });
        }
        if let Some(exec) = plan.downcast_ref::<VectorIndexPlanExec>() {
            // The shards the scan below kept stay in this process.
            let w = exec.work();
            return Ok(Node::FinalizePlan {
                index: w.location.url().to_string(),
                model: ModelIdentity::of(&w.model),
                options: w.options.clone(),
                finalize_id: w.finalize_id.clone(),
            });
        }
        if let Some(exec) = plan.downcast_ref::<VectorIndexMergeExec>() {
            let w = exec.work();
            return Ok(Node::Merge {
                index: w.location.url().to_string(),
                model: ModelIdentity::of(&w.model),
            });
        }
        if let Some(exec) = plan.downcast_ref::<VectorIndexCommitExec>() {
            let w = exec.work();
            return Ok(Node::Commit {
                index: w.location.url().to_string(),
                model: ModelIdentity::of(&w.model),
                options: w.options.clone(),
            });
        }
        if let Some(exec) = plan.downcast_ref::<VectorIndexProbeExec>() {
            let w = exec.work();
            return Ok(Node::Probe {
                target: TargetRef::of(&w.target),
                options: w.options,
                slots: w.slots,
            });
        }
        if let Some(exec) = plan.downcast_ref::<VectorIndexScanExec>() {
            let w = exec.work();
            return Ok(Node::Scan {
                target: TargetRef::of(&w.target),
                options: w.options,
                routing: w.routing,
            });
        }
        if let Some(exec) = plan.downcast_ref::<VectorIndexTopKExec>() {
            return Ok(Node::TopK { k: exec.work().k });
        }
        if let Some(exec) = plan.downcast_ref::<VectorIndexShardWriteExec>() {
            let w = exec.work();
            return Ok(Node::ShardWrite {
                index: w.location.url().to_string(),
                model: w.model.info().fingerprint().to_string(),
                row_id: w.row_id.clone(),
                column: w.column.clone(),
            });
        }
        if let Some(exec) = plan.downcast_ref::<VectorIndexShardPublishExec>() {
            return Ok(Node::ShardPublish {
                index: exec.work().location.url().to_string(),
            });
        }
        Err(not_ours(plan))
    }

    fn plan_of(
        &self,
        node: Node,
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(match node {
            Node::StagingScan { local_index, scan } => {
                no_inputs("staging scan", inputs)?;
                let mut source = ShardManifestSource::new();
                if let Some(url) = local_index {
                    source = source.reading_local_files_of(&open(&url, ctx)?);
                }
                let proto = FileScanExecConf::decode(scan.as_slice())
                    .map_err(|e| internal_datafusion_err!("encoded staging scan: {e}"))?;
                let decode = PhysicalPlanDecodeContext::new(ctx, self);
                let config = parse_protobuf_file_scan_config(
                    &proto,
                    &decode,
                    proto_converter,
                    Arc::new(source),
                )?;
                DataSourceExec::from_data_source(config)
            }
            Node::FinalizePlan {
                index,
                model,
                options,
                finalize_id,
            } => Arc::new(VectorIndexPlanExec::try_new(
                one_input("finalize planner", inputs)?,
                PlanMerge {
                    location: open(&index, ctx)?,
                    model: model.info(&index)?,
                    options,
                    finalize_id,
                    scanned: ScannedShards::default(),
                },
            )?),
            Node::Merge { index, model } => Arc::new(VectorIndexMergeExec::try_new(
                one_input("merge", inputs)?,
                MergeUnits {
                    location: open(&index, ctx)?,
                    model: model.info(&index)?,
                },
            )?),
            Node::Commit {
                index,
                model,
                options,
            } => Arc::new(VectorIndexCommitExec::try_new(
                one_input("commit", inputs)?,
                CommitSegments {
                    location: open(&index, ctx)?,
                    model: model.info(&index)?,
                    options,
                },
            )?),
            Node::Probe {
                target,
                options,
                slots,
            } => {
                let loaded = load_target(target, ctx)?;
                Arc::new(VectorIndexProbeExec::try_new(
                    one_input("search probe", inputs)?,
                    Probe::new(loaded.target, options, loaded.cached, slots),
                )?)
            }
            Node::Scan {
                target,
                options,
                routing,
            } => Arc::new(VectorIndexScanExec::try_new(
                one_input("search scan", inputs)?,
                ScanBlocks {
                    target: load_target(target, ctx)?.target,
                    options,
                    routing,
                },
            )?),
            Node::TopK { k } => Arc::new(VectorIndexTopKExec::try_new(
                one_input("search top-k", inputs)?,
                MergeTopK { k },
            )?),
            Node::ShardWrite {
                index,
                model,
                row_id,
                column,
            } => {
                let location = open(&index, ctx)?;
                let current = block_on(Model::read_current(&location))?;
                if current.info().fingerprint() != model {
                    return Err(IndexError::Conflict(format!(
                        "index {index}: the shard build was planned with model {model}, but the index now has model {}; plan it again",
                        current.info().fingerprint()
                    ))
                    .into());
                }
                Arc::new(VectorIndexShardWriteExec::try_new(
                    one_input("shard write", inputs)?,
                    WriteShards {
                        location,
                        model: Arc::new(current),
                        row_id,
                        column,
                    },
                )?)
            }
            Node::ShardPublish { index } => Arc::new(VectorIndexShardPublishExec::try_new(
                one_input("shard publish", inputs)?,
                PublishShards {
                    location: open(&index, ctx)?,
                },
            )?),
        })
    }
}

/// The target a search node names, through the receiving session's search cache
/// if it has one.
fn load_target(target: TargetRef, ctx: &TaskContext) -> Result<LoadedTarget> {
    let location = open(&target.index, ctx)?;
    let cache = SearchCache::of(ctx.session_config());
    block_on(SearchTarget::load_version(
        &location,
        target.version,
        &target.model,
        cache.as_deref(),
    ))
}

impl PhysicalExtensionCodec for VectorIndexCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let envelope: Envelope = serde_json::from_slice(buf).map_err(|e| {
            DataFusionError::NotImplemented(format!("not a VectorIndexCodec node: {e}"))
        })?;
        if envelope.codec_version != CODEC_VERSION {
            return Err(IndexError::UnsupportedVersion {
                what: "encoded plan node".to_string(),
                found: envelope.codec_version,
                supported: CODEC_VERSION,
            }
            .into());
        }
        self.plan_of(envelope.node, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let envelope = Envelope {
            codec_version: CODEC_VERSION,
            node: self.node_of(&node, proto_converter)?,
        };
        serde_json::to_writer(buf, &envelope)
            .map_err(|e| internal_datafusion_err!("encoding {}: {e}", node.name()))
    }
}
