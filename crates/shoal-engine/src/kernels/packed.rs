//! Weight rows of the 32-weight block types repacked at load, [`GROUP_ROWS`] rows to a group, into the layout the
//! AVX-512 row-group kernel (`avx512/packed.rs`) streams: for each block, the 4-weight pieces of all 16 rows side by
//! side, so one 64-byte load feeds one `vpdpbusd` with 16 rows' worth of products and one f16 load gives 16 rows'
//! scales. The kernel over this layout computes exactly what the row kernels compute (the same i32 lanes, the same
//! float steps in the same order), so packing changes speed, never a result.
//!
//! Layout of one group (16 rows; rows past the matrix's last are zero blocks, whose products are dropped), block by
//! block, each block `16 · block_bytes` long (the same bytes as the 16 rows' blocks, rearranged):
//! - Q4_0, Q4_1, Q5_0, Q5_1: 4 vectors of 64 bytes, vector `v` byte `4·r + j` holding row r's element `4·v + j` in
//!   its low nibble and element `4·(v + 4) + j` in its high nibble; for Q5_0/Q5_1 then 8 little-endian u64, bit
//!   `4·r + j` of the `k`-th being the fifth bit of row r's element `4·k + j`; then the 16 rows' f16 `d`; for
//!   Q4_1/Q5_1 then the 16 rows' f16 `m`.
//! - Q8_0: 8 vectors of 64 bytes, vector `k` byte `4·r + j` holding row r's element `4·k + j` plus 128 (as u8, which
//!   is what `vpdpbusd` multiplies); then the 16 rows' f16 `d`.
//!
//! The packed bytes are a file of their own where they can be (`crate::pack_cache`: written once, then mapped like
//! the model), else a heap copy. The product reads only them, so the model file's pages of a packed matrix are read
//! once at load and then left to the page cache (an embedding table still reads single rows).

use crate::bytes::SharedBytes;

#[cfg(test)]
use super::QK;
use super::{QMatrix, WeightType};

/// Weight rows per packed group: one per f32 lane of a 512-bit register.
pub(crate) const GROUP_ROWS: usize = 16;

/// A matrix's rows in the packed layout, group after group.
pub(crate) struct PackedRows {
    data: SharedBytes,
    group_bytes: usize,
}

impl PackedRows {
    /// Packs `m` onto the heap, or `None` for a type this layout does not cover.
    pub(crate) fn pack(m: &QMatrix) -> Option<PackedRows> {
        Self::from_image(m, SharedBytes::owned(Self::image(m)?))
    }

    /// `m`'s packed rows over `data`, which must be [`PackedRows::image`] of `m` (a cache file of it): `None` if
    /// the type is not covered or the length is not the image's.
    pub(crate) fn from_image(m: &QMatrix, data: SharedBytes) -> Option<PackedRows> {
        let group_bytes = GROUP_ROWS * m.row_bytes;
        let ok = Self::covers(m.ty()) && data.len() == Self::image_len(m);
        ok.then_some(PackedRows { data, group_bytes })
    }

    /// Bytes of `m`'s packed image: its rows rounded up to whole groups.
    pub(crate) fn image_len(m: &QMatrix) -> usize {
        m.rows().div_ceil(GROUP_ROWS) * GROUP_ROWS * m.row_bytes
    }

    /// `m`'s rows in the packed layout, or `None` for a type this layout does not cover.
    pub(crate) fn image(m: &QMatrix) -> Option<Vec<u8>> {
        let ty = m.ty();
        if !Self::covers(ty) {
            return None;
        }
        let bb = ty.block_bytes();
        let nb = m.cols() / ty.block_elems();
        let group_bytes = GROUP_ROWS * m.row_bytes;
        let groups = m.rows().div_ceil(GROUP_ROWS);
        let mut data = vec![0u8; groups * group_bytes];
        let zero = vec![0u8; bb];
        for (g, group) in data.chunks_exact_mut(group_bytes.max(1)).enumerate().take(groups) {
            for (b, out) in group.chunks_exact_mut(GROUP_ROWS * bb).enumerate().take(nb) {
                let blocks: [&[u8]; GROUP_ROWS] = std::array::from_fn(|r| {
                    let row = g * GROUP_ROWS + r;
                    if row < m.rows() {
                        &m.row_data(row)[b * bb..(b + 1) * bb]
                    } else {
                        &zero
                    }
                });
                if super::packed_k::covers(ty) {
                    super::packed_k::pack_block(ty, &blocks, out);
                } else {
                    pack_block(ty, &blocks, out);
                }
            }
        }
        Some(data)
    }

    /// Whether [`PackedRows::pack`] packs this type: the 32-weight types here, the K-quants Q4_K, Q5_K and Q6_K in
    /// [`super::packed_k`]'s layout.
    pub(crate) fn covers(ty: WeightType) -> bool {
        matches!(
            ty,
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 | WeightType::Q5_1 | WeightType::Q8_0
        ) || super::packed_k::covers(ty)
    }

    /// Group `g`'s bytes (rows `[16·g, 16·g + 16)`).
    pub(crate) fn group(&self, g: usize) -> &[u8] {
        &self.data.as_slice()[g * self.group_bytes..(g + 1) * self.group_bytes]
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Byte offsets inside one packed block of a 32-weight type: where the fifth bits, the scales and the offsets
/// start (`None` where the type has none). Vectors of values start at 0.
pub(crate) fn block_offsets(ty: WeightType) -> (Option<usize>, usize, Option<usize>) {
    let values = if ty == WeightType::Q8_0 { 8 * 64 } else { 4 * 64 };
    let high = matches!(ty, WeightType::Q5_0 | WeightType::Q5_1).then_some(values);
    let d = values + high.map_or(0, |_| 64);
    let m = matches!(ty, WeightType::Q4_1 | WeightType::Q5_1).then_some(d + 2 * GROUP_ROWS);
    (high, d, m)
}

/// Element `e` (0..32) of a Q4/Q5 block as its low 4 bits (low nibbles are elements 0..16, high nibbles 16..32).
fn nibble(ty: WeightType, blk: &[u8], e: usize) -> u8 {
    let qs = &blk[ty.block_bytes() - 16..];
    if e < 16 { qs[e] & 0x0F } else { qs[e - 16] >> 4 }
}

/// Rearranges 16 rows' block `b` into `out` (`16 · block_bytes` bytes).
fn pack_block(ty: WeightType, blocks: &[&[u8]; GROUP_ROWS], out: &mut [u8]) {
    let (high, d_at, m_at) = block_offsets(ty);
    let mut fifth = [0u64; 8];
    for (r, blk) in blocks.iter().enumerate() {
        for j in 0..4 {
            if ty == WeightType::Q8_0 {
                for k in 0..8 {
                    out[64 * k + 4 * r + j] = blk[2 + 4 * k + j] ^ 0x80;
                }
                continue;
            }
            for v in 0..4 {
                out[64 * v + 4 * r + j] = nibble(ty, blk, 4 * v + j) | nibble(ty, blk, 4 * (v + 4) + j) << 4;
            }
        }
        if high.is_some() {
            // The u32 of fifth bits sits just before the 16 bytes of nibbles.
            let at = ty.block_bytes() - 20;
            let bits = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
            for (k, word) in fifth.iter_mut().enumerate() {
                for j in 0..4 {
                    *word |= u64::from((bits >> (4 * k + j)) & 1) << (4 * r + j);
                }
            }
        }
        out[d_at + 2 * r..d_at + 2 * r + 2].copy_from_slice(&blk[0..2]);
        if let Some(m) = m_at {
            out[m + 2 * r..m + 2 * r + 2].copy_from_slice(&blk[2..4]);
        }
    }
    if let Some(h) = high {
        for (k, word) in fifth.iter().enumerate() {
            out[h + 8 * k..h + 8 * k + 8].copy_from_slice(&word.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte of every row lands where the layout says, and packing keeps the size (tail rows padded).
    #[test]
    fn packing_places_every_element_where_the_layout_says() {
        for ty in [
            WeightType::Q4_0,
            WeightType::Q4_1,
            WeightType::Q5_0,
            WeightType::Q5_1,
            WeightType::Q8_0,
        ] {
            let (rows, cols) = (21, 64);
            let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 97) as f32 - 48.0) * 0.01).collect();
            let m = QMatrix::quantize(ty, rows, cols, &values).unwrap_or_else(|e| panic!("{e}"));
            let p = PackedRows::pack(&m).unwrap_or_else(|| panic!("{ty} packs"));
            assert_eq!(
                p.bytes(),
                32 * ty.row_bytes(cols),
                "{ty}: two groups, the second padded"
            );
            let (high, d_at, m_at) = block_offsets(ty);
            let bb = ty.block_bytes();
            for row in 0..32 {
                let (g, r) = (row / GROUP_ROWS, row % GROUP_ROWS);
                for b in 0..cols / QK {
                    let blk = &p.group(g)[b * GROUP_ROWS * bb..(b + 1) * GROUP_ROWS * bb];
                    let orig = (row < rows).then(|| &m.row_data(row)[b * bb..(b + 1) * bb]);
                    assert_eq!(
                        &blk[d_at + 2 * r..d_at + 2 * r + 2],
                        orig.map_or(&[0, 0][..], |o| &o[0..2])
                    );
                    if let Some(m_at) = m_at {
                        assert_eq!(
                            &blk[m_at + 2 * r..m_at + 2 * r + 2],
                            orig.map_or(&[0, 0][..], |o| &o[2..4])
                        );
                    }
                    for e in 0..QK {
                        let (k, j) = (e / 4, e % 4);
                        let got = if ty == WeightType::Q8_0 {
                            (blk[64 * k + 4 * r + j] ^ 0x80) as i8 as i32
                        } else {
                            let byte = blk[64 * (k % 4) + 4 * r + j];
                            let low = if k < 4 { byte & 0x0F } else { byte >> 4 };
                            let fifth = high.map_or(0, |h| {
                                let w = u64::from_le_bytes(blk[h + 8 * k..h + 8 * k + 8].try_into().unwrap());
                                (w >> (4 * r + j)) as u8 & 1
                            });
                            (low | fifth << 4) as i32
                        };
                        let want = orig.map_or(0, |o| match ty {
                            WeightType::Q8_0 => o[2 + e] as i8 as i32,
                            WeightType::Q5_0 | WeightType::Q5_1 => super::super::scalar::q5_at(o, bb - 20, e),
                            _ => nibble(ty, o, e) as i32,
                        });
                        assert_eq!(got, want, "{ty} row {row} block {b} element {e}");
                    }
                }
            }
        }
    }
}
