//! `ShardsTable`: the staged shards of an index as a DataFusion table.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use object_store::path::Path;

use super::rows::shards_schema;
use super::{ScannedShards, ShardManifestSource};
use crate::format::IndexLocation;

/// A shard folder found under `_staging/`.
#[derive(Debug, Clone)]
pub(crate) struct StagedShard {
    pub shard_id: String,
    pub dir: Path,
    /// `shard.json` when present; otherwise some file of the folder.
    pub file: Path,
    pub file_size: u64,
    pub has_manifest: bool,
}

/// Lists the shard folders of the staging area, sorted by shard id: one listing of
/// the whole staging area (one call, however many shards are staged).
pub(crate) async fn list_staged_shards(
    location: &IndexLocation,
) -> crate::error::Result<Vec<StagedShard>> {
    let staging = location.staging_dir();
    let depth = staging.parts().count();
    let mut files: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut listing = location.store().list(Some(&staging));
    while let Some(meta) = listing.try_next().await? {
        // `_staging/partial_<shard id>/<file>`; deeper or shallower entries are not
        // shard files.
        let parts: Vec<_> = meta.location.parts().skip(depth).collect();
        if let [dir, file] = &parts[..] {
            files
                .entry(dir.as_ref().to_string())
                .or_default()
                .push((file.as_ref().to_string(), meta.size));
        }
    }
    let mut shards = Vec::new();
    for (dir_name, mut names) in files {
        let Some(shard_id) = dir_name.strip_prefix("partial_") else {
            continue;
        };
        names.sort();
        let dir = location.shard_dir(shard_id);
        let chosen = names
            .iter()
            .find(|(n, _)| n == "shard.json")
            .or_else(|| names.first());
        if let Some((name, size)) = chosen {
            shards.push(StagedShard {
                shard_id: shard_id.to_string(),
                file: dir.clone().join(name.as_str()),
                dir,
                file_size: *size,
                has_manifest: name == "shard.json",
            });
        }
    }
    Ok(shards)
}

/// The staging area of one index. Scans as a `DataSourceExec` whose file groups
/// hold one file per shard, spread over the session's target partitions.
#[derive(Debug, Clone)]
pub(crate) struct ShardsTable {
    location: IndexLocation,
    scanned: Option<ScannedShards>,
}

impl ShardsTable {
    pub(crate) fn new(location: IndexLocation) -> Self {
        Self {
            location,
            scanned: None,
        }
    }

    /// Scans of this table also keep each complete shard they read in `scanned`
    /// (see [`ScannedShards`]).
    pub(crate) fn keeping_shards_in(mut self, scanned: ScannedShards) -> Self {
        self.scanned = Some(scanned);
        self
    }
}

#[async_trait]
impl TableProvider for ShardsTable {
    fn schema(&self) -> SchemaRef {
        shards_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let shards = list_staged_shards(&self.location).await?;
        let groups = state
            .config()
            .target_partitions()
            .clamp(1, shards.len().max(1));
        let mut files: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups];
        for (i, s) in shards.into_iter().enumerate() {
            let mut f = PartitionedFile::new(s.file.to_string(), s.file_size);
            f.object_meta.location = s.file;
            files[i % groups].push(f);
        }
        let source = ShardManifestSource::new().reading_local_files_of(&self.location);
        let source = match &self.scanned {
            Some(scanned) => source.keeping_shards_in(scanned.clone()),
            None => source,
        };
        let config =
            FileScanConfigBuilder::new(self.location.store_url().clone(), Arc::new(source))
                .with_file_groups(files.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
