//! Prefix-shared packing: the rows of a batch laid out as one sequence of tokens, each
//! distinct prefix stored once.
//!
//! In causal attention a token's hidden state depends only on the tokens before it, so
//! two rows that start with the same tokens have the same hidden states there. SFT data
//! is full of such prefixes: every example of a task starts with the same chat template
//! and instruction, and when labels are ranked every label follows the same prompt.
//! A [`Pack`] is the prefix tree (trie) of the rows, flattened: row `r` reuses the
//! longest prefix it shares with an earlier row and appends only the rest, so the
//! forward and backward passes run once per distinct prefix and padding disappears.
//! Nothing is approximated: attention for row `r` reads exactly the keys of its own
//! prefix ([`PackedRow::path`]), positions restart at 0 for every row, and gradients
//! from every row that shares a token add up on that token.

use std::collections::HashMap;

/// One row of a [`Pack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    /// The packed index of the row's token at each position (`path[i]` holds token `i`).
    pub path: Vec<u32>,
    /// Positions `owned_from..` were appended for this row (contiguous in the pack);
    /// positions before it are shared with earlier rows.
    pub owned_from: usize,
}

impl PackedRow {
    /// The row's length in tokens.
    pub fn len(&self) -> usize {
        self.path.len()
    }

    /// Whether the row is empty.
    pub fn is_empty(&self) -> bool {
        self.path.is_empty()
    }
}

/// Rows of token ids with shared prefixes stored once (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    /// The packed tokens.
    pub tokens: Vec<u32>,
    /// The position of each packed token inside its rows (the same in every row that
    /// shares it).
    pub positions: Vec<u32>,
    /// The rows, in the order given.
    pub rows: Vec<PackedRow>,
}

impl Pack {
    /// Packs `rows`; with `share` false every row is appended whole (no sharing, still
    /// no padding).
    pub fn new<R: AsRef<[u32]>>(rows: &[R], share: bool) -> Self {
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut out = Vec::with_capacity(rows.len());
        // (parent packed index + 1, or 0 at the root; token) -> packed index.
        let mut children: HashMap<(u32, u32), u32> = HashMap::new();
        for row in rows {
            let row = row.as_ref();
            let mut path = Vec::with_capacity(row.len());
            let mut parent = 0u32;
            let mut owned_from = 0;
            if share {
                for &tok in row {
                    match children.get(&(parent, tok)) {
                        Some(&node) => {
                            path.push(node);
                            parent = node + 1;
                        }
                        None => break,
                    }
                }
                owned_from = path.len();
            }
            for (pos, &tok) in row.iter().enumerate().skip(owned_from) {
                let node = tokens.len() as u32;
                tokens.push(tok);
                positions.push(pos as u32);
                if share {
                    children.insert((parent, tok), node);
                }
                path.push(node);
                parent = node + 1;
            }
            out.push(PackedRow { path, owned_from });
        }
        Self { tokens, positions, rows: out }
    }

    /// Packed tokens (what the model computes).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is packed.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Tokens over all rows, shared ones counted once per row.
    pub fn row_tokens(&self) -> usize {
        self.rows.iter().map(PackedRow::len).sum()
    }

    /// The packed index of token `pos` of row `row`.
    pub fn index(&self, row: usize, pos: usize) -> usize {
        self.rows[row].path[pos] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_are_stored_once() {
        let rows: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4], vec![1, 2, 5], vec![1, 2, 3, 6, 7], vec![9], vec![1, 2]];
        let p = Pack::new(&rows, true);
        assert_eq!(p.tokens, vec![1, 2, 3, 4, 5, 6, 7, 9]);
        assert_eq!(p.positions, vec![0, 1, 2, 3, 2, 3, 4, 0]);
        assert_eq!(p.rows[0], PackedRow { path: vec![0, 1, 2, 3], owned_from: 0 });
        assert_eq!(p.rows[1], PackedRow { path: vec![0, 1, 4], owned_from: 2 });
        assert_eq!(p.rows[2], PackedRow { path: vec![0, 1, 2, 5, 6], owned_from: 3 });
        assert_eq!(p.rows[3], PackedRow { path: vec![7], owned_from: 0 });
        // A row inside an earlier one owns nothing.
        assert_eq!(p.rows[4], PackedRow { path: vec![0, 1], owned_from: 2 });
        assert_eq!(p.row_tokens(), 15);
        // Every path spells its row; owned parts are contiguous and cover the pack once.
        let mut owner = vec![0; p.len()];
        for (r, row) in rows.iter().enumerate() {
            let pr = &p.rows[r];
            assert_eq!(pr.path.iter().map(|&i| p.tokens[i as usize]).collect::<Vec<_>>(), *row);
            assert!(pr.path.iter().enumerate().all(|(pos, &i)| p.positions[i as usize] == pos as u32));
            for w in pr.path[pr.owned_from..].windows(2) {
                assert_eq!(w[1], w[0] + 1);
            }
            for &i in &pr.path[pr.owned_from..] {
                owner[i as usize] += 1;
            }
        }
        assert!(owner.iter().all(|&n| n == 1));
    }

    #[test]
    fn without_sharing_rows_are_concatenated() {
        let p = Pack::new(&[vec![1u32, 2], vec![1, 3]], false);
        assert_eq!(p.tokens, vec![1, 2, 1, 3]);
        assert_eq!(p.positions, vec![0, 1, 0, 1]);
        assert_eq!(p.rows[1], PackedRow { path: vec![2, 3], owned_from: 0 });
    }
}
