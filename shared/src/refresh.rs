//! Refresh-ahead (API.md §10): probabilistic early expiration, XFetch
//! (Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache Stampede
//! Prevention", VLDB 2015). A read `remaining` milliseconds before its key
//! expires asks its caller to recompute the value when
//! `-delta · beta · ln(u) ≥ remaining` for a uniform `u` in `(0, 1]`, where
//! `delta` is how long the value took to compute. The chance grows as
//! expiry nears and with `delta`, so one caller, early enough, rebuilds the
//! value while the others are still served.

/// `delta` of a value whose caller did not say how long it took.
pub const DEFAULT_COMPUTE_MS: u32 = 100;

/// Longest `computeMs` a write may give (an hour).
pub const MAX_COMPUTE_MS: u32 = 3_600_000;

/// XFetch's `beta`: above 1 favours earlier refreshes.
const BETA: f64 = 1.0;

/// How much earlier hot keys the rollups flagged `should_preload` are
/// asked to refresh: their `delta` counts this many times.
pub const HOT_KEY_BOOST: u32 = 10;

/// The XFetch test for a draw `u` in `(0, 1]`.
pub fn refresh_due(remaining_ms: u64, compute_ms: u32, u: f64) -> bool {
    #[allow(clippy::cast_precision_loss)] // milliseconds far below 2^53
    let remaining = remaining_ms as f64;
    -f64::from(compute_ms) * BETA * u.ln() >= remaining
}

/// Whether this read (of a `hot` key or not) should ask its caller to
/// refresh the value.
pub fn draw(remaining_ms: u64, compute_ms: Option<u32>, hot: bool) -> bool {
    let delta = compute_ms.unwrap_or(DEFAULT_COMPUTE_MS);
    let delta = if hot {
        delta.saturating_mul(HOT_KEY_BOOST)
    } else {
        delta
    };
    refresh_due(remaining_ms, delta, crate::random::open01())
}

/// The keys of each tenant whose reads are asked to refresh earlier (hot
/// keys worth keeping loaded), replaced whole by each reload.
#[derive(Debug, Default)]
pub struct PreloadHints {
    keys: std::sync::RwLock<std::collections::HashMap<String, std::collections::HashSet<String>>>,
}

impl PreloadHints {
    pub fn contains(&self, tenant: &str, key: &str) -> bool {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(tenant).is_some_and(|set| set.contains(key))
    }

    pub fn replace(
        &self,
        fresh: std::collections::HashMap<String, std::collections::HashSet<String>>,
    ) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Share of 20 000 draws that ask for a refresh.
    fn share(remaining_ms: u64, compute_ms: u32) -> f64 {
        let hits = (0..20_000)
            .filter(|_| draw(remaining_ms, Some(compute_ms), false))
            .count();
        hits as f64 / 20_000.0
    }

    #[test]
    fn the_chance_grows_towards_expiry_and_with_the_compute_time() {
        // P = exp(-remaining / delta).
        for (remaining, delta) in [(3000, 1000), (1000, 1000), (100, 1000), (1000, 5000)] {
            let expected = (-(remaining as f64) / f64::from(delta)).exp();
            let seen = share(remaining, delta);
            assert!(
                (seen - expected).abs() < 0.02,
                "{remaining}/{delta}: {seen} vs {expected}"
            );
        }
        assert!(share(3000, 1000) < share(1000, 1000));
        assert!(share(1000, 1000) < share(100, 1000));
        assert!(share(1000, 1000) < share(1000, 5000));
        let hot = (0..20_000).filter(|_| draw(1000, Some(100), true)).count();
        let cold = (0..20_000).filter(|_| draw(1000, Some(100), false)).count();
        assert!(
            hot > 5 * cold.max(1),
            "hot keys are asked earlier: {hot} vs {cold}"
        );
        assert!(!refresh_due(3_600_000, DEFAULT_COMPUTE_MS, 0.5));
        assert!(refresh_due(0, DEFAULT_COMPUTE_MS, 1.0), "at expiry, always");
    }
}
