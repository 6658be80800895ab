//! Cheap per-thread randomness for decisions that only need to be spread,
//! not secret (refresh-ahead draws, read sampling). Tokens use `getrandom`.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // Without OS randomness the spread still works from the thread's address.
    if getrandom::fill(&mut bytes).is_err() {
        return (&raw const bytes as u64) | 1;
    }
    u64::from_le_bytes(bytes)
}

/// The next number of a SplitMix64 sequence.
fn next() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A number uniformly drawn from `[0, 1)`.
pub fn fraction() -> f64 {
    // The top 53 bits give every double of [0, 1) evenly.
    #[allow(clippy::cast_precision_loss)]
    let x = (next() >> 11) as f64 / (1u64 << 53) as f64;
    x
}

/// A number uniformly drawn from `(0, 1]` (never 0, so its logarithm is finite).
pub fn open01() -> f64 {
    1.0 - fraction()
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_cover_their_range() {
        let draws: Vec<f64> = (0..10_000).map(|_| super::fraction()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert!(draws.iter().any(|d| *d < 0.05) && draws.iter().any(|d| *d > 0.95));
        let mean = draws.iter().sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.025, "mean {mean}");
        assert!((0..1000).all(|_| super::open01() > 0.0));
    }
}
