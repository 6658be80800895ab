//! `memory_analysis`: walks a tenant's keys with `SCAN` and `MEMORY USAGE`
//! (all of them, or a sample) and stores a report: totals, groups by key
//! pattern (numeric and UUID segments folded), biggest keys, TTL distribution,
//! keys without TTL and compression candidates. Idempotent: a re-run
//! replaces the job's report.

use cache_shared::codec::{COMPUTE_BLOCK_BYTES, EXPIRY_HEADER_BYTES, split_expiry};
use cache_shared::db::reports;
use cache_shared::keys::{TenantId, TenantKeyspace};
use cache_shared::memory_report::{
    CompressionCandidates, KeySize, MemoryReport, PatternGroup, TtlDistribution,
};
use deadpool_redis::redis;
use serde_json::json;
use std::collections::HashMap;
/// Uncompressed values above this size are candidates for compression.
const COMPRESSION_CANDIDATE_BYTES: u64 = 1024;
const TOP: usize = 10;

use cache_jobs::memory_analysis::{AnalysisParams, DEFAULT_SAMPLE, Mode};
use cache_jobs::payload::Payload;

use super::pages::KeyPages;
use super::{Handler, tenant_of};
use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};

/// The pattern of a key: numeric and UUID segments folded, so that
/// `user:42:profile` and `user:7:profile` both count as `user:{id}:profile`.
pub fn key_pattern(key: &str) -> String {
    key.split(':')
        .map(|segment| {
            if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else if is_uuid(segment) {
                "{uuid}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join(":")
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Patterns tracked during a walk; later ones are counted as [`OTHER`].
const MAX_PATTERNS: usize = 1000;
/// Patterns in a report, biggest first; the rest are folded into [`OTHER`].
const REPORTED_PATTERNS: usize = 100;
/// The pattern that stands for every pattern not reported on its own.
pub const OTHER: &str = "(other)";

/// The report's patterns: the biggest [`REPORTED_PATTERNS`] by bytes, then
/// one [`OTHER`] group holding the rest, if any.
fn fold_patterns(
    groups: HashMap<String, PatternGroup>,
    mut other: PatternGroup,
) -> Vec<PatternGroup> {
    let mut groups: Vec<PatternGroup> = groups
        .into_iter()
        .map(|(pattern, g)| PatternGroup { pattern, ..g })
        .collect();
    groups.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| a.pattern.cmp(&b.pattern))
    });
    for folded in groups.drain(REPORTED_PATTERNS.min(groups.len())..) {
        other.keys += folded.keys;
        other.bytes += folded.bytes;
    }
    if other.keys > 0 {
        groups.push(PatternGroup {
            pattern: OTHER.to_owned(),
            ..other
        });
    }
    groups
}

fn keep_top(list: &mut Vec<KeySize>, item: KeySize) {
    list.push(item);
    list.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
    list.truncate(TOP);
}

/// # Errors
///
/// [`JobError::Retryable`] when Redis or PostgreSQL blips.
async fn run(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &AnalysisParams,
) -> Result<Outcome, JobError> {
    params.validate()?;
    let limit = match params.mode {
        Mode::Full => u64::MAX,
        Mode::Sampled => params.sample_size.unwrap_or(DEFAULT_SAMPLE),
    };
    let ns = TenantKeyspace::new(tenant);
    let pattern = ns.pattern("*");
    let mut progress = Progress::new(&ctx.db, job_id);
    let mut groups: HashMap<String, PatternGroup> = HashMap::new();
    let mut other = PatternGroup::default();
    let mut biggest: Vec<KeySize> = Vec::new();
    let mut candidates: Vec<KeySize> = Vec::new();
    let (mut candidate_count, mut candidate_bytes) = (0u64, 0u64);
    let mut ttls = TtlDistribution::default();
    let (mut keys_seen, mut total_bytes) = (0u64, 0u64);
    let mut pages = KeyPages::new(ctx, &pattern);
    while let Some(batch) = pages
        .next(async |conn, keys| {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("MEMORY").arg("USAGE").arg(key);
                pipe.ttl(key);
                // The tag, behind the expiry header and compute block when there are.
                pipe.getrange(key, 0, (EXPIRY_HEADER_BYTES + COMPUTE_BLOCK_BYTES) as isize);
                pipe.strlen(key);
            }
            let raw: Vec<redis::Value> = pipe.query_async(conn).await?;
            let mut read = Vec::with_capacity(keys.len());
            for (key, c) in keys.into_iter().zip(raw.chunks(4)) {
                let memory: Option<u64> = redis::from_redis_value(c[0].clone())?;
                // A key that expired between SCAN and MEMORY USAGE is skipped.
                if let Some(memory) = memory {
                    read.push((
                        key,
                        memory,
                        redis::from_redis_value::<i64>(c[1].clone())?,
                        redis::from_redis_value::<Vec<u8>>(c[2].clone())?,
                        redis::from_redis_value::<u64>(c[3].clone())?,
                    ));
                }
            }
            Ok(read)
        })
        .await?
    {
        let n = batch.len() as u64;
        for (redis_key, bytes, ttl, tag, len) in batch {
            let key = ns.strip(&redis_key).unwrap_or(&redis_key).to_owned();
            keys_seen += 1;
            total_bytes += bytes;
            // Keys whose pattern comes after the first MAX_PATTERNS count as
            // "(other)": memory stays bounded however varied the keys are.
            let pattern = key_pattern(&key);
            let group = if groups.len() < MAX_PATTERNS || groups.contains_key(&pattern) {
                groups.entry(pattern).or_default()
            } else {
                &mut other
            };
            group.keys += 1;
            group.bytes += bytes;
            ttls.count(ttl);
            let envelope = split_expiry(&tag).1;
            let uncompressed = matches!(envelope.first(), Some(b'J' | b'B'));
            let len = len - (tag.len() - envelope.len()) as u64;
            if uncompressed && len > COMPRESSION_CANDIDATE_BYTES {
                candidate_count += 1;
                candidate_bytes += len;
                keep_top(
                    &mut candidates,
                    KeySize {
                        key: key.clone(),
                        bytes: len,
                    },
                );
            }
            keep_top(&mut biggest, KeySize { key, bytes });
        }
        if progress.advance(n as i64).await? == Next::Stop {
            return Ok(Outcome::Cancelled(json!({ "keysAnalysed": keys_seen })));
        }
        if keys_seen >= limit {
            break;
        }
    }
    let complete = pages.is_done();
    let groups = fold_patterns(groups, other);
    let mode = match params.mode {
        Mode::Full => "full",
        Mode::Sampled => "sampled",
    };
    let report = MemoryReport {
        tenant_id: tenant.as_str().to_owned(),
        mode: mode.to_owned(),
        complete,
        keys_analysed: keys_seen,
        total_bytes,
        average_bytes: total_bytes.checked_div(keys_seen).unwrap_or(0),
        patterns: groups,
        biggest_keys: biggest,
        ttl_distribution: ttls,
        keys_without_ttl: ttls.none,
        compression_candidates: CompressionCandidates {
            count: candidate_count,
            bytes: candidate_bytes,
            largest: candidates,
        },
    };
    progress.report().await?;
    reports::upsert(&ctx.db, job_id, tenant.as_str(), mode, &report).await?;
    Ok(Outcome::Succeeded(json!({
        "reportId": job_id,
        "keysAnalysed": keys_seen,
        "totalBytes": total_bytes,
        "complete": complete,
    })))
}

impl Handler for AnalysisParams {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        run(ctx, &job.job_id, &tenant_of(job)?, &job.params).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_and_uuid_segments_fold() {
        assert_eq!(key_pattern("user:42:profile"), "user:{id}:profile");
        assert_eq!(
            key_pattern("order:3f2b8c1e-9a4d-4c6b-8e2f-1a2b3c4d5e6f:items"),
            "order:{uuid}:items"
        );
        assert_eq!(key_pattern("plain"), "plain");
        assert_eq!(key_pattern("v2:a1"), "v2:a1");
    }

    #[test]
    fn patterns_beyond_the_reported_ones_are_folded_into_other() {
        let groups: HashMap<String, PatternGroup> = (0..150u64)
            .map(|i| {
                let group = PatternGroup {
                    pattern: String::new(),
                    keys: 1,
                    bytes: 1000 + i,
                };
                (format!("p{i}"), group)
            })
            .collect();
        let overflow = PatternGroup {
            pattern: String::new(),
            keys: 7,
            bytes: 70,
        };
        let folded = fold_patterns(groups, overflow);
        assert_eq!(folded.len(), REPORTED_PATTERNS + 1);
        assert_eq!(folded[0].pattern, "p149", "biggest first");
        let other = folded.last().unwrap();
        assert_eq!(other.pattern, OTHER);
        assert_eq!(other.keys, 50 + 7);
        assert_eq!(other.bytes, (1000..1050).sum::<u64>() + 70);
        let total: u64 = folded.iter().map(|g| g.keys).sum();
        assert_eq!(total, 157, "every key counted once");
    }
}
