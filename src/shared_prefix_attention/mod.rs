//! Shared-prefix group attention (forward and backward): one prompt prefix of length P shared by
//! G responses, attended once. Each group is packed as `[prefix | r_1 | ... | r_G]`; a response
//! token attends causally to the prefix and to its own earlier tokens, never to another response:
//!
//! `allowed(i, j) = same group, j <= i, and (j in the prefix or j in i's own segment)`.
//!
//! Tensors are packed token-major: Q `[T, Hq, d]`, K and V `[T, Hkv, d]` (GQA: Hq a multiple of
//! Hkv; query head h reads kv head `h / (Hq / Hkv)`), O `[T, Hq, d]`, LSE `[Hq, T]` f32 in
//! **natural log** (FlashInfer uses base 2). Head dims 64 and 128; bf16 or f16 with f32
//! accumulation; softmax scale default `1/sqrt(d)`. The backward uses the final O and LSE (the
//! FlashAttention-2 recurrence); the prefix dK/dV sum every response's contribution inside one
//! CTA per key tile, without float atomics (deterministic).
//!
//! Positions for RoPE (applied by the caller): prefix token k has position k, token k of any
//! response has position P + k, as in the duplicated layout ([`SharedPrefixLayout::position_ids`]).
use crate::error::{ensure, Result};

pub(crate) mod launch;
pub mod reference;

pub use launch::{
    AttnElement, AttnSaved, AttnVersion, DevicePrefixLayout, RawPrefixLayout, SharedPrefixAttentionBwdPtrs,
    SharedPrefixAttentionFwdPtrs,
};

/// Query/key tile size of the kernels: tiles never cross a group boundary.
pub const TILE: usize = 64;

/// Heads and scale of an attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    /// Query heads Hq.
    pub q_heads: usize,
    /// Key/value heads Hkv (Hq % Hkv == 0).
    pub kv_heads: usize,
    /// Head dimension d (64 or 128).
    pub head_dim: usize,
    /// Softmax scale (finite, > 0); [`AttnShape::new`] uses 1/sqrt(d).
    pub scale: f32,
}

impl AttnShape {
    /// Heads with the default scale 1/sqrt(d).
    pub fn new(q_heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        AttnShape { q_heads, kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt() }
    }

    /// Head dim 64 or 128, Hq a positive multiple of Hkv, finite positive scale.
    pub fn validate(&self) -> Result<()> {
        ensure(self.head_dim == 64 || self.head_dim == 128, "head_dim", || {
            format!("supported head dims are 64 and 128, got {}", self.head_dim)
        })?;
        ensure(
            self.kv_heads >= 1 && self.q_heads >= 1 && self.q_heads % self.kv_heads == 0,
            "q_heads",
            || format!("Hq ({}) must be a positive multiple of Hkv ({})", self.q_heads, self.kv_heads),
        )?;
        ensure(self.q_heads <= 1024, "q_heads", || format!("at most 1024 heads, got {}", self.q_heads))?;
        ensure(self.scale.is_finite() && self.scale > 0.0, "scale", || {
            format!("must be finite and > 0, got {}", self.scale)
        })
    }
}

/// One group: a prefix shared by its responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixGroup {
    /// Prefix length P (may be 0).
    pub prefix_len: usize,
    /// Response lengths R_1..R_G (G >= 1; a response may be empty).
    pub resp_lens: Vec<usize>,
}

/// The packing of several groups, each `[prefix | r_1 | ... | r_G]`, back to back from token 0.
/// Built from lengths ([`SharedPrefixLayout::from_lengths`]) or validated from an explicit
/// descriptor ([`SharedPrefixLayout::from_descriptor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPrefixLayout {
    groups: Vec<PrefixGroup>,
    group_starts: Vec<usize>,
    total: usize,
}

impl SharedPrefixLayout {
    /// Packs the groups back to back. Errors: no group, a group with no response, an empty group
    /// (P = 0 and every R = 0), more than i32::MAX tokens.
    pub fn from_lengths(groups: Vec<PrefixGroup>) -> Result<Self> {
        ensure(!groups.is_empty(), "groups", || "need at least one group".into())?;
        let mut starts = Vec::with_capacity(groups.len());
        let mut t = 0usize;
        for (b, g) in groups.iter().enumerate() {
            ensure(!g.resp_lens.is_empty(), "groups", || format!("group {b} has no response (G >= 1)"))?;
            // Checked: a hostile length must be an error, never a wrapped total.
            let len = g
                .resp_lens
                .iter()
                .try_fold(g.prefix_len, |acc, &r| acc.checked_add(r))
                .filter(|&l| l <= i32::MAX as usize)
                .ok_or_else(|| {
                    crate::error::invalid("groups", format!("group {b}: P + sum R exceeds i32::MAX tokens"))
                })?;
            ensure(len > 0, "groups", || format!("group {b} is empty (P = 0 and every R = 0)"))?;
            starts.push(t);
            t = t
                .checked_add(len)
                .filter(|&t| t <= i32::MAX as usize)
                .ok_or_else(|| crate::error::invalid("groups", "more than i32::MAX tokens in total"))?;
        }
        Ok(SharedPrefixLayout { groups, group_starts: starts, total: t })
    }

    /// Validates an explicit descriptor: for group b, `group_starts[b]`, `prefix_lens[b]`, and its
    /// absolute response boundaries `resp_offsets[b] = [o_0, ..., o_G]` with `o_0 = start + P`.
    /// Groups must tile `[0, total_tokens)` in order, segments must not overlap.
    pub fn from_descriptor(
        group_starts: &[usize],
        prefix_lens: &[usize],
        resp_offsets: &[Vec<usize>],
        total_tokens: usize,
    ) -> Result<Self> {
        ensure(
            group_starts.len() == prefix_lens.len() && group_starts.len() == resp_offsets.len(),
            "descriptor",
            || {
                format!(
                    "group_starts ({}), prefix_lens ({}) and resp_offsets ({}) must have one entry per group",
                    group_starts.len(),
                    prefix_lens.len(),
                    resp_offsets.len()
                )
            },
        )?;
        let mut expect = 0usize;
        let mut groups = Vec::new();
        for (b, ((&s, &p), offs)) in group_starts.iter().zip(prefix_lens).zip(resp_offsets).enumerate() {
            ensure(s == expect, "descriptor", || {
                format!("group {b} starts at {s}, expected {expect} (groups must be contiguous and in order)")
            })?;
            ensure(offs.len() >= 2, "descriptor", || {
                format!("group {b} needs G >= 1 responses (G + 1 offsets)")
            })?;
            let first = s.checked_add(p).filter(|&f| f <= i32::MAX as usize).ok_or_else(|| {
                crate::error::invalid(
                    "descriptor",
                    format!("group {b}: start + prefix exceeds i32::MAX tokens"),
                )
            })?;
            ensure(total_tokens <= i32::MAX as usize, "descriptor", || {
                format!("total_tokens ({total_tokens}) exceeds i32::MAX")
            })?;
            ensure(offs[0] == first, "descriptor", || {
                format!("group {b}: first response starts at {}, expected start + prefix = {first}", offs[0])
            })?;
            for w in offs.windows(2) {
                ensure(w[0] <= w[1], "descriptor", || {
                    format!("group {b}: response offsets overlap ({} > {})", w[0], w[1])
                })?;
            }
            expect = *offs.last().unwrap();
            ensure(expect <= total_tokens, "descriptor", || {
                format!("group {b} ends at {expect}, beyond total_tokens ({total_tokens})")
            })?;
            groups.push(PrefixGroup {
                prefix_len: p,
                resp_lens: offs.windows(2).map(|w| w[1] - w[0]).collect(),
            });
        }
        ensure(expect == total_tokens, "descriptor", || {
            format!("groups cover [0, {expect}) but total_tokens is {total_tokens}")
        })?;
        Self::from_lengths(groups)
    }

    /// The groups.
    pub fn groups(&self) -> &[PrefixGroup] {
        &self.groups
    }
    /// First token of each group.
    pub fn group_starts(&self) -> &[usize] {
        &self.group_starts
    }
    /// Total packed tokens T.
    pub fn total_tokens(&self) -> usize {
        self.total
    }

    /// Per token: (group start, prefix end, own segment start, own segment end). For prefix
    /// tokens the own segment is the prefix.
    pub fn token_segments(&self) -> Vec<[usize; 4]> {
        let mut out = Vec::with_capacity(self.total);
        for (g, &s) in self.groups.iter().zip(&self.group_starts) {
            let hi1 = s + g.prefix_len;
            out.extend((s..hi1).map(|_| [s, hi1, s, hi1]));
            let mut o = hi1;
            for &r in &g.resp_lens {
                out.extend((o..o + r).map(|_| [s, hi1, o, o + r]));
                o += r;
            }
        }
        out
    }

    /// The attention mask: may query token i attend to key token j?
    pub fn allowed(seg: &[[usize; 4]], i: usize, j: usize) -> bool {
        let [lo1, hi1, lo2, _] = seg[i];
        j <= i && j >= lo1 && (j < hi1 || j >= lo2)
    }

    /// RoPE position ids: prefix token k → k, token k of any response → P + k.
    pub fn position_ids(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.total);
        for g in &self.groups {
            out.extend(0..g.prefix_len as i64);
            for &r in &g.resp_lens {
                out.extend((0..r as i64).map(|k| g.prefix_len as i64 + k));
            }
        }
        out
    }

    /// For users of the duplicated layout (every response its own sequence `[prefix ++ r_g]`,
    /// sequences concatenated group by group, response by response): for each token of that
    /// layout, the packed token it corresponds to. `index_select` with it maps packed → duplicated;
    /// a scatter-add with it maps duplicated gradients → packed (prefix gradients summed over the
    /// copies).
    pub fn duplicated_to_packed_index(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for (g, &s) in self.groups.iter().zip(&self.group_starts) {
            let mut o = s + g.prefix_len;
            for &r in &g.resp_lens {
                out.extend((s..s + g.prefix_len).map(|t| t as i64));
                out.extend((o..o + r).map(|t| t as i64));
                o += r;
            }
        }
        out
    }

    /// For each packed token, the duplicated-layout token holding it (prefix tokens: the copy of
    /// the first response). `index_select` with it maps duplicated → packed.
    pub fn packed_to_duplicated_index(&self) -> Vec<i64> {
        let mut out = vec![0i64; self.total];
        for (k, &p) in self.duplicated_to_packed_index().iter().enumerate().rev() {
            out[p as usize] = k as i64; // reversed: the first copy wins
        }
        out
    }

    /// Maps a duplicated-layout tensor (`width` elements per token) to the packed layout, taking
    /// the prefix from the first copy; with `sum_prefix`, prefix rows are the sum over the copies
    /// (what gradients need).
    pub fn pack<T: Copy + std::ops::AddAssign>(
        &self,
        dup: &[T],
        width: usize,
        sum_prefix: bool,
    ) -> Result<Vec<T>> {
        let idx = self.duplicated_to_packed_index();
        ensure(dup.len() == idx.len() * width, "dup", || {
            format!(
                "needs {} tokens x {width} = {} elements, got {}",
                idx.len(),
                idx.len() * width,
                dup.len()
            )
        })?;
        let first = self.packed_to_duplicated_index();
        let mut out: Vec<T> = Vec::with_capacity(self.total * width);
        for &k in &first {
            out.extend_from_slice(&dup[k as usize * width..(k as usize + 1) * width]);
        }
        if sum_prefix {
            for (k, &p) in idx.iter().enumerate() {
                if first[p as usize] != k as i64 {
                    for c in 0..width {
                        out[p as usize * width + c] += dup[k * width + c];
                    }
                }
            }
        }
        Ok(out)
    }

    /// Maps a packed tensor (`width` elements per token) to the duplicated layout.
    pub fn unpack<T: Copy>(&self, packed: &[T], width: usize) -> Result<Vec<T>> {
        ensure(packed.len() == self.total * width, "packed", || {
            format!("needs {} tokens x {width} elements, got {}", self.total, packed.len())
        })?;
        Ok(self
            .duplicated_to_packed_index()
            .iter()
            .flat_map(|&p| packed[p as usize * width..(p as usize + 1) * width].iter().copied())
            .collect())
    }

    /// The duplicated layout as a plain list of causal sequences `[prefix ++ r_g]` (lengths).
    pub fn duplicated_lengths(&self) -> Vec<usize> {
        self.groups.iter().flat_map(|g| g.resp_lens.iter().map(move |r| g.prefix_len + r)).collect()
    }

    /// Tiles of [`TILE`] tokens that never cross a group boundary, with what the kernels need per
    /// tile: `[start, end, group start, prefix end, group end, smallest own-segment start of the
    /// tile's response rows (end if none), end of the rows that can see the tile's keys, 0]`.
    /// Planned per group from its response boundaries (32 bytes per tile, nothing per token).
    pub fn tiles(&self) -> Vec<[i32; 8]> {
        let mut out = Vec::with_capacity(self.total.div_ceil(TILE) + self.groups.len());
        for (g, &s) in self.groups.iter().zip(&self.group_starts) {
            let hi1 = s + g.prefix_len;
            let end_g = hi1 + g.resp_lens.iter().sum::<usize>();
            // The group's non-empty responses as [start, end), in order.
            let mut resp = Vec::with_capacity(g.resp_lens.len());
            let mut o = hi1;
            for &r in &g.resp_lens {
                if r > 0 {
                    resp.push((o, o + r));
                }
                o += r;
            }
            // The response holding response row i (hi1 <= i < end_g).
            let holding = |i: usize| resp[resp.partition_point(|&(lo, _)| lo <= i) - 1];
            let mut a = s;
            while a < end_g {
                let b = (a + TILE).min(end_g);
                // Own-segment starts grow with the row, so the tile's first response row has the least.
                let min_lo2 = if b > hi1 { holding(a.max(hi1)).0 } else { b };
                // Rows that can see keys [a, b): every later row of the group if the tile holds
                // prefix keys, else up to the end of the response of its last key.
                let rows_end = if a < hi1 { end_g } else { holding(b - 1).1 };
                out.push([a, b, s, hi1, end_g, min_lo2, rows_end, 0].map(|v| v as i32));
                a = b;
            }
        }
        out
    }

    /// Per token, the start of its own segment as the kernels read it (i32): the group start for a
    /// prefix token, its response's start for a response token. 4 bytes per token, reserved
    /// fallibly: a layout too large for this host's memory is an error, not an allocation abort.
    pub fn own_segment_starts(&self) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        out.try_reserve_exact(self.total).map_err(|_| {
            crate::error::invalid(
                "groups",
                format!(
                    "{} tokens need {} bytes of host memory to plan",
                    self.total,
                    self.total.saturating_mul(4)
                ),
            )
        })?;
        for (g, &s) in self.groups.iter().zip(&self.group_starts) {
            let hi1 = s + g.prefix_len;
            out.extend(std::iter::repeat_n(s as i32, g.prefix_len));
            let mut o = hi1;
            for &r in &g.resp_lens {
                out.extend(std::iter::repeat_n(o as i32, r));
                o += r;
            }
        }
        Ok(out)
    }

    /// Allowed (query, key) pairs per head: the work the kernels do (the deduplicated count).
    pub fn attended_pairs(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| {
                let p = g.prefix_len as u64;
                p * (p + 1) / 2
                    + g.resp_lens.iter().map(|&r| p * r as u64 + r as u64 * (r as u64 + 1) / 2).sum::<u64>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tile plan and the segment starts, made from the group boundaries alone, equal what the
    /// per-token segments give (the f64 reference's mask) on layouts with empty responses, a
    /// prefix-only tile, a response spanning tiles and tiles spanning responses.
    #[test]
    fn tiles_and_segment_starts_match_the_per_token_segments() {
        let layouts = [
            vec![PrefixGroup { prefix_len: 0, resp_lens: vec![3] }],
            vec![PrefixGroup { prefix_len: 130, resp_lens: vec![0, 5, 0, 70, 1] }],
            vec![
                PrefixGroup { prefix_len: 64, resp_lens: vec![64, 64] },
                PrefixGroup { prefix_len: 1, resp_lens: vec![200, 0] },
                PrefixGroup { prefix_len: 77, resp_lens: vec![0] },
                PrefixGroup { prefix_len: 5, resp_lens: vec![3, 9, 27, 81, 2] },
            ],
        ];
        for groups in layouts {
            let l = SharedPrefixLayout::from_lengths(groups.clone()).unwrap();
            let seg = l.token_segments();
            let mut want = Vec::new();
            for (g, &s) in l.groups.iter().zip(&l.group_starts) {
                let end_g = s + g.prefix_len + g.resp_lens.iter().sum::<usize>();
                let hi1 = s + g.prefix_len;
                let mut a = s;
                while a < end_g {
                    let b = (a + TILE).min(end_g);
                    let min_lo2 = (a..b).filter(|&i| i >= hi1).map(|i| seg[i][2]).min().unwrap_or(b);
                    let rows_end = if a < hi1 { end_g } else { seg[b - 1][3] };
                    want.push([a, b, s, hi1, end_g, min_lo2, rows_end, 0].map(|v| v as i32));
                    a = b;
                }
            }
            assert_eq!(l.tiles(), want, "{groups:?}");
            let starts: Vec<i32> = seg.iter().map(|x| x[2] as i32).collect();
            assert_eq!(l.own_segment_starts().unwrap(), starts, "{groups:?}");
        }
    }
}
