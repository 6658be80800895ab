//! `backup` and `restore`: a tenant's keys, their stored bytes and expiry
//! times, copied into PostgreSQL and back, into the same or another tenant.
//! Backups are idempotent (a re-run rewrites the same entries); a restore
//! never replaces a key that exists unless asked to (`overwrite`), and skips
//! keys whose time ran out since the backup.

use cache_jobs::backup::{BackupParams, RestoreParams};
use cache_jobs::payload::Payload;
use cache_shared::Error;
use cache_shared::codec::split_expiry;
use cache_shared::db::backups::{self, BackupEntry};
use cache_shared::keys::{TenantId, TenantKeyspace, validate_key};
use cache_shared::quota;
use chrono::Utc;
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::pages::KeyPages;
use super::{Handler, tenant_of};
use crate::Outcome;
use crate::context::JobContext;
use crate::error::JobError;
use crate::progress::{Next, Progress};

/// One line of a backup file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileEntry {
    key: String,
    /// The stored bytes, base64.
    value: String,
    expires_at: Option<chrono::DateTime<Utc>>,
}

/// # Errors
///
/// [`JobError::Retryable`] when Redis or PostgreSQL blips.
async fn backup(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &BackupParams,
) -> Result<Outcome, JobError> {
    params.validate()?;
    let ns = TenantKeyspace::new(tenant);
    let pattern = ns.pattern("*");
    let mut progress = Progress::new(&ctx.db, job_id);
    let mut file = match &params.file {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map(tokio::io::BufWriter::new)
                .map_err(|e| JobError::Permanent(format!("cannot write {path}: {e}")))?,
        ),
        None => {
            backups::begin(&ctx.db, job_id, tenant.as_str()).await?;
            None
        }
    };
    let (mut keys_written, mut bytes_written) = (0u64, 0u64);
    let mut pages = KeyPages::new(ctx, &pattern);
    while let Some(batch) = pages
        .next(async |conn, keys| {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.get(key).pttl(key);
            }
            let answers: Vec<(Option<Vec<u8>>, i64)> = pipe.query_async(conn).await?;
            Ok(keys
                .into_iter()
                .zip(answers)
                .map(|(k, (v, ttl))| (k, v, ttl))
                .collect::<Vec<_>>())
        })
        .await?
    {
        let now = Utc::now();
        let entries: Vec<BackupEntry> = batch
            .into_iter()
            // Gone between SCAN and GET (expired or deleted): nothing to keep.
            .filter_map(|(key, value, pttl)| {
                let mut value = value?;
                // A backup keeps the envelope; its expiry is `expires_at`.
                let header = value.len() - split_expiry(&value).1.len();
                value.drain(..header);
                Some(BackupEntry {
                    cache_key: ns.strip(&key)?.to_owned(),
                    value,
                    expires_at: (pttl >= 0).then(|| now + chrono::Duration::milliseconds(pttl)),
                })
            })
            .collect();
        if let Some(out) = file.as_mut() {
            use base64::Engine;
            use tokio::io::AsyncWriteExt;
            let mut lines = Vec::new();
            for entry in &entries {
                let line = FileEntry {
                    key: entry.cache_key.clone(),
                    value: base64::engine::general_purpose::STANDARD.encode(&entry.value),
                    expires_at: entry.expires_at,
                };
                serde_json::to_writer(&mut lines, &line)
                    .map_err(|e| JobError::Permanent(e.to_string()))?;
                lines.push(b'\n');
                bytes_written += entry.value.len() as u64;
            }
            keys_written += entries.len() as u64;
            out.write_all(&lines)
                .await
                .map_err(|e| JobError::Permanent(format!("writing the backup file: {e}")))?;
        } else if !entries.is_empty() {
            backups::add(&ctx.db, job_id, &entries).await?;
        }
        if progress.advance(entries.len() as i64).await? == Next::Stop {
            return Ok(Outcome::Cancelled(json!({ "keys": progress.done() })));
        }
    }
    progress.report().await?;
    if let (Some(mut out), Some(path)) = (file, &params.file) {
        use tokio::io::AsyncWriteExt;
        out.flush()
            .await
            .map_err(|e| JobError::Permanent(format!("writing the backup file: {e}")))?;
        return Ok(Outcome::Succeeded(json!({
            "file": path,
            "keys": keys_written,
            "bytes": bytes_written,
        })));
    }
    let record = backups::finish(&ctx.db, job_id).await?;
    Ok(Outcome::Succeeded(json!({
        "backupId": record.id,
        "keys": record.key_count,
        "bytes": record.bytes,
    })))
}

/// Writes a backup's keys into `tenant`.
///
/// # Errors
///
/// [`JobError::Permanent`] for an unknown backup, [`JobError::Retryable`]
/// when Redis or PostgreSQL blips.
pub(crate) async fn restore(
    ctx: &JobContext,
    job_id: &str,
    tenant: &TenantId,
    params: &RestoreParams,
) -> Result<Outcome, JobError> {
    params.validate()?;
    // The namespaces as they are now (which to seal, how to account), not
    // as the last periodic reload saw them.
    cache_shared::db::namespaces::reload(&ctx.db, ctx.cache.namespaces()).await?;
    let mut writer = Restorer {
        ctx,
        ns: TenantKeyspace::new(tenant),
        tenant,
        overwrite: params.overwrite,
        progress: Progress::new(&ctx.db, job_id),
        restored: 0,
        kept: 0,
        expired: 0,
        skipped: 0,
    };
    if let Some(path) = &params.file {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| JobError::Permanent(format!("cannot read {path}: {e}")))?;
        let max_value_bytes = ctx.cache.limits().max_value_bytes;
        let mut lines = BoundedLines::new(file, max_line_bytes(max_value_bytes));
        let mut batch = Vec::new();
        loop {
            let line = lines
                .next()
                .await
                .map_err(|e| JobError::Permanent(format!("reading {path}: {e}")))?;
            match &line {
                Some(Some(line)) => match parse_line(line, max_value_bytes) {
                    Ok(entry) => batch.push(entry),
                    Err(_) => writer.skipped += 1,
                },
                Some(None) => writer.skipped += 1, // longer than any valid line
                None => {}
            }
            if batch.len() >= ctx.pacing.batch.max(1) || (line.is_none() && !batch.is_empty()) {
                if writer.write(&batch).await? == Next::Stop {
                    return Ok(Outcome::Cancelled(writer.summary(None)));
                }
                batch.clear();
            }
            if line.is_none() {
                writer.progress.report().await?;
                return Ok(Outcome::Succeeded(writer.summary(None)));
            }
        }
    }
    let backup_id = params.backup_id.as_deref().unwrap_or_default();
    let backup = backups::get(&ctx.db, backup_id)
        .await?
        .ok_or_else(|| JobError::Permanent(format!("no completed backup {backup_id}")))?;
    writer.progress.set_total(backup.key_count);
    let mut after = String::new();
    loop {
        let page = backups::page(&ctx.db, &backup.id, &after, ctx.pacing.batch as i64).await?;
        let Some(last) = page.last() else { break };
        after = last.cache_key.clone();
        if writer.write(&page).await? == Next::Stop {
            return Ok(Outcome::Cancelled(writer.summary(Some(&backup.id))));
        }
    }
    writer.progress.report().await?;
    Ok(Outcome::Succeeded(writer.summary(Some(&backup.id))))
}

/// The longest line a valid backup file can hold: a key, a base64 value of
/// at most `MAX_VALUE_BYTES` (+ its tag), an expiry and the JSON around them.
fn max_line_bytes(max_value_bytes: usize) -> usize {
    (max_value_bytes + 1).div_ceil(3) * 4 + cache_shared::keys::MAX_KEY_BYTES + 256
}

/// One line of a backup file, checked as a preload item is: a valid key
/// and a well-formed value within `MAX_VALUE_BYTES`.
///
/// # Errors
///
/// [`Error::Validation`] saying what is wrong.
fn parse_line(line: &[u8], max_value_bytes: usize) -> Result<BackupEntry, Error> {
    use base64::Engine;
    // serde's message can quote the line (keys, values): say only where
    // and what kind of fault, since job errors are logged and kept.
    let entry: FileEntry = serde_json::from_slice(line).map_err(|e| {
        Error::validation(
            "line",
            format!(
                "not a backup file line ({:?} error at column {})",
                e.classify(),
                e.column()
            ),
        )
    })?;
    validate_key(&entry.key, "key")?;
    let value = base64::engine::general_purpose::STANDARD
        .decode(entry.value)
        .map_err(|e| Error::validation("value", format!("not base64: {e}")))?;
    cache_shared::codec::check_stored(&value, max_value_bytes, "value")?;
    Ok(BackupEntry {
        cache_key: entry.key,
        value,
        expires_at: entry.expires_at,
    })
}

/// Newline-separated lines of a file, none held longer than a cap: a
/// longer line is skipped to its end without being kept in memory.
struct BoundedLines<R> {
    reader: tokio::io::BufReader<R>,
    max: usize,
    line: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> BoundedLines<R> {
    fn new(reader: R, max: usize) -> Self {
        Self {
            reader: tokio::io::BufReader::new(reader),
            max,
            line: Vec::new(),
        }
    }

    /// The next line: `Some(Some(line))`, `Some(None)` for one over the cap,
    /// `None` at the end of the file.
    async fn next(&mut self) -> std::io::Result<Option<Option<&[u8]>>> {
        use tokio::io::AsyncBufReadExt;
        self.line.clear();
        let mut too_long = false;
        let mut read_any = false;
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                break;
            }
            read_any = true;
            let (taken, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(end) => (end, true),
                None => (chunk.len(), false),
            };
            if !too_long && self.line.len() + taken <= self.max {
                self.line.extend_from_slice(&chunk[..taken]);
            } else {
                too_long = true;
                self.line.clear();
            }
            self.reader.consume(taken + usize::from(done));
            if done {
                break;
            }
        }
        Ok(match (read_any, too_long) {
            (false, _) => None,
            (true, true) => Some(None),
            (true, false) => Some(Some(&self.line)),
        })
    }
}

/// Writes restored entries batch by batch, counting what happened to them.
struct Restorer<'a> {
    ctx: &'a JobContext,
    ns: TenantKeyspace,
    tenant: &'a TenantId,
    overwrite: bool,
    progress: Progress<'a>,
    restored: u64,
    kept: u64,
    expired: u64,
    /// Lines of a backup file that are not a valid entry.
    skipped: u64,
}

impl Restorer<'_> {
    async fn write(&mut self, entries: &[BackupEntry]) -> Result<Next, JobError> {
        let now = Utc::now();
        let namespaces = self.ctx.cache.namespaces().of(self.tenant.as_str());
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let ttl_ms = match entry.expires_at {
                None => 0,
                Some(at) => match u64::try_from((at - now).num_milliseconds()) {
                    Ok(left) if left > 0 => left,
                    _ => {
                        self.expired += 1;
                        continue;
                    }
                },
            };
            let namespace = namespaces.find(&entry.cache_key).cloned();
            // A value saved before its namespace became encrypted is sealed
            // now: an encrypted namespace never holds plain values.
            let stored = match &namespace {
                Some(ns)
                    if ns.encrypted
                        && !cache_shared::sealing::is_sealed(&entry.value)
                        && entry.value != cache_shared::codec::NEGATIVE_ENVELOPE =>
                {
                    std::borrow::Cow::Owned(self.ctx.cache.keys().seal(&entry.value)?)
                }
                _ => std::borrow::Cow::Borrowed(entry.value.as_slice()),
            };
            keys.push((self.ns.key(&entry.cache_key), stored, ttl_ms, namespace));
        }
        if !keys.is_empty() {
            let batch: Vec<quota::Write<'_>> = keys
                .iter()
                .map(|(redis_key, stored, ttl_ms, namespace)| quota::Write {
                    redis_key,
                    stored: stored.as_ref(),
                    ttl_ms: *ttl_ms,
                    namespace: namespace.as_deref().map(quota::InNamespace::of),
                })
                .collect();
            let limits = self.ctx.cache.tenant_limits().of(self.tenant.as_str());
            let redis_store = self.ctx.cache.redis();
            // All of a batch or none of it: over the quota, the restore
            // stops with what earlier batches wrote.
            let set = redis_store
                .timed_for(self.ctx.pacing.batch_timeout, async {
                    let mut conn = redis_store.conn().await?;
                    quota::write(&mut conn, self.tenant, &limits, &batch, !self.overwrite).await
                })
                .await?;
            self.restored += set;
            self.kept += batch.len() as u64 - set;
        }
        let next = self.progress.advance(entries.len() as i64).await?;
        tokio::time::sleep(self.ctx.pacing.pause).await;
        Ok(next)
    }

    fn summary(&self, backup_id: Option<&str>) -> serde_json::Value {
        json!({
            "backupId": backup_id,
            "restored": self.restored,
            "kept": self.kept,
            "expired": self.expired,
            "skipped": self.skipped,
        })
    }
}

impl Handler for BackupParams {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        backup(ctx, &job.job_id, &tenant_of(job)?, &job.params).await
    }
}

impl Handler for RestoreParams {
    async fn run(ctx: &JobContext, job: &Payload<Self>) -> Result<Outcome, JobError> {
        restore(ctx, &job.job_id, &tenant_of(job)?, &job.params).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_over_the_cap_are_skipped_without_being_kept() {
        let text = format!("short\n{}\n\nlast", "x".repeat(100));
        let mut lines = BoundedLines::new(text.as_bytes(), 10);
        assert_eq!(lines.next().await.unwrap(), Some(Some(&b"short"[..])));
        assert_eq!(lines.next().await.unwrap(), Some(None));
        assert_eq!(lines.next().await.unwrap(), Some(Some(&b""[..])));
        assert_eq!(lines.next().await.unwrap(), Some(Some(&b"last"[..])));
        assert_eq!(lines.next().await.unwrap(), None);
    }

    #[test]
    fn backup_file_lines_are_checked_like_preload_items() {
        use base64::Engine;
        let line = |key: &str, stored: &[u8]| {
            let value = base64::engine::general_purpose::STANDARD.encode(stored);
            serde_json::to_vec(&json!({"key": key, "value": value})).unwrap()
        };
        assert!(parse_line(&line("ok", b"J1"), 10).is_ok());
        assert!(parse_line(&line("", b"J1"), 10).is_err(), "empty key");
        assert!(parse_line(&line(&"k".repeat(513), b"J1"), 10).is_err());
        assert!(
            parse_line(&line("ok", b"J12345678901"), 10).is_err(),
            "too big"
        );
        assert!(parse_line(&line("ok", b"?1"), 10).is_err(), "unknown tag");
        assert!(parse_line(b"{\"key\":\"ok\",\"value\":\"%%%\"}", 10).is_err());
        assert!(max_line_bytes(10) >= line(&"k".repeat(512), b"J123456789").len());
    }
}
