//! What the CPU kernels' tests share: deterministic inputs, and the comparison of a kernel's
//! `f32` result with a reference computed in `f64` from the kernel's definition.

/// `len` deterministic values in [-1, 1), different for each `seed`.
pub(crate) fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (i as u32 ^ seed)
                .wrapping_mul(2_654_435_761)
                .rotate_left(13);
            (h % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// The bit patterns of `values`, to compare results bit for bit (NaN and signed zeros
/// included).
pub(crate) fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// A rayon pool of `threads` threads, to run a kernel on a given number of threads.
pub(crate) fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}

/// Every element of `got` within `1e-4 · (1 + |expected|)` of `expected`.
pub(crate) fn assert_near(what: &str, got: &[f32], expected: &[f64]) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    for (k, (&a, &b)) in got.iter().zip(expected).enumerate() {
        assert!(
            (f64::from(a) - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what}, element {k}: {a} vs {b}"
        );
    }
}
