//! Host planning of a fused-head preference step: which sequences, pairs and rows go into each
//! chunk. Pairs that share a sequence stay in one chunk, so every chunk knows its sequences' scores
//! and can finish its pairs' loss and gradients alone.
use std::ops::Range;

use crate::error::{invalid, Result};
use crate::lm_head::plan::{used_rows, RowPlan};
use crate::preference_loss::Pairs;
use crate::seq_reduce::SeqLayout;

/// The chunks of a preference step: each holds whole groups of pairs (pairs that share a
/// sequence stay together), so every sequence's score, and so its pairs' loss and gradient, is
/// known inside its chunk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PairPlan {
    pub(crate) rows: RowPlan,
    /// Per chunk, the range of `seq_order` it holds.
    pub(crate) chunk_seqs: Vec<Range<usize>>,
    /// Sequence ids in chunk order.
    pub(crate) seq_order: Vec<i64>,
    /// Per chunk, its sequences' offsets (local S + 1) into the chunk's rows, concatenated; chunk
    /// c's start at `chunk_seqs[c].start + c`.
    pub(crate) local_cu: Vec<i32>,
    /// Per chunk, the range of `pair_order` it holds.
    pub(crate) chunk_pairs: Vec<Range<usize>>,
    /// Pair ids in chunk order.
    pub(crate) pair_order: Vec<usize>,
    /// Per pair (in chunk order), its chosen and rejected sequences' local indices.
    pub(crate) local_chosen: Vec<i32>,
    pub(crate) local_rejected: Vec<i32>,
    /// Counted chosen tokens over all pairs (the NLL term's denominator).
    pub(crate) nll_count: f64,
    /// Pairs in the batch.
    pub(crate) n_pairs: usize,
    /// Largest per-chunk sequence and pair counts.
    pub(crate) max_seqs: usize,
    pub(crate) max_pairs: usize,
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Plans a preference step. `rows_for` turns a group's row count into an error when it cannot fit
/// (it is [`crate::lm_head::plan::rows_for_budget`] with the budget bound).
pub(crate) fn pair_chunks(
    targets: &[i64],
    vocab: usize,
    ignore_index: i64,
    seqs: &SeqLayout,
    pairs: &Pairs,
    max_rows: usize,
    rows_for: impl Fn(usize) -> Result<usize>,
) -> Result<PairPlan> {
    let n = targets.len();
    seqs.validate(n)?;
    let n_seqs = seqs.n_seqs();
    pairs.validate(n_seqs)?;
    let n_pairs = pairs.n_pairs(n_seqs);
    used_rows(targets, vocab, ignore_index)?;
    let counted = |s: usize| seqs.range(s).filter(|&r| targets[r] != ignore_index).count();

    // Groups: pairs joined by shared sequences, in the order of their first pair.
    let mut parent: Vec<usize> = (0..n_seqs).collect();
    for i in 0..n_pairs {
        let (c, r) = pairs.pair(i, n_seqs);
        let (a, b) = (find(&mut parent, c), find(&mut parent, r));
        parent[a.max(b)] = a.min(b);
    }
    let mut group_of_root = vec![usize::MAX; n_seqs];
    let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new(); // (pairs, seqs)
    for i in 0..n_pairs {
        let (c, _) = pairs.pair(i, n_seqs);
        let root = find(&mut parent, c);
        if group_of_root[root] == usize::MAX {
            group_of_root[root] = groups.len();
            groups.push((Vec::new(), Vec::new()));
        }
        groups[group_of_root[root]].0.push(i);
    }
    let mut in_group = vec![false; n_seqs];
    for (g_pairs, g_seqs) in &mut groups {
        for &i in g_pairs.iter() {
            let (c, r) = pairs.pair(i, n_seqs);
            for s in [c, r] {
                if !in_group[s] {
                    in_group[s] = true;
                    g_seqs.push(s);
                }
            }
        }
        g_seqs.sort_unstable();
    }

    // Greedy packing of whole groups into chunks of at most max_rows rows.
    let mut plan = PairPlan {
        rows: RowPlan { rows: Vec::new(), targets: Vec::new(), chunks: Vec::new(), max_rows: 0 },
        chunk_seqs: Vec::new(),
        seq_order: Vec::new(),
        local_cu: Vec::new(),
        chunk_pairs: Vec::new(),
        pair_order: Vec::new(),
        local_chosen: Vec::new(),
        local_rejected: Vec::new(),
        nll_count: 0.0,
        n_pairs,
        max_seqs: 0,
        max_pairs: 0,
    };
    let mut local = vec![0i32; n_seqs];
    let mut current: Vec<usize> = Vec::new(); // group ids of the open chunk
    let mut current_rows = 0usize;
    let mut flush = |plan: &mut PairPlan, chunk: &mut Vec<usize>| {
        if chunk.is_empty() {
            return;
        }
        let (row0, seq0, pair0) = (plan.rows.rows.len(), plan.seq_order.len(), plan.pair_order.len());
        plan.local_cu.push(0);
        for &g in chunk.iter() {
            for &s in &groups[g].1 {
                local[s] = (plan.seq_order.len() - seq0) as i32;
                plan.seq_order.push(s as i64);
                for r in seqs.range(s).filter(|&r| targets[r] != ignore_index) {
                    plan.rows.rows.push(r as i64);
                    plan.rows.targets.push(targets[r]);
                }
                plan.local_cu.push((plan.rows.rows.len() - row0) as i32);
            }
        }
        for &g in chunk.iter() {
            for &i in &groups[g].0 {
                let (c, r) = pairs.pair(i, n_seqs);
                plan.pair_order.push(i);
                plan.local_chosen.push(local[c]);
                plan.local_rejected.push(local[r]);
            }
        }
        plan.rows.chunks.push(row0..plan.rows.rows.len());
        plan.chunk_seqs.push(seq0..plan.seq_order.len());
        plan.chunk_pairs.push(pair0..plan.pair_order.len());
        chunk.clear();
    };
    for (g, (_, g_seqs)) in groups.iter().enumerate() {
        let rows: usize = g_seqs.iter().map(|&s| counted(s)).sum();
        if rows > max_rows {
            rows_for(rows)?;
            return Err(invalid(
                "workspace_bytes",
                format!("a group of pairs has {rows} rows, more than {max_rows}"),
            ));
        }
        if current_rows + rows > max_rows {
            flush(&mut plan, &mut current);
            current_rows = 0;
        }
        current.push(g);
        current_rows += rows;
    }
    flush(&mut plan, &mut current);
    for i in 0..n_pairs {
        plan.nll_count += counted(pairs.pair(i, n_seqs).0) as f64;
    }
    plan.rows.max_rows = plan.rows.chunks.iter().map(|c| c.len()).max().unwrap_or(0);
    plan.max_seqs = plan.chunk_seqs.iter().map(|c| c.len()).max().unwrap_or(0);
    plan.max_pairs = plan.chunk_pairs.iter().map(|c| c.len()).max().unwrap_or(0);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_chunks_keep_groups_whole() {
        // 4 sequences of 3 tokens, first token ignored; pairs (0, 2), (1, 3) first-half-chosen.
        let t = [-100, 1, 1, -100, 2, 2, -100, 3, 3, -100, 0, 0];
        let seqs = SeqLayout::Padded { n_seqs: 4, seq_len: 3 };
        let fail = |r: usize| Err(invalid("workspace_bytes", format!("{r}")));
        let p = pair_chunks(&t, 4, -100, &seqs, &Pairs::FirstHalfChosen, 4, fail).unwrap();
        assert_eq!(p.rows.chunks.len(), 2);
        assert_eq!(p.seq_order, vec![0, 2, 1, 3]);
        assert_eq!(p.rows.rows, vec![1, 2, 7, 8, 4, 5, 10, 11]);
        assert_eq!(p.local_cu, vec![0, 2, 4, 0, 2, 4]);
        assert_eq!((p.local_chosen.clone(), p.local_rejected.clone()), (vec![0, 0], vec![1, 1]));
        assert_eq!(p.nll_count, 4.0);
        // Pairs sharing sequence 0 form one group of three sequences (6 rows): too big for 4.
        let shared = Pairs::Explicit { chosen: &[0, 0], rejected: &[1, 2] };
        assert!(pair_chunks(&t, 4, -100, &seqs, &shared, 4, fail).is_err());
        let p = pair_chunks(&t, 4, -100, &seqs, &shared, 6, fail).unwrap();
        assert_eq!(p.rows.chunks, vec![0..6]);
        assert_eq!(p.pair_order, vec![0, 1]);
    }
}
