//! Which examples form each micro-batch: a fresh seeded permutation per epoch, optionally
//! grouped by length within windows of optimizer steps.

use std::collections::HashMap;

use crate::rng::{self, streams};

/// Optimizer steps per length-grouping window (see [`batch_indices`]).
pub const GROUP_WINDOW: usize = 16;

/// Lengths are compared in buckets of this many tokens when grouping.
pub const GROUP_BUCKET: usize = 8;

/// Which examples form micro-batch `micro` (global index) of a run whose optimizer
/// steps take `accum` micro-batches of `batch`: consecutive slices of a fresh seeded
/// permutation per epoch.
///
/// With `lengths`, the examples of each window of [`GROUP_WINDOW`] optimizer steps are
/// ordered by length bucket ([`GROUP_BUCKET`] tokens, longest first; the shuffled order
/// is kept inside a bucket, so a batch is not filled with look-alike examples) before
/// they are cut into steps, and the window's steps run in a seeded random order. Every
/// example is still seen once per epoch in a seeded order, rows of a batch have similar
/// lengths so little compute goes to padding (`group_by_length` in Hugging Face's
/// trainer), and a step holds the same examples whatever the split into micro-batches.
pub fn batch_indices(
    n: usize,
    (batch, accum): (usize, usize),
    micro: usize,
    seed: u64,
    cache: &mut HashMap<usize, Vec<usize>>,
    lengths: Option<&[usize]>,
) -> Vec<usize> {
    let mut at = |g: usize| {
        let epoch = g / n;
        let perm = cache
            .entry(epoch)
            .or_insert_with(|| rng::permutation(&mut rng::stream(seed, streams::DATA_ORDER, epoch as u64), n));
        perm[g % n]
    };
    let Some(lengths) = lengths else {
        return (0..batch).map(|i| at(micro * batch + i)).collect();
    };
    let accum = accum.max(1);
    let per_step = batch * accum;
    let (step, k) = (micro / accum, micro % accum);
    let window = step / GROUP_WINDOW;
    let first = window * GROUP_WINDOW * per_step;
    let mut members: Vec<usize> = (first..first + GROUP_WINDOW * per_step).map(&mut at).collect();
    // Stable: examples of one bucket keep their shuffled order.
    members.sort_by_key(|&i| std::cmp::Reverse(lengths[i].div_ceil(GROUP_BUCKET)));
    let order = rng::permutation(&mut rng::stream(seed, streams::GROUPING, window as u64), GROUP_WINDOW);
    let start = order[step % GROUP_WINDOW] * per_step + k * batch;
    members[start..start + batch].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_grouping_sees_every_example_once_and_cuts_padding() {
        let (n, batch) = (GROUP_WINDOW * 4, 4);
        let lengths: Vec<usize> = (0..n).map(|i| 5 + (i * 37) % 50).collect();
        let padded = |grouped: bool| {
            let mut cache = HashMap::new();
            let mut seen = vec![0; n];
            let mut cells = 0;
            for micro in 0..GROUP_WINDOW {
                let idx = batch_indices(n, (batch, 1), micro, 7, &mut cache, grouped.then_some(lengths.as_slice()));
                assert_eq!(idx.len(), batch);
                cells += batch * idx.iter().map(|&i| lengths[i]).max().unwrap();
                for i in idx {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "each example once per epoch");
            cells
        };
        let (plain, grouped) = (padded(false), padded(true));
        let real: usize = lengths.iter().sum();
        assert!(grouped < plain, "grouped {grouped} cells vs {plain}");
        assert!(grouped <= real + n * (GROUP_BUCKET - 1), "grouped batches pad at most one bucket per row");
        // Seeded: the same call gives the same batch.
        let mut c1 = HashMap::new();
        let mut c2 = HashMap::new();
        assert_eq!(
            batch_indices(n, (batch, 1), 3, 7, &mut c1, Some(&lengths)),
            batch_indices(n, (batch, 1), 3, 7, &mut c2, Some(&lengths))
        );
        // A step of 2 micro-batches of 2 holds the examples of a step of one batch of 4.
        let mut c3 = HashMap::new();
        let mut split = batch_indices(n, (2, 2), 6, 7, &mut c3, Some(&lengths));
        split.extend(batch_indices(n, (2, 2), 7, 7, &mut c3, Some(&lengths)));
        assert_eq!(split, batch_indices(n, (4, 1), 3, 7, &mut c1, Some(&lengths)));
    }
}
