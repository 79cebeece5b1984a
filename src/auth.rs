//! Authentication and authorisation: the tokens of the configuration (kept only as
//! salted SHA-256 hashes, `sha256$<salt-hex>$<hash-hex>`), their roles and queue-name
//! prefixes, and the [`Grant`] a connection holds once its `Hello` is accepted.
//! Tokens are compared in constant time. No sockets and no file reading here: the
//! configuration loader parses entries, `server/conn/requests.rs` asks for a grant once
//! per connection and then checks each request against it with integer compares
//! (plus a prefix compare for tokens limited to some queues).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of salt in a fresh hash.
const SALT_BYTES: usize = 16;

/// What a role may do, as bits of [`Grant::allows`].
pub mod ops {
    /// Publish tasks.
    pub const PUBLISH: u32 = 1;
    /// Subscribe to a queue.
    pub const SUBSCRIBE: u32 = 1 << 1;
    /// Ack, nack, extend, unsubscribe.
    pub const SETTLE: u32 = 1 << 2;
    /// Task status and result waits.
    pub const STATUS: u32 = 1 << 3;
    /// Queue administration (list, inspect, configure, pause, peek, purge, redrive,
    /// delete).
    pub const ADMIN: u32 = 1 << 4;
    /// Everything.
    pub const ALL: u32 = PUBLISH | SUBSCRIBE | SETTLE | STATUS | ADMIN;
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publish, task status.
    Producer,
    /// Subscribe, settle (ack, nack, extend, unsubscribe), task status.
    Consumer,
    /// Everything, queue administration included.
    Admin,
}

impl Role {
    /// The operations of this role ([`ops`] bits).
    pub fn ops(self) -> u32 {
        match self {
            Role::Producer => ops::PUBLISH | ops::STATUS,
            Role::Consumer => ops::SUBSCRIBE | ops::SETTLE | ops::STATUS,
            Role::Admin => ops::ALL,
        }
    }

    /// The role's name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "producer" => Ok(Role::Producer),
            "consumer" => Ok(Role::Consumer),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("`{s}` is not a role: producer, consumer or admin")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A salted SHA-256 hash of a token: `sha256$<salt-hex>$<hash-hex>`, where the hash is
/// SHA-256(salt ‖ token). The token itself is never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash {
    salt: Vec<u8>,
    digest: [u8; 32],
}

impl TokenHash {
    /// Hashes `token` with a fresh random salt.
    pub fn new(token: &str) -> TokenHash {
        let mut salt = vec![0u8; SALT_BYTES];
        rand::rng().fill_bytes(&mut salt);
        let digest = digest(&salt, token);
        TokenHash { salt, digest }
    }

    /// Whether `token` hashes to this, compared in constant time.
    pub fn matches(&self, token: &str) -> bool {
        bool::from(digest(&self.salt, token).ct_eq(&self.digest))
    }
}

fn digest(salt: &[u8], token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(token.as_bytes());
    h.finalize().into()
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256${}${}", hex(&self.salt), hex(&self.digest))
    }
}

/// Shows the salt only: the hash is not a secret, but there is no reason to spread it.
impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256${}$…", hex(&self.salt))
    }
}

impl FromStr for TokenHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            "expected `sha256$<salt-hex>$<hash-hex>` as printed by `squall token hash`".to_owned()
        };
        let mut parts = s.split('$');
        let (Some("sha256"), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let salt = unhex(salt).filter(|s| !s.is_empty()).ok_or_else(bad)?;
        let digest = unhex(hash)
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(bad)?;
        Ok(TokenHash { salt, digest })
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// One configured token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// Who it is for (shown in logs; not secret).
    pub name: String,
    /// Its salted hash.
    pub hash: TokenHash,
    /// What it may do.
    pub role: Role,
    /// Queue-name prefixes it is limited to; empty = every queue.
    pub queues: Vec<String>,
}

/// The authentication settings: none configured = no authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// The accepted tokens.
    pub tokens: Vec<TokenEntry>,
    /// Whether the HTTP port's `/metrics` needs a token too (when tokens are set).
    pub metrics: bool,
}

impl AuthConfig {
    /// Whether clients must present a token.
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The grant of a connection that presented `token`: everything when no token is
    /// configured, the matching entry's role and prefixes otherwise, `None` if it
    /// matches none. Every entry is checked, so the time taken does not depend on
    /// which one matches.
    pub fn authenticate(&self, token: &str) -> Option<Grant> {
        if !self.is_enabled() {
            return Some(Grant::all());
        }
        let mut found = None;
        for entry in &self.tokens {
            let m = entry.hash.matches(token);
            if m && found.is_none() {
                found = Some(entry);
            }
        }
        let entry = found?;
        Some(Grant {
            name: Arc::from(entry.name.as_str()),
            ops: entry.role.ops(),
            prefixes: (!entry.queues.is_empty()).then(|| Arc::from(entry.queues.clone())),
        })
    }
}

/// What one connection may do, decided once at `Hello`.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The token's name ("" without authentication).
    pub name: Arc<str>,
    ops: u32,
    prefixes: Option<Arc<[String]>>,
}

impl Grant {
    /// Everything (no authentication configured).
    pub fn all() -> Grant {
        Grant {
            name: Arc::from(""),
            ops: ops::ALL,
            prefixes: None,
        }
    }

    /// Whether every operation on every queue is allowed (checks can be skipped).
    pub fn is_unrestricted(&self) -> bool {
        self.ops == ops::ALL && self.prefixes.is_none()
    }

    /// Whether the operations `op` ([`ops`] bits) are allowed.
    pub fn allows(&self, op: u32) -> bool {
        self.ops & op == op
    }

    /// Whether queue `name` is within the grant's prefixes.
    pub fn allows_queue(&self, name: &str) -> bool {
        match &self.prefixes {
            None => true,
            Some(p) => p.iter().any(|p| name.starts_with(p.as_str())),
        }
    }

    /// The prefixes, if limited.
    pub fn prefixes(&self) -> Option<&Arc<[String]>> {
        self.prefixes.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str, role: Role, queues: &[&str]) -> TokenEntry {
        TokenEntry {
            name: format!("{role}-token"),
            hash: TokenHash::new(token),
            role,
            queues: queues.iter().map(|q| q.to_string()).collect(),
        }
    }

    #[test]
    fn hashes_round_trip_and_match_only_their_token() {
        let h = TokenHash::new("s3cret");
        let text = h.to_string();
        assert!(text.starts_with("sha256$"), "{text}");
        let parsed: TokenHash = text.parse().unwrap();
        assert_eq!(parsed, h);
        assert!(parsed.matches("s3cret"));
        assert!(!parsed.matches("s3cret "));
        assert!(!parsed.matches(""));
        // Fresh salt each time.
        assert_ne!(TokenHash::new("s3cret").to_string(), text);
        assert!(
            !format!("{h:?}").contains(&text[40..]),
            "Debug hides the hash"
        );
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "",
            "s3cret",
            "md5$00$00",
            "sha256$$00",
            "sha256$0g$00",
            "sha256$00$abcd",
            "sha256$00$00$00",
        ] {
            assert!(bad.parse::<TokenHash>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grants_follow_roles_and_prefixes() {
        let auth = AuthConfig {
            tokens: vec![
                entry("p", Role::Producer, &["billing."]),
                entry("c", Role::Consumer, &[]),
                entry("a", Role::Admin, &[]),
            ],
            ..AuthConfig::default()
        };
        assert!(auth.authenticate("").is_none());
        assert!(auth.authenticate("x").is_none());
        let p = auth.authenticate("p").unwrap();
        assert!(p.allows(ops::PUBLISH) && p.allows(ops::STATUS));
        assert!(!p.allows(ops::SUBSCRIBE) && !p.allows(ops::ADMIN));
        assert!(p.allows_queue("billing.invoices") && !p.allows_queue("hr.payroll"));
        assert!(!p.is_unrestricted());
        let c = auth.authenticate("c").unwrap();
        assert!(c.allows(ops::SUBSCRIBE | ops::SETTLE) && !c.allows(ops::PUBLISH));
        assert!(auth.authenticate("a").unwrap().is_unrestricted());
        assert!(AuthConfig::default()
            .authenticate("")
            .unwrap()
            .is_unrestricted());
    }
}
