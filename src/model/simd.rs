//! Which vector instructions the kernels use: found once per process from the CPU,
//! capped by `DVI_SIMD` (`portable`, `avx2` or `avx512`) so that the narrower paths
//! can be measured and tested on a CPU that has the wider ones.
//!
//! One binary runs everywhere: every kernel keeps a portable version, and the wider
//! ones are compiled with `#[target_feature]` and called only at the level found here.

use std::sync::OnceLock;

/// The environment variable that caps [`simd_level`].
pub const SIMD_ENV: &str = "DVI_SIMD";

/// The widest instructions kernels may use; ordered, so `simd_level() >= Avx2` reads as
/// "at least AVX2".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SimdLevel {
    /// Plain Rust, vectorized by the compiler for the baseline target only.
    Portable,
    /// AVX, AVX2 and FMA.
    Avx2,
    /// AVX-512 F, BW, DQ and VL (with AVX2 below them).
    Avx512,
}

impl SimdLevel {
    /// The name `DVI_SIMD` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Portable, Self::Avx2, Self::Avx512]
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The widest level this CPU runs.
    fn of_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Self::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

/// The level kernels use: the CPU's widest, or `DVI_SIMD` when that is narrower. A
/// value naming no level is reported once on standard error and ignored (a kernel
/// has no caller to return an error to, and the CPU's level is always correct).
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cpu = SimdLevel::of_cpu();
        match std::env::var(SIMD_ENV) {
            Ok(value) => match SimdLevel::parse(&value) {
                Some(cap) => cap.min(cpu),
                None => {
                    eprintln!(
                        "{SIMD_ENV}={value:?} names no level (portable, avx2, avx512); using {}",
                        cpu.name()
                    );
                    cpu
                }
            },
            Err(_) => cpu,
        }
    })
}

/// Every level up to the CPU's widest, whatever `DVI_SIMD` says: for tests that
/// compare the kernels of each level.
#[cfg(test)]
pub(crate) fn cpu_levels() -> impl Iterator<Item = SimdLevel> {
    let cpu = SimdLevel::of_cpu();
    [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(move |l| *l <= cpu)
}

/// Whether this CPU also has AVX-512 VBMI (byte permutes), at the AVX-512 level.
pub(crate) fn has_avx512_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd_level() >= SimdLevel::Avx512 && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_levels_are_ordered() {
        for l in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512] {
            assert_eq!(SimdLevel::parse(l.name()), Some(l));
            assert!(l <= SimdLevel::of_cpu() || l > simd_level());
        }
        assert_eq!(SimdLevel::parse(" AVX2 "), Some(SimdLevel::Avx2));
        assert_eq!(SimdLevel::parse("sse"), None);
        assert!(SimdLevel::Portable < SimdLevel::Avx2 && SimdLevel::Avx2 < SimdLevel::Avx512);
        assert!(simd_level() <= SimdLevel::of_cpu());
    }
}
