//! Weight rows of the K-quants Q4_K, Q5_K and Q6_K repacked at load, [`GROUP_ROWS`] rows to a group, into the layout
//! the AVX-512 row-group kernel (`avx512/packed_k.rs`) streams: for each super-block, each 4-weight piece of all 16
//! rows side by side, so one 64-byte load (and for Q6_K a few shifts) gives one `maddubs` + `vpdpwssd` 16 rows' worth
//! of products, and the headers (d, dmin, scales) come 16 rows at a time. The kernel over this layout computes exactly
//! what the row kernels compute (the same i32 lanes, the same float steps in the same order), so packing changes
//! speed, never a result.
//!
//! Notation: a super-block's 256 weights are 64 pieces of 4, piece `t` being weights `4t..4t + 4`; a 64-byte
//! "vector" of piece `t` holds byte `4·r + i` = row r's weight `4t + i` (so i32 lane r is row r's piece).
//!
//! Layout of one group (16 rows; rows past the matrix's last are zero blocks, whose products are dropped), super-block
//! by super-block, each `16 · block_bytes` long (the same bytes as the 16 rows' blocks, rearranged):
//! - Q4_K, Q5_K: 32 vectors of nibbles, vector `8·c + l` byte `4·r + i` being row r's `qs[32·c + 4·l + i]` as stored
//!   (its low nibble weight `64·c + 4·l + i`, its high nibble weight `64·c + 32 + 4·l + i`); for Q5_K then 64
//!   little-endian u64, number `2·v` (`2·v + 1`) having bit `4·r + i` the fifth bit of the low (high) nibble of byte
//!   `4·r + i` of vector `v`; then the 16 rows' f16 `d`, the 16 rows' f16 `dmin`; then 3 vectors of u32, vector `k`
//!   lane r being row r's scale bytes `4 + 4·k..8 + 4·k` (the 6-bit scales and mins as stored).
//! - Q6_K: 16 triples of vectors, triple `s` (pieces `4s..4s + 4`, scale group `s`) holding in vector `u` (0..3)
//!   piece `4s + u`'s 6-bit values (unsigned, as stored) in bits 0–5 and bits `2u..2u + 2` of piece `4s + 3`'s value
//!   in bits 6–7; then 4 vectors of the i8 group scales, vector `k` byte `4·r + j` being row r's scale `4k + j`; then
//!   the 16 rows' f16 `d`.
//!
//! [`super::packed::PackedRows`] holds the images of both families (and says where they live).

use super::WeightType;
use super::packed::GROUP_ROWS;

/// Whether this layout covers `ty`.
pub(crate) fn covers(ty: WeightType) -> bool {
    matches!(ty, WeightType::Q4K | WeightType::Q5K | WeightType::Q6K)
}

/// Rearranges 16 rows' super-block into `out` (`16 · block_bytes` bytes), for [`super::packed::PackedRows`].
pub(crate) fn pack_block(ty: WeightType, blocks: &[&[u8]; GROUP_ROWS], out: &mut [u8]) {
    if ty == WeightType::Q6K {
        pack_q6k(blocks, out);
    } else {
        pack_k4(ty, blocks, out);
    }
}

/// Byte offsets inside one packed Q4_K/Q5_K super-block (nibble vectors start at 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct K4Offsets {
    /// Q5_K's fifth-bit masks.
    pub high: Option<usize>,
    /// The 16 f16 `d`.
    pub d: usize,
    /// The 16 f16 `dmin`.
    pub dmin: usize,
    /// The 3 vectors of scale bytes.
    pub scales: usize,
}

/// Where the parts of a packed Q4_K (or, with `ty` Q5_K, Q5_K) super-block start.
pub(crate) fn k4_offsets(ty: WeightType) -> K4Offsets {
    let high = (ty == WeightType::Q5K).then_some(32 * 64);
    let d = 32 * 64 + high.map_or(0, |_| 64 * 8);
    K4Offsets {
        high,
        d,
        dmin: d + 2 * GROUP_ROWS,
        scales: d + 4 * GROUP_ROWS,
    }
}

/// Where a packed Q6_K super-block's group scales start.
pub(crate) const Q6K_SCALES: usize = 48 * 64;
/// Where a packed Q6_K super-block's f16 `d` start.
pub(crate) const Q6K_D: usize = Q6K_SCALES + 4 * 64;

/// Rearranges 16 rows' Q4_K/Q5_K super-block into `out` (`16 · block_bytes` bytes).
fn pack_k4(ty: WeightType, blocks: &[&[u8]; GROUP_ROWS], out: &mut [u8]) {
    let at = k4_offsets(ty);
    // Stored block: d (f16), dmin (f16), 12 bytes of scales and mins, Q5_K's 32 bytes of fifth bits, 128 of nibbles.
    let qs = if ty == WeightType::Q5K { 48 } else { 16 };
    for (r, blk) in blocks.iter().enumerate() {
        for c in 0..4 {
            for l in 0..8 {
                let v = 8 * c + l;
                for i in 0..4 {
                    out[64 * v + 4 * r + i] = blk[qs + 32 * c + 4 * l + i];
                    if let Some(h) = at.high {
                        // The low nibble of qs[32c + b] is weight 64c + b, whose fifth bit is bit 2c of qh[b]; the
                        // high nibble's is bit 2c + 1.
                        let bits = blk[16 + 4 * l + i] >> (2 * c);
                        for (half, bit) in [(0, bits & 1), (1, (bits >> 1) & 1)] {
                            let word = h + 8 * (2 * v + half);
                            let pos = 4 * r + i;
                            out[word + pos / 8] |= bit << (pos % 8);
                        }
                    }
                }
            }
        }
        out[at.d + 2 * r..at.d + 2 * r + 2].copy_from_slice(&blk[0..2]);
        out[at.dmin + 2 * r..at.dmin + 2 * r + 2].copy_from_slice(&blk[2..4]);
        for k in 0..3 {
            let o = at.scales + 64 * k + 4 * r;
            out[o..o + 4].copy_from_slice(&blk[4 + 4 * k..8 + 4 * k]);
        }
    }
}

/// Weight `e` (0..256) of a stored Q6_K block as its unsigned 6-bit value (what the row kernels multiply).
pub(crate) fn q6k_value(blk: &[u8], e: usize) -> u8 {
    let (h, q, b) = (e / 128, (e % 128) / 32, e % 32);
    let ql = blk[64 * h + 32 * (q & 1) + b];
    let low = if q < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (blk[128 + 32 * h + b] >> (2 * q)) & 3;
    low | high << 4
}

/// Rearranges 16 rows' Q6_K super-block into `out` (`16 · 210` bytes).
fn pack_q6k(blocks: &[&[u8]; GROUP_ROWS], out: &mut [u8]) {
    for (r, blk) in blocks.iter().enumerate() {
        for s in 0..16 {
            for i in 0..4 {
                let last = q6k_value(blk, 4 * (4 * s + 3) + i);
                for u in 0..3 {
                    let v = q6k_value(blk, 4 * (4 * s + u) + i);
                    out[64 * (3 * s + u) + 4 * r + i] = v | ((last >> (2 * u)) & 3) << 6;
                }
            }
        }
        for k in 0..4 {
            let o = Q6K_SCALES + 64 * k + 4 * r;
            out[o..o + 4].copy_from_slice(&blk[192 + 4 * k..196 + 4 * k]);
        }
        out[Q6K_D + 2 * r..Q6K_D + 2 * r + 2].copy_from_slice(&blk[208..210]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{QK_K, QMatrix};
    use super::*;

    /// A K-quant matrix whose bytes are all arbitrary (every bit pattern of values, scales and mins).
    fn random_matrix(ty: WeightType, rows: usize, cols: usize) -> QMatrix {
        let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ rows as u64;
        let data = (0..rows * ty.row_bytes(cols))
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u8
            })
            .collect();
        QMatrix::new(ty, rows, cols, data).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every weight, fifth bit, scale byte and header of every row lands where the layout says, and packing keeps the
    /// size (tail rows padded with zero blocks).
    #[test]
    fn packing_places_every_k_quant_weight_where_the_layout_says() {
        for ty in [WeightType::Q4K, WeightType::Q5K, WeightType::Q6K] {
            let (rows, cols) = (21, 512);
            let m = random_matrix(ty, rows, cols);
            let p = super::super::packed::PackedRows::pack(&m).unwrap_or_else(|| panic!("{ty} packs"));
            assert_eq!(
                p.bytes(),
                32 * ty.row_bytes(cols),
                "{ty}: two groups, the second padded"
            );
            let bb = ty.block_bytes();
            let zero = vec![0u8; bb];
            for row in 0..32 {
                let (g, r) = (row / GROUP_ROWS, row % GROUP_ROWS);
                for b in 0..cols / QK_K {
                    let blk = &p.group(g)[b * GROUP_ROWS * bb..(b + 1) * GROUP_ROWS * bb];
                    let orig = if row < rows {
                        &m.row_data(row)[b * bb..(b + 1) * bb]
                    } else {
                        &zero[..]
                    };
                    let mut headers = Vec::new();
                    if ty == WeightType::Q6K {
                        for e in 0..QK_K {
                            let (t, i) = (e / 4, e % 4);
                            let (s, u) = (t / 4, t % 4);
                            let got = if u < 3 {
                                blk[64 * (3 * s + u) + 4 * r + i] & 0x3F
                            } else {
                                (0..3).fold(0, |v, k| v | (blk[64 * (3 * s + k) + 4 * r + i] >> 6) << (2 * k))
                            };
                            assert_eq!(got, q6k_value(orig, e), "{ty} row {row} block {b} weight {e}");
                        }
                        for j in 0..16 {
                            headers.push((blk[Q6K_SCALES + 64 * (j / 4) + 4 * r + j % 4], orig[192 + j]));
                        }
                        headers.push((blk[Q6K_D + 2 * r], orig[208]));
                        headers.push((blk[Q6K_D + 2 * r + 1], orig[209]));
                    } else {
                        let at = k4_offsets(ty);
                        let qs = if ty == WeightType::Q5K { 48 } else { 16 };
                        for e in 0..QK_K {
                            let (c, high, b5) = (e / 64, (e % 64) / 32, e % 32);
                            let (l, i) = (b5 / 4, b5 % 4);
                            let v = 8 * c + l;
                            let byte = blk[64 * v + 4 * r + i];
                            let mut got = if high == 1 { byte >> 4 } else { byte & 0x0F };
                            let stored = orig[qs + 32 * c + b5];
                            let mut want = if high == 1 { stored >> 4 } else { stored & 0x0F };
                            if let Some(h) = at.high {
                                let word = h + 8 * (2 * v + high);
                                let mask = u64::from_le_bytes(std::array::from_fn(|k| blk[word + k]));
                                got |= ((mask >> (4 * r + i)) as u8 & 1) << 4;
                                want |= ((orig[16 + b5] >> (2 * c + high)) & 1) << 4;
                            }
                            assert_eq!(got, want, "{ty} row {row} block {b} weight {e}");
                        }
                        for k in 0..2 {
                            headers.push((blk[at.d + 2 * r + k], orig[k]));
                            headers.push((blk[at.dmin + 2 * r + k], orig[2 + k]));
                        }
                        for j in 0..12 {
                            headers.push((blk[at.scales + 64 * (j / 4) + 4 * r + j % 4], orig[4 + j]));
                        }
                    }
                    for (n, (got, want)) in headers.into_iter().enumerate() {
                        assert_eq!(got, want, "{ty} row {row} block {b} header byte {n}");
                    }
                }
            }
        }
    }
}
