//! The cache operations the figures are kept by.

/// Operations counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Set,
    Delete,
    Mget,
    Mset,
    Exists,
    Expire,
    Ttl,
    Touch,
    Session,
    Permission,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Get,
        Op::Set,
        Op::Delete,
        Op::Mget,
        Op::Mset,
        Op::Exists,
        Op::Expire,
        Op::Ttl,
        Op::Touch,
        Op::Session,
        Op::Permission,
    ];

    /// The name in metrics, logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Mget => "mget",
            Op::Mset => "mset",
            Op::Exists => "exists",
            Op::Expire => "expire",
            Op::Ttl => "ttl",
            Op::Touch => "touch",
            Op::Session => "session",
            Op::Permission => "permission",
        }
    }
}
