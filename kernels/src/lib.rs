//! The inner loops of vector search: dot products of `f32` vectors and of
//! int8 codes, compiled twice and chosen once per process by what the CPU
//! has.
//!
//! Release builds target baseline x86-64 (SSE2) so that one binary runs on
//! every host. For a dot product that leaves half or more of the speed of a
//! current CPU unused: 128-bit registers instead of 256, and no fused
//! multiply-add. hnswlib and faiss pick AVX2 kernels at build or run time,
//! which is most of their per-distance lead. Here each kernel is one portable
//! function, inlined into a copy compiled with `avx2,fma` enabled; the first
//! call checks the CPU (`is_x86_feature_detected!`) and every later one
//! goes through the chosen function pointer.
//!
//! This is the workspace's one crate with `unsafe`: calling a
//! `#[target_feature]` function is unsafe because the CPU might lack the
//! feature, and the call happens only after the detection said it has it.

use std::sync::OnceLock;

type DotF32 = fn(&[f32], &[f32]) -> f32;
type DotI8 = fn(&[i8], &[i8]) -> i32;

/// `Σ aᵢ·bᵢ` over the common length. On unit vectors: the cosine.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    static CHOSEN: OnceLock<DotF32> = OnceLock::new();
    (CHOSEN.get_or_init(|| choose(portable::dot, x86::DOT)))(a, b)
}

/// `Σ aᵢ·bᵢ` of int8 codes over the common length, exact in `i32` for rows
/// shorter than 133,000 entries (127² per entry).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    static CHOSEN: OnceLock<DotI8> = OnceLock::new();
    (CHOSEN.get_or_init(|| choose(portable::dot_i8, x86::DOT_I8)))(a, b)
}

/// Which instruction set the kernels run with on this CPU.
pub fn isa() -> &'static str {
    if x86::available() {
        "avx2+fma"
    } else {
        "baseline"
    }
}

fn choose<F>(portable: F, fast: Option<F>) -> F {
    match fast {
        Some(f) if x86::available() => f,
        _ => portable,
    }
}

/// The kernels as plain Rust, written so the compiler vectorises them at
/// whatever width the enclosing function allows.
pub mod portable {
    /// Sixteen independent accumulators: without fast-math the compiler
    /// keeps float additions in order, so one accumulator would be one long
    /// dependency chain; sixteen lanes become independent vector chains.
    #[inline(always)]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        const LANES: usize = 16;
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; LANES];
        let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in a_chunks.zip(b_chunks) {
            for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
                *s += x * y;
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// Integer addition is associative, so the plain sum vectorises
    /// (widening multiplies and adds).
    #[inline(always)]
    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    pub const DOT: Option<super::DotF32> = Some(|a, b| {
        // SAFETY: chosen only when `available()` found AVX2 and FMA.
        unsafe { dot_avx2(a, b) }
    });

    pub const DOT_I8: Option<super::DotI8> = Some(|a, b| {
        // SAFETY: as above.
        unsafe { dot_i8_avx2(a, b) }
    });

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        super::portable::dot(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
        super::portable::dot_i8(a, b)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub fn available() -> bool {
        false
    }
    pub const DOT: Option<super::DotF32> = None;
    pub const DOT_I8: Option<super::DotI8> = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
    }

    proptest! {
        /// Whichever kernel this CPU runs agrees with a plain f64 sum, at
        /// every length (the chunked loop and its tail).
        #[test]
        fn dot_matches_a_plain_sum(v in proptest::collection::vec((-1.0f32..1.0, -1.0f32..1.0), 0..600)) {
            let (a, b): (Vec<f32>, Vec<f32>) = v.into_iter().unzip();
            let want = naive(&a, &b);
            prop_assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-4, "{} vs {want}", dot(&a, &b));
            prop_assert!((f64::from(portable::dot(&a, &b)) - want).abs() < 1e-4);
        }

        #[test]
        fn dot_i8_is_exact(v in proptest::collection::vec((any::<i8>(), any::<i8>()), 0..1200)) {
            let (a, b): (Vec<i8>, Vec<i8>) = v.into_iter().unzip();
            let want: i64 = a.iter().zip(&b).map(|(x, y)| i64::from(*x) * i64::from(*y)).sum();
            prop_assert_eq!(i64::from(dot_i8(&a, &b)), want);
            prop_assert_eq!(i64::from(portable::dot_i8(&a, &b)), want);
        }
    }

    #[test]
    fn lengths_may_differ_and_empty_is_zero() {
        assert_eq!(dot(&[], &[]), 0.0);
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
        assert_eq!(dot_i8(&[3, 4], &[5]), 15);
        assert!(["avx2+fma", "baseline"].contains(&isa()));
    }
}
