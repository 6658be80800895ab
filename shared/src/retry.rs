//! The service design's retry policy, shared by jobs and outbound calls:
//! the first attempt and 3 retries, exponential from 1 s, at most 10 s apart.

use std::time::Duration;

/// Attempts in all: the first and 3 retries.
pub const MAX_RUNS: u32 = 4;

/// Delay before retry `n` (1-based): 1 s, 2 s, 4 s, … capped at 10 s.
pub fn backoff(retry: u32) -> Duration {
    let seconds = 1u64 << retry.saturating_sub(1).min(4);
    Duration::from_secs(seconds.min(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_ten() {
        let delays: Vec<u64> = (1..=6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    }
}
