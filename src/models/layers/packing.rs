//! The order in which the sequences of a forward pass are packed along the token axis: the
//! decodes (one new token each) first, so their attention runs as one batch, then the others
//! (prefills, each attended on its own).

/// Where one sequence's tokens sit in a packed pass.
pub struct Span {
    /// First row in the packed tokens.
    pub offset: usize,
    /// New tokens.
    pub len: usize,
    /// Tokens already in the cache: the position of the first new token.
    pub past: usize,
}

/// Sequences of a pass by their index in the caller's order, decodes first.
pub struct PackingOrder {
    pub order: Vec<usize>,
    /// How many of `order` are decodes.
    pub decode_count: usize,
}

impl PackingOrder {
    /// The decodes, in packed order (rows `0..decode_count` of the pass).
    pub fn decodes(&self) -> &[usize] {
        &self.order[..self.decode_count]
    }

    /// The other sequences, in packed order after the decodes.
    pub fn others(&self) -> &[usize] {
        &self.order[self.decode_count..]
    }
}

/// The packing of sequences with `lens` new tokens each. A pass that returns the logits of
/// every position (`all_positions`) keeps the caller's order and batches nothing.
pub fn packing_order(lens: impl Iterator<Item = usize>, all_positions: bool) -> PackingOrder {
    let lens: Vec<usize> = lens.collect();
    if all_positions {
        return PackingOrder {
            order: (0..lens.len()).collect(),
            decode_count: 0,
        };
    }
    let decodes = (0..lens.len()).filter(|&i| lens[i] == 1);
    let others = (0..lens.len()).filter(|&i| lens[i] != 1);
    let order: Vec<usize> = decodes.chain(others).collect();
    PackingOrder {
        decode_count: lens.iter().filter(|&&l| l == 1).count(),
        order,
    }
}

#[cfg(test)]
mod tests {
    use super::packing_order;

    #[test]
    fn decodes_come_first_in_caller_order_unless_every_position_is_wanted() {
        let p = packing_order([5, 1, 3, 1].into_iter(), false);
        assert_eq!(p.decodes(), [1, 3]);
        assert_eq!(p.others(), [0, 2]);
        let all = packing_order([5, 1].into_iter(), true);
        assert!(all.decodes().is_empty());
        assert_eq!(all.others(), [0, 1]);
    }
}
