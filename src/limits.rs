//! Bounds of every count a caller gives, in one place (docs/guarantees.md, "Limits"). A count
//! outside its bound is refused before anything is allocated from it, with an
//! error that names the argument and states the bound; zero is refused alike
//! wherever it would mean nothing.

use crate::error::{IndexError, Result};

/// IVF partitions of a model (`num_partitions`), and so `nprobes`.
pub const MAX_PARTITIONS: usize = 65_536;
/// Rows sampled for training (`sample_rows`): 256 per partition at the most partitions.
pub const MAX_SAMPLE_ROWS: usize = 256 * MAX_PARTITIONS;
/// k-means iterations (`max_iterations`).
pub const MAX_ITERATIONS: usize = 1_000;
/// Nearest rows one search returns per query (`k`).
pub const MAX_K: usize = 10_000;
/// HNSW search breadth (`ef`).
pub const MAX_EF: usize = 100_000;
/// HNSW build breadth (`hnsw_ef_construction`).
pub const MAX_EF_CONSTRUCTION: u32 = 4_096;
/// Commit attempts of one finalize (`max_commit_attempts`).
pub const MAX_COMMIT_ATTEMPTS: usize = 100;
/// Parallel merge partitions of one finalize.
pub const MAX_MERGE_PARTITIONS: usize = 1_024;
/// Shards one distributed shard build stages (`shards`): each is one task.
pub const MAX_BUILD_SHARDS: usize = 1_024;
/// Target size of one segment data file (`target_file_bytes`): 1 TiB.
pub const MAX_TARGET_FILE_BYTES: u64 = 1 << 40;

/// Refuses `value` outside `min..=max`, naming `name` and the bound.
pub(crate) fn check_count<T>(name: &str, value: T, min: T, max: T) -> Result<()>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        return Err(IndexError::invalid_argument(
            name,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

/// Refuses `value` under `min`, for counts that allocate nothing from their size.
pub(crate) fn check_at_least<T>(name: &str, value: T, min: T) -> Result<()>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min {
        return Err(IndexError::invalid_argument(
            name,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_their_bounds_are_refused_with_the_bound() {
        check_count("k", 1, 1, MAX_K).unwrap();
        check_count("k", MAX_K, 1, MAX_K).unwrap();
        for bad in [0, MAX_K + 1, usize::MAX] {
            let err = check_count("k", bad, 1, MAX_K).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("invalid argument `k`: must be between 1 and {MAX_K}, got {bad}")
            );
        }
    }
}
