//! The hot-key detector: a bounded top-K of keys by reads per tenant
//! (space-saving), fed by a sample of reads, and the fast hasher of the maps
//! looked up on every request.

use std::collections::HashMap;

/// FNV-1a, for the maps looked up on every request: their keys are short
/// (tenant ids, cache keys) and their sizes bounded (the hot-key map holds
/// 64 keys), so SipHash's flooding resistance buys nothing there.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// One in this many reads feeds the hot-key detector.
pub(crate) const HOTKEY_SAMPLE_EVERY: u64 = 8;
/// Keys tracked per tenant by the detector.
pub(crate) const HOTKEY_CAPACITY: usize = 64;

/// A bounded top-K of keys by reads (the space-saving algorithm): the counts
/// of the keys it reports are over-estimates by at most `error`.
#[derive(Debug, Default)]
pub(crate) struct SpaceSaving {
    pub(crate) counts: FastMap<String, (u64, u64)>,
}

impl SpaceSaving {
    pub(crate) fn offer(&mut self, key: &str) {
        if let Some((count, _)) = self.counts.get_mut(key) {
            *count += 1;
            return;
        }
        if self.counts.len() < HOTKEY_CAPACITY {
            self.counts.insert(key.to_owned(), (1, 0));
            return;
        }
        // Replace the least counted key; the newcomer inherits its count as error.
        let Some((victim, (min, _))) = self
            .counts
            .iter()
            .min_by_key(|(_, (count, _))| *count)
            .map(|(k, v)| (k.clone(), *v))
        else {
            return;
        };
        self.counts.remove(&victim);
        self.counts.insert(key.to_owned(), (min + 1, min));
    }
}

/// The detector since start (served live) and the one of the current
/// rollup period (shipped and reset at each period's end).
#[derive(Debug, Default)]
pub(crate) struct HotKeys {
    pub(crate) since_start: SpaceSaving,
    pub(crate) period: SpaceSaving,
}

/// A key the detector found hot; counts are sampled estimates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HotKey {
    pub key: String,
    /// Estimated reads since start (sampled one in eight, scaled back).
    pub estimated_reads: u64,
    /// How far `estimated_reads` may overstate.
    pub error_bound: u64,
}
