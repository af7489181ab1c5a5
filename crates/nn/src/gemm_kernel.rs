//! Matrix products on plain `f32` slices through the `gemm` crate, shared by the crate's CPU
//! kernels.
//!
//! Why it exists: burn's matmul makes a strided operand contiguous and zero-fills its output
//! before multiplying (a linear block's weight gradient `xᵀ·g` paid a transposing copy of `x`
//! and a `memset` of the whole weight-sized output: 5 % of an MLP step). `gemm` reads any
//! strides and overwrites its output, so an [`Operand`] names a matrix by its slice and its
//! strides (a transpose is the same slice with the strides swapped) and the products here
//! write into memory that nothing zeroed.

/// A matrix operand of [`gemm_into`]: `values[r·row_stride + c·column_stride]` is element
/// `(r, c)`, so a transposed operand is the same slice with its strides swapped.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    values: &'a [f32],
    row_stride: usize,
    column_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix with rows of `row_len` values.
    pub(crate) fn rows(values: &'a [f32], row_len: usize) -> Self {
        Self {
            values,
            row_stride: row_len,
            column_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with rows of `row_len` values.
    pub(crate) fn transposed(values: &'a [f32], row_len: usize) -> Self {
        Self {
            values,
            row_stride: 1,
            column_stride: row_len,
        }
    }

    /// This operand transposed.
    pub(crate) fn t(self) -> Self {
        Self {
            values: self.values,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
        }
    }

    /// Whether every element of a `rows × columns` matrix lies inside `values`.
    fn covers(&self, rows: usize, columns: usize) -> bool {
        rows == 0
            || columns == 0
            || (rows - 1) * self.row_stride + (columns - 1) * self.column_stride < self.values.len()
    }
}

/// `dst = lhs · rhs` (`dst += lhs · rhs` if `accumulate`) for a `[m, k]` left and a `[k, n]`
/// right operand, `dst` row-major `[m, n]`; on the calling thread (the kernels split work
/// between threads themselves).
pub(crate) fn gemm_into(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    accumulate: bool,
) {
    assert!(
        dst.len() >= m * n,
        "GEMM output of {} for [{m}, {n}]",
        dst.len()
    );
    // SAFETY: `dst` holds `m·n` values (asserted above) and is a distinct `&mut`, so it
    // aliases neither operand.
    unsafe {
        gemm_to(
            dst.as_mut_ptr(),
            (m, n, k),
            lhs,
            rhs,
            accumulate,
            gemm::Parallelism::None,
        );
    }
}

/// `lhs · rhs` for a `[m, k]` left and a `[k, n]` right operand, as a new row-major `[m, n]`
/// vector that nothing zeroes first; split between the threads of the current rayon pool
/// along the output (`gemm` keeps each element's sum over `k` in the same order whatever the
/// threads, so the values do not depend on them).
pub(crate) fn product_on_pool(
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
) -> Vec<f32> {
    let mut product = Vec::with_capacity(m * n);
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `product` has room for `m·n` values, which `gemm` writes without reading
    // (`accumulate` is false), so every one is initialised before `set_len`.
    unsafe {
        gemm_to(
            product.as_mut_ptr(),
            (m, n, k),
            lhs,
            rhs,
            false,
            parallelism,
        );
        product.set_len(m * n);
    }
    product
}

/// `dst = lhs · rhs` (`dst += …` if `accumulate`) through `gemm`, `dst` row-major `[m, n]`.
///
/// # Panics
/// If an operand does not cover its `[m, k]` or `[k, n]` ([`Operand::covers`]).
///
/// # Safety
/// `dst` must be valid for writes of `m·n` values (and reads, if `accumulate`) and alias
/// neither operand.
unsafe fn gemm_to(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert!(lhs.covers(m, k), "GEMM left operand for [{m}, {k}]");
    assert!(rhs.covers(k, n), "GEMM right operand for [{k}, {n}]");
    let stride = |s: usize| s as isize;
    // SAFETY: the asserts above keep every element the operands' strides address inside their
    // slices; `dst` is the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            stride(n),
            accumulate,
            lhs.values.as_ptr(),
            stride(lhs.column_stride),
            stride(lhs.row_stride),
            rhs.values.as_ptr(),
            stride(rhs.column_stride),
            stride(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_test_support::{assert_near, bits, pool, pseudo_random};

    /// `xᵀ·g` with `x` read through transposed strides, as a linear block's weight gradient:
    /// equal to the sum in f64 within rounding, and bit for bit the same on 1, 2 and 3 threads
    /// and as [`gemm_into`] on the calling thread, on shapes that are not multiples of any
    /// micro-kernel (and one with a single row).
    #[test]
    fn the_product_on_the_pool_is_exact_and_does_not_depend_on_the_threads() {
        for (rows, input, output) in [(1, 7, 5), (37, 65, 19), (128, 130, 257)] {
            let x = pseudo_random(rows * input, 1);
            let g = pseudo_random(rows * output, 2);
            let dims = (input, output, rows);
            let (lhs, rhs) = (Operand::transposed(&x, input), Operand::rows(&g, output));
            let expected: Vec<f64> = (0..input * output)
                .map(|at| {
                    let (i, o) = (at / output, at % output);
                    (0..rows)
                        .map(|r| f64::from(x[r * input + i]) * f64::from(g[r * output + o]))
                        .sum()
                })
                .collect();
            let single = pool(1).install(|| product_on_pool(dims, lhs, rhs));
            assert_near(
                &format!("[{rows}, {input}]ᵀ·[{rows}, {output}]"),
                &single,
                &expected,
            );
            for threads in [2, 3] {
                let on_pool = pool(threads).install(|| product_on_pool(dims, lhs, rhs));
                assert_eq!(bits(&on_pool), bits(&single), "{threads} threads, {dims:?}");
            }
            let mut into = vec![f32::NAN; input * output];
            gemm_into(&mut into, dims, lhs, rhs, false);
            assert_eq!(bits(&into), bits(&single), "gemm_into, {dims:?}");
        }
    }

    #[test]
    #[should_panic(expected = "GEMM left operand")]
    fn an_operand_too_short_for_its_shape_is_refused() {
        let x = vec![0.0; 5];
        product_on_pool((2, 2, 3), Operand::rows(&x, 3), Operand::rows(&x, 2));
    }
}
