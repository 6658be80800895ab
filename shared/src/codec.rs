//! The bytes stored in Redis for a value: an expiry header, a one-byte
//! format tag, then the payload.
//!
//! The expiry header is `T` and the absolute time the key expires, Unix
//! milliseconds as 8 bytes big-endian (`0`: never). Only the accounting
//! scripts write it, from the same instant they give Redis as the key's
//! expiry (`PXAT`), and every script that changes a key's expiry rewrites
//! it in the same step; so a read learns the TTL from the value alone, one
//! Redis command per read. Values written before the header existed have
//! none (their first byte is a tag): reads ask Redis for their TTL. The
//! header is not part of a value's size in quota accounting or in
//! compression figures: those count the tag and the payload.
//!
//! | tag | payload |
//! |-----|---------|
//! | `J` | compact JSON text |
//! | `j` | compact JSON text, LZ4 block with its length prepended |
//! | `B` | raw bytes |
//! | `b` | raw bytes, LZ4 block with its length prepended |
//! | `N` | none: a negative entry ("this id does not exist", API.md §10) |
//! | `E` | another envelope, encrypted ([`crate::sealing`]) |
//!
//! A payload is compressed only when it is longer than the configured threshold
//! *and* compression makes it smaller. Callers never see the tag; a value
//! whose first byte is no known tag was not written by this service and is
//! reported as corrupt rather than guessed at.
//!
//! Invariant: a `J`/`j` payload is valid compact JSON. Every write path
//! stores only JSON it parsed (a request's value, a preload item) or checked
//! ([`check_stored`] for backups), so reads write it into answers as it is
//! ([`Stored`]), never parsing it again.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::error::Error;

const TAG_JSON: u8 = b'J';
const TAG_JSON_LZ4: u8 = b'j';
const TAG_BYTES: u8 = b'B';
const TAG_BYTES_LZ4: u8 = b'b';
const TAG_EXPIRY: u8 = b'T';
const TAG_NEGATIVE: u8 = b'N';
const TAG_COMPUTE: u8 = b'D';
use crate::sealing::TAG_SEALED;

/// The envelope of a negative entry: a tag and no payload.
pub const NEGATIVE_ENVELOPE: &[u8] = &[TAG_NEGATIVE];

/// Length of the expiry header: `T` and 8 bytes of absolute expiry.
pub const EXPIRY_HEADER_BYTES: usize = 9;

/// Length of the compute block ([`compute_block`]): `D` and 4 bytes.
pub const COMPUTE_BLOCK_BYTES: usize = 5;

/// The header in Lua, for the scripts that write or measure values: the
/// Redis clock in milliseconds, the header of a value expiring at `at` (0
/// or less: never), and a stored value's length less its header (0 when the
/// key is absent).
pub const EXPIRY_HEADER_LUA: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function expiry_header(at)
  return 'T' .. struct.pack('>I8', math.max(at, 0))
end
local function value_len(key)
  local n = redis.call('STRLEN', key)
  if n > 9 and redis.call('GETRANGE', key, 0, 0) == 'T' then return n - 9 end
  return n
end
";

/// When a stored value expires, as its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredExpiry {
    /// Written before values carried their expiry: only Redis knows.
    Unknown,
    Never,
    /// Unix milliseconds.
    At(u64),
}

impl StoredExpiry {
    /// The TTL Redis's `TTL` would answer at `now_ms` (seconds, rounded to
    /// the nearest, never below 0; `-1` for no expiry); `None` when unknown.
    pub fn ttl_at(self, now_ms: u64) -> Option<i64> {
        match self {
            Self::Unknown => None,
            Self::Never => Some(-1),
            Self::At(at) => {
                let left = at.saturating_sub(now_ms);
                Some(i64::try_from(left.saturating_add(500) / 1000).unwrap_or(i64::MAX))
            }
        }
    }
}

/// The expiry header of stored bytes and the envelope (tag and payload)
/// after it (and after the compute block, see [`compute_block`]).
pub fn split_expiry(stored: &[u8]) -> (StoredExpiry, &[u8]) {
    let (expiry, _, envelope) = split_headers(stored);
    (expiry, envelope)
}

/// The headers of stored bytes: expiry, the milliseconds the value took
/// its caller to compute (when it said), and the envelope.
pub fn split_headers(stored: &[u8]) -> (StoredExpiry, Option<u32>, &[u8]) {
    match stored {
        [TAG_EXPIRY, at @ ..] if at.len() > 8 => {
            let (at, rest) = at.split_at(8);
            let mut be = [0u8; 8];
            be.copy_from_slice(at);
            let expiry = match u64::from_be_bytes(be) {
                0 => StoredExpiry::Never,
                at => StoredExpiry::At(at),
            };
            match rest {
                [TAG_COMPUTE, ms @ ..] if ms.len() > 4 => {
                    let (ms, envelope) = ms.split_at(4);
                    let mut be = [0u8; 4];
                    be.copy_from_slice(ms);
                    (expiry, Some(u32::from_be_bytes(be)), envelope)
                }
                _ => (expiry, None, rest),
            }
        }
        _ => (StoredExpiry::Unknown, None, stored),
    }
}

/// `stored` with its envelope replaced by `envelope`, its headers (expiry,
/// compute block) kept: how a value is rewritten in place (compression,
/// resealing) without touching its expiry.
pub fn with_envelope(stored: &[u8], envelope: &[u8]) -> Vec<u8> {
    let headers = stored.len() - split_expiry(stored).1.len();
    [&stored[..headers], envelope].concat()
}

/// The block that records how long a value took to compute (refresh-ahead,
/// API.md §10): `D` and the milliseconds, 4 bytes BE. It goes before the
/// envelope, after the expiry header the scripts add; quotas count it as
/// value bytes.
pub fn compute_block(ms: u32) -> [u8; COMPUTE_BLOCK_BYTES] {
    let be = ms.to_be_bytes();
    [TAG_COMPUTE, be[0], be[1], be[2], be[3]]
}

/// Now in Unix milliseconds, the clock [`StoredExpiry::ttl_at`] reads.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Most bytes sealing adds to an envelope: key id and its length, nonce, tag.
const SEALING_OVERHEAD: usize = crate::sealing::MAX_OVERHEAD_BYTES;

/// Largest decompressed size accepted, Redis's own limit on a string. Guards
/// against a corrupt length prefix asking for an absurd allocation.
const MAX_DECODED_BYTES: usize = 512 * 1024 * 1024;

/// A value as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Compact JSON text (validated on the way in).
    Json(String),
    /// Opaque bytes stored through the raw-bytes interface.
    Bytes(Bytes),
}

impl Value {
    /// The value's size as API.md §2 counts it: compact JSON text or raw bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Json(text) => text.len(),
            Self::Bytes(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compact JSON from a caller's JSON (any whitespace between tokens is dropped;
    /// numbers, strings and key order are kept exactly as sent).
    pub fn from_raw_json(raw: &RawValue) -> Self {
        Self::Json(compact_json(raw.get()))
    }

    /// The value as JSON for a response, moved rather than copied.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] for raw bytes, or stored JSON that no longer parses
    /// (corrupt data).
    pub fn into_raw_json(self) -> Result<Box<RawValue>, Error> {
        match self {
            Self::Json(text) => {
                RawValue::from_string(text).map_err(|e| Error::Internal(Box::new(e)))
            }
            Self::Bytes(_) => Err(Error::internal("the value is raw bytes, not JSON")),
        }
    }
}

/// A value as read from Redis, still in its stored form: read paths copy its
/// payload into their answer (decompressing straight into it) instead of
/// decoding it into a [`Value`] and encoding that again.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Tag and payload, without the headers.
    envelope: Bytes,
    expiry: StoredExpiry,
    compute_ms: Option<u32>,
}

impl Stored {
    /// # Errors
    ///
    /// [`Error::Internal`] when the bytes carry no known tag (not written by
    /// this service).
    pub fn new(bytes: impl Into<Bytes>) -> Result<Self, Error> {
        let bytes = bytes.into();
        let (expiry, compute_ms, envelope) = split_headers(&bytes);
        split_tag(envelope)?;
        let header = bytes.len() - envelope.len();
        Ok(Self {
            envelope: bytes.slice(header..),
            expiry,
            compute_ms,
        })
    }

    /// When the value expires, as its header says.
    pub fn expiry(&self) -> StoredExpiry {
        self.expiry
    }

    /// How long the value took its caller to compute, if it said.
    pub fn compute_ms(&self) -> Option<u32> {
        self.compute_ms
    }

    /// Whether the value is encrypted: [`Stored::open`] it before reading it.
    pub fn is_sealed(&self) -> bool {
        self.envelope.first() == Some(&TAG_SEALED)
    }

    /// This value with a sealed envelope replaced by the one inside it
    /// (headers kept); any other value as it is.
    ///
    /// # Errors
    ///
    /// [`Error::Sealing`] when its key is not in `keys` or it does not
    /// decrypt; [`Error::Internal`] when what is inside is not an envelope.
    pub fn open(self, keys: &crate::sealing::Keyring) -> Result<Self, Error> {
        if !self.is_sealed() {
            return Ok(self);
        }
        let inner = keys.open(&self.envelope)?;
        match split_tag(&inner)? {
            (TAG_SEALED, _) => Err(Error::internal("a sealed value holds another sealed one")),
            _ => Ok(Self {
                envelope: Bytes::from(inner),
                ..self
            }),
        }
    }

    /// Whether this is a negative entry, which has no value.
    pub fn is_negative(&self) -> bool {
        self.envelope.first() == Some(&TAG_NEGATIVE)
    }

    /// Whether the value is JSON (else raw bytes).
    pub fn is_json(&self) -> bool {
        matches!(self.envelope.first(), Some(&(TAG_JSON | TAG_JSON_LZ4)))
    }

    /// The value's size once decompressed, for sizing an answer's buffer.
    pub fn payload_len(&self) -> usize {
        let payload = &self.envelope[1..];
        if is_compressed(&self.envelope) {
            lz4_flex::block::uncompressed_size(payload).map_or(0, |(size, _)| size)
        } else {
            payload.len()
        }
    }

    /// Appends the value's bytes (JSON as compact text) to `out`, an LZ4
    /// payload decompressed straight into it.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] when a compressed payload does not decompress.
    pub fn append_payload(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let payload = &self.envelope[1..];
        if is_compressed(&self.envelope) {
            decompress_into(payload, out)
        } else {
            out.extend_from_slice(payload);
            Ok(())
        }
    }

    /// The value's bytes as read from Redis, shared rather than copied;
    /// `None` when they are compressed (see [`Stored::append_payload`]).
    pub fn stored_payload(&self) -> Option<Bytes> {
        (!is_compressed(&self.envelope)).then(|| self.envelope.slice(1..))
    }

    /// The value's bytes (JSON as compact text): no copy unless compressed.
    ///
    /// # Errors
    ///
    /// As [`Stored::append_payload`].
    pub fn into_payload(self) -> Result<Bytes, Error> {
        if let Some(payload) = self.stored_payload() {
            return Ok(payload);
        }
        let mut out = Vec::with_capacity(self.payload_len());
        self.append_payload(&mut out)?;
        Ok(Bytes::from(out))
    }

    /// The tag and the payload, without the expiry header.
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }
}

/// Encodes values, compressing payloads above `min_compress_bytes` when it pays.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    min_compress_bytes: usize,
}

impl Codec {
    pub fn new(min_compress_bytes: usize) -> Self {
        Self { min_compress_bytes }
    }

    pub fn encode(&self, value: &Value) -> Vec<u8> {
        match value {
            Value::Json(text) => self.encode_payload(text.as_bytes(), TAG_JSON, TAG_JSON_LZ4),
            Value::Bytes(bytes) => self.encode_payload(bytes, TAG_BYTES, TAG_BYTES_LZ4),
        }
    }

    /// Encodes `value` compressed if that makes it smaller, whatever the threshold
    /// (the explicit "compress this key" operation).
    pub fn encode_compressed(&self, value: &Value) -> Vec<u8> {
        Self::new(0).encode(value)
    }

    fn encode_payload(&self, payload: &[u8], plain: u8, compressed: u8) -> Vec<u8> {
        if payload.len() > self.min_compress_bytes {
            let packed = lz4_flex::compress_prepend_size(payload);
            if packed.len() < payload.len() {
                let mut out = Vec::with_capacity(packed.len() + 1);
                out.push(compressed);
                out.extend_from_slice(&packed);
                return out;
            }
        }
        let mut out = Vec::with_capacity(payload.len() + 1);
        out.push(plain);
        out.extend_from_slice(payload);
        out
    }

    /// # Errors
    ///
    /// [`Error::Internal`] when the bytes carry no known tag or do not decompress.
    pub fn decode(&self, stored: &[u8]) -> Result<Value, Error> {
        let (tag, payload) = split_tag(split_expiry(stored).1)?;
        Ok(match tag {
            TAG_NEGATIVE => return Err(Error::internal("a negative entry has no value")),
            TAG_SEALED => return Err(Error::internal("a sealed value must be opened first")),
            TAG_JSON => Value::Json(utf8(payload.to_vec())?),
            TAG_JSON_LZ4 => Value::Json(utf8(decompress(payload)?)?),
            TAG_BYTES_LZ4 => Value::Bytes(Bytes::from(decompress(payload)?)),
            _ => Value::Bytes(Bytes::copy_from_slice(payload)),
        })
    }
}

/// Checks bytes that claim to be a stored value (a backup file's, say)
/// before they are written: a known tag, at most `max_value_bytes` once
/// decompressed (checked before decompressing), and a payload that decodes.
///
/// # Errors
///
/// [`Error::Validation`] naming `field`.
pub fn check_stored(
    stored: &[u8],
    max_value_bytes: usize,
    field: &'static str,
) -> Result<(), Error> {
    let bad = |why: String| Error::validation(field, why);
    let (&tag, payload) = stored
        .split_first()
        .ok_or_else(|| bad("the value is empty".into()))?;
    let size = match tag {
        TAG_NEGATIVE if payload.is_empty() => return Ok(()),
        // Sealed values are restored as they were saved, still sealed: the
        // key may not be here, so only their form is checked.
        TAG_SEALED => {
            if crate::sealing::key_id_of(stored).is_none() {
                return Err(bad("the encrypted value is damaged".into()));
            }
            if payload.len() > max_value_bytes.saturating_add(SEALING_OVERHEAD) {
                return Err(bad(format!(
                    "the value is larger than the limit of {max_value_bytes} bytes"
                )));
            }
            return Ok(());
        }
        TAG_JSON | TAG_BYTES => payload.len(),
        TAG_JSON_LZ4 | TAG_BYTES_LZ4 => {
            lz4_flex::block::uncompressed_size(payload)
                .map_err(|e| bad(format!("the value does not decompress: {e}")))?
                .0
        }
        other => return Err(bad(format!("unknown value format tag {other:#04x}"))),
    };
    if size > max_value_bytes {
        return Err(bad(format!(
            "the value is {size} bytes, more than the limit of {max_value_bytes} bytes"
        )));
    }
    let value = Codec::new(usize::MAX)
        .decode(stored)
        .map_err(|e| bad(format!("the value does not decode: {e}")))?;
    if let Value::Json(text) = &value {
        // Reads splice stored JSON into answers: it must be JSON.
        serde_json::from_str::<&RawValue>(text)
            .map_err(|e| bad(format!("the value is not JSON: {e}")))?;
    }
    Ok(())
}

/// Whether stored bytes (expiry header or not) are LZ4-compressed.
pub fn is_compressed(stored: &[u8]) -> bool {
    matches!(
        split_expiry(stored).1.first(),
        Some(&TAG_JSON_LZ4 | &TAG_BYTES_LZ4)
    )
}

/// The tag and the payload of stored bytes.
///
/// # Errors
///
/// [`Error::Internal`] for empty bytes or an unknown tag (not written by
/// this service).
fn split_tag(stored: &[u8]) -> Result<(u8, &[u8]), Error> {
    match stored.split_first() {
        Some((
            &tag
            @ (TAG_JSON | TAG_JSON_LZ4 | TAG_BYTES | TAG_BYTES_LZ4 | TAG_NEGATIVE | TAG_SEALED),
            payload,
        )) => Ok((tag, payload)),
        Some((other, _)) => Err(Error::internal(format!(
            "stored value has unknown format tag {other:#04x}"
        ))),
        None => Err(Error::internal("stored value is empty")),
    }
}

fn decompress(payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    decompress_into(payload, &mut out)?;
    Ok(out)
}

/// Appends an LZ4 payload (length prepended) decompressed to `out`, which
/// is left as it was on failure.
fn decompress_into(payload: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let (size, packed) =
        lz4_flex::block::uncompressed_size(payload).map_err(|e| Error::Internal(Box::new(e)))?;
    if size > MAX_DECODED_BYTES {
        return Err(Error::internal(format!(
            "stored value claims {size} bytes uncompressed"
        )));
    }
    let start = out.len();
    out.resize(start + size, 0);
    let written = match lz4_flex::block::decompress_into(packed, &mut out[start..]) {
        Ok(written) => written,
        Err(err) => {
            out.truncate(start);
            return Err(Error::Internal(Box::new(err)));
        }
    };
    if written != size {
        out.truncate(start);
        return Err(Error::internal(format!(
            "stored value decompressed to {written} bytes, not the {size} it claims"
        )));
    }
    Ok(())
}

fn utf8(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|e| Error::Internal(Box::new(e)))
}

/// Drops insignificant whitespace from valid JSON text, leaving every token as sent.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stored_bytes_from_outside_are_checked_before_they_are_trusted() {
        let codec = Codec::new(16);
        let small = codec.encode(&Value::Bytes(Bytes::from_static(b"abc")));
        assert!(check_stored(&small, 3, "value").is_ok());
        assert!(check_stored(&small, 2, "value").is_err(), "over the limit");
        let big = codec.encode(&Value::Bytes(Bytes::from(vec![b'x'; 10_000])));
        assert!(is_compressed(&big));
        assert!(check_stored(&big, 10_000, "value").is_ok());
        assert!(
            check_stored(&big, 9_999, "value").is_err(),
            "judged by its decompressed size"
        );
        // An LZ4 payload claiming 4 GiB is refused before any decompression.
        let bomb = [b'b', 0xff, 0xff, 0xff, 0xff, 0x00];
        assert!(check_stored(&bomb, 1 << 20, "value").is_err());
        assert!(check_stored(b"Xjunk", 100, "value").is_err());
        assert!(check_stored(b"", 100, "value").is_err());
        assert!(
            check_stored(b"J\xff\xfe", 100, "value").is_err(),
            "not UTF-8"
        );
        assert!(check_stored(b"J{\"a\":", 100, "value").is_err(), "not JSON");
        assert!(check_stored(b"J{\"a\":1}", 100, "value").is_ok());
    }

    #[test]
    fn stored_values_give_their_payload_without_decoding() {
        let codec = Codec::new(16);
        let big = Value::Json(format!("\"{}\"", "ab".repeat(500)));
        for value in [
            json(r#"{"a":[1,2]}"#),
            big.clone(),
            Value::Bytes(Bytes::from_static(b"\x00\x01")),
        ] {
            let stored = Stored::new(codec.encode(&value)).unwrap();
            assert_eq!(stored.is_json(), matches!(value, Value::Json(_)));
            assert_eq!(stored.payload_len(), value.len());
            let mut out = b"prefix:".to_vec();
            stored.append_payload(&mut out).unwrap();
            let expected: &[u8] = match &value {
                Value::Json(text) => text.as_bytes(),
                Value::Bytes(bytes) => bytes,
            };
            assert_eq!(&out[7..], expected);
            assert_eq!(&stored.clone().into_payload().unwrap()[..], expected);
        }
        assert!(is_compressed(
            Stored::new(codec.encode(&big)).unwrap().envelope()
        ));
        assert!(Stored::new(Bytes::from_static(b"Xjunk")).is_err());
        assert!(Stored::new(Bytes::new()).is_err());
        let liar = Stored::new(Bytes::from_static(b"j\x10\x00\x00\x00\x10ab")).unwrap();
        let mut out = Vec::new();
        assert!(liar.append_payload(&mut out).is_err());
        assert!(out.is_empty(), "nothing half-written is left behind");
    }

    #[test]
    fn the_expiry_header_gives_the_ttl_redis_would_and_leaves_the_envelope() {
        let codec = Codec::new(16);
        let value = json(r#"{"a":1}"#);
        let envelope = codec.encode(&value);
        let with = |at: u64| [&[b'T'][..], &at.to_be_bytes(), &envelope].concat();

        let stored = Stored::new(with(10_000)).unwrap();
        assert_eq!(stored.expiry(), StoredExpiry::At(10_000));
        assert_eq!(stored.envelope(), &envelope[..]);
        assert_eq!(codec.decode(&with(10_000)).unwrap(), value);
        // Rounded to the nearest second as Redis's TTL does, never negative.
        assert_eq!(stored.expiry().ttl_at(0), Some(10));
        assert_eq!(stored.expiry().ttl_at(500), Some(10));
        assert_eq!(stored.expiry().ttl_at(501), Some(9));
        assert_eq!(stored.expiry().ttl_at(9_600), Some(0));
        assert_eq!(stored.expiry().ttl_at(20_000), Some(0));
        assert_eq!(Stored::new(with(0)).unwrap().expiry().ttl_at(5), Some(-1));

        let legacy = Stored::new(envelope.clone()).unwrap();
        assert_eq!(legacy.expiry(), StoredExpiry::Unknown);
        assert_eq!(legacy.expiry().ttl_at(0), None);
        assert_eq!(legacy.envelope(), &envelope[..]);

        let big = codec.encode(&Value::Json(format!("\"{}\"", "ab".repeat(500))));
        assert!(is_compressed(&big));
        assert!(is_compressed(&[&with(1)[..9], &big].concat()));
        // A header with nothing behind it is no value.
        assert!(Stored::new(with(1)[..9].to_vec()).is_err());
    }

    #[test]
    fn a_new_envelope_keeps_the_headers_it_replaces_behind() {
        let headers = [&[b'T'][..], &7u64.to_be_bytes(), &compute_block(40)].concat();
        let rewritten = with_envelope(&[&headers[..], b"Jold"].concat(), b"Bnew");
        assert_eq!(rewritten, [&headers[..], b"Bnew"].concat());
        assert_eq!(with_envelope(b"Jlegacy", b"Bnew"), b"Bnew");
    }

    fn json(text: &str) -> Value {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        Value::from_raw_json(&raw)
    }

    #[test]
    fn whitespace_is_dropped_but_tokens_are_kept() {
        let v = json(" { \"a b\" : [1, 2.50, 1e400] ,\n\"c\":\"x \\\" y\" } ");
        assert_eq!(
            v,
            Value::Json(r#"{"a b":[1,2.50,1e400],"c":"x \" y"}"#.into())
        );
    }

    #[test]
    fn small_values_stay_plain_and_large_repetitive_ones_are_compressed() {
        let codec = Codec::new(1024);
        let small = json(r#""hello""#);
        assert_eq!(codec.encode(&small)[0], b'J');
        let big = Value::Json(format!("\"{}\"", "ab".repeat(2000)));
        let stored = codec.encode(&big);
        assert!(is_compressed(&stored));
        assert!(stored.len() < big.len() / 4);
        assert_eq!(codec.decode(&stored).unwrap(), big);
    }

    #[test]
    fn incompressible_values_are_stored_plain() {
        let codec = Codec::new(16);
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: bytes with no structure for LZ4 to find.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let stored = codec.encode(&Value::Bytes(noise.clone().into()));
        assert_eq!(stored[0], b'B');
        assert_eq!(&stored[1..], &noise[..]);
    }

    #[test]
    fn foreign_or_corrupt_bytes_are_errors() {
        let codec = Codec::new(0);
        assert!(codec.decode(b"").is_err());
        assert!(codec.decode(b"plain redis string").is_err());
        assert!(codec.decode(b"j\xff\xff\xff\x7fgarbage").is_err());
    }

    proptest! {
        #[test]
        fn every_value_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..3000), threshold in 0usize..2000) {
            let codec = Codec::new(threshold);
            let value = Value::Bytes(bytes.into());
            prop_assert_eq!(codec.decode(&codec.encode(&value)).unwrap(), value);
        }

        #[test]
        fn json_round_trips_and_stays_equivalent(value in any::<(String, Vec<i64>, Option<bool>)>(), threshold in 0usize..64) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let compact = json(&pretty);
            let codec = Codec::new(threshold);
            let back = codec.decode(&codec.encode(&compact)).unwrap();
            let Value::Json(text) = back else { panic!("json came back as bytes") };
            prop_assert_eq!(&text, &serde_json::to_string(&value).unwrap());
        }
    }
}
