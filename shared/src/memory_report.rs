//! The memory-analysis report and the performance recommendations drawn
//! from it: written by the `memory_analysis` job, stored as JSON in
//! `memory_reports`, read by the api's management routes. One type for all
//! three, so a renamed field fails to compile instead of vanishing from an
//! answer, and the OpenAPI document shows every field.

use serde::{Deserialize, Serialize};

/// The result of walking a tenant's keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryReport {
    pub tenant_id: String,
    /// `full` or `sampled`.
    pub mode: String,
    /// Whether every key of the tenant was looked at.
    pub complete: bool,
    pub keys_analysed: u64,
    /// Memory Redis reports for the keys (`MEMORY USAGE`).
    pub total_bytes: u64,
    pub average_bytes: u64,
    /// Key patterns (numeric and UUID segments folded), biggest first; the
    /// last, `(other)`, holds the patterns not reported on their own.
    pub patterns: Vec<PatternGroup>,
    pub biggest_keys: Vec<KeySize>,
    pub ttl_distribution: TtlDistribution,
    pub keys_without_ttl: u64,
    pub compression_candidates: CompressionCandidates,
}

/// Keys of one pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatternGroup {
    pub pattern: String,
    pub keys: u64,
    pub bytes: u64,
}

/// One key and its size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySize {
    pub key: String,
    pub bytes: u64,
}

/// Keys by remaining TTL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TtlDistribution {
    pub none: u64,
    pub under1m: u64,
    pub under1h: u64,
    pub under1d: u64,
    pub under7d: u64,
    pub over7d: u64,
}

impl TtlDistribution {
    /// Counts one key with `ttl` seconds left (negative: none).
    pub fn count(&mut self, ttl: i64) {
        let bucket = match ttl {
            t if t < 0 => &mut self.none,
            t if t < 60 => &mut self.under1m,
            t if t < 3_600 => &mut self.under1h,
            t if t < 86_400 => &mut self.under1d,
            t if t < 604_800 => &mut self.under7d,
            _ => &mut self.over7d,
        };
        *bucket += 1;
    }
}

/// Values stored uncompressed that are big enough to be worth compressing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompressionCandidates {
    pub count: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// The largest, biggest first.
    pub largest: Vec<KeySize>,
}

/// Values above this size stored uncompressed are worth a recommendation.
pub const LARGE_VALUE_BYTES: u64 = 100 * 1024;

/// A hit rate under this (percent) is worth a recommendation.
pub const LOW_HIT_RATE: f64 = 80.0;

/// One recommendation of `GET /api/v1/cache/performance`, by rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Recommendation {
    /// The hit rate is low: preload the hot keys.
    LowHitRate { message: String, keys: Vec<String> },
    /// Large values are stored uncompressed.
    LargeUncompressedValues { message: String, keys: Vec<KeySize> },
    /// Keys without a TTL keep the cache from staying bounded.
    KeysWithoutTtl { message: String },
    /// Requests waited for or timed out on Redis connections.
    PoolWaits {
        message: String,
        waiting: u64,
        timeouts: u64,
    },
}

/// What recommendations are drawn from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals<'a> {
    /// Hit rate in percent, when there were lookups.
    pub hit_rate: Option<f64>,
    /// The hottest keys, hottest first.
    pub hot_keys: &'a [String],
    /// The tenant's latest memory report.
    pub report: Option<&'a MemoryReport>,
    /// Requests waiting for a Redis connection now, and timed out so far.
    pub pool_waiting: u64,
    pub pool_timeouts: u64,
}

/// The rules, in the order they are shown.
pub fn recommendations(signals: &Signals<'_>) -> Vec<Recommendation> {
    let mut found = Vec::new();
    if let Some(rate) = signals.hit_rate.filter(|r| *r < LOW_HIT_RATE) {
        found.push(Recommendation::LowHitRate {
            message: format!(
                "hit rate is {rate:.1}% (under {LOW_HIT_RATE:.0}%): preload the hot keys"
            ),
            keys: signals.hot_keys.to_vec(),
        });
    }
    if let Some(report) = signals.report {
        let large: Vec<KeySize> = report
            .compression_candidates
            .largest
            .iter()
            .filter(|k| k.bytes > LARGE_VALUE_BYTES)
            .cloned()
            .collect();
        if !large.is_empty() {
            found.push(Recommendation::LargeUncompressedValues {
                message: "values over 100 KB are stored uncompressed: compress them".into(),
                keys: large,
            });
        }
        if report.keys_without_ttl > 0 {
            found.push(Recommendation::KeysWithoutTtl {
                message: format!(
                    "{} keys have no TTL: set one so the cache stays bounded",
                    report.keys_without_ttl
                ),
            });
        }
    }
    if signals.pool_waiting > 0 || signals.pool_timeouts > 0 {
        found.push(Recommendation::PoolWaits {
            message: "requests waited for or timed out on Redis connections: grow the pool or \
                      the timeout"
                .into(),
            waiting: signals.pool_waiting,
            timeouts: signals.pool_timeouts,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_fall_into_their_buckets() {
        let mut d = TtlDistribution::default();
        for ttl in [
            -1, 0, 59, 60, 3_599, 3_600, 86_399, 86_400, 604_799, 604_800,
        ] {
            d.count(ttl);
        }
        assert_eq!(
            d,
            TtlDistribution {
                none: 1,
                under1m: 2,
                under1h: 2,
                under1d: 2,
                under7d: 2,
                over7d: 1,
            }
        );
    }

    #[test]
    fn each_rule_fires_on_its_signal_only() {
        assert!(recommendations(&Signals::default()).is_empty());
        assert!(
            recommendations(&Signals {
                hit_rate: Some(80.0),
                ..Signals::default()
            })
            .is_empty(),
            "80% is not low"
        );
        let hot = vec!["a".to_owned()];
        let report = MemoryReport {
            keys_without_ttl: 3,
            compression_candidates: CompressionCandidates {
                count: 2,
                bytes: 300_000,
                largest: vec![
                    KeySize {
                        key: "big".into(),
                        bytes: LARGE_VALUE_BYTES + 1,
                    },
                    KeySize {
                        key: "small".into(),
                        bytes: LARGE_VALUE_BYTES,
                    },
                ],
            },
            ..MemoryReport::default()
        };
        let all = recommendations(&Signals {
            hit_rate: Some(79.9),
            hot_keys: &hot,
            report: Some(&report),
            pool_waiting: 0,
            pool_timeouts: 1,
        });
        let json = serde_json::to_value(&all).unwrap();
        let rules: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap())
            .collect();
        assert_eq!(
            rules,
            [
                "low-hit-rate",
                "large-uncompressed-values",
                "keys-without-ttl",
                "pool-waits"
            ]
        );
        assert_eq!(json[0]["keys"], serde_json::json!(["a"]));
        assert_eq!(
            json[1]["keys"],
            serde_json::json!([{"key": "big", "bytes": LARGE_VALUE_BYTES + 1}])
        );
        assert_eq!(json[3]["timeouts"], 1);
    }

    #[test]
    fn reports_stored_before_the_type_still_read() {
        let stored = serde_json::json!({
            "tenantId": "acme", "mode": "full", "complete": true, "keysAnalysed": 2,
            "totalBytes": 200, "averageBytes": 100,
            "patterns": [{"pattern": "user:{id}", "keys": 2, "bytes": 200}],
            "biggestKeys": [{"key": "user:1", "bytes": 120}],
            "ttlDistribution": {"none": 1, "under1m": 0, "under1h": 1, "under1d": 0,
                                "under7d": 0, "over7d": 0},
            "keysWithoutTtl": 1,
            "compressionCandidates": {"count": 0, "bytes": 0, "largest": []}
        });
        let report: MemoryReport = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(report.patterns[0].pattern, "user:{id}");
        assert_eq!(serde_json::to_value(&report).unwrap(), stored);
    }
}
