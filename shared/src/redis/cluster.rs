//! What the service needs to know of a Redis Cluster beyond what the client
//! routes by itself: which slot a key or a pattern lives in, and which
//! nodes there are (to walk each primary, or to report each node).

use deadpool_redis::redis::{self, aio::ConnectionLike};

use crate::error::Error;

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The slot of `key`, as Redis computes it: CRC16 (XMODEM) of the hash tag
/// (the text between the first `{` and the next `}`, when not empty), or of
/// the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
        crc
    })
}

/// The one slot every key matching the glob `pattern` lives in, when the
/// pattern pins one: no unescaped glob character before the end of its
/// hash tag (`c:{acme}:user:*`, also with escapes: `c:{t\-1}:*`). A
/// tenant's walk then reads that slot's key index instead of scanning the
/// whole keyspace; `c:{*}:*` pins none.
pub fn pinned_slot(pattern: &str) -> Option<u16> {
    let bytes = pattern.as_bytes();
    // The start of every matching key, unescaped, up to its tag's end.
    let mut literal = Vec::with_capacity(bytes.len());
    let mut open: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'*' | b'?' | b'[' => return None,
            b'\\' if i + 1 < bytes.len() => {
                i += 1;
                bytes[i]
            }
            other => other,
        };
        literal.push(byte);
        match (byte, open) {
            (b'{', None) => open = Some(literal.len() - 1),
            (b'}', Some(at)) if literal.len() - 1 == at + 1 => return None,
            (b'}', Some(_)) => return Some(key_slot(&literal)),
            _ => {}
        }
        i += 1;
    }
    None
}

/// One node of the cluster as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    /// `host:port` of the node's client port.
    pub address: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// Whether the cluster holds the node as failing (`fail` or `fail?`).
    pub failing: bool,
    /// Slots the node serves (primaries).
    pub slots: u32,
}

impl ClusterNode {
    /// `(host, port)` of the node, as the client routes by address.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let (host, port) = self.address.rsplit_once(':')?;
        Some((host.to_owned(), port.parse().ok()?))
    }

    pub fn is_primary(&self) -> bool {
        self.role == "primary"
    }

    /// A primary that owns slots: one the client routes commands to.
    pub fn serves_slots(&self) -> bool {
        self.is_primary() && self.slots > 0
    }
}

/// The nodes of the cluster, from `CLUSTER NODES` asked of any node.
///
/// # Errors
///
/// [`Error::CacheUnavailable`] when no node answers.
pub async fn nodes(conn: &mut impl ConnectionLike) -> Result<Vec<ClusterNode>, Error> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(parse_nodes(&text))
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <primary>
/// <ping> <pong> <epoch> <link> <slot> ...`; nodes without an address
/// (`:0`, not yet met) are left out.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    let mut nodes: Vec<ClusterNode> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?.split(['@', ',']).next()?;
            if address.starts_with(':') || address.ends_with(":0") {
                return None;
            }
            let flags: Vec<&str> = fields.get(2)?.split(',').collect();
            let primary = flags.contains(&"master");
            let slots = fields
                .get(8..)
                .unwrap_or_default()
                .iter()
                .filter(|range| !range.starts_with('['))
                .map(|range| match range.split_once('-') {
                    Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                        (Ok(a), Ok(b)) if b >= a => b - a + 1,
                        _ => 0,
                    },
                    None => u32::from(range.parse::<u32>().is_ok()),
                })
                .sum();
            Some(ClusterNode {
                address: address.to_owned(),
                role: if primary { "primary" } else { "replica" },
                failing: flags.iter().any(|f| f.starts_with("fail")),
                slots,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.address.cmp(&b.address));
    nodes
}

/// Redis's glob matching (`stringmatchlen`) of `text` against `pattern`:
/// `*`, `?`, `[...]` (with `^`, ranges and escapes) and `\` escapes. Used
/// where a slot's key index stands in for `SCAN MATCH`, so both agree.
pub fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern after it, text it stands for up to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            if pattern[p] == b'*' {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            if let Some(next) = match_one(pattern, p, text[t]) {
                p = next;
                t += 1;
                continue;
            }
        }
        match star {
            Some((after, upto)) => {
                p = after;
                t = upto + 1;
                star = Some((after, upto + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether the single-byte unit of `pattern` at `p` matches `byte`; the
/// index after that unit when it does.
fn match_one(pattern: &[u8], p: usize, byte: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte).then_some(p + 2),
        b'[' => {
            let mut i = p + 1;
            let negate = pattern.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            while i < pattern.len() && pattern[i] != b']' {
                if pattern[i] == b'\\' && i + 1 < pattern.len() {
                    matched |= pattern[i + 1] == byte;
                    i += 2;
                } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']'
                {
                    let (a, b) = (pattern[i], pattern[i + 2]);
                    let (low, high) = if a <= b { (a, b) } else { (b, a) };
                    matched |= (low..=high).contains(&byte);
                    i += 3;
                } else {
                    matched |= pattern[i] == byte;
                    i += 1;
                }
            }
            // An unclosed class ends with the pattern, as in Redis.
            let next = (i + 1).min(pattern.len());
            (matched != negate).then_some(next)
        }
        other => (other == byte).then_some(p + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_specification() {
        // The specification's example: CRC16 of "123456789" is 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"c:{acme}:a"), key_slot(b"acme"));
        assert_eq!(key_slot(b"c:{}:a"), key_slot(b"c:{}:a"));
        assert_ne!(key_slot(b"c:{}:a"), key_slot(b""));
    }

    #[test]
    fn a_pattern_pins_a_slot_only_when_its_tag_is_literal() {
        assert_eq!(pinned_slot("c:{acme}:*"), Some(key_slot(b"acme")));
        assert_eq!(pinned_slot("c:{acme}:user:[ab]?"), Some(key_slot(b"acme")));
        assert_eq!(pinned_slot("c:{*}:*"), None);
        assert_eq!(pinned_slot("*{acme}:*"), None);
        assert_eq!(pinned_slot("c:{ac\\*me}:*"), Some(key_slot(b"ac*me")));
        assert_eq!(pinned_slot("c:acme:*"), None);
        assert_eq!(pinned_slot("c:{}:*"), None);
        // Tenant prefixes come escaped (see keys::escape_glob).
        assert_eq!(pinned_slot("c:{t\\-1}:*"), Some(key_slot(b"t-1")));
        assert_eq!(
            pinned_slot(
                &crate::keys::TenantKeyspace::new(
                    &crate::keys::TenantId::parse("a-b_c", "t").unwrap()
                )
                .pattern("x*")
            ),
            Some(key_slot(b"a-b_c"))
        );
    }

    #[test]
    fn globs_match_as_redis_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("c:{a}:*", "c:{a}:x", true),
            ("c:{a}:*", "c:{ab}:x", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("h?llo", "hello", true),
            ("h[ae]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("x[\\]]y", "x]y", true),
            ("**a", "a", true),
            ("a", "ab", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_matches(pattern.as_bytes(), text.as_bytes()),
                *expected,
                "{pattern} ~ {text}"
            );
        }
    }

    #[test]
    fn cluster_nodes_are_read_with_their_roles_and_slots() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected 10923-16383 [5460->-abc]
e7d1 127.0.0.1:30001@31001,host.example myself,master - 0 0 1 connected 0-5460 7
9999 :0@0 handshake - 0 0 0 connected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].address, "127.0.0.1:30001");
        assert_eq!((nodes[0].role, nodes[0].slots), ("primary", 5462));
        assert!(nodes[2].failing);
        assert_eq!((nodes[3].role, nodes[3].slots), ("replica", 0));
        assert_eq!(nodes[1].host_port(), Some(("127.0.0.1".into(), 30002)));
    }
}
