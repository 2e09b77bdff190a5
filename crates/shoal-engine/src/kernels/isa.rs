//! Which kernels run on this machine: chosen once per process at run time (AVX-512 VNNI, else AVX2 + FMA + F16C on
//! x86_64, NEON on aarch64, else the portable scalar code), capped by `SHOAL_KERNELS`.

use std::sync::OnceLock;

use super::WeightType;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// Whether this machine's products of `ty` run a row-group kernel over packed rows ([`QMatrix::with_packed_rows`]).
pub(crate) fn packs(ty: WeightType) -> bool {
    Isa::get().packs(ty)
}

/// Which implementation [`QMatrix::matmul`] dispatches to on this machine ("avx512", "avx2", "neon", "scalar").
pub fn isa() -> &'static str {
    Isa::get().name()
}

/// The implementation chosen once per process.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Avx512),
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    Neon,
}

impl Isa {
    pub(crate) fn get() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(Self::detect)
    }

    fn detect() -> Isa {
        let cap = IsaCap::from_env(
            std::env::var("SHOAL_KERNELS").ok().as_deref(),
            std::env::var_os("SHOAL_KERNELS_SCALAR").is_some_and(|v| v == "1"),
        );
        if cap == IsaCap::Scalar {
            return Isa::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        if cap == IsaCap::Best
            && let Some(token) = avx512::Avx512::detect()
        {
            return Isa::Avx512(token);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(token) = avx2::Avx2::detect() {
            return Isa::Avx2(token);
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        return Isa::Neon;
        #[allow(unreachable_code)]
        Isa::Scalar
    }

    /// Whether this implementation has a row-group kernel for `ty` (see [`packed`]).
    fn packs(self, ty: WeightType) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => super::packed::PackedRows::covers(ty),
            _ => false,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => "avx512",
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            Isa::Neon => "neon",
        }
    }
}

/// The most a process may use, from `SHOAL_KERNELS` (`avx2` or `scalar`; unset or anything else: the best the CPU
/// has) and the older `SHOAL_KERNELS_SCALAR=1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IsaCap {
    Best,
    Avx2,
    Scalar,
}

impl IsaCap {
    fn from_env(kernels: Option<&str>, scalar: bool) -> IsaCap {
        match kernels.map(str::trim) {
            _ if scalar => IsaCap::Scalar,
            Some(v) if v.eq_ignore_ascii_case("scalar") => IsaCap::Scalar,
            Some(v) if v.eq_ignore_ascii_case("avx2") => IsaCap::Avx2,
            _ => IsaCap::Best,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_env_caps_the_choice() {
        assert_eq!(IsaCap::from_env(None, false), IsaCap::Best);
        assert_eq!(IsaCap::from_env(Some("avx2"), false), IsaCap::Avx2);
        assert_eq!(IsaCap::from_env(Some(" AVX2 "), false), IsaCap::Avx2);
        assert_eq!(IsaCap::from_env(Some("scalar"), false), IsaCap::Scalar);
        assert_eq!(IsaCap::from_env(Some("avx2"), true), IsaCap::Scalar);
        assert_eq!(IsaCap::from_env(Some("avx512"), false), IsaCap::Best);
    }
}
