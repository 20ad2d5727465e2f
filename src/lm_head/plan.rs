//! Host planning of the chunk loop: which rows reach the GEMMs (ignored rows never do), in which
//! order, and how they split into chunks that fit the caller's workspace budget. Built once
//! before any launch (from targets on the host), uploaded once; the loop itself then runs on the
//! stream with no synchronization.
use std::ops::Range;

use super::LinearShape;
use crate::dtype::DType;
use crate::error::{invalid, Error, Result};

/// f32 scratch values kept per chunk row (logp, lse, entropy, dL/dlogp, dL/dH, weight, ref logp,
/// the two softmax statistics, one spare) and the two i64 a row costs (its index and target).
pub(crate) const ROW_SCRATCH_F32: usize = 10;
const ROW_INDEX_BYTES: usize = 16;

/// Workspace bytes one chunk row costs: its logits (V), its gathered hidden state / d_hidden (H)
/// in the compute dtype, and its per-row scratch.
pub fn workspace_bytes_per_row(shape: &LinearShape, dtype: DType) -> usize {
    (shape.vocab + shape.hidden) * dtype.size() + ROW_SCRATCH_F32 * 4 + ROW_INDEX_BYTES
}

/// The smallest `workspace_bytes` that lets the fused LM head run chunks of `rows` rows
/// (`rows * workspace_bytes_per_row`): 1 row for the token log-probs, the largest group of pairs'
/// tokens (chosen + rejected) for the preference step. `None` when it overflows `usize`.
pub fn min_workspace_bytes(shape: &LinearShape, dtype: DType, rows: usize) -> Option<usize> {
    workspace_bytes_per_row(shape, dtype).checked_mul(rows.max(1))
}

/// The largest chunk (rows) `workspace_bytes` holds; an error naming the minimum when it holds
/// fewer than `min_rows`.
pub(crate) fn rows_for_budget(
    shape: &LinearShape,
    dtype: DType,
    workspace_bytes: usize,
    min_rows: usize,
    what: &str,
) -> Result<usize> {
    let per_row = workspace_bytes_per_row(shape, dtype);
    let rows = workspace_bytes / per_row;
    if rows < min_rows.max(1) {
        let need = per_row.saturating_mul(min_rows.max(1));
        return Err(invalid(
            "workspace_bytes",
            format!(
                "{workspace_bytes} bytes cannot hold {what} ({} rows of V = {}, H = {} in {}): the minimum is {need} bytes",
                min_rows.max(1),
                shape.vocab,
                shape.hidden,
                dtype.name()
            ),
        ));
    }
    Ok(rows)
}

/// Used rows in chunk order and the chunks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowPlan {
    /// Row (token) index of each used row.
    pub(crate) rows: Vec<i64>,
    /// Its target.
    pub(crate) targets: Vec<i64>,
    /// Chunks, as ranges of `rows`.
    pub(crate) chunks: Vec<Range<usize>>,
    /// Rows of the largest chunk.
    pub(crate) max_rows: usize,
}

/// Checks the targets (in `[0, V)` or `ignore_index`) and returns the used rows.
pub(crate) fn used_rows(targets: &[i64], vocab: usize, ignore_index: i64) -> Result<Vec<usize>> {
    let mut used = Vec::with_capacity(targets.len());
    for (row, &t) in targets.iter().enumerate() {
        if t == ignore_index {
            continue;
        }
        if t < 0 || t as u64 >= vocab as u64 {
            return Err(Error::TargetOutOfRange { row: row as u64, target: t, vocab: vocab as u64 });
        }
        used.push(row);
    }
    Ok(used)
}

/// Chunks of at most `max_rows` used rows, in row order (the forward and the per-token backward).
pub(crate) fn token_chunks(
    targets: &[i64],
    vocab: usize,
    ignore_index: i64,
    max_rows: usize,
) -> Result<RowPlan> {
    let used = used_rows(targets, vocab, ignore_index)?;
    let rows: Vec<i64> = used.iter().map(|&r| r as i64).collect();
    let chunk_targets = used.iter().map(|&r| targets[r]).collect();
    let chunks: Vec<Range<usize>> =
        (0..rows.len()).step_by(max_rows.max(1)).map(|s| s..(s + max_rows).min(rows.len())).collect();
    let max_rows = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
    Ok(RowPlan { rows, targets: chunk_targets, chunks, max_rows })
}

/// The row plan of a host-planned loop over the used rows (targets in `[0, target_bound)`, or
/// ignored) within `cfg.workspace_bytes`, in one slot or two ([`super::plan_in_slots`]).
pub(crate) fn plan_token_rows(
    s: &LinearShape,
    dtype: DType,
    host_targets: &[i64],
    target_bound: usize,
    cfg: &super::LinearConfig,
) -> Result<(RowPlan, usize)> {
    super::plan_in_slots(
        cfg.workspace_bytes,
        |budget| {
            let max_rows = rows_for_budget(s, dtype, budget, 1, "one row")?;
            token_chunks(host_targets, target_bound, cfg.token.ignore_index, max_rows)
        },
        |p| p.chunks.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_chunks_skip_ignored_rows_and_cover_the_rest_in_order() {
        let t = [-100, 3, 4, -100, 0, 1, 2];
        let p = token_chunks(&t, 5, -100, 2).unwrap();
        assert_eq!(p.rows, vec![1, 2, 4, 5, 6]);
        assert_eq!(p.targets, vec![3, 4, 0, 1, 2]);
        assert_eq!(p.chunks, vec![0..2, 2..4, 4..5]);
        assert!(matches!(token_chunks(&[5], 5, -100, 2), Err(Error::TargetOutOfRange { row: 0, .. })));
    }
}
