//! The engine's own quantized matrix kernels: `y = x · Wᵀ` with W stored in one of GGML's block encodings.
//!
//! Every weight type has a portable scalar reference ([`QMatrix::matmul_reference`], the oracle of the tests) and,
//! where the machine has it, a SIMD path chosen once at run time ([`isa`]): AVX-512 VNNI (for the 32-weight block
//! types; the others run AVX2) or AVX2+FMA+F16C on x86_64 (no `target-cpu=native` needed), NEON on aarch64.
//! `SHOAL_KERNELS=avx2` (or `scalar`) caps the choice, to compare paths on one machine. A product first quantizes the activations once into the format the
//! weight type pairs with (8-bit blocks of 32 with a scale, or 256-element Q8_K blocks for the K-quants), then
//! splits the weight rows across the [`Pool`]'s threads; each unpacked weight block is reused for up to four
//! activation rows.
//!
//! [`f16`] holds the kernels of attention over an F16 KV cache (scores against f16 key rows, sums of f16 value
//! rows), dispatched the same way.
//!
//! The block layouts are GGML's (ggml-quants / GGUF), so a GGUF tensor's bytes are a [`QMatrix`] as they are.

mod acts;
pub mod f16;
pub mod f32;
mod isa;
pub(crate) mod packed;
pub(crate) mod packed_k;
pub(crate) mod pool;
pub mod quantize;
mod scalar;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics; every unsafe block carries its own SAFETY argument.
mod avx2;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics; every unsafe block carries its own SAFETY argument.
mod avx512;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics; every unsafe block carries its own SAFETY argument.
mod f16_x86;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics; every unsafe block carries its own SAFETY argument.
mod f32_x86;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
#[allow(unsafe_code)] // SIMD intrinsics; every unsafe block carries its own SAFETY argument.
mod neon;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::bytes::SharedBytes;
pub(crate) use acts::{ActFormat, Acts, BlockQ8, BlockQ8K};
pub use isa::isa;
pub(crate) use isa::{Isa, packs};
pub use pool::Pool;

/// Elements of one Q8_K (K-quant) super-block.
pub(crate) const QK_K: usize = 256;
/// Elements of one 32-wide block (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and their Q8 activations).
pub(crate) const QK: usize = 32;

/// The weight encodings we run, as GGML stores them (same block layouts and bit packing as ggml-quants / GGUF).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    F32,
    F16,
    /// bfloat16: the top 16 bits of an f32.
    BF16,
    /// 32 weights: f16 `d`, 16 bytes of nibbles; value `(q - 8) * d`.
    Q4_0,
    /// 32 weights: f16 `d`, f16 `m`, 16 bytes of nibbles; value `q * d + m`.
    Q4_1,
    /// 32 weights: f16 `d`, a u32 of fifth bits (bit j is element j's), 16 bytes of nibbles (low nibbles are
    /// elements 0..16, high nibbles 16..32); value `(q - 16) * d`.
    Q5_0,
    /// 32 weights: f16 `d`, f16 `m`, a u32 of fifth bits, 16 bytes of nibbles (as Q5_0); value `q * d + m`.
    Q5_1,
    /// 32 weights: f16 `d`, 32 × i8; value `q * d`.
    Q8_0,
    /// 256 weights: 16 bytes of 4-bit scale | 4-bit min per 16, 64 bytes of 2-bit values, f16 `d`, f16 `dmin`;
    /// value `d·sc·q − dmin·m`.
    Q2K,
    /// 256 weights: 32 bytes of third bits (`hmask`), 64 bytes of low 2 bits, 12 bytes of sixteen 6-bit scales,
    /// f16 `d`; value `d·(sc − 32)·(q − 4)` with q's third bit set meaning "no −4".
    Q3K,
    /// 256 weights: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
    Q4K,
    /// 256 weights: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and mins (as Q4_K), 32 bytes of fifth bits,
    /// 128 bytes of nibbles.
    Q5K,
    /// 256 weights: 128 bytes low nibbles, 64 bytes high 2 bits, 16 × i8 scales, f16 `d`.
    Q6K,
}

impl WeightType {
    pub const ALL: [WeightType; 13] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    /// The type for a GGML type id (`ggml_type`), or `None` for encodings the kernels do not run.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// The GGML type id (`ggml_type`).
    pub fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    /// Weights per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => QK,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// GGML's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Bytes of one row of `cols` weights (`cols` must be a multiple of [`block_elems`](Self::block_elems)).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_elems() * self.block_bytes()
    }

    /// The activation format this weight type's dot products take.
    fn act_format(self) -> ActFormat {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => ActFormat::F32,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => ActFormat::Q8,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => ActFormat::Q8K,
        }
    }
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a [`QMatrix`] cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("a {ty} row must hold a multiple of {block} weights, got {cols} columns")]
    ColsNotBlockMultiple { ty: WeightType, cols: usize, block: usize },
    #[error("a {ty} matrix of {rows}×{cols} needs {expected} bytes, got {got}")]
    DataLength {
        ty: WeightType,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("a {rows}×{cols} matrix is too large to address")]
    TooLarge { rows: usize, cols: usize },
    #[error("quantizing to {ty}: expected {expected} values, got {got}")]
    ValueCount {
        ty: WeightType,
        expected: usize,
        got: usize,
    },
}

/// A row-major weight matrix (rows = output features, cols = input features), each row `cols / block_elems`
/// blocks: exactly the bytes of a GGUF tensor of ggml shape `[cols, rows]`.
#[derive(Clone)]
pub struct QMatrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// Shared so that a product can hand the matrix to the pool's long-lived threads without copying it; a model's
    /// weights are a range of the mapped file.
    data: SharedBytes,
    /// The rows repacked for this machine's row-group kernel ([`QMatrix::with_packed_rows`]), which products then
    /// read instead of `data`.
    packed: Option<Arc<packed::PackedRows>>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl QMatrix {
    /// Wraps the bytes of a `rows × cols` matrix, checking that `cols` is a whole number of blocks and that `data`
    /// holds exactly `rows` rows. Nothing in `data` itself can make a later call panic.
    pub fn new(ty: WeightType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, KernelError> {
        Self::from_shared(ty, rows, cols, SharedBytes::owned(data))
    }

    /// [`QMatrix::new`] over shared bytes (a range of a memory-mapped model file), with the same checks.
    pub fn from_shared(ty: WeightType, rows: usize, cols: usize, data: SharedBytes) -> Result<Self, KernelError> {
        let block = ty.block_elems();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::ColsNotBlockMultiple { ty, cols, block });
        }
        let row_bytes = ty.row_bytes(cols);
        let expected = row_bytes
            .checked_mul(rows)
            .ok_or(KernelError::TooLarge { rows, cols })?;
        if rows.checked_mul(cols).is_none() {
            return Err(KernelError::TooLarge { rows, cols });
        }
        if data.len() != expected {
            return Err(KernelError::DataLength {
                ty,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            data,
            packed: None,
        })
    }

    /// Quantizes row-major `values` (`rows × cols`) into `ty` with simple reference quantizers (see [`quantize`]).
    pub fn quantize(ty: WeightType, rows: usize, cols: usize, values: &[f32]) -> Result<Self, KernelError> {
        let expected = rows.checked_mul(cols).ok_or(KernelError::TooLarge { rows, cols })?;
        if values.len() != expected {
            return Err(KernelError::ValueCount {
                ty,
                expected,
                got: values.len(),
            });
        }
        let block = ty.block_elems();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::ColsNotBlockMultiple { ty, cols, block });
        }
        let mut data = Vec::with_capacity(ty.row_bytes(cols) * rows);
        for row in values.chunks_exact(cols.max(1)).take(rows) {
            quantize::quantize_row(ty, row, &mut data);
        }
        if cols == 0 {
            data.clear();
        }
        Self::new(ty, rows, cols, data)
    }

    /// The matrix with its rows also repacked into the layout of this machine's row-group kernel (AVX-512 VNNI, for
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K; see [`packed`]), which products then use: the same results, bit for bit,
    /// faster. Elsewhere, or for other types, the matrix as it is. The packed copy takes as many bytes again, on the
    /// heap ([`QMatrix::with_packed_image`] maps them from a file instead); the original bytes stay for
    /// [`QMatrix::dequantize_row`] (embedding lookups).
    pub fn with_packed_rows(mut self) -> Self {
        if self.packed.is_none() && packs(self.ty) {
            self.packed = packed::PackedRows::pack(&self).map(Arc::new);
        }
        self
    }

    /// The packed image of this matrix's rows ([`QMatrix::with_packed_rows`]) where this machine has a row-group
    /// kernel for its type: what a cache file holds.
    pub(crate) fn packed_image(&self) -> Option<Vec<u8>> {
        if packs(self.ty) {
            packed::PackedRows::image(self)
        } else {
            None
        }
    }

    /// Bytes of [`QMatrix::packed_image`], for checking a cache file before mapping it.
    pub(crate) fn packed_image_len(&self) -> usize {
        packed::PackedRows::image_len(self)
    }

    /// The matrix using `image` (bytes of its [`QMatrix::packed_image`], such as a mapped cache file) as its packed
    /// rows; the matrix as it is if this machine does not pack its type or `image` has the wrong length.
    pub(crate) fn with_packed_image(mut self, image: SharedBytes) -> Self {
        if packs(self.ty) {
            self.packed = packed::PackedRows::from_image(&self, image).map(Arc::new);
        }
        self
    }

    /// Bytes of the packed copy ([`QMatrix::with_packed_rows`]), 0 when there is none.
    pub fn packed_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |p| p.bytes())
    }

    pub fn ty(&self) -> WeightType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weight data.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The raw block bytes.
    pub fn data(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The block bytes of one row.
    pub fn row_data(&self, row: usize) -> &[u8] {
        &self.data.as_slice()[row * self.row_bytes..(row + 1) * self.row_bytes]
    }

    /// Dequantizes one row into `out` (len == cols). Used for embedding lookup.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} out of range for {} rows", self.rows);
        assert_eq!(out.len(), self.cols, "output length must equal cols");
        scalar::dequantize_row(self.ty, self.row_data(row), out);
    }

    /// `y` (n × rows, row-major) = `x` (n × cols, row-major) · Wᵀ. Quantizes `x` once into the activation format
    /// the weight type pairs with (Q8 blocks of 32 with scale and scaled sum for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, Q8_K
    /// for the K-quants, f32 as is for F32/F16/BF16), then splits the weight rows across the pool's threads.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32], pool: &Pool) {
        self.check_shapes(x, n, y);
        if n == 0 || self.rows == 0 {
            return;
        }
        let isa = Isa::get();
        let acts = Acts::quantize(self.ty.act_format(), x, n, self.cols, isa);
        let chunk = chunk_rows(self, n, pool.threads());
        if chunk >= self.rows {
            compute_rows(self, &acts, 0, self.rows, y, isa);
            return;
        }
        let job = Arc::new(MatmulJob {
            m: self.clone(),
            acts: acts.into_owned(),
            isa,
            chunk,
            items: pool::Items::new(self.rows.div_ceil(chunk)),
            failed: AtomicBool::new(false),
            out: pool.slab(n * self.rows),
        });
        pool.run_items(&job);
        assert!(!job.failed.load(Ordering::Relaxed), "a kernel work item panicked");
        // Item i holds rows [r0, r0 + len) for every activation row, activation-major, at offset r0 · n.
        for i in 0..job.items.len() {
            let r0 = i * chunk;
            let len = chunk.min(self.rows - r0);
            let src = &job.out[r0 * n..(r0 + len) * n];
            for (k, part) in src.chunks_exact(len).enumerate() {
                for (d, v) in y[k * self.rows + r0..k * self.rows + r0 + len].iter_mut().zip(part) {
                    *d = f32::from_bits(v.load(Ordering::Relaxed));
                }
            }
        }
    }

    /// The same product computed by the portable scalar reference only (single thread): the oracle for tests.
    pub fn matmul_reference(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.check_shapes(x, n, y);
        if n == 0 || self.rows == 0 {
            return;
        }
        let acts = Acts::quantize(self.ty.act_format(), x, n, self.cols, Isa::Scalar);
        scalar::rows(self, &acts, 0, self.rows, y);
    }

    fn check_shapes(&self, x: &[f32], n: usize, y: &[f32]) {
        assert_eq!(
            x.len(),
            n * self.cols,
            "x must hold n × cols = {n} × {} values",
            self.cols
        );
        assert_eq!(
            y.len(),
            n * self.rows,
            "y must hold n × rows = {n} × {} values",
            self.rows
        );
    }
}

/// Computes weight rows `[r0, r1)` against every activation row into `out`, activation-major:
/// `out[i · (r1 - r0) + (r - r0)] = W[r] · x[i]`.
fn compute_rows(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32], isa: Isa) {
    assert!(r0 <= r1 && r1 <= m.rows && out.len() == acts.n * (r1 - r0));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => t.rows(m, acts, r0, r1, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.rows(m, acts, r0, r1, out),
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        Isa::Neon => neon::rows(m, acts, r0, r1, out),
        _ => scalar::rows(m, acts, r0, r1, out),
    }
}

/// Below this many weight bytes × activation rows a product runs on the caller alone: handing out work costs
/// about a microsecond.
const PARALLEL_MIN_WORK: usize = 32 * 1024;

/// Rows per work item: about four items per thread, so a late thread finds work left, in multiples of 4 rows
/// (the decode tile) or of a packed group's 16. Returns `rows` when the product should not be split.
fn chunk_rows(m: &QMatrix, n: usize, threads: usize) -> usize {
    if threads <= 1 || m.row_bytes * m.rows * n < PARALLEL_MIN_WORK {
        return m.rows;
    }
    let tile = if m.packed.is_some() { packed::GROUP_ROWS } else { 4 };
    m.rows.div_ceil(threads * 4).next_multiple_of(tile).min(m.rows)
}

/// For the attention kernels over a KV cache ([`f16`], [`f32`]): checks that `count` rows of `width` values,
/// `stride` apart, fit in `len` values.
pub(crate) fn check_rows(len: usize, count: usize, stride: usize, width: usize) {
    if count > 0 {
        assert!(stride >= width, "rows of {width} values cannot sit {stride} apart");
        assert!(
            (count - 1) * stride + width <= len,
            "{count} rows of {width} values {stride} apart need more than {len} values"
        );
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One product split into items of `chunk` weight rows; results go to `out` (item i at offset `i · chunk · n`,
/// activation-major within the item) through atomics, so long-lived worker threads can write them safely.
struct MatmulJob {
    m: QMatrix,
    acts: Acts<'static>,
    isa: Isa,
    chunk: usize,
    items: pool::Items,
    failed: AtomicBool,
    out: Arc<[AtomicU32]>,
}

impl pool::ItemJob for MatmulJob {
    fn items(&self) -> &pool::Items {
        &self.items
    }

    /// Computes item `i` (weight rows `[i · chunk, (i + 1) · chunk)`) and stores it.
    fn item(&self, i: usize) {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = self.acts.n;
            let r0 = i * self.chunk;
            let r1 = (r0 + self.chunk).min(self.m.rows);
            scratch.clear();
            scratch.resize(n * (r1 - r0), 0.0);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                compute_rows(&self.m, &self.acts, r0, r1, &mut scratch, self.isa)
            }));
            if ok.is_ok() {
                for (d, v) in self.out[r0 * n..r1 * n].iter().zip(scratch.iter()) {
                    d.store(v.to_bits(), Ordering::Relaxed);
                }
            } else {
                self.failed.store(true, Ordering::Relaxed);
            }
            self.items.finish(i);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split products reuse the pool's result buffer instead of allocating one per call.
    #[test]
    fn split_products_reuse_the_result_slab() {
        let pool = Pool::new(2);
        let m = QMatrix::quantize(WeightType::Q8_0, 512, 256, &vec![0.25; 512 * 256]).unwrap_or_else(|e| panic!("{e}"));
        let x = vec![1.0; 256];
        let mut y = vec![0.0; 512];
        assert!(chunk_rows(&m, 1, pool.threads()) < m.rows(), "the product is split");
        for _ in 0..20 {
            m.matmul(&x, 1, &mut y, &pool);
        }
        assert!(y.iter().all(|&v| (v - 64.0).abs() < 1e-2), "{:?}", &y[..4]);
        // One buffer, or a few if a worker happened to still be inside a finished job when the next one started.
        assert!(
            pool.slab_allocs() <= 3,
            "{} buffers for 20 products",
            pool.slab_allocs()
        );
    }
}
